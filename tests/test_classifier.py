import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geolib.training import hierarchical as C
from geolib.records import read_records
from geolib.training.groups import ClassHead, head_kind, topk_hits

torch.set_num_threads(1)


def toy_embeddings(regions: int = 6, places: int = 4, per_place: int = 12, dim: int = 16, seed: int = 0):
    """Regions are Gaussian clusters; places are sub-clusters inside them."""
    rng = np.random.default_rng(seed)
    region_c = rng.normal(0, 1, (regions, dim))
    place_c = region_c[:, None] + rng.normal(0, 0.6, (regions, places, dim))
    x, region, place = [], [], []
    for r in range(regions):
        for p in range(places):
            x.append(place_c[r, p] + rng.normal(0, 0.8, (per_place, dim)))
            region += [r] * per_place
            place += [r * places + p] * per_place
    return np.concatenate(x).astype(np.float32), np.array(region), np.array(place)


@pytest.fixture(scope="module")
def toy():
    x, region, place = toy_embeddings()
    train, test = C.closed_set_split(place, 0.25, seed=0)
    return x, region, place, train, test


def test_place_regions_and_errors():
    assert C.place_regions(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2])).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="appears in regions"):
        C.place_regions(np.array([0, 1]), np.array([0, 0]))
    with pytest.raises(ValueError, match="no image"):
        C.place_regions(np.array([0, 0]), np.array([0, 2]))


def test_closed_set_split_keeps_every_place_in_train():
    place = np.array([0] * 8 + [1] * 4 + [2])
    train, test = C.closed_set_split(place, 0.25, seed=1)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(13))
    assert np.bincount(place[test], minlength=3).tolist() == [2, 1, 0]
    assert set(place[train]) == {0, 1, 2}


def test_topk_hits_masks_and_ties():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.6], [-np.inf, 0.3, 0.1]])
    out = topk_hits(scores, np.array([0, 1, 0]), (1, 2, 3))
    # query 1 ties with class 0 for second place: counted against it (rank 2); query 2 is masked
    assert out == pytest.approx({1: 100 / 3, 2: 100 / 3, 3: 200 / 3})


def test_cosface_head_matches_formula():
    torch.manual_seed(0)
    head = ClassHead(4, 3, "lmcc")
    assert head.kind == "cosface" and head_kind("AAMC") == "arcface"
    emb, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    cos = F.normalize(emb, dim=1) @ F.normalize(head.loss.W, dim=0)
    torch.testing.assert_close(head.logits(emb), cos)
    expected = F.cross_entropy(30 * (cos - 0.40 * F.one_hot(labels, 3)), labels)
    torch.testing.assert_close(head(emb, labels), expected)


