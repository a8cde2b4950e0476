import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_image
from geolib.data.datasets import default_transform, load_dataset
from geolib.training.loop import cosine_with_warmup
from geolib.training.multiview import (MultiViewPlaces, PlaceBatchSampler, TrainConfig, fit, place_loader,
                                       gps_neighbours)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.heads = nn.ModuleDict({v: nn.Linear(8, 16) for v in ("street", "drone", "satellite")})

    def forward(self, x, view):
        f = self.conv(x).relu().mean(dim=(2, 3))
        return nn.functional.normalize(self.heads[view](f), dim=-1)


def _infonce(a, b):
    logits = a @ b.T / 0.1
    target = torch.arange(len(a))
    return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2


@pytest.fixture
def places(tmp_path):
    root = tmp_path / "u"
    for b in range(1, 9):
        for v in ("street", "drone", "satellite"):
            make_image(root / "train" / v / f"{b:04d}" / "a.jpg", seed=b * 10 + len(v), size=(16, 16))
    (root / "locations.csv").write_text("label,utm_east,utm_north,utm_zone,lat,lon\n" + "".join(
        f"{b},{500000 + 10 * b},{4600000},33T,,\n" for b in range(1, 9)))
    ds = load_dataset("university1652", root)
    return MultiViewPlaces(ds.select(split="train"), ("street", "drone", "satellite"), default_transform(16))


def test_batches_never_repeat_a_place():
    s = PlaceBatchSampler(50, 8, seed=1)
    batches = list(s)
    assert len(batches) == 6 and all(len(set(b)) == 8 for b in batches)
    assert len({i for b in batches for i in b}) == 48


def test_gps_batches_hold_neighbours_and_no_duplicates():
    utm = np.stack([np.arange(64) * 10.0, np.zeros(64)], 1)
    nb = gps_neighbours(utm, k=16)
    assert nb[0, :2].tolist() == [1, 2] and 0 not in nb[0]
    s = PlaceBatchSampler(64, 8, seed=0, neighbours=nb, near=3, rand=2)
    for batch in s:
        assert len(set(batch)) == len(batch) == 8
    first = next(iter(s))
    assert any(j in nb[first[0]][:3] for j in first[1:])  # the anchor brought its near neighbours


def test_ddp_slices_cover_the_global_batch():
    whole = list(PlaceBatchSampler(32, 8, seed=3))
    r0 = list(PlaceBatchSampler(32, 8, seed=3, rank=0, world_size=2))
    r1 = list(PlaceBatchSampler(32, 8, seed=3, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == whole


def test_warmup_then_cosine():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, 2, 10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] < 0.05 and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)


def test_dataset_needs_every_view(tmp_path):
    make_image(tmp_path / "u" / "train" / "street" / "0001" / "a.jpg")
    ds = load_dataset("university1652", tmp_path / "u")
    with pytest.raises(ValueError, match="no place has images in every view"):
        MultiViewPlaces(ds.items, ("street", "drone"), default_transform(8))


