"""Embeddings cache: hit, miss, invalidation (config, weights, items, settings), dtype, mmap."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import make_image
from test_models import TINY

from geolib.data.datasets import ImageItem, default_transform
from geolib.evaluation.cache import EmbeddingCache, weights_hash
from geolib.evaluation.embedding import embed
from geolib.models import create_model

SIZE = 32


@pytest.fixture
def items(tmp_path):
    return [ImageItem(path=make_image(tmp_path / "img" / f"{i}.jpg", seed=i), view="satellite",
                      split="test", role="gallery", label=i // 2) for i in range(6)]


def tiny(**options):
    torch.manual_seed(0)
    return create_model("phase1-cpu", **{**TINY, "img_size": SIZE, **options}).eval()


def test_miss_then_hit_and_equal_to_embed(tmp_path, items):
    cache, model = EmbeddingCache(tmp_path / "cache"), tiny()
    first = cache.get_or_compute(model, items, "satellite", batch_size=4)
    assert (cache.misses, cache.hits) == (1, 0)
    again = EmbeddingCache(tmp_path / "cache").get_or_compute(model, items, "satellite", batch_size=4)
    assert np.array_equal(first, again)
    want = embed(model, items, view="satellite", batch_size=4)
    assert first.dtype == np.float32 and np.array_equal(first, want)
    second = cache.get_or_compute(model, items, "satellite")
    assert (cache.misses, cache.hits) == (1, 1) and np.array_equal(second, first)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["embeddings.npy", "meta.json"]  # no temp files left


def test_invalidation(tmp_path, items):
    cache, model = EmbeddingCache(tmp_path / "cache"), tiny()
    base = cache.get_or_compute(model, items, "satellite")
    cache.get_or_compute(tiny(embed_dim=12), items, "satellite")          # other config
    assert cache.misses == 2
    with torch.no_grad():                                                 # same config, new weights
        next(model.parameters()).add_(0.1)
    changed = cache.get_or_compute(model, items, "satellite")
    assert cache.misses == 3 and not np.array_equal(changed, base)
    cache.get_or_compute(model, items, "drone")                           # other view
    cache.get_or_compute(model, items, "satellite", flip=True)            # other settings
    cache.get_or_compute(model, items[:5], "satellite")                   # other items
    assert cache.misses == 6
    make_image(items[0].path, seed=99)                                    # an image re-exported
    os.utime(items[0].path, ns=(1, 1))
    cache.get_or_compute(model, items, "satellite")
    assert cache.misses == 7 and cache.hits == 0
    cache.get_or_compute(model, items, "satellite")
    assert cache.hits == 1


def test_float16_and_memory_mapping(tmp_path, items):
    model = tiny()
    full = EmbeddingCache(tmp_path / "a").get_or_compute(model, items, "street")
    half = EmbeddingCache(tmp_path / "b", dtype="float16", mmap_mb=0).get_or_compute(model, items, "street")
    assert half.dtype == np.float16 and isinstance(half, np.memmap) and not half.flags.writeable
    assert np.allclose(half.astype(np.float32), full, atol=2e-3)
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingCache(tmp_path, dtype="int8")


def test_incomplete_entry_is_recomputed(tmp_path, items):
    cache, model = EmbeddingCache(tmp_path / "cache"), tiny()
    cache.get_or_compute(model, items, "satellite")
    meta = next((tmp_path / "cache").rglob("meta.json"))
    meta.unlink()  # a run killed between the array and the JSON
    cache.get_or_compute(model, items, "satellite")
    assert cache.misses == 2


def test_custom_transform_needs_a_name(tmp_path, items):
    with pytest.raises(ValueError, match="transform_name"):
        EmbeddingCache(tmp_path).get_or_compute(tiny(), items, "satellite", transform=default_transform(SIZE))


def test_weights_hash_sees_every_tensor():
    a, b = tiny(), tiny()
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        list(b.parameters())[-1][0] += 1e-3
    assert weights_hash(a) != weights_hash(b)


# ----------------------------------------------------------------------------- the evaluation path

def _count_forwards(model):
    calls = []
    original = model.forward

    def counted(*args, **kwargs):
        calls.append(kwargs.get("view", args[1] if len(args) > 1 else None))
        return original(*args, **kwargs)

    model.forward = counted
    return calls


def test_evaluate_crossview_reuses_cached_embeddings(tmp_path):
    from conftest import build_crossview_tree

    from geolib.data.datasets import load_dataset
    from geolib.evaluation.crossview import evaluate_crossview

    ds = load_dataset("university1652", build_crossview_tree(tmp_path / "u", distractors=2))
    model = tiny()
    plain = evaluate_crossview(model, ds, SIZE)
    cache = EmbeddingCache(tmp_path / "cache")
    first = evaluate_crossview(model, ds, SIZE, cache=cache)
    n_sets = len(first.sets)  # street/drone/satellite queries, drone/satellite galleries
    assert (cache.misses, cache.hits) == (n_sets, 0) and n_sets == 5
    calls = _count_forwards(model)
    second = evaluate_crossview(model, ds, SIZE, cache=EmbeddingCache(tmp_path / "cache"))
    assert calls == []  # nothing embedded again: every set came from disk
    for key, emb in plain.sets.items():
        assert np.array_equal(first.sets[key].emb, emb.emb)      # the cache changes no number
        assert np.array_equal(second.sets[key].emb, emb.emb)
        assert [it.path for it in second.sets[key].items] == [it.path for it in emb.items]
    assert {k: r.metrics for k, r in second.results.items()} == {k: r.metrics for k, r in plain.results.items()}

    with torch.no_grad():                                        # retrained: same config, new weights
        next(model.parameters()).add_(0.05)
    third = evaluate_crossview(model, ds, SIZE, cache=cache)
    assert (cache.misses, cache.hits) == (2 * n_sets, 0) and len(calls) > 0
    assert not np.array_equal(third.sets[("gallery", "drone")].emb, first.sets[("gallery", "drone")].emb)
    fresh = evaluate_crossview(model, ds, SIZE)
    assert np.array_equal(third.sets[("gallery", "drone")].emb, fresh.sets[("gallery", "drone")].emb)


def test_weights_hash_reads_zero_dim_buffers():
    """BatchNorm keeps a 0-dim int64 counter; it must hash, and a change to it must show."""
    a, b = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    assert weights_hash(a) == weights_hash(b)
    b.num_batches_tracked += 1
    assert weights_hash(a) != weights_hash(b)