@pytest.mark.parametrize("head,mode", [("softmax", "conditioned"), ("cosface", "masked"), ("arcface", "conditioned")])
def test_hierarchical_closed_set_beats_chance(toy, head, mode):
    x, region, place, train, test = toy
    cfg = C.HierarchicalConfig(head=head, place_mode=mode, epochs=20, batch_size=32)
    model, result = C.fit_hierarchical(x[train], region[train], place[train], cfg, progress=False)
    out = C.evaluate_closed_set(model, x[test], region[test], place[test])
    m = out.metrics
    assert m["region_chance"] == pytest.approx(100 / 6)
    assert m["region_top1"] >= 3 * m["region_chance"]  # notebook 04's bar
    assert m["region_top3"] >= m["region_top1"] and m["place_top5"] >= m["place_top1"]
    assert m["place_top1"] >= 5 * 100 / 24  # 24 places
    assert out.confusion.shape == (6, 6) and out.confusion.sum() == len(test)
    assert np.trace(out.confusion) == pytest.approx(m["region_top1"] / 100 * len(test))
    if mode == "masked":  # the predicted place always lies in the predicted region
        assert (model.place_region.numpy()[out.place_pred] == out.region_pred).all()
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_fine_tune_encoder_and_resume(toy, tmp_path):
    x, region, place, train, _ = toy
    cfg = C.HierarchicalConfig(epochs=1, hidden=8, encoder_lr=1e-2)

    def fresh_encoder():
        torch.manual_seed(1)
        return nn.Linear(16, 12)

    enc = fresh_encoder()
    before = enc.weight.detach().clone()
    C.fit_hierarchical(x[train], region[train], place[train], cfg, encoder=enc, out_dir=tmp_path / "a", progress=False)
    assert not torch.equal(enc.weight, before)  # the encoder was fine-tuned

    cfg.epochs = 3
    resumed, res = C.fit_hierarchical(x[train], region[train], place[train], cfg, encoder=fresh_encoder(),
                                      out_dir=tmp_path / "a", progress=False)
    straight, _ = C.fit_hierarchical(x[train], region[train], place[train], cfg, encoder=fresh_encoder(),
                                     out_dir=tmp_path / "b", progress=False)
    assert res.resumed_from == 1 and [h["epoch"] for h in res.history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert (tmp_path / "a" / "best.json").exists() and (tmp_path / "a" / "last.json").exists()


def test_an_interrupted_hierarchical_run_refuses_other_settings(toy, tmp_path):
    x, region, place, train, _ = toy
    C.fit_hierarchical(x[train], region[train], place[train], C.HierarchicalConfig(epochs=1), out_dir=tmp_path / "h",
                       progress=False)
    for name in ("model.json", "model.safetensors"):  # interrupted before the model was saved
        (tmp_path / "h" / name).unlink()
    with pytest.raises(ValueError, match=r"unfinished hierarchical run .*grad_clip: saved 0.0, now 1.0"):
        C.fit_hierarchical(x[train], region[train], place[train], C.HierarchicalConfig(epochs=2, grad_clip=1.0),
                           out_dir=tmp_path / "h", progress=False)
    _, res = C.fit_hierarchical(x[train], region[train], place[train], C.HierarchicalConfig(epochs=2),
                                out_dir=tmp_path / "h", progress=False)
    assert res.resumed_from == 1 and len(res.history) == 2


def test_open_set_prototypes_hand_made():
    ref = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [-1, 0]], np.float32)
    ref_region = np.array([10, 10, 20, 20, 30])
    ref_place = np.array([100, 101, 200, 201, 300])
    query = np.array([[1, 0.05], [0.05, 1], [0, -1]], np.float32)
    out = C.evaluate_open_set(ref, ref_region, ref_place, query, np.array([10, 20, 40]), np.array([100, 201, 400]))
    # query 2's region (40) and place (400) have no prototype: a miss at every k
    assert out.metrics["region_top1"] == pytest.approx(200 / 3)
    assert out.metrics["region_top3"] == pytest.approx(200 / 3)
    assert out.metrics["region_chance"] == pytest.approx(100 / 3)
    assert out.region_pred[:2].tolist() == [10, 20]
    assert out.place_pred[1] == 201 and out.confusion.shape == (3, 3)
    assert out.metrics["place_top5"] == pytest.approx(200 / 3)


def test_open_set_on_unseen_regions(toy):
    x, region, place, _, _ = toy
    unseen = region >= 3  # regions a classifier trained on 0-2 never saw
    ref, query = C.closed_set_split(place[unseen], 0.5, seed=0)
    xs, rs, ps = x[unseen], region[unseen], place[unseen]
    out = C.evaluate_open_set(xs[ref], rs[ref], ps[ref], xs[query], rs[query], ps[query])
    assert out.metrics["region_top1"] >= 2 * out.metrics["region_chance"]


def test_write_classification_records():
    for protocol in ("closed-set", "open-set"):
        C.write_classification_record("04_phase2", {"region_top1": 50.0}, protocol=protocol,
                                      dataset="synthetic-default", profile="smoke", seed=0, query_view="street")
    recs = read_records("smoke", "04_phase2")
    assert [r["protocol"] for r in recs[-2:]] == ["closed-set", "open-set"]
    assert recs[-1]["task"] == "classification"
    with pytest.raises(ValueError, match="protocol"):
        C.write_classification_record("x", {"a": 1.0}, protocol="vpr-25m", dataset="d", profile="smoke", seed=0)


def test_closed_set_on_an_empty_held_out_set(toy):
    feats, region, place, _, _ = toy
    model, _ = C.fit_hierarchical(feats, region, place, C.HierarchicalConfig(epochs=1), progress=False)
    res = C.evaluate_closed_set(model, feats[:0], region[:0], place[:0])
    assert res.metrics["region_top1"] == 0.0 and res.confusion.sum() == 0


# --------------------------------------------------------------------------- regions, saving, loading

