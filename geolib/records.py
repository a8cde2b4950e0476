"""The metrics-record writer (docs/reference.md).

One JSON object per line in `outputs/<profile>/metrics/<source>.jsonl`. The report, the README
tables and the checks all read these files, so every writer goes through here and the keys stay
fixed.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .paths import REPO_ROOT, outputs_root

TASKS = ("world", "crossview", "vpr", "classification", "distillation", "cost", "bench")
REQUIRED = ("task", "protocol", "dataset", "split", "query_view", "gallery_view", "model", "metrics",
            "profile", "seed", "config", "git", "created")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The short commit, with `-dirty` when tracked files changed; None outside a checkout."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = status is not None and bool(status.stdout.strip())
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _clean(value: Any) -> Any:
    """JSON has no NaN; numpy scalars are not JSON. Make both safe."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def make_record(*, task: str, protocol: str | None, dataset: str, split: str | None, model: str,
                metrics: dict[str, Any], profile: str, seed: int | None,
                query_view: str | None = None, gallery_view: str | None = None,
                config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    if task not in TASKS:
        raise ValueError(f"record task {task!r} is not one of {TASKS}")
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError("a record needs a non-empty metrics dict")
    rec = {
        "task": task, "protocol": protocol, "dataset": dataset, "split": split,
        "query_view": query_view, "gallery_view": gallery_view, "model": model,
        "metrics": metrics, "profile": profile, "seed": seed, "config": config or {},
        "git": git_commit(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(extra)
    return _clean(rec)


def metrics_path(source: str, profile: str) -> Path:
    return outputs_root() / profile / "metrics" / f"{source}.jsonl"


def write_record(source: str, **fields: Any) -> dict[str, Any]:
    """Append one record to `outputs/<profile>/metrics/<source>.jsonl` and return it.

    Appends take a file lock so that two processes (DDP ranks, parallel notebooks) never interleave
    half lines.
    """
    rec = make_record(**fields)
    path = metrics_path(source, rec["profile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(rec, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
    return rec


def read_records(profile: str | None = None, source: str | None = None,
                 root: Path | None = None) -> list[dict[str, Any]]:
    """All records of a profile (or of every profile), optionally of one source."""
    root = root or outputs_root()
    pattern = f"{profile or '*'}/metrics/{source or '*'}.jsonl"
    out: list[dict[str, Any]] = []
    for path in sorted(root.glob(pattern)):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON record ({err}); delete the line or the file") from err
            rec["_source"] = path.stem
            out.append(rec)
    return out


def select(records: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The records whose fields equal every `match`; a tuple, list or set value matches any of its items.

    One filter for every notebook's "these models on this dataset" so the rule is written once.
    """
    def ok(r: dict[str, Any]) -> bool:
        return all((r.get(k) in v) if isinstance(v, (tuple, list, set, frozenset)) else r.get(k) == v
                   for k, v in match.items())

    return [r for r in records if ok(r)]


def records_table(records: Iterable[dict[str, Any]], metric_keys: Iterable[str] | None = None,
                  last_by: Iterable[str] | None = None):
    """A pandas table of records: one row per record, one column per metric.

    `direction` ("street→drone") is there whenever a record has both views, since that is how the
    notebooks name a retrieval direction. `last_by` keeps only the last record per those columns: a
    rerun appends records, and the newest is the one that describes the current outputs.
    """
    import pandas as pd

    metric_keys = list(metric_keys) if metric_keys is not None else None
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ("task", "protocol", "dataset", "split", "query_view",
                                      "gallery_view", "model", "profile", "seed")}
        row["direction"] = (f"{r['query_view']}→{r['gallery_view']}"
                            if r.get("query_view") and r.get("gallery_view") else None)
        for k, v in (r.get("metrics") or {}).items():
            if metric_keys is None or k in metric_keys:
                row[k] = v
        rows.append(row)
    table = pd.DataFrame(rows)
    if last_by is not None and len(table):
        table = table.drop_duplicates(list(last_by), keep="last").reset_index(drop=True)
    return table
