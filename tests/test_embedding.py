"""geolib.evaluation.embedding.embed equals each family's former embedding path, and its cache keys on the
model's weights and preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_image
from geolib.data.datasets import ImageItem, default_transform
from geolib.evaluation.cache import EmbeddingCache
from geolib.evaluation.embedding import Preprocess, embed, preprocess_of
from geolib.data.images import load_image
from geolib.models import create_model, rebuild_model
from test_models import TINY

SIZE = 32


@pytest.fixture
def items(tmp_path):
    return [ImageItem(path=make_image(tmp_path / "img" / f"{i}.jpg", seed=i, size=(40 + 3 * i, 30)),
                      view="street", split="test", role="query", label=i) for i in range(5)]


def phase1():
    torch.manual_seed(0)
    return create_model("phase1-cpu", **{**TINY, "img_size": SIZE}).eval()


class ViewNet(nn.Module):
    """A tiny model with a view argument whose output depends on every pixel and on the view."""

    def __init__(self, views=("street", "panorama", "satellite")) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bias = nn.ParameterDict({v: nn.Parameter(torch.randn(8)) for v in views})

    def forward(self, x, view=None):
        e = self.conv(x).mean(dim=(2, 3))
        return e + self.bias[view] if view is not None else e


def old_loop(model, paths, transform, view=None, flip=False, l2=True):
    """The former per-family loop: transform each image, one forward per batch, optional flip, L2."""
    model.eval()
    with torch.no_grad():
        x = torch.stack([transform(load_image(p)) for p in paths])
        e = model(x) if view is None else model(x, view=view)
        if flip:
            e = e + (model(torch.flip(x, dims=[3])) if view is None else model(torch.flip(x, dims=[3]), view=view))
        e = e.float()
        return (nn.functional.normalize(e, dim=-1) if l2 else e).numpy()


def test_phase1_equals_default_transform_path(items):
    model = phase1()
    assert preprocess_of(model) == Preprocess(SIZE)
    paths = [it.path for it in items]
    for flip in (False, True):
        got = embed(model, items, view="street", flip=flip, batch_size=len(items))  # one batch, as the reference
        want = old_loop(model, paths, default_transform(SIZE), "street", flip)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_phase1_preprocess_survives_a_rebuild():
    model = phase1()
    assert model.config["preprocess"]["resize"] == "antialias"
    assert preprocess_of(rebuild_model(model.config)) == preprocess_of(model)


def test_descriptor_path_equals_pil_bilinear_tensors(items):
    from geolib.training.groups import ImageTensors, embed_paths, normalize

    model, paths = ViewNet().eval(), [it.path for it in items]
    with torch.no_grad():
        want = model(normalize(torch.stack([ImageTensors(paths, SIZE)[i] for i in range(len(paths))]))).numpy()
    assert np.array_equal(embed_paths(model, paths, SIZE, batch_size=len(paths)), want)  # no extra L2: the nets do it
    spec = Preprocess(SIZE, "bilinear-pil")
    assert np.array_equal(embed(model, paths, preprocess=spec, l2=False, batch_size=len(paths)), want)
    assert not np.allclose(embed(model, paths, preprocess=Preprocess(SIZE), l2=False), want, atol=1e-4)


def test_safa_per_view_sizes_equal_pair_transform(items):
    from geolib.training.safa import pair_transform

    model, paths = ViewNet(), [it.path for it in items]
    sizes = {"panorama": (16, 40), "satellite": (24, 24)}
    spec = Preprocess(sizes)
    for view, hw in sizes.items():
        assert spec.hw(view) == hw
        assert np.array_equal(embed(model, paths, view=view, preprocess=spec), old_loop(model, paths, pair_transform(hw), view))
    with pytest.raises(KeyError, match="street"):
        spec.hw("street")
    assert Preprocess.from_dict(spec.to_dict()) == spec


def test_teacher_cache_equals_its_former_loop(items, tmp_path):
    from geolib.training.teachers import Teacher, build_teacher_cache

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    teacher = Teacher("toy", net, lambda m, x: m(x), 4, 24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    paths = [str(it.path) for it in items]
    cache = build_teacher_cache(teacher, paths, tmp_path / "t", batch_size=len(paths), progress=False)
    want = old_loop(teacher, paths, default_transform(24), l2=False)
    assert np.allclose(cache.lookup(paths).numpy(), want, atol=1e-6, rtol=0)
    assert not np.allclose(np.linalg.norm(want, axis=1), 1)  # raw teacher outputs, as before


def test_cache_equal_arrays_and_invalidation(tmp_path, items):
    model, cache = phase1(), EmbeddingCache(tmp_path / "cache")
    first = embed(model, items, view="street", cache=cache)
    assert np.array_equal(first, embed(model, items, view="street")) and cache.misses == 1
    assert np.array_equal(embed(model, items, view="street", cache=cache), first) and cache.hits == 1
    embed(model, items, view="street", cache=cache, preprocess=Preprocess(SIZE, "bilinear-pil"))
    embed(model, items, view="street", cache=cache, preprocess=Preprocess(SIZE, mean=(0.5, 0.5, 0.5)))
    assert cache.misses == 3
    with torch.no_grad():
        list(model.parameters())[-1].add_(1e-2)
    changed = embed(model, items, view="street", cache=cache)
    assert cache.misses == 4 and not np.array_equal(changed, first)


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="resize"):
        Preprocess(32, "nearest")
    with pytest.raises(ValueError, match="size"):
        Preprocess.from_dict({"resize": "antialias"})