def _kill_after(epoch):
    def on_epoch(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt
    return on_epoch


def test_fit_resumes_where_it_stopped(places, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, warmup=0.2, seed=0)
    torch.manual_seed(0)
    straight = fit(TinyNet(), places, cfg, tmp_path / "a", _infonce, progress=False)
    assert [r["epoch"] for r in straight.history] == [1, 2, 3]
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # killed after epoch 1, its checkpoint written
        fit(TinyNet(), places, cfg, tmp_path / "b", _infonce, progress=False, on_epoch=_kill_after(1))
    torch.manual_seed(123)
    resumed_model = TinyNet()
    resumed = fit(resumed_model, places, cfg, tmp_path / "b", _infonce, progress=False)
    assert resumed.resumed_from == 1 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in resumed.history], [r["loss"] for r in straight.history], rtol=1e-5)
    torch.manual_seed(0)
    ref = TinyNet()
    from geolib.checkpoint import load_checkpoint
    bundle = nn.ModuleDict({"model": ref})
    load_checkpoint(tmp_path / "a" / "last", bundle)
    for p, q in zip(ref.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_preloaded_places_give_the_same_samples(places):
    preloaded = MultiViewPlaces([it for v in places.views for group in places.images[v] for it in group],
                                places.views, places.transform, seed=places.seed, preload=True)
    assert len(preloaded.decoded) == sum(len(g) for v in places.views for g in places.images[v])
    for i in (0, 3, 7):
        a, la = places[i]
        b, lb = preloaded[i]
        assert la == lb
        for v in places.views:
            assert torch.equal(a[v], b[v])


def test_a_cap_stops_early_without_changing_the_schedule(places, tmp_path, capsys):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, warmup=0.2, seed=0)
    torch.manual_seed(0)
    straight = fit(TinyNet(), places, cfg, tmp_path / "a", _infonce, progress=False)
    torch.manual_seed(0)
    capped = fit(TinyNet(), places, cfg, tmp_path / "b", _infonce, progress=False, max_minutes=0)
    assert capped.cut_by_budget and capped.epochs_done == 1 and capped.history[0]["cut_by_budget"]
    assert "stopped by the 0-minute cap after epoch 1 of 3" in capsys.readouterr().out
    assert capped.history[0]["lr"] == straight.history[0]["lr"]  # the schedule is over the planned steps
    assert capped.history[0]["loss"] == straight.history[0]["loss"]
    resumed = fit(TinyNet(), places, cfg, tmp_path / "b", _infonce, progress=False)  # no cap: it continues
    assert resumed.resumed_from == 1 and not resumed.cut_by_budget
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]
    np.testing.assert_allclose([r["loss"] for r in resumed.history], [r["loss"] for r in straight.history], rtol=1e-6)


def test_a_run_stopped_by_its_budget_evaluates_its_last_epoch(places, tmp_path):
    calls = []

    def evaluate(model, epoch):
        calls.append(epoch)
        return {"street→drone R@1": 1.0}

    res = fit(TinyNet(), places, TrainConfig(epochs=5, batch_size=4, eval_every=100), tmp_path / "c", _infonce,
              evaluate=evaluate, progress=False, max_minutes=0)
    assert calls == [1] and res.history[-1]["street→drone R@1"] == 1.0 and len(res.history) == 1
    assert res.cut_by_budget


def test_an_evaluation_that_uses_up_the_budget_ends_the_run(places, tmp_path, monkeypatch):
    import geolib.training.loop as L

    now = [0.0]
    monkeypatch.setattr(L.time, "perf_counter", lambda: now[0])
    calls = []

    def evaluate(model, epoch):
        calls.append(epoch)
        now[0] += 120.0  # the evaluation after epoch 2 runs past the 1-minute budget
        return {"street→drone R@1": 1.0}

    res = fit(TinyNet(), places, TrainConfig(epochs=5, batch_size=4, eval_every=2), tmp_path, _infonce,
              evaluate=evaluate, progress=False, max_minutes=1)
    assert calls == [2] and len(res.history) == 2 and res.cut_by_budget


def test_resuming_a_run_with_other_settings_fails_and_names_them(places, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0)
    with pytest.raises(KeyboardInterrupt):
        fit(TinyNet(), places, cfg, tmp_path, _infonce, progress=False, on_epoch=_kill_after(1))
    other = TrainConfig(**{**cfg.__dict__, "lr": 1e-3, "epochs": 5, "eval_every": 2})
    with pytest.raises(ValueError, match=r"last\.json.*other settings \(lr: saved 0\.01, now 0\.001\).*delete"):
        fit(TinyNet(), places, other, tmp_path, _infonce, progress=False)
    resumed = fit(TinyNet(), places, TrainConfig(**{**cfg.__dict__, "eval_every": 2}), tmp_path, _infonce,
                  progress=False)  # epochs, evaluation cadence and device are free to change
    assert resumed.resumed_from == 1 and len(resumed.history) == 2


