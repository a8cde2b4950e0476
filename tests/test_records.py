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


def _rec(model, q, g, r1, dataset="d"):
    return {"task": "crossview", "dataset": dataset, "model": model, "query_view": q, "gallery_view": g,
            "metrics": {"R@1": r1, "AP": r1 / 2}}


def test_select_matches_values_and_any_of():
    recs = [_rec("a", "street", "drone", 1.0), _rec("b", "street", "drone", 2.0), _rec("a", "street", "drone", 3.0, "e")]
    assert [r["metrics"]["R@1"] for r in records.select(recs, model="a")] == [1.0, 3.0]
    assert [r["metrics"]["R@1"] for r in records.select(recs, model=("a", "b"), dataset="d")] == [1.0, 2.0]
    assert records.select(recs, model="c") == []


def test_records_table_direction_and_last_by():
    recs = [_rec("a", "street", "drone", 1.0), _rec("a", "street", "satellite", 2.0), _rec("a", "street", "drone", 5.0),
            {"task": "world", "model": "renderer", "metrics": {"images": 3}}]
    table = records.records_table(recs, ["R@1"], last_by=["model", "direction"])
    assert list(table.direction[:2]) == ["street→satellite", "street→drone"] and table.direction.isna().iloc[2]
    assert list(table["R@1"].iloc[:2]) == [2.0, 5.0] and "AP" not in table
    assert len(records.records_table(recs)) == 4 and "AP" in records.records_table(recs)


def test_phase1_checkpoint_prefers_best_then_last(tmp_path, monkeypatch):
    from geolib import paths

    monkeypatch.setenv("GEOLIB_OUTPUTS", str(tmp_path))
    assert paths.phase1_checkpoint("p") is None
    folder = paths.phase1_checkpoint_dir("p")
    for name in ("last.json", "last.safetensors", "best.safetensors"):
        (folder / name).write_text("x")
    assert paths.phase1_checkpoint("p") == folder / "last"  # best has no JSON yet: half written
    (folder / "best.json").write_text("{}")
    assert paths.phase1_checkpoint("p") == folder / "best"
