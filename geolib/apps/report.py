"""The pipeline report: `outputs/<profile>/report/index.html`.

One offline page that links every executed notebook (rendered to HTML by nbconvert), the figures,
and tabulates every metrics record of the profile, so a run can be read without starting Jupyter.

Offline means no CDN: plotly figures in notebooks are re-rendered against the plotly.js copy that
ships with the plotly package (copied beside the pages), and live-widget outputs, which only a
running kernel can draw, are reduced to their text so nbconvert does not pull a widget manager.
The notebook pages use nbconvert's `lab` template without its CDN scripts (require.js, MathJax,
mermaid, the widget manager; see `OFFLINE_TEMPLATE`): nothing in our outputs needs them, plotly
outputs load the local plotly.js, and LaTeX in Markdown cells (the notebooks have none) would show
as its source.
"""
from __future__ import annotations

import argparse
import html
import shutil
from pathlib import Path
from typing import Any

from ..paths import atomic_write_text, outputs_root
from ..profiles import PROFILE_NAMES
from ..records import read_records

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "R@1%", "AP", "LR@1", "top1", "top3", "params", "gflops",
                  "ms_per_image", "images_per_s", "peak_mb")
KEY_COLUMNS = ("_source", "task", "protocol", "dataset", "split", "direction", "model", "seed")
COST_COLUMNS = ("params", "gflops", "ms_per_image", "images_per_s", "peak_mb")
PLOTLY_MIME, WIDGET_MIME = "application/vnd.plotly.v1+json", "application/vnd.jupyter.widget-view+json"
PLOTLY_JS = "plotly.min.js"
OFFLINE_TEMPLATE_NAME = "geolib_offline.html.j2"
# nbconvert's lab page with the blocks that load scripts from cdnjs left empty
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def offline_exporter():
    """An nbconvert `HTMLExporter` (lab template) whose pages load nothing from the network."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", extra_loaders=[DictLoader({OFFLINE_TEMPLATE_NAME: OFFLINE_TEMPLATE})],
                        template_file=OFFLINE_TEMPLATE_NAME)


def render_notebooks(profile: str, report_dir: Path) -> list[tuple[str, Path]]:
    """nbconvert every executed notebook of the profile to HTML beside the report."""
    import nbformat

    exporter = offline_exporter()
    out = []
    for path in sorted((outputs_root() / profile / "notebooks").glob("*.ipynb")):
        nb = offline_notebook(nbformat.read(str(path), as_version=4), plotly_src=f"../{PLOTLY_JS}")
        body, _ = exporter.from_notebook_node(nb)
        target = report_dir / "notebooks" / f"{path.stem}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, body)
        out.append((path.stem, target))
    return out


def offline_notebook(nb, plotly_src: str):
    """Plotly outputs re-rendered against a local plotly.js; widget views reduced to their text."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not data:
                continue
            data.pop(WIDGET_MIME, None)
            if PLOTLY_MIME in data:
                data["text/html"] = _plotly_html(data.pop(PLOTLY_MIME), plotly_src)
    return nb


def _plotly_html(spec: dict[str, Any], plotly_src: str) -> str:
    import plotly.io as pio

    return pio.to_html(pio.from_json(_json(spec)), include_plotlyjs=plotly_src, full_html=False)


def _json(spec: Any) -> str:
    import json

    return spec if isinstance(spec, str) else json.dumps(spec)


def copy_plotly_js(report_dir: Path) -> Path:
    """The plotly.js that the plotly package ships, beside the pages: no CDN needed offline."""
    from plotly.offline import get_plotlyjs

    return atomic_write_text(report_dir / PLOTLY_JS, get_plotlyjs())


def figure_links(profile: str, report_dir: Path) -> list[tuple[str, Path]]:
    """Figures and standalone plotly pages copied into the report, so the folder travels whole."""
    out = []
    for f in sorted((outputs_root() / profile / "figures").glob("*")):
        if f.suffix.lower() in (".png", ".html", ".svg"):
            target = report_dir / "figures" / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            out.append((f.name, target))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.3g}"
    return html.escape(str(value))


def _direction(r: dict[str, Any]) -> str | None:
    q, g = r.get("query_view"), r.get("gallery_view")
    return f"{q}→{g}" if q and g else (q or g)


def metrics_table_html(records: list[dict[str, Any]]) -> str:
    """Every record, one row each: keys, direction, R@1/5/10, AP, cost columns, then any other metric.

    R@1/5/10 and AP always have a column (blank where a record has none), so tables of different
    runs line up; other metrics get one only when some record has them.
    """
    always = ("R@1", "R@5", "R@10", "AP")
    present = {k for r in records for k in (r.get("metrics") or {})}
    metric_cols = [c for c in METRIC_COLUMNS if c in always or c in present]
    extra = sorted(present - set(metric_cols))
    cols = list(KEY_COLUMNS) + metric_cols + extra
    head = "".join(f"<th{' class=cost' if c in COST_COLUMNS else ''}>{html.escape(c.lstrip('_'))}</th>" for c in cols)
    rows = []
    for r in records:
        m = r.get("metrics") or {}
        keys = [_direction(r) if c == "direction" else r.get(c) for c in KEY_COLUMNS]
        cells = keys + [m.get(c) for c in metric_cols + extra]
        rows.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_report(profile: str) -> Path:
    report_dir = outputs_root() / profile / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    copy_plotly_js(report_dir)
    notebooks = render_notebooks(profile, report_dir)
    figures = figure_links(profile, report_dir)
    records = read_records(profile)
    links = "".join(f'<li><a href="{p.relative_to(report_dir)}">{html.escape(name)}</a></li>' for name, p in notebooks)
    figs = "".join(f'<li><a href="{p.relative_to(report_dir)}">{html.escape(name)}</a></li>' for name, p in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>geolocal report: {profile}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}}th{{background:#eee}}th.cost{{background:#e4ecf7}}</style></head><body>
<h1>geolocal report: profile <code>{html.escape(profile)}</code></h1>
<h2>Notebooks</h2><ol>{links or '<li>no executed notebooks</li>'}</ol>
<h2>Figures</h2><ul>{figs or '<li>no figures</li>'}</ul>
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
