import json

import pytest
import torch

from geolib.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint


def _setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _step(model, opt, sched, x):
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    sched.step()


def test_resume_continues_exactly(tmp_path):
    x = torch.randn(16, 4)
    model, opt, sched = _setup(0)
    for _ in range(3):
        _step(model, opt, sched, x)
    save_checkpoint(tmp_path / "last", model, opt, sched, epoch=3, config={"lr": 1e-2})
    for _ in range(2):
        _step(model, opt, sched, x)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = _setup(1)  # different init: everything must come from the checkpoint
    meta = load_checkpoint(tmp_path / "last", model2, opt2, sched2)
    assert meta == {"epoch": 3, "config": {"lr": 1e-2}}
    assert opt2.param_groups[0]["betas"] == (0.9, 0.98)
    for _ in range(2):
        _step(model2, opt2, sched2, x)
    for a, b in zip(expected, model2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_files_are_safetensors_and_json_only(tmp_path):
    model, opt, sched = _setup(0)
    save_checkpoint(tmp_path / "best", model, opt, sched, epoch=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]
    json.loads((tmp_path / "best.json").read_text())


def test_interrupted_save_is_detected(tmp_path):
    model, opt, sched = _setup(0)
    save_checkpoint(tmp_path / "last", model, opt, sched, epoch=1)
    data = (tmp_path / "last.safetensors").read_bytes()
    (tmp_path / "last.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="interrupted while saving"):
        read_checkpoint(tmp_path / "last")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_checkpoint(tmp_path / "none")
