"""Notebook 04's comparison pieces: the records one run writes, the D&C settings, the course sets and
the table order. Models are replaced by stubs where only the bookkeeping is under test."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geolib.apps import geoclass as phase2, vpr_compare as V
from geolib.data.datasets import ImageItem
from geolib.training.needs import Needs
from geolib.records import read_records


@dataclass
class _Res:
    metrics: dict


def _items(role: str, xs: list[float]) -> list[ImageItem]:
    return [ImageItem(Path(f"/nowhere/{role}{i}.png"), role, "test", role, utm_east=500000.0 + x,
                      utm_north=4600000.0) for i, x in enumerate(xs)]


def _recorder(source: str) -> V.Recorder:
    """Each test writes its own source: the outputs root is shared by the session."""
    return V.Recorder(source, "smoke", 3, "toy", notes={"root": "/data/toy", "dry_run": False})


def test_recorder_writes_chance_and_per_condition_records():
    rec = _recorder("04_records")
    db = _items("gallery", [0, 10, 100, 200])
    queries = {"day": _items("query", [0]), "night": _items("query", [1000])}
    rec.chance_retrieval(db, queries)
    rec.retrieval("cosplace", {"day": (_Res({"R@1": 40.0}), 12.5)}, {"train_s": 3.0}, {"M": 10})
    rec.localization("dc-aamc", {"night": (_Res({"LR@1": 5.0}), 7.0)}, {}, {"classes": 4})
    rec.chance_cells(np.array([[500000.0, 4600000.0], [500500.0, 4600000.0]]), queries)
    got = read_records("smoke", "04_records")
    chance = {(r["protocol"], r["query_view"]): r["metrics"] for r in got if r["model"] == "chance"}
    assert chance[("vpr-25m", "query-day")]["R@1"] == pytest.approx(50.0)   # 2 of 4 within 25 m
    assert chance[("vpr-25m", "query-night")]["R@1"] == 0.0
    assert chance[("dc-lr-25m", "query-day")]["LR@1"] == pytest.approx(50.0)
    cp = next(r for r in got if r["model"] == "cosplace")
    assert cp["metrics"] == {"R@1": 40.0, "train_s": 3.0, "queries_per_s": 12.5}
    assert cp["config"] == {"M": 10, "root": "/data/toy", "dry_run": False} and cp["seed"] == 3
    dc = next(r for r in got if r["model"] == "dc-aamc")
    assert dc["protocol"] == "dc-lr-25m" and dc["query_view"] == "query-night" and dc["config"] == {"classes": 4}
    assert V.chance_by_view(got, "toy")[("vpr-25m", "query-day")] == pytest.approx(50.0)
    assert V.chance_by_view(got, "other") == {}


def test_dc_configs_fall_back_to_cosplace_settings():
    cfg = {"methods": ["dc"], "dc_heads": ["aamc", "lmcc"], "dc_M": 30, "dc_N": 2, "backbone": "resnet10t",
           "dc_backbone": None, "pretrained": False, "image_size": 32, "out_dim": 16, "min_images_per_class": 2,
           "dc_min_images_per_class": None, "epochs": 3, "dc_epochs": 5, "batch_size": 4,
           "iterations_per_epoch": 7, "dc_iterations_per_epoch": None, "backbone_lr": 1e-4, "classifier_lr": 1e-2,
           "seed": 1, "stage": -1, "dc_options": {"aggregation": "mixvpr"}}
    out = V.dc_configs(cfg)
    assert list(out) == ["dc-aamc", "dc-lmcc"]
    a = out["dc-aamc"]
    assert (a.M, a.N, a.groups_num, a.backbone, a.epochs, a.iterations_per_epoch, a.min_images_per_class,
            a.aggregation, a.seed) == (30, 2, 4, "resnet10t", 5, 7, 2, "mixvpr", 1)
    assert a.head != out["dc-lmcc"].head
    assert V.dc_configs({**cfg, "methods": ["cosplace"]}) == {}
    assert list(V.cosplace_variants({"methods": ["cosplace-mixvpr"], "mixvpr": {"out_rows": 2}})) == ["cosplace-mixvpr"]


def test_without_train_split_or_saved_model_each_part_is_skipped(tmp_path):
    needs = Needs(log=lambda _: None)
    cfg = {"methods": ["cosplace", "cosplace-mixvpr", "dc"], "mixvpr": {}, "seed": 0, "image_size": 32,
           "backbone": "resnet10t", "out_dim": 16, "pretrained": False, "dc_heads": ["aamc"], "dc_M": 20, "dc_N": 1,
           "min_images_per_class": 1, "epochs": 1, "batch_size": 2, "iterations_per_epoch": 1, "backbone_lr": 1e-4,
           "classifier_lr": 1e-2, "dc_train": "train"}
    assert V.run_cosplace(cfg, None, [], {}, tmp_path, _recorder("04_skip"), needs) == ({}, {})
    assert V.run_dc(cfg, None, {}, tmp_path, _recorder("04_skip"), needs) == ({}, {})
    assert set(needs.skipped) == {"cosplace", "cosplace-mixvpr", "dc-aamc"}
    assert "no train split in /data/toy" in needs.skipped["dc-aamc"] and str(tmp_path / "dc-aamc") in needs.skipped["dc-aamc"]
    assert read_records("smoke", "04_skip") == []


def test_course_sets_cover_other_splits_and_test_only_roots(tmp_path, monkeypatch):
    tokyo = tmp_path / "tokyo"
    (tokyo / "test" / "database").mkdir(parents=True)
    calls = []
    monkeypatch.setattr(phase2, "evaluate_vpr", lambda m, root, split, **k: calls.append((m, Path(root).name, split))
                        or {"all": (_Res({"R@1": 1.0, "R@5": 2.0}), 1.0)})
    monkeypatch.setattr(phase2, "evaluate_localization", lambda t, root, split, **k: calls.append((t, Path(root).name, split))
                        or {"all": (_Res({"LR@1": 3.0, "LR@5": 4.0}), 1.0)})

    @dataclass
    class _Test:
        root: Path

    sets = V.evaluate_course_sets(_recorder("04_course"), {"cosplace": "CP"}, {"dc-aamc": "DC"}, tmp_path / "world",
                                  ["val", "test"], {"tokyo-xs": _Test(tokyo)}, {"M": 10})
    assert sets == [("toy", "val"), ("toy", "test"), ("tokyo-xs", "test")]
    assert calls == [("CP", "world", "val"), ("DC", "world", "val"), ("CP", "tokyo", "test"), ("DC", "tokyo", "test")]
    recs = read_records("smoke", "04_course")
    assert {(r["dataset"], r["split"], r["model"]) for r in recs} == {
        ("toy", "val", "cosplace"), ("toy", "val", "dc-aamc"), ("tokyo-xs", "test", "cosplace"),
        ("tokyo-xs", "test", "dc-aamc")}
    table = phase2.course_table(recs, ["cosplace", "dc-aamc"], sets)
    assert table[["dataset", "split"]].values.tolist() == [["toy", "val"], ["tokyo-xs", "test"]]
    assert table["dc-aamc LR@5"].tolist() == [4.0, 4.0]


def test_sorted_comparison_puts_references_first_then_others_alphabetically():
    rows = [("dc-lmcc", "dc-lr-25m", "query-day"), ("chance", "dc-lr-25m", "query-day"),
            ("dc-aamc", "dc-lr-25m", "query-day"), ("cosplace-mixvpr", "vpr-25m", "query-night"),
            ("cosplace-mixvpr", "vpr-25m", "query-day"), ("cosplace", "vpr-25m", "query-day"),
            ("zeta", "vpr-25m", "query-day"), ("chance", "vpr-25m", "query-day"),
            ("cosplace-untrained", "vpr-25m", "query-day")]
    table = pd.DataFrame([{"model": m, "protocol": p, "query": q} for m, p, q in rows])
    out = V.sorted_comparison(table)
    assert list(zip(out.model, out["query"])) == [
        ("chance", "query-day"), ("dc-aamc", "query-day"), ("dc-lmcc", "query-day"),
        ("chance", "query-day"), ("cosplace-untrained", "query-day"), ("cosplace", "query-day"),
        ("cosplace-mixvpr", "query-day"), ("cosplace-mixvpr", "query-night"), ("zeta", "query-day")]
    assert V.sorted_comparison(pd.DataFrame()).empty


def test_recall_figure_one_panel_per_condition_with_chance():
    curves = V.curves_of({"cosplace": {"day": (_Res({"R@1": 10.0, "R@5": 30.0, "R@10": 50.0}), 1.0)}},
                         {"dc-aamc": {"day": (_Res({"LR@1": 5.0, "LR@5": 8.0}), 1.0),
                                      "night": (_Res({"LR@1": 2.0}), 1.0)}})
    assert curves == {"cosplace": {"day": {"R@1": 10.0, "R@5": 30.0, "R@10": 50.0}},
                      "dc-aamc": {"day": {"LR@1": 5.0, "LR@5": 8.0}, "night": {"LR@1": 2.0}}}
    fig = V.recall_figure(curves, ["day", "night"], {("vpr-25m", "query-day"): 4.0, ("dc-lr-25m", "query-night"): 1.0})
    day, night = fig.axes[:2]
    assert [list(line.get_xdata()) for line in day.get_lines()[:2]] == [[1, 5, 10], [1, 5]]
    assert [line.get_ydata()[0] for line in day.get_lines()[2:]] == [4.0]
    assert len(night.get_lines()[0].get_xdata()) == 0  # no night run: an empty line keeps the colours
    assert [line.get_ydata()[0] for line in night.get_lines()[1:]] == [2.0, 1.0]


def test_pick_strips_shows_one_correct_then_wrong():
    paths = [Path(f"q{i}_{w}.png") for i, w in enumerate(["correct", "correct", "wrong", "wrong", "wrong"])]
    assert [p.name for p in V.pick_strips(paths)] == ["q0_correct.png", "q2_wrong.png", "q3_wrong.png"]
    assert [p.name for p in V.pick_strips(paths[2:], 2)] == ["q2_wrong.png", "q3_wrong.png"]


def test_observations_from_records():
    def rec(model, protocol, view, metrics, config=None):
        return {"task": "vpr", "dataset": "toy", "split": "test", "protocol": protocol, "model": model,
                "query_view": view, "metrics": metrics, "config": config or {}}

    falling = {"loss_by_epoch": [3.0, 2.5, 2.0]}
    records = [rec("chance", "vpr-25m", "query-day", {"R@1": 2.0}),
               rec("cosplace", "vpr-25m", "query-day", {"R@1": 40.0, "memory_mb": 0.5, "queries_per_s": 10.0}, falling),
               rec("cosplace", "vpr-25m", "query-night", {"R@1": 25.0, "memory_mb": 0.5, "queries_per_s": 30.0}, falling),
               rec("cosplace-mixvpr", "vpr-25m", "query-day", {"R@1": 35.0}, {"loss_by_epoch": [2.0, 2.2]}),
               rec("dc-aamc", "dc-lr-25m", "query-day", {"LR@1": 5.0})]
    found = {f.claim: f for f in V.observations(records, "toy", ["day", "night"])}
    assert found["cosplace R@1 on night queries (vpr-25m)"].value == 25.0
    assert found["dc-aamc LR@1 on day queries (dc-lr-25m)"].value == 5.0
    assert found["MixVPR minus GeM, R@1 on day queries"].value == -5.0
    assert found["MixVPR minus GeM, R@1 on day queries"].note == "GeM ahead"
    assert found["domain shift of cosplace: R@1 on night minus day queries"].value == -15.0
    assert found["cosplace queries per second (median over conditions)"].value == 20.0
    assert found["cosplace training loss change over the last epoch"].value == pytest.approx(-0.5)
    assert "cosplace-mixvpr training loss change over the last epoch" not in found  # it rose
    assert not any(c.startswith("chance") for c in found) and all(f.target is None for f in found.values())
    assert V.observations(records, "other", ["day"]) == []


def test_select_dc_chooses_cell_side_and_head_on_val_only(tmp_path, monkeypatch):
    """Every (dc_M, head) of the grid trains on the val area's database and is scored on val queries;
    the best val LR@1 wins; the test split is never read; no grid means no selection."""
    from geolib.profiles import resolve
    import geolib.training.dc as dc

    root = tmp_path / "vpr"
    (root / "val").mkdir(parents=True)
    read: list[str] = []
    db, qs = _items("gallery", [0, 50]), {"day": _items("query", [1]), "night": _items("query", [2])}

    def split_sets(r, split, *a, **k):
        read.append(split)
        return db, qs

    trained: list[tuple] = []

    class _Training:
        def __init__(self, cfg):
            self.cfg = cfg
            self.division = type("D", (), {"class_ids": [1, 2, 3]})()

    def fake_train(items, cfg, out_dir, progress=True):
        assert items is db  # test-database mode: the val area's database
        trained.append((cfg.M, cfg.head))
        return _Training(cfg)

    score = {(15.0, "arcface"): 10.0, (15.0, "cosface"): 30.0, (30.0, "arcface"): 20.0, (30.0, "cosface"): 30.0}
    monkeypatch.setattr(phase2, "split_sets", split_sets)
    monkeypatch.setattr(dc, "load_or_train_dc", fake_train)
    monkeypatch.setattr(phase2, "localize_conditions", lambda t, q, size, device: {
        c: (_Res({"LR@1": score[(float(t.cfg.M), t.cfg.head)], "LR@5": 50.0}), 1.0) for c in q})
    cfg = resolve("smoke", "phase2", device="cpu")
    cfg["dc_select"] = {"dc_M": [15, 30], "dc_heads": ["aamc", "lmcc"]}
    chosen, table = V.select_dc(cfg, root, None, tmp_path / "saved", _recorder("04_select"))
    assert read == ["val"] and len(trained) == 4
    assert chosen == {"dc_M": 15, "dc_heads": ["lmcc"]}  # the first of the tied best
    assert table.chosen.sum() == 1 and list(table.columns[:3]) == ["dc_M", "dc_heads", "cells"]
    recs = [r for r in read_records("smoke", "04_select") if r["model"].startswith("dc-")]
    assert {r["split"] for r in recs} == {"val"} and {r["query_view"] for r in recs} == {"query-day"}
    trained.clear()
    cfg["dc_select"] = {"dc_M": [30], "dc_iterations_per_epoch": [3]}  # a proxy budget; the heads: the profile's
    chosen, table = V.select_dc(cfg, root, None, tmp_path / "saved", _recorder("04_select"))
    assert chosen == {"dc_M": 30, "dc_heads": ["aamc"]} and trained == [(30, "arcface")]
    cfg["dc_select"] = None
    assert V.select_dc(cfg, root, None, tmp_path / "saved", _recorder("04_select"))[0] == {}
