import json

import numpy as np
import pytest

from geolib import records
from geolib.paths import atomic_path, atomic_write_json, outputs_root


def test_write_and_read_record():
    rec = records.write_record("unit", task="crossview", protocol="university1652-official",
                               dataset="synthetic-smoke", split="test", query_view="street",
                               gallery_view="drone", model="raw-pixels",
                               metrics={"R@1": np.float32(12.5), "AP": float("nan")},
                               profile="smoke", seed=0, config={"size": 32})
    path = outputs_root() / "smoke" / "metrics" / "unit.jsonl"
    line = json.loads(path.read_text().splitlines()[-1])
    for key in records.REQUIRED:
        assert key in line
    assert line["metrics"] == {"R@1": 12.5, "AP": None} and line["created"] == rec["created"]
    back = records.read_records("smoke", "unit")
    assert back[-1]["model"] == "raw-pixels" and back[-1]["_source"] == "unit"
    table = records.records_table(back)
    assert table.loc[len(table) - 1, "R@1"] == 12.5


def test_record_rejects_unknown_task_and_empty_metrics():
    base = dict(protocol=None, dataset="d", split="test", model="m", profile="smoke", seed=0)
    with pytest.raises(ValueError, match="task"):
        records.make_record(task="nonsense", metrics={"a": 1}, **base)
    with pytest.raises(ValueError, match="metrics"):
        records.make_record(task="world", metrics={}, **base)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "meta.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert list(tmp_path.iterdir()) == [target]
