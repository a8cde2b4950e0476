import numpy as np
import pytest
import torch
from torch import nn

from geolib.apps import geoclass
from geolib.training import cosplace
from geolib.training import dc as dc
from geolib.training.cosplace import class_and_group, divide
from geolib.records import read_records
from geolib.training.groups import ClassHead
from phase2_toy import build_toy_vpr

torch.set_num_threads(1)


def test_cells_and_groups_hand_checked():
    # M=20, N=2: class (⌊e/20⌋·20, ⌊n/20⌋·20), group ((e_r mod 40)/20, (n_r mod 40)/20), no heading
    east = np.array([500012.3, 500039.99, 500040.0, 396527.0])
    north = np.array([4600005.0, 4600101.0, 4600020.0, 4983805.5])
    classes, groups = class_and_group(east, north, None, M=20, N=2)
    np.testing.assert_array_equal(classes, [[500000, 4600000], [500020, 4600100], [500040, 4600020],
                                            [396520, 4983800]])
    np.testing.assert_array_equal(groups, [[0, 0], [1, 1], [0, 1], [0, 0]])
    d = divide(east, north, None, M=20, N=2, min_images_per_class=1)
    np.testing.assert_array_equal(d.centres(), d.class_ids + 10.0)
    assert d.class_ids.shape[1] == 2 and d.alpha is None and d.missing_heading == 0


def test_dc_config_defaults():
    cfg = dc.dc_config()
    assert (cfg.M, cfg.N, cfg.groups_num, cfg.head, cfg.scale, cfg.margin) == (20, 2, 4, "arcface", 100.0, 0.2)
    lmcc = dc.dc_config("lmcc", N=3)
    assert (lmcc.head, lmcc.scale, lmcc.margin, lmcc.groups_num) == ("cosface", 30.0, 0.40, 9)
    assert dc.dc_config("ce").head == "softmax"
    with pytest.raises(ValueError, match="unknown head"):
        dc.dc_config("svm")


def test_lr_at_n_hand_made():
    query = np.array([[0.0, 0.0], [100.0, 100.0], [50.0, 50.0]])
    centres = np.array([
        [[25.0, 0.0], [500.0, 0.0], [0.0, 0.0]],  # first prediction exactly 25 m away: a hit at N=1
        [[0.0, 0.0], [110.0, 110.0], [100.0, 100.0]],  # second is 14.1 m away: hit from N=2
        [[0.0, 0.0], [90.0, 90.0], [0.0, 100.0]],  # never within 25 m
    ])
    out = dc.lr_at_n(dc.cells_within(query, centres), ns=(1, 2, 3))
    assert out == pytest.approx({"LR@1": 100 / 3, "LR@2": 200 / 3, "LR@3": 200 / 3})


def test_lr_at_n_matches_brute_force():
    rng = np.random.default_rng(5)
    query = rng.uniform(0, 300, (40, 2))
    centres = rng.uniform(0, 300, (40, 20, 2))
    out = dc.lr_at_n(dc.cells_within(query, centres))
    for n in (1, 5, 10, 20):
        hits = [any(np.hypot(*(centres[q, i] - query[q])) <= 25 for i in range(n)) for q in range(40)]
        assert out[f"LR@{n}"] == pytest.approx(100 * np.mean(hits))


def test_predict_cells_ranks_all_groups_together():
    east = np.array([0.0, 20.0, 40.0, 60.0])  # groups by (e_r mod 40)/20: 0, 1, 0, 1
    d = divide(east, np.zeros(4), None, M=20, N=2, min_images_per_class=1)
    assert [c.tolist() for c in d.classes_per_group] == [[0, 2], [1, 3]]
    heads = nn.ModuleList(ClassHead(2, 2, "cosface") for _ in range(2))
    with torch.no_grad():  # weights are (dim, classes) columns; the query (1, 0) scores cos = x
        heads[0].loss.W.copy_(torch.tensor([[0.2, 0.9], [1.0, 0.4]]))
        heads[1].loss.W.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    classes, centres = dc.predict_cells(np.array([[1.0, 0.0]]), heads, d, top=3)
    # cosines: class 0 → 0.196, class 2 → 0.914, class 1 → 1.0, class 3 → −1.0
    assert classes.tolist() == [[1, 2, 0]]
    np.testing.assert_array_equal(centres[0], [[30, 10], [50, 10], [10, 10]])


@pytest.mark.parametrize("head", ["aamc", "lmcc", "ce"])
def test_train_dc_beats_chance_without_a_database(tmp_path_factory, head):
    root = build_toy_vpr(tmp_path_factory.mktemp("dc") / "world")
    items = cosplace.load_train_items(root)
    cfg = dc.dc_config(head, backbone="resnet10t", image_size=32, out_dim=16, batch_size=6, epochs=2,
                       iterations_per_epoch=12, backbone_lr=1e-3, min_images_per_class=5, N=1)
    training = dc.train_dc(items, cfg, progress=False)
    assert training.division.summary()["classes"] == 6
    _, queries = geoclass.split_sets(root, "test", "queries", database=False)
    day = [q for q in queries["all"] if cosplace.query_condition(q) == "day"]
    result = dc.evaluate_dc(training, day)
    assert set(result.metrics) == {"LR@1", "LR@5", "LR@10", "LR@20"}
    # untrained heads score chance, 1/6 ≈ 16.7% (the night queries are a domain shift the toy
    # training has no augmentation for, so they are left out)
    assert result.metrics["LR@1"] >= 80.0
    assert result.centres.shape == (len(day), 6, 2)  # only 6 classes to rank
    assert result.classifier_bytes > 0


