"""Notebook 03's Part B on a pairs dataset: a weight-sharing teacher trained on the pairs' train
split, then a student distilled from it, each evaluated panorama→satellite under the layout's protocol."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from release_trees import make_cvusa, make_vigor  # noqa: E402

from geolib.apps import ablation as ab  # noqa: E402
from geolib.training.crossview import load_trained_model  # noqa: E402
from geolib.data.datasets import load_dataset  # noqa: E402
from geolib.training.distill4geo import RowRunner  # noqa: E402
from geolib.profiles import resolve  # noqa: E402
from geolib.records import read_records  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg() -> dict:
    cfg = {**resolve("smoke", "distill", device="cpu"), "cost_runs": 1, "student_pretrained": False}
    cfg["phase1"] = resolve("smoke", "phase1", device="cpu")
    return cfg


@pytest.mark.parametrize("layout", ["cvusa", "vigor"])
def test_pairs_teacher_and_student_rows_record_recall(layout, tmp_path):
    root = {"cvusa": make_cvusa, "vigor": make_vigor}[layout](tmp_path / layout)
    ds = load_dataset(layout, root, **({"split": ("train", "test")} if layout == "vigor" else {}))
    cfg, runner = _cfg(), RowRunner(tmp_path / "rows")
    dataset = f"tiny-{layout}"  # this test's own records
    path = ab.run_pairs_teacher_row(ds, cfg, tmp_path / "out", runner, dataset)
    teacher, _ = load_trained_model(path)
    assert set(teacher.views) == {"panorama", "satellite"} and len(teacher.branches) == 1  # one shared encoder
    t_row = runner.load("B2/teacher")
    split = "val" if layout == "cvusa" else "test"
    got = t_row["results"]["directions"]["panorama→satellite"]
    assert t_row["config"]["split"] == split and 0 <= got["R@1"] <= got["R@10"] <= 100 and "AP" not in got
    assert ("hit_rate" in got) == (layout == "vigor")
    assert got["queries"] == len(ds.select(view="panorama", split=split))

    name = "B2/student-mobilenetv3_small_050-plain"
    row = ab.run_student_row(name, {"backbone": "mobilenetv3_small_050", "perturb": False}, teacher, ds, cfg,
                             tmp_path / "out", runner, dataset, ab.checkpoint_id(path), {},
                             views=ab.PAIRS_VIEWS, directions=ab.PAIRS_DIRECTIONS, split=split)
    s = row["results"]["directions"]["panorama→satellite"]
    assert 0 <= s["R@1"] <= 100 and ("hit_rate" in s) == (layout == "vigor")
    assert all(row["results"]["cost"][k] > 0 for k in ("params", "gflops", "ms_per_image"))
    recs = [r for r in read_records() if r["task"] == "distillation" and r["dataset"] == dataset]
    assert {r["model"] for r in recs} == {"teacher", "student-mobilenetv3_small_050"}
    assert {r["protocol"] for r in recs} == {"vigor-hit" if layout == "vigor" else "cvusa"}
    assert {r["split"] for r in recs} == {split} and all("R@1" in r["metrics"] for r in recs)
    for r, epochs in ((t_row, cfg["epochs"]), (row, cfg["student_epochs"])):  # a cap's cut is part of the row
        assert r["results"]["cut_by_budget"] is False and r["results"]["epochs_done"] == epochs


def test_pairs_teacher_refuses_a_root_without_train_pairs(tmp_path):
    ds = load_dataset("cvusa", make_cvusa(tmp_path / "cvusa"), splits=("val",))
    with pytest.raises(ValueError, match="no train pair has every view"):
        ab.run_pairs_teacher_row(ds, _cfg(), tmp_path / "out", RowRunner(tmp_path / "rows"), "cvusa")


def test_pairs_rows_are_named_apart_from_part_b():
    rows = ab.part_b_rows(["m"], [False], part="B2")
    assert list(rows) == ["B2/student-m-plain"]
    assert ab.selected({"B/teacher": 1, **ab.part_b_rows(["m"], [False])}, ["B2"]) == []
