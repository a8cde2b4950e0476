"""The training loop under torch.distributed (2 gloo processes on CPU) matches one process."""
import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from conftest import make_image

VIEWS = ("street", "drone", "satellite")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.heads = nn.ModuleDict({v: nn.Linear(8, 16) for v in VIEWS})

    def forward(self, x, view):
        return nn.functional.normalize(self.heads[view](self.conv(x).relu().mean(dim=(2, 3))), dim=-1)


def _run(root: str, out: str, rank: int = 0, world: int = 1, port: int = 0) -> None:
    from geolib.data.datasets import default_transform, load_dataset
    from geolib.training.losses import InfoNCE
    from geolib.training.multiview import MultiViewPlaces, TrainConfig, fit

    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    torch.set_num_threads(1)
    ds = load_dataset("university1652", root)
    places = MultiViewPlaces(ds.items, VIEWS, default_transform(16))
    torch.manual_seed(0)
    model, loss = TinyNet(), InfoNCE()
    cfg = TrainConfig(views=VIEWS, epochs=2, batch_size=8, lr=1e-2, seed=0, resume=False)
    res = fit(model, places, cfg, f"{out}/ckpt{rank}", loss, extra_modules=[loss], progress=False)
    weights = {k: v.tolist() for k, v in model.state_dict().items()}
    with open(f"{out}/rank{rank}_of{world}.json", "w") as fh:
        json.dump({"loss": [r["loss"] for r in res.history], "weights": weights,
                   "scale": float(loss.scale.detach())}, fh)
    if world > 1:
        torch.distributed.destroy_process_group()


def _worker(rank: int, root: str, out: str, port: int) -> None:
    _run(root, out, rank, 2, port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_gloo_ranks_match_one_process(tmp_path):
    root = tmp_path / "u"
    for b in range(1, 17):
        for v in VIEWS:
            make_image(root / "train" / v / f"{b:04d}" / "a.jpg", seed=b * 7 + len(v), size=(16, 16))
    _run(str(root), str(tmp_path))
    mp.spawn(_worker, args=(str(root), str(tmp_path), _free_port()), nprocs=2, join=True)
    single, r0, r1 = (json.loads((tmp_path / n).read_text()) for n in
                      ("rank0_of1.json", "rank0_of2.json", "rank1_of2.json"))
    assert r0["weights"] == r1["weights"], "both ranks end with identical weights"
    np.testing.assert_allclose(r0["loss"], single["loss"], rtol=1e-4)
    for k, w in single["weights"].items():
        np.testing.assert_allclose(np.array(r0["weights"][k]), np.array(w), rtol=1e-3, atol=1e-5)
    assert abs(r0["scale"] - single["scale"]) < 1e-4
