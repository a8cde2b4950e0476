"""Two smoke runs of the whole pipeline with the same seed write identical metrics records.

Results must depend on the seed and the settings, never on the machine's speed or load. Both
runs go into fresh outputs roots of their own, so nothing another test wrote can mix in. Only
what measures the machine (timings, throughput, the record's creation time) and where the files
were written may differ. The first run is the notebooks' smoke run (test_notebooks, same worker
group) when it completed in this session; otherwise this test makes it.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from geolib.apps.pipeline import discover, run_notebook

# the worker that ran the notebooks' smoke run (test_notebooks) runs this test after it
pytestmark = pytest.mark.xdist_group("pipeline")

# Fields that measure the machine, not the method: seconds, minutes, throughput, and the peak
# memory sampled from the process RSS (it depends on when the sampler ticks).
MACHINE = re.compile(r"(^|_)(s|seconds|minutes)$|(^|_)per_s(_|$)|^(ms_per_image|minutes_total|created)$|^peak_mb$")


def comparable(value: Any, root: str, key: str = "") -> Any:
    """A record with machine measurements dropped and paths made relative to the outputs root."""
    if isinstance(value, dict):
        return {k: comparable(v, root, k) for k, v in value.items() if not MACHINE.search(k)}
    if isinstance(value, list):
        return [comparable(v, root, key) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<outputs>")
    return value


def records_of(root: Path) -> dict[str, list[dict[str, Any]]]:
    folder = root / "smoke" / "metrics"
    return {p.name: [comparable(json.loads(line), str(root)) for line in p.read_text().splitlines() if line.strip()]
            for p in sorted(folder.glob("*.jsonl"))}


def run_all(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOLIB_OUTPUTS", str(root))
    for notebook in discover():
        run_notebook(notebook, "smoke", progress=False)


def test_machine_fields_are_the_only_ones_dropped():
    rec = {"created": "now", "metrics": {"R@1": 50.0, "train_s": 3.2, "queries_per_s": 9.0, "ms_per_image": 1.0, "peak_mb": 0.2,
                                         "AP": 0.4, "epochs": 3, "images_per_s_end_to_end": 250.0},
           "config": {"root": "/tmp/x/smoke/data", "train_minutes": 1.5, "lr": 0.1, "split": "test"}}
    assert comparable(rec, "/tmp/x") == {"metrics": {"R@1": 50.0, "AP": 0.4, "epochs": 3},
                                         "config": {"root": "<outputs>/smoke/data", "lr": 0.1, "split": "test"}}


def completed_run(root: Path) -> bool:
    """Whether `root` holds a whole smoke run: every notebook executed, in a root of its own."""
    done = root / "smoke" / "notebooks"
    return all((done / nb.name).is_file() for nb in discover())


@pytest.mark.timeout(900)
def test_two_smoke_runs_write_identical_records(tmp_path, monkeypatch, pipeline_outputs):
    first = pipeline_outputs
    if "GEOLIB_OUTPUTS_KEEP" in os.environ or not completed_run(first):
        first = tmp_path / "first"
        run_all(first, monkeypatch)
    a = records_of(first)
    run_all(tmp_path / "again", monkeypatch)
    b = records_of(tmp_path / "again")
    assert sorted(a) == sorted(b)
    for name in a:
        assert len(a[name]) == len(b[name]), f"{name}: {len(a[name])} records, then {len(b[name])}"
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            assert x == y, f"{name} record {i} differs between two runs with the same seed:\n{_diff(x, y)}"


def _diff(x: Any, y: Any, path: str = "") -> str:
    if isinstance(x, dict) and isinstance(y, dict):
        return "\n".join(d for k in sorted(set(x) | set(y)) if (d := _diff(x.get(k), y.get(k), f"{path}.{k}")))
    return "" if x == y else f"  {path}: {str(x)[:80]} != {str(y)[:80]}"