def test_write_dc_record():
    rec = dc.write_dc_record("04_phase2", {"LR@1": 40.0}, dataset="synthetic-default", profile="smoke", seed=0)
    assert (rec["task"], rec["protocol"], rec["gallery_view"], rec["model"]) == ("vpr", "dc-lr-25m", None, "dc-aamc")
    assert read_records("smoke", "04_phase2")[-1]["protocol"] == "dc-lr-25m"


def test_saved_dc_localizes_with_no_train_data(tmp_path, capsys):
    import shutil

    root = build_toy_vpr(tmp_path / "world")
    items = cosplace.load_train_items(root)
    cfg = dc.dc_config("aamc", backbone="resnet10t", image_size=32, out_dim=16, batch_size=6, epochs=1,
                       iterations_per_epoch=4, backbone_lr=1e-3, min_images_per_class=5)
    assert cfg.groups_num == 4  # N=2: all N² groups asked; the toy's cells fall in 2
    training = dc.train_dc(items, cfg, out_dir=tmp_path / "dc", progress=False)
    assert len(training.heads) == 2 and training.config["groups_used"] == 2
    assert "groups_num 4 asked, the data has 2 group(s)" in capsys.readouterr().out
    queries = geoclass.split_sets(root, "test", "queries", database=False)[1]["all"]
    before = dc.evaluate_dc(training, queries)
    shutil.rmtree(root / "train")  # nothing of the training data is left
    loaded = dc.load_dc(tmp_path / "dc")
    after = dc.evaluate_dc(loaded, queries)
    np.testing.assert_array_equal(before.classes, after.classes)
    np.testing.assert_array_equal(before.centres, after.centres)
    assert before.metrics == after.metrics and before.classifier_bytes == after.classifier_bytes
    np.testing.assert_array_equal(loaded.division.class_ids, training.division.class_ids)
    assert [c.tolist() for c in loaded.division.classes_per_group] == \
        [c.tolist() for c in training.division.classes_per_group[:2]]
    assert loaded.result.history == training.result.history and loaded.config["image_size"] == 32
    with pytest.raises(ValueError, match="holds a 'dc' model, not a 'cosplace' one"):
        cosplace.load_cosplace(tmp_path / "dc")


def test_load_or_train_dc_reuses_the_folder(tmp_path, capsys):
    root = build_toy_vpr(tmp_path / "world", n_cells=3, train_per_cell=6)
    items = cosplace.load_train_items(root)
    cfg = dc.dc_config("lmcc", backbone="resnet10t", image_size=32, out_dim=16, batch_size=4, epochs=1,
                       iterations_per_epoch=1, min_images_per_class=2, N=1)
    first = dc.load_or_train_dc(items, cfg, tmp_path / "dc", progress=False)
    again = dc.load_or_train_dc(items, cfg, tmp_path / "dc", progress=False)
    assert "loading" in capsys.readouterr().out and again.result.extra["loaded_from"]
    assert torch.equal(first.heads[0].loss.W, again.heads[0].loss.W)
    with pytest.raises(ValueError, match="other settings"):
        dc.load_or_train_dc(items, cosplace.CosPlaceConfig(**{**cfg.to_dict(), "M": 40}),
                            tmp_path / "dc", progress=False)


def test_train_dc_resumes_an_interrupted_run_exactly_and_refuses_other_settings(tmp_path):
    import shutil

    root = build_toy_vpr(tmp_path / "world", n_cells=3, train_per_cell=6)
    items = cosplace.load_train_items(root)
    cfg = dc.dc_config("aamc", backbone="resnet10t", image_size=32, out_dim=16, batch_size=4, epochs=2,
                       iterations_per_epoch=2, min_images_per_class=2, N=1)
    straight = dc.train_dc(items, cfg, out_dir=tmp_path / "straight", progress=False)
    assert [h["epoch"] for h in straight.result.history] == [1, 2]

    one = dc.dc_config("aamc", **{k: v for k, v in cfg.to_dict().items() if k not in ("head", "epochs")}, epochs=1)
    dc.train_dc(items, one, out_dir=tmp_path / "run", progress=False)
    for name in ("model.json", "model.safetensors"):  # interrupted before the model was saved
        (tmp_path / "run" / name).unlink()
    shutil.copytree(tmp_path / "run", tmp_path / "other")
    resumed = dc.train_dc(items, cfg, out_dir=tmp_path / "run", progress=False)
    assert resumed.result.resumed_from == 1
    assert [h["loss"] for h in resumed.result.history] == [h["loss"] for h in straight.result.history]
    for a, b in zip(straight.heads, resumed.heads):
        torch.testing.assert_close(a.loss.W, b.loss.W, rtol=0, atol=0)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    other = cosplace.CosPlaceConfig(**{**cfg.to_dict(), "margin": 0.3})
    with pytest.raises(ValueError, match=r"unfinished dc run .*margin: saved 0.2, now 0.3"):
        dc.train_dc(items, other, out_dir=tmp_path / "other", progress=False)