def test_region_labels_none_without_regions_and_from_a_csv(tmp_path):
    from pathlib import Path

    from geolib.data.datasets import ImageItem

    def item(label, region=None):
        return ImageItem(Path(f"/x/{label}.jpg"), "street", "train", "train", label,
                         meta={"region": region} if region is not None else {})

    plain = [item(1), item(2)]
    assert C.region_labels(plain) is None  # real University-1652: buildings only
    assert C.region_labels([item(1, "3"), item(2, "0")]).tolist() == [3, 0]
    assert C.region_labels([item(1, "north"), item(2, "south")]).tolist() == ["north", "south"]
    with pytest.raises(ValueError, match="1 of 2 images carry no region"):
        C.region_labels([item(1, "3"), item(2)])
    csv = tmp_path / "regions.csv"
    csv.write_text("building,region\n0001,campus-a\n0002,campus-b\n")
    assert C.region_labels(plain, csv).tolist() == ["campus-a", "campus-b"]
    with pytest.raises(ValueError, match=r"regions.csv: no region for 1 label\(s\).*\[7\]"):
        C.region_labels([item(7)], csv)
    (tmp_path / "bad.csv").write_text("name,zone\n1,2\n")
    with pytest.raises(ValueError, match="expected a building column"):
        C.region_labels(plain, tmp_path / "bad.csv")


def test_saved_classifier_scores_identically_with_its_id_maps(toy, tmp_path):
    x, region, place, train, test = toy
    cfg = C.HierarchicalConfig(head="cosface", place_mode="masked", hidden=8, epochs=2)
    region_ids = np.array([f"r{r}" for r in range(6)])
    place_ids = np.arange(24) + 1000
    model, res = C.fit_hierarchical(x[train], region[train], place[train], cfg, out_dir=tmp_path / "h",
                                    progress=False, region_ids=region_ids, place_ids=place_ids)
    saved = C.load_hierarchical(tmp_path / "h")
    assert saved.config.place_mode == "masked" and saved.history == res.history
    xt = torch.as_tensor(x[test])
    for a, b in zip(model.scores(xt), saved.model.scores(xt)):
        assert torch.equal(a, b)
    assert saved.region_ids.tolist() == region_ids.tolist() and saved.place_ids.tolist() == place_ids.tolist()
    meta_files = sorted(p.name for p in (tmp_path / "h").iterdir())
    assert "model.json" in meta_files and "model.safetensors" in meta_files


def test_load_or_fit_hierarchical_reuses_and_refuses(toy, tmp_path, capsys):
    x, region, place, train, _ = toy
    cfg = C.HierarchicalConfig(epochs=1)
    C.load_or_fit_hierarchical(x[train], region[train], place[train], cfg, tmp_path / "h", settings={"encoder": "a"})
    _, res = C.load_or_fit_hierarchical(x[train], region[train], place[train], cfg, tmp_path / "h",
                                        settings={"encoder": "a"})
    assert res.extra["loaded_from"] and "loading" in capsys.readouterr().out
    with pytest.raises(ValueError, match="encoder: saved 'a', now 'b'"):
        C.load_or_fit_hierarchical(x[train], region[train], place[train], cfg, tmp_path / "h", settings={"encoder": "b"})
    with pytest.raises(ValueError, match="other settings"):
        C.load_or_fit_hierarchical(x[train], region[train], place[train], C.HierarchicalConfig(epochs=1, lr=0.1),
                                   tmp_path / "h", settings={"encoder": "a"})


def _ddp_fit(rank: int, world: int, port: int, out: str) -> None:
    import json

    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    torch.set_num_threads(1)
    x, region, place = toy_embeddings(regions=3, places=2, per_place=8)
    model, res = C.fit_hierarchical(x, region, place, C.HierarchicalConfig(epochs=2, batch_size=8, hidden=8),
                                    progress=False)
    with open(f"{out}/rank{rank}_of{world}.json", "w") as fh:
        json.dump({"loss": [r["loss"] for r in res.history],
                   "weights": {k: v.tolist() for k, v in model.state_dict().items()}}, fh)
    if world > 1:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_train_the_classifier_as_one_process(tmp_path):
    """Each rank takes half of every batch and DDP averages the gradients: the weights are those of
    one process training on the whole batches."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _ddp_fit(0, 1, 0, str(tmp_path))
    mp.spawn(_ddp_fit, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    one = json.loads((tmp_path / "rank0_of1.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}_of2.json").read_text()) for r in (0, 1)]
    for k, w in one["weights"].items():
        for r in ranks:
            np.testing.assert_allclose(np.array(r["weights"][k]), np.array(w), rtol=0, atol=1e-5, err_msg=k)
    local = np.mean([r["loss"] for r in ranks], axis=0)  # each rank's mean loss is over its half batches
    np.testing.assert_allclose(local, one["loss"], rtol=1e-5)
