"""geolib.training.loop: the one training loop (resume, settings check, cap, selection, dry run)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from geolib.checkpoint import read_model_state
from geolib.training.loop import LoopConfig, LoopResult, cosine_with_warmup, run

X = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.backbone = nn.Linear(6, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


def _plan(epoch: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(len(X))
    return [order[i:i + 16] for i in range(0, len(X), 16)]


def _train(out, cfg: LoopConfig, model: nn.Module | None = None, **kw) -> tuple[nn.Module, LoopResult]:
    model = model or Net()

    def step(idx: np.ndarray, epoch: int) -> torch.Tensor:
        noise = torch.randn(len(idx), 6) * 0.01  # global torch RNG: resume must restore it
        return nn.functional.cross_entropy(model(X[idx] + noise), Y[idx])

    return model, run(model, step, _plan, cfg, out, progress=False, **kw)


def _kill_after(epoch: int):
    def hook(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt
    return hook


CFG = LoopConfig(epochs=3, lr=1e-2, weight_decay=0.01, scheduler="cosine", warmup=0.2, grad_clip=1.0)


def test_trains_and_writes_rows_and_checkpoints(tmp_path):
    model, res = _train(tmp_path, CFG)
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert {"loss", "lr", "seconds"} <= set(res.history[0])
    assert res.history[-1]["lr"] < res.history[0]["lr"]  # cosine anneals
    assert res.best_path is not None and res.last_path is not None and not res.cut_by_budget
    meta, state = read_model_state(res.best_path, "")
    assert torch.equal(state["head.weight"], model.head.weight.detach())  # select="last": best is the final model
    assert meta["config"]["optimizer"] == "adamw" and meta["epochs_done"] == 3


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight, a = _train(tmp_path / "a", CFG)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "b", CFG, on_epoch=_kill_after(1))
    resumed, b = _train(tmp_path / "b", CFG)
    assert b.resumed_from == 1
    assert [r["loss"] for r in b.history] == [r["loss"] for r in a.history]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_finished_run_is_not_retrained(tmp_path):
    _train(tmp_path, CFG)
    model, again = _train(tmp_path, CFG)
    assert again.resumed_from == 3 and len(again.history) == 3


def test_resume_under_changed_setting_is_refused_naming_it(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, CFG, on_epoch=_kill_after(1))
    with pytest.raises(ValueError, match=r"lr: saved 0.01, now 0.02") as err:
        _train(tmp_path, LoopConfig(**{**CFG.__dict__, "lr": 2e-2}))
    assert str(tmp_path) in str(err.value) and "another directory" in str(err.value)
    with pytest.raises(ValueError, match="batch_size"):
        _train(tmp_path, CFG, settings={"batch_size": 8})
    # settings that change neither weights nor data order are free
    _, res = _train(tmp_path, LoopConfig(**{**CFG.__dict__, "eval_every": 5, "max_minutes": 60.0}))
    assert res.resumed_from == 1


def test_cap_stops_early_says_so_and_keeps_the_schedule(tmp_path, capsys):
    straight, a = _train(tmp_path / "a", CFG)
    capped, b = _train(tmp_path / "b", LoopConfig(**{**CFG.__dict__, "max_minutes": 0.0}))
    assert b.cut_by_budget and b.epochs_done == 1 and len(b.history) == 1
    assert "stopped by the 0-minute cap after epoch 1 of 3" in capsys.readouterr().out
    assert b.history[0]["cut_by_budget"] is True
    meta = json.loads((tmp_path / "b" / "last.json").read_text())["meta"]
    assert meta["cut_by_budget"] is True and meta["epochs_done"] == 1
    # the cap never changes the schedule: epoch 1 is step for step the uncapped run's epoch 1
    assert b.history[0]["lr"] == a.history[0]["lr"] and b.history[0]["loss"] == a.history[0]["loss"]
    # a rerun without the cap continues and ends where the uninterrupted run ends
    resumed, c = _train(tmp_path / "b", CFG)
    assert c.resumed_from == 1 and not c.cut_by_budget
    assert [r["lr"] for r in c.history] == [r["lr"] for r in a.history]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_cosine_schedule_depends_on_steps_only():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, 2, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.05


def test_selection_uses_the_validation_callback_only(tmp_path):
    with pytest.raises(ValueError, match="test split"):
        LoopConfig(select="test")
    with pytest.raises(ValueError, match="no `evaluate` callback"):
        _train(tmp_path / "a", LoopConfig(epochs=2, select="R@1"), watch=lambda m, e: {"R@1": 1.0})
    scores = {1: 0.9, 2: 0.1, 3: 0.5}
    model, res = _train(tmp_path / "b", LoopConfig(**{**CFG.__dict__, "select": "val R@1"}),
                        evaluate=lambda m, e: {"val R@1": scores[e]}, watch=lambda m, e: {"test R@1": float(e)})
    meta, _ = read_model_state(res.best_path, "")
    assert meta["epoch"] == 1 and res.history[-1]["test R@1"] == 3.0


def test_param_groups_and_adam(tmp_path):
    model = Net()
    groups = [{"params": model.backbone.parameters(), "lr": 0.0}, {"params": model.head.parameters(), "lr": 1e-2}]
    before = model.backbone.weight.detach().clone()
    _, res = _train(tmp_path, LoopConfig(epochs=1, optimizer="adam"), model=model, param_groups=groups)
    assert torch.equal(before, model.backbone.weight)  # its group has lr 0
    assert res.history[0]["lr"] == 0.0  # the first group's lr is reported


def test_dry_run_checkpoint_is_never_resumed_by_a_real_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLIB_DRY_RUN", "1")
    _, dry = _train(tmp_path, CFG)
    assert len(dry.history) == 1  # dryrun.EPOCHS
    monkeypatch.delenv("GEOLIB_DRY_RUN")
    _, real = _train(tmp_path, CFG)
    assert real.resumed_from == 0 and len(real.history) == 3
    monkeypatch.setenv("GEOLIB_DRY_RUN", "1")
    _, dry2 = _train(tmp_path, CFG)
    assert dry2.last_path.name == "dry-run-last"  # the real run's checkpoints stay untouched
    assert json.loads((tmp_path / "last.json").read_text())["meta"]["dry_run"] is False


@pytest.mark.parametrize("optimizer", ["sgd", "asgd"])
def test_sgd_and_asgd_train(tmp_path, optimizer):
    _, res = _train(tmp_path, LoopConfig(epochs=3, lr=5e-2, optimizer=optimizer, scheduler="none"))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert json.loads((tmp_path / "last.json").read_text())["meta"]["config"]["optimizer"] == optimizer


def test_plateau_halves_the_rate_after_an_epoch_without_progress_and_resumes_its_state(tmp_path):
    cfg = LoopConfig(epochs=4, lr=1e-3, optimizer="sgd", scheduler="plateau")

    def flat(out, **kw):  # a loss that never improves: every epoch after the first is a bad one
        model = Net()
        return run(model, lambda idx, epoch: (model(X[idx]) * 0).sum() + 1.0, _plan, cfg, out, progress=False, **kw)

    straight = flat(tmp_path / "a")
    # epoch 1 sets the best loss; epoch 2 does not beat it, so epoch 3 runs at half the rate, and so on
    assert [r["lr"] for r in straight.history] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    with pytest.raises(KeyboardInterrupt):
        flat(tmp_path / "b", on_epoch=_kill_after(2))
    resumed = flat(tmp_path / "b")  # the plateau's count of bad epochs comes back with the checkpoint
    assert resumed.resumed_from == 2 and [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]


def test_unknown_optimizer_and_scheduler_are_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        LoopConfig(optimizer="lion")
    with pytest.raises(ValueError, match="scheduler must be one of"):
        LoopConfig(scheduler="step")
