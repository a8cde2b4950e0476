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


def _row(name: str, r1: float, gflops: float, params: int, direction: str = "street→drone") -> dict:
    return {"name": name, "results": {"directions": {direction: {"R@1": r1, "R@5": r1 + 5, "queries": 200}},
                                      "cost": {"params": params, "gflops": gflops, "ms_per_image": 1.0}}}


def test_notebook_steps_draw_both_figures_and_write_findings_from_the_records(tmp_path):
    import matplotlib
    matplotlib.use("Agg")

    table_a = ab.results_table([_row("A/full", 40.0, 0.04, 9_000_000), _row("A/no-l2l", 30.0, 0.03, 8_000_000)])
    part_b = {"B/teacher": _row("B/teacher", 43.0, 0.04, 9_000_000),
              "B/student-efficientnet_lite0-b5@32-plain": _row("B/student-efficientnet_lite0-b5@32-plain", 41.0, 0.004, 300_000)}
    table_b = ab.results_table(list(part_b.values()), reference=part_b["B/teacher"])
    assert table_b.gflops_ratio.iloc[1] == pytest.approx(10.0)
    empty = ab.results_table([])
    fig, bars = ab.cost_figures(table_a, table_b, empty, empty, tmp_path)
    assert (tmp_path / "03_pareto.png").stat().st_size > 0 and (tmp_path / "03_parts.png").stat().st_size > 0
    assert len(fig.axes[0].collections) == 4  # one series per part, empty ones kept for the legend
    assert [ax.get_title() for ax in bars.axes] == [ab.FIGURE_TITLES["A"], ab.FIGURE_TITLES["B"]]  # no empty panels
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert labels == {"full", "no-l2l", "teacher", "student-efficientnet_lite0-b5@32-plain"}

    def record(row: str, model: str, r1: float, gflops: float, params: int) -> dict:
        return {"task": "distillation", "dataset": "w", "model": model, "query_view": "street", "gallery_view": "drone",
                "metrics": {"R@1": r1, "gflops": gflops, "params": params}, "config": {"row": row, "n_queries": 200},
                "created": "2026-12-01T00:00:00"}

    records = [record("B/teacher", "teacher", 43.0, 0.04, 9_000_000),
               record("B/student-efficientnet_lite0-b5@32-plain", "student-efficientnet_lite0-b5@32", 41.0, 0.004, 300_000)]
    text = ab.findings_text(records, RowRunner(tmp_path / "rows"), "default", "gem", True, table_a, part_b, {},
                            empty, "w", "pairs")
    assert "**Part A**" in text and "no-l2l" in text and "-10.0 points" in text
    assert "**Part B (Distill4Geo, street→drone)**" in text and "Part B on the pairs" not in text
    assert "R@1 points lost" in text and "2.0 points" in text


def test_student_specs_carry_their_own_input_size():
    assert ab.student_spec("efficientnet_lite0-b11@32") == ("efficientnet_lite0-b11", 32)
    assert ab.student_spec("mobilenetv3_small_050") == ("mobilenetv3_small_050", None)
    rows = ab.part_b_rows(["efficientnet_lite0-b5@24"], [True])
    assert rows == {"B/student-efficientnet_lite0-b5@24-mp": {"backbone": "efficientnet_lite0-b5", "image_size": 24,
                                                             "perturb": True}}
    with pytest.raises(ValueError, match="<backbone>@<pixels>"):
        ab.student_spec("efficientnet_lite0@big")


# --------------------------------------------------------------------------- part A at its own input size

LITE0_TINY = {"backbone": "efficientnet-lite0", "pretrained": True, "fusion_dim": 16, "embed_dim": 16}


def _lite0_phase1(size: int) -> dict:
    return {**resolve("smoke", "phase1", device="cpu"), "image_size": size, "model_options": LITE0_TINY,
            "pooling": "gem"}


def test_part_a_grids_are_read_from_the_rows_own_model():
    at48 = {g["part"]: g for g in ab.part_a_grids(_lite0_phase1(48))}
    # Lite0 at 48 px: strides 4..32 give 12, 6, 3 and a single stride-32 token
    assert [at48[f"backbone stage {i}"]["grid"] for i in (1, 2, 3, 4)] == ["12x12", "6x6", "3x3", "1x1"]
    assert at48["backbone stage 4"]["channels"] == 320 and at48["fusion output"]["grid"] == "3x3"
    assert ab.single_token_parts(list(at48.values())) == ["L2L on stage 4 (keys: stage 3)"]

    at96 = ab.part_a_grids(_lite0_phase1(96))
    assert [g["grid"] for g in at96 if g["part"].startswith("L2L")] == ["12x12", "6x6", "3x3"]
    assert ab.single_token_parts(at96) == []
    # without fusion the pooling reads the last stage; without L2L no attention is reported
    bare = {g["part"]: g for g in ab.part_a_grids(_lite0_phase1(96), {"fusion": False, "l2l": False,
                                                                      "pooling": "attention"})}
    assert bare["pooling (attention)"]["grid"] == "3x3" and bare["pooling (attention)"]["tokens"] == 9
    assert not any(p.startswith(("L2L", "fusion")) for p in bare)


def test_part_a_rows_take_the_ablation_image_size():
    cfg = {"phase1": _lite0_phase1(48), "ablation_image_size": None}
    assert ab.part_a_phase1(cfg)["image_size"] == 48
    assert ab.part_a_phase1({**cfg, "ablation_image_size": 96})["image_size"] == 96
    assert cfg["phase1"]["image_size"] == 48  # the profile's phase1 section is left as it was
    # the default profile's rows: every part notebook 03 ablates sees more than one token
    default = {**resolve("default", "distill", device="cpu"), "phase1": resolve("default", "phase1", device="cpu")}
    assert default["ablation_image_size"] > default["phase1"]["image_size"]
    for name, changes in ab.part_a_rows(default["phase1"]).items():
        assert ab.single_token_parts(ab.part_a_grids(ab.part_a_phase1(default), changes)) == [], name


def test_a_row_trains_and_evaluates_at_the_ablation_image_size(tmp_path):
    from conftest import build_crossview_tree

    ds = load_dataset("university1652", build_crossview_tree(tmp_path / "u", distractors=0))
    cfg = {**_cfg(), "ablation_image_size": 64, "profile": "smoke"}
    row = ab.run_phase1_row("A/full", {}, ds, cfg, tmp_path / "03", RowRunner(tmp_path / "rows"), "tiny-u1652")
    assert row["config"]["image_size"] == 64
    model, _ = load_trained_model(row["results"]["checkpoint"])
    assert model.img_size == 64 and row["results"]["directions"]["street→drone"]["queries"] > 0
