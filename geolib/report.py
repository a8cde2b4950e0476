"""The pipeline report: `outputs/<profile>/report/index.html`.

One offline page that links every executed notebook (rendered to HTML by nbconvert) and tabulates
every metrics record of the profile, so a run can be read without starting Jupyter.
"""
from __future__ import annotations

import argparse
import html
from pathlib import Path
from typing import Any

from .paths import atomic_write_text, outputs_root
from .profiles import PROFILE_NAMES
from .records import read_records

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "R@1%", "AP", "LR@1", "top1", "top3", "params", "gflops",
                  "ms_per_image", "images_per_s", "peak_mb")
KEY_COLUMNS = ("_source", "task", "protocol", "dataset", "split", "query_view", "gallery_view", "model", "seed")


def render_notebooks(profile: str, report_dir: Path) -> list[tuple[str, Path]]:
    """nbconvert every executed notebook of the profile to HTML beside the report."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    out = []
    for nb in sorted((outputs_root() / profile / "notebooks").glob("*.ipynb")):
        body, _ = exporter.from_filename(str(nb))
        target = report_dir / "notebooks" / f"{nb.stem}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, body)
        out.append((nb.stem, target))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.3g}"
    return html.escape(str(value))


def metrics_table_html(records: list[dict[str, Any]]) -> str:
    metric_cols = [c for c in METRIC_COLUMNS if any(c in (r.get("metrics") or {}) for r in records)]
    extra = sorted({k for r in records for k in (r.get("metrics") or {})} - set(metric_cols))
    cols = list(KEY_COLUMNS) + metric_cols + extra
    head = "".join(f"<th>{html.escape(c.lstrip('_'))}</th>" for c in cols)
    rows = []
    for r in records:
        m = r.get("metrics") or {}
        cells = [r.get(c) for c in KEY_COLUMNS] + [m.get(c) for c in metric_cols + extra]
        rows.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_report(profile: str) -> Path:
    report_dir = outputs_root() / profile / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    notebooks = render_notebooks(profile, report_dir)
    records = read_records(profile)
    links = "".join(f'<li><a href="{p.relative_to(report_dir)}">{html.escape(name)}</a></li>' for name, p in notebooks)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>geolocal report: {profile}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#eee}}</style></head><body>
<h1>geolocal report: profile <code>{html.escape(profile)}</code></h1>
<h2>Notebooks</h2><ol>{links or '<li>no executed notebooks</li>'}</ol>
<h2>Metrics records ({len(records)})</h2>{metrics_table_html(records)}
</body></html>
"""
    return atomic_write_text(report_dir / "index.html", page)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m geolib report")
    p.add_argument("--profile", default="default", choices=PROFILE_NAMES)
    args = p.parse_args(argv)
    print(write_report(args.profile))
    return 0
