"""Gallery index: build, save, load, query, and refusal of mismatched metadata."""
from __future__ import annotations

import json

import numpy as np
import pytest

from geolib.index import GalleryIndex, hits_table


def gallery(n=12, d=8, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    paths = [f"gallery/{i:04d}/img.jpg" for i in range(n)]
    coords = rng.uniform(0, 1000, (n, 2))
    return emb, paths, np.arange(n) // 2, coords


def test_build_save_load_query(tmp_path):
    emb, paths, places, coords = gallery()
    built = GalleryIndex.build(emb, paths, places, coords, model="phase1-cpu", config_hash="abc123")
    built.save(tmp_path / "idx")
    assert not list((tmp_path / "idx").glob("*.tmp"))
    index = GalleryIndex.load(tmp_path / "idx", expect_config_hash="abc123")
    assert len(index) == 12 and index.meta["model"] == "phase1-cpu"
    hits = index.query(emb[[3, 7]] + 0.01, k=3)
    assert [h[0].gallery_index for h in hits] == [3, 7]
    top = hits[0][0]
    assert top.path == paths[3] and top.place == 1 and top.coords == pytest.approx(coords[3].tolist())
    assert top.score == pytest.approx(float(emb[3] @ (emb[3] + 0.01)), rel=1e-5)
    assert [h.rank for h in hits[1]] == [0, 1, 2]
    assert len(hits_table(hits)) == 6


def test_scores_match_exact_inner_product(tmp_path):
    emb, paths, _, _ = gallery(n=50, d=16, seed=1)
    q = gallery(n=5, d=16, seed=2)[0]
    scores, idx = GalleryIndex.build(emb, paths).search(q, k=4)
    full = q @ emb.T
    assert np.array_equal(idx, np.argsort(-full, axis=1)[:, :4])
    assert np.allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :4], atol=1e-5)


def test_mismatched_metadata_fails_clearly(tmp_path):
    emb, paths, places, coords = gallery()
    GalleryIndex.build(emb, paths, places, coords).save(tmp_path / "a")
    GalleryIndex.build(emb[:10], paths[:10]).save(tmp_path / "b")
    # metadata of one run beside the index of another
    (tmp_path / "a" / "index.json").replace(tmp_path / "b" / "index.json")
    with pytest.raises(ValueError, match="does not match"):
        GalleryIndex.load(tmp_path / "b")
    # a hand-edited count (hash still right) is caught by the count check
    GalleryIndex.build(emb, paths).save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "index.json").read_text())
    meta["count"], meta["paths"] = 11, paths[:11]
    (tmp_path / "c" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="metadata count 11 ≠ index size 12"):
        GalleryIndex.load(tmp_path / "c")
    GalleryIndex.build(emb, paths, config_hash="one").save(tmp_path / "d")
    with pytest.raises(ValueError, match="not two"):
        GalleryIndex.load(tmp_path / "d", expect_config_hash="two")
    with pytest.raises(FileNotFoundError, match="index.faiss is missing"):
        GalleryIndex.load(tmp_path / "nothing")


def test_bad_build_inputs():
    emb, paths, places, coords = gallery()
    with pytest.raises(ValueError, match="11 paths"):
        GalleryIndex.build(emb, paths[:11])
    with pytest.raises(ValueError, match="places"):
        GalleryIndex.build(emb, paths, places[:3])
    with pytest.raises(ValueError, match="coords"):
        GalleryIndex.build(emb, paths, coords=coords[:, 0])
    with pytest.raises(ValueError, match=r"\(Q, 8\)"):
        GalleryIndex.build(emb, paths).search(np.zeros((2, 4), np.float32))


def test_approximate_factory_roundtrip(tmp_path):
    emb, paths, _, _ = gallery(n=200, d=8, seed=3)
    GalleryIndex.build(emb, paths, factory="HNSW16,Flat").save(tmp_path / "h")
    index = GalleryIndex.load(tmp_path / "h")
    assert index.meta["factory"] == "HNSW16,Flat"
    assert index.query(emb[:1], k=1)[0][0].gallery_index == 0


def test_query_images_checks_the_model(tmp_path):
    import torch

    from geolib.models import config_hash, create_model
    from test_models import TINY

    torch.manual_seed(0)
    model = create_model("phase1-cpu", **TINY).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        emb = model(images, "satellite").numpy()
    index = GalleryIndex.build(emb, [f"s{i}.jpg" for i in range(4)], places=[10, 11, 12, 13],
                               model="phase1-cpu", config_hash=config_hash(model.config))
    hits = index.query_images(model, images[[2]], view="satellite", k=2)
    assert hits[0][0].place == 12 and hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    other = create_model("phase1-cpu", **{**TINY, "embed_dim": 24, "fusion_dim": 8})
    with pytest.raises(ValueError, match="built by model config"):
        index.query_images(other, images[:1], view="street")
