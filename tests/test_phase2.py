"""Notebook 04's helpers: chance references, query sets per condition, the comparison table."""
import numpy as np
import pytest

from conftest import make_image, vpr_name
from geolib.apps import geoclass as phase2


def test_chance_recall_hand_made_and_brute_force():
    db = np.array([[0.0, 0.0], [25.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    q = np.array([[0.0, 0.0], [1000.0, 0.0]])  # 2 positives (25 m inclusive); no positive
    assert phase2.chance_recall(q, db) == pytest.approx(100 * (2 / 4 + 0) / 2)
    rng = np.random.default_rng(0)
    db, q = rng.uniform(0, 300, (50, 2)), rng.uniform(0, 300, (20, 2))
    brute = np.mean([np.mean([np.hypot(*(a - b)) <= 25 for b in db]) for a in q]) * 100
    assert phase2.chance_recall(q, db) == pytest.approx(brute)
    assert phase2.chance_lr(q, db) == pytest.approx(brute)


def test_comparison_table_keeps_last_and_reads_both_protocols():
    recs = [
        {"task": "vpr", "dataset": "d", "protocol": "vpr-25m", "model": "cosplace", "query_view": "query-day",
         "metrics": {"R@1": 10.0, "R@5": 20.0}},
        {"task": "vpr", "dataset": "d", "protocol": "vpr-25m", "model": "cosplace", "query_view": "query-day",
         "metrics": {"R@1": 30.0, "R@5": 40.0, "memory_mb": 1.5}},
        {"task": "vpr", "dataset": "d", "protocol": "dc-lr-25m", "model": "dc-aamc", "query_view": "query-day",
         "metrics": {"LR@1": 5.0, "LR@5": 9.0}},
        {"task": "vpr", "dataset": "other", "protocol": "vpr-25m", "model": "x", "query_view": "query-day",
         "metrics": {"R@1": 1.0}},
    ]
    t = phase2.comparison_table(recs, "d")
    assert t["model"].tolist() == ["cosplace", "dc-aamc"]
    assert t["@1"].tolist() == [30.0, 5.0] and t["database needed"].tolist() == [True, False]
    assert phase2.query_view("night") == "query-night"


# --------------------------------------------------------------------------- query folders, evaluate-only

def _split(root, split, folders):
    make_image(root / split / "database" / vpr_name(500000, 4600000, heading=0), seed=1)
    for i, f in enumerate(folders):
        make_image(root / split / f / vpr_name(500001 + i, 4600000), seed=2 + i)
    return root


def test_resolve_query_folders_single_several_and_missing(tmp_path, capsys):
    tokyo = _split(tmp_path / "tokyo", "test", ["queries"])
    # a release's one query folder mixes conditions (Tokyo-XS: day, sunset, night): it is "all"
    assert phase2.resolve_query_folders(tokyo, "test") == {"all": "queries"}
    assert "query folder 'queries' (the only one beside database/)" in capsys.readouterr().out
    sf = _split(tmp_path / "sf", "test", ["queries_v1"])
    assert phase2.resolve_query_folders(sf, "test") == {"all": "queries_v1"}
    assert phase2.resolve_query_folders(sf, "test", "queries_v1") == {"all": "queries_v1"}
    world = _split(tmp_path / "world", "val", ["queries", "queries_night", "queries_fog", "queries_rain"])
    assert phase2.resolve_query_folders(world, "val") == {"day": "queries", "fog": "queries_fog",
                                                           "night": "queries_night", "rain": "queries_rain"}
    assert "queries_night → night" in capsys.readouterr().out
    assert phase2.resolve_query_folders(world, "val", "queries_night") == {"night": "queries_night"}
    with pytest.raises(FileNotFoundError) as err:
        phase2.resolve_query_folders(sf, "test", {"day": "queries"})
    msg = str(err.value)
    assert "no query folder 'queries'" in msg and "['queries_v1']" in msg and "-p query_folder NAME" in msg
    with pytest.raises(FileNotFoundError, match=r"no 'val' split; .* holds \['test'\]"):
        phase2.resolve_query_folders(tokyo, "val")


def _saved_models(tmp_path):
    """A toy root with its train split, a CosPlace and a D&C model saved from it (a step each)."""
    from geolib.training import cosplace as C, dc as D
    from phase2_toy import build_toy_vpr

    root = build_toy_vpr(tmp_path / "world", n_cells=4, train_per_cell=4)
    items = C.load_train_items(root)
    tiny = dict(backbone="resnet10t", image_size=32, out_dim=16, batch_size=4, epochs=1, iterations_per_epoch=1,
                min_images_per_class=2, N=1)
    C.train_cosplace(items, C.CosPlaceConfig(**tiny, L=1, groups_num=1), tmp_path / "cp", progress=False)
    D.train_dc(items, D.dc_config("aamc", **tiny), tmp_path / "dc", progress=False)
    return root


def test_evaluate_saved_models_on_a_test_only_root_and_on_val(tmp_path):
    import shutil

    import torch

    from geolib.training import cosplace as C, dc as D

    torch.set_num_threads(1)
    root = _saved_models(tmp_path)
    tokyo = tmp_path / "tokyo"  # Tokyo-XS's layout: test/database and test/queries only
    shutil.copytree(root / "test", tokyo / "test")
    val = tmp_path / "valonly"  # a val split with SF-XS's query folder name
    shutil.copytree(root / "test" / "database", val / "val" / "database")
    shutil.copytree(root / "test" / "queries", val / "val" / "queries_v1")
    shutil.rmtree(root)

    res = phase2.evaluate_vpr(tmp_path / "cp", tokyo, "test")
    assert list(res) == ["all"] and set(res["all"][0].metrics) == {"R@1", "R@5", "R@10", "R@20"}
    model = C.load_cosplace(tmp_path / "cp")
    db, q = phase2.split_sets(tokyo, "test", "queries")
    direct = phase2.retrieve_conditions(model, db, q, 32)["all"][0]  # the loaded model, evaluated in memory
    assert res["all"][0].metrics == direct.metrics and res["all"][1] > 0
    on_val = phase2.evaluate_vpr(model, val, "val")
    assert on_val["all"][0].metrics == res["all"][0].metrics  # the same images under another split name

    loc = phase2.evaluate_localization(tmp_path / "dc", val, "val")
    assert set(loc["all"][0].metrics) == {"LR@1", "LR@5", "LR@10", "LR@20"}
    direct = D.evaluate_dc(D.load_dc(tmp_path / "dc"), q["all"])
    assert loc["all"][0].metrics == direct.metrics
    np.testing.assert_array_equal(loc["all"][0].classes, direct.classes)
    with pytest.raises(FileNotFoundError, match="-p query_folder"):
        phase2.evaluate_vpr(model, tokyo, "test", {"day": "queries_v1"})


def test_evaluations_cap_items_in_a_dry_run(tmp_path, monkeypatch):
    from geolib import dryrun
    from geolib.training import cosplace as C

    db = [C.ImageItem(tmp_path / f"d{i}.png", "database", "test", "gallery") for i in range(40)]
    q = [C.ImageItem(tmp_path / f"q{i}.png", "query", "test", "query") for i in range(30)]
    embedded = []
    monkeypatch.setattr("geolib.training.groups.embed_paths",
                        lambda model, paths, *a, **k: embedded.append(len(paths)) or np.eye(len(paths), 4, dtype=np.float32))
    monkeypatch.setattr(C, "retrieve", lambda *a, **k: None)
    monkeypatch.setenv(dryrun.ENV, "1")
    phase2.retrieve_conditions(None, db, {"day": q}, 32)
    assert embedded == [dryrun.ITEMS, dryrun.ITEMS]


# --------------------------------------------------------------------------- the hierarchical classifier

def _street_items(tmp_path):
    """Street images: train places 0-5 in regions 0/1 (4 images each), test places 10-13 in regions
    2/3 (a gallery and a query image each)."""
    from geolib.data.datasets import ImageItem

    items = []
    for p in range(6):
        for j in range(4):
            items.append(ImageItem(make_image(tmp_path / "train" / f"{p}_{j}.png", seed=10 * p + j, size=(32, 32)),
                                   "street", "train", "train", p, meta={"region": p // 3}))
    for p in range(10, 14):
        for role in ("gallery", "query"):
            items.append(ImageItem(make_image(tmp_path / role / f"{p}.png", seed=p, size=(32, 32)),
                                   "street", "test", role, p, meta={"region": 2 + (p - 10) // 2}))
    items.append(ImageItem(tmp_path / "drone.png", "drone", "train", "train", 0, meta={"region": 0}))  # not street
    return items


def test_run_hierarchical_records_both_protocols_and_reuses_the_classifier(tmp_path, one_torch_thread, capsys):
    from geolib.profiles import resolve
    from geolib.records import read_records

    p1 = resolve("smoke", "phase1")
    encoder = phase2.phase1_encoder(tmp_path / "no-such" / "best", p1, seed=0)
    assert (encoder.name, encoder.id, encoder.checkpoint) == ("phase1-random-init", "random-init-0", None)
    items = _street_items(tmp_path)
    kwargs = dict(head="softmax", place_mode="conditioned", epochs=1, seed=0, device="cpu",
                  saved=tmp_path / "saved", source="04_hier", profile="smoke", dataset="toy-u1652",
                  root=tmp_path, notes={"skipped": {}})
    run = phase2.run_hierarchical(items, encoder, **kwargs)
    assert list(run.results) == ["closed-set", "open-set"]
    closed, opened = run.records
    assert (closed["protocol"], closed["split"], opened["split"]) == ("closed-set", "train", "test")
    assert closed["config"]["regions"] == 2 and closed["config"]["places"] == 6 and closed["config"]["regions_scored"] == 2
    assert closed["config"]["test_images"] == 6  # one of each place's 4 images held out
    assert opened["config"]["regions_scored"] == 2 and opened["metrics"]["region_chance"] == pytest.approx(50.0)
    assert closed["config"]["encoder"] == "phase1-random-init" and closed["config"]["skipped"] == {}
    assert run.table().shape == (5, 2)
    assert phase2.region_confusion_figure(run.results).axes[0].get_title().startswith("region confusion · closed-set")

    again = phase2.run_hierarchical(items, encoder, **kwargs)
    assert "hierarchical: loading" in capsys.readouterr().out
    assert again.results["closed-set"].metrics == run.results["closed-set"].metrics
    assert len(read_records("smoke", "04_hier")) == 4

    with pytest.raises(ValueError, match="no street image in the train split"):
        phase2.run_hierarchical([it for it in items if it.split == "test"], encoder, **kwargs)


def test_prepare_vpr_checks_and_loads_every_set_before_training(tmp_path, capsys):
    from release_trees import make_sf_xs, make_tokyo_xs

    sf, tokyo = make_sf_xs(tmp_path / "sf_xs"), make_tokyo_xs(tmp_path / "tokyo_xs")
    data = phase2.prepare_vpr("smoke", "smoke", 0, sf, {"tokyo-xs": tokyo}, saved=tmp_path / "saved")
    assert data.root == sf and data.dataset == "sf_xs" and len(data.train_items) == 20
    assert data.eval_splits == ["val", "test"] and list(data.test_sets) == ["tokyo-xs"]
    assert data.conditions == ["all"] and data.database and data.queries["all"]
    # a test-only root trains nothing: the fallback names the saved models it will use instead
    only = phase2.prepare_vpr("smoke", "smoke", 0, tokyo, {}, saved=tmp_path / "saved")
    assert only.train_items is None and only.eval_splits == ["test"]
    assert "no train split" in str(only.needs.to_dict())
    # a test-only set without queries fails before any training, naming its split folder
    import shutil

    shutil.rmtree(tokyo / "test" / "queries")
    with pytest.raises(FileNotFoundError, match="no query folder"):
        phase2.prepare_vpr("smoke", "smoke", 0, sf, {"tokyo-xs": tokyo})
