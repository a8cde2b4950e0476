import numpy as np
import pytest
import torch

from conftest import make_image
from geolib.datasets import load_dataset
from geolib.render import polar_transform
from geolib.safa import SAFAModel, SpatialAwareAggregation, evaluate_pairs, train_safa
from geolib.train import TrainConfig

TINY = dict(backbone="resnet10t", pano_hw=(32, 64), sat_size=32, heads=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture
def cvusa(tmp_path):
    root = tmp_path / "cvusa"
    (root / "splits").mkdir(parents=True)
    for split, csv, ids in (("train", "train-19zl.csv", range(8)), ("val", "val-19zl.csv", range(8, 12))):
        rows = []
        for i in ids:
            make_image(root / "bingmap" / "19" / f"{i:07d}.jpg", seed=i, size=(40, 40))
            make_image(root / "streetview" / "panos" / f"{i:07d}.jpg", seed=100 + i, size=(80, 20))
            rows.append(f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg,{i:07d}")
        (root / "splits" / csv).write_text("\n".join(rows) + "\n")
    return load_dataset("cvusa", root)


def test_sa_aggregation_matches_the_formula_on_a_hand_case():
    agg = SpatialAwareAggregation((1, 2), heads=1)
    with torch.no_grad():  # down: [a+b] (HW/2=1); up: [[1],[0]] + bias [0, 1] → weights = (a+b, 1)
        agg.down[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        agg.down[0].bias.zero_()
        agg.up[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        agg.up[0].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[[[1.0, 3.0]], [[3.0, 1.0]]]])  # C=2, H=1, W=2; channel mean = (2, 2)
    w = agg.weights(x)
    assert torch.allclose(w, torch.tensor([[[4.0, 1.0]]]))
    desc = torch.tensor([4 * 1 + 1 * 3, 4 * 3 + 1 * 1], dtype=torch.float32)  # Σ w · features per channel
    assert torch.allclose(agg(x), desc / desc.norm())


def test_sa_output_is_k_times_c_and_l2_normalised():
    agg = SpatialAwareAggregation((4, 6), heads=8)
    out = agg(torch.randn(3, 5, 4, 6))
    assert out.shape == (3, 40) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert agg.down[0].in_features == 24 and agg.down[0].out_features == 12 and agg.up[0].out_features == 24


@pytest.mark.parametrize("polar", [True, False])
def test_safa_model_shapes_and_separate_branches(polar):
    torch.manual_seed(0)
    m = SAFAModel(polar=polar, **TINY).eval()
    p = m(torch.randn(2, 3, 32, 64), "panorama")
    s = m(torch.randn(2, 3, 32, 32), "satellite")
    assert p.shape == s.shape == (2, 2 * m.branches["panorama"].channels)
    assert torch.allclose(s.norm(dim=1), torch.ones(2), atol=1e-5)
    assert m.branches["panorama"].backbone is not m.branches["satellite"].backbone


def test_satellite_branch_sees_the_polar_transformed_tile():
    m = SAFAModel(polar=True, **TINY).eval()
    seen = {}
    m.branches["satellite"].register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    tile = torch.rand(1, 3, 32, 32)
    m(tile, "satellite")
    assert seen["x"].shape == (1, 3, 32, 64)
    assert torch.allclose(seen["x"], polar_transform(tile, 32, 64))


def test_polar_transform_puts_a_bearing_at_its_column():
    s, h, w = 65, 32, 64
    tile = np.zeros((s, s), np.float32)
    beta, d = np.pi / 2, 20.0  # bearing 90°: x = S/2 + r·cos = centre row, y = S/2 − r → up the columns
    x, y = s / 2 + d * np.cos(beta), s / 2 - d * np.sin(beta)
    tile[int(round(x)), int(round(y))] = 1.0
    out = polar_transform(tile, h, w)
    i, j = np.unravel_index(np.argmax(out), out.shape)
    assert abs(j - w * beta / (2 * np.pi)) <= 1
    assert abs(i - (h - 1 - d * h / (s / 2))) <= 1.5


def test_train_safa_runs_and_evaluates_cvusa(cvusa, tmp_path):
    torch.manual_seed(0)
    m = SAFAModel(polar=True, **TINY)
    res = train_safa(m, cvusa, TrainConfig(epochs=1, batch_size=4, lr=1e-3), tmp_path / "ck", progress=False)
    assert res.history and "panorama→satellite R@1" in res.history[0]
    metrics = evaluate_pairs(m, cvusa, m.input_sizes())
    assert set(metrics) == {"R@1", "R@5", "R@10", "R@1%"} and 0 <= metrics["R@1"] <= 100