def test_a_finished_run_is_reused_and_a_longer_one_continues_it(places, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0)
    model = TinyNet()
    first = fit(model, places, cfg, tmp_path, _infonce, progress=False)
    again_model = TinyNet()
    again = fit(again_model, places, cfg, tmp_path, _infonce, progress=False)
    assert again.resumed_from == 2 and again.history == first.history
    for p, q in zip(model.parameters(), again_model.parameters()):
        torch.testing.assert_close(p, q)  # the saved weights, not a fresh init or more training
    longer = fit(TinyNet(), places, TrainConfig(**{**cfg.__dict__, "epochs": 3}), tmp_path, _infonce, progress=False)
    assert longer.resumed_from == 2 and [r["epoch"] for r in longer.history] == [1, 2, 3]
    capped = fit(TinyNet(), places, cfg, tmp_path, _infonce, progress=False, max_minutes=1)
    assert capped.resumed_from == 3  # a cap changes no weight: a finished run under one is still finished


def test_channels_last_training_matches_the_default_layout(places, tmp_path):
    from geolib.evaluation.embedding import input_format

    runs = {}
    for cl in (False, True):
        torch.manual_seed(0)
        model = TinyNet()
        runs[cl] = fit(model, places, TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0, channels_last=cl),
                       tmp_path / str(cl), _infonce, progress=False)
        assert input_format(model) == (torch.channels_last if cl else torch.contiguous_format)
    np.testing.assert_allclose([r["loss"] for r in runs[True].history], [r["loss"] for r in runs[False].history],
                               rtol=1e-4)


class BNNet(TinyNet):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

    def forward(self, x, view):
        return super().forward(self.backbone(x), view)


def test_frozen_parts_keep_weights_and_batchnorm_statistics(places, tmp_path):
    torch.manual_seed(0)
    model = BNNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, places, TrainConfig(epochs=1, batch_size=4, lr=1e-2, freeze=(".backbone.",)), tmp_path,
        _infonce, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["conv.weight"], after["conv.weight"])
    with pytest.raises(ValueError, match="matches no submodule"):
        fit(BNNet(), places, TrainConfig(epochs=1, batch_size=4, freeze=(".nothing.",)), tmp_path / "x",
            _infonce, progress=False)


def test_backbone_parameters_get_their_own_learning_rate():
    from geolib.training.loop import param_groups

    groups = param_groups(BNNet(), 1e-2, backbone_scale=0.1)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert sum(len(g["params"]) for g in groups) == len(list(BNNet().parameters()))
    assert len(groups[0]["params"]) == 4  # the backbone's conv and BatchNorm weights and biases


def test_keeping_the_last_epoch_writes_best_once_when_the_run_ends(places, tmp_path):
    from geolib.checkpoint import read_checkpoint

    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0)
    with pytest.raises(KeyboardInterrupt):
        fit(TinyNet(), places, cfg, tmp_path, _infonce, progress=False, select_metric="last", on_epoch=_kill_after(1))
    assert not (tmp_path / "best.json").exists()  # an unfinished run has no final model yet
    res = fit(TinyNet(), places, cfg, tmp_path, _infonce, progress=False, select_metric="last")
    assert read_checkpoint(res.best_path)[0]["meta"]["epoch"] == 2


def test_loader_workers_draw_each_epochs_images(tmp_path):
    """A worker process must see `set_epoch`: the same draws as in-process loading, and new ones each epoch."""
    from geolib.data.datasets import ImageItem

    items = [ImageItem(make_image(tmp_path / v / f"{p}" / f"{j}.png", seed=100 * p + 10 * j + len(v), size=(16, 16)),
                       v, "train", "train", p) for p in range(4) for v in ("street", "drone") for j in range(4)]
    data = MultiViewPlaces(items, ("street", "drone"), default_transform(8))  # no augmentation: only the draw varies

    def draws(num_workers: int) -> list[dict[int, torch.Tensor]]:
        sampler = PlaceBatchSampler(len(data), 2, seed=0)
        loader, out = place_loader(data, sampler, num_workers), []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            data.set_epoch(epoch)
            out.append({int(lab): torch.cat([img["street"][i], img["drone"][i]])
                        for img, labels in loader for i, lab in enumerate(labels)})
        return out

    inline, forked = draws(0), draws(1)
    for a, b in zip(inline, forked):
        assert a.keys() == b.keys() == {0, 1, 2, 3}
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(inline[0][k], inline[e][k]) for e in (1, 2) for k in range(4))
