"""Gallery index: build, save, load, query, and refusal of mismatched metadata."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geolib.retrieval.index import GalleryIndex


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


def test_from_items_takes_paths_places_and_coordinates_of_dataset_items():
    from geolib.data.datasets import ImageItem

    emb, paths, places, coords = gallery(n=4)
    items = [ImageItem(Path(p), "street", "test", "gallery", int(pl), float(c[0]), float(c[1]))
             for p, pl, c in zip(paths, places, coords)]
    index = GalleryIndex.from_items(emb, items, model="phase1", extra={"view": "street"})
    hit = index.query(emb[[2]], k=1)[0][0]
    assert (hit.path, hit.place, index.meta["extra"]) == (paths[2], 1, {"view": "street"})
    assert hit.coords == pytest.approx(coords[2].tolist())
    items[0].utm_east = None  # one unknown position: no coordinates rather than a wrong one
    assert GalleryIndex.from_items(emb, items).query(emb[[2]], k=1)[0][0].coords is None


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
    with pytest.raises(FileNotFoundError, match="nothing: no gallery index in this folder"):
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


def test_flat_search_is_the_exact_topk_with_ties_by_index(tmp_path):
    """faiss rounds a pair differently alone and in a batch; a flat index must still answer as
    `metrics.topk_search` does, duplicates ordered by gallery index, saved or not."""
    from geolib.evaluation.metrics import topk_search

    rng = np.random.default_rng(4)
    emb = rng.normal(size=(400, 24)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[rng.choice(400, 120, replace=False)] = emb[rng.choice(400, 120)]  # duplicate images
    q = np.concatenate([emb[:20], rng.normal(size=(20, 24)).astype(np.float32)])
    built = GalleryIndex.build(emb, [f"g{i}.jpg" for i in range(400)], kind="flat")
    built.save(tmp_path / "flat")
    for index in (built, GalleryIndex.load(tmp_path / "flat")):
        for k in (1, 7, 60):
            s, i = index.search(q, k)
            want_s, want_i = topk_search(q, emb, k, chunk_size=37)
            assert np.array_equal(i, want_i) and np.array_equal(s, want_s), k
    s, i = GalleryIndex.build(emb[:3], ["a", "b", "c"], kind="flat").search(q[:2], 5)
    assert i.shape == (2, 5) and (i[:, 3:] == -1).all()  # fewer items than k: faiss's padding


# ----------------------------------------------------------------------------- index choice

from geolib.retrieval.index import (AUTO_FLAT_MAX, AUTO_IVF_FLAT_MAX, IndexSpec, default_nlist, make_index,  # noqa: E402
                          resolve_spec, wants_gpu)

EASY_PARAMS = {"flat": {}, "ivf-flat": {"nlist": 16, "nprobe": 4},
               "ivf-pq": {"nlist": 16, "nprobe": 4, "m": 8, "nbits": 6},
               "hnsw": {"m": 8, "ef_construction": 40, "ef_search": 24}}


def easy_set(n=1500, d=32, nq=60, seed=4):
    """Well separated items, each query a small perturbation of one item: every index should find it."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    truth = rng.choice(n, nq, replace=False)
    q = emb[truth] + 0.02 * rng.normal(size=(nq, d)).astype(np.float32)
    return emb, q / np.linalg.norm(q, axis=1, keepdims=True), truth


@pytest.mark.parametrize("kind", list(EASY_PARAMS))
def test_every_kind_builds_saves_loads_and_finds(tmp_path, kind):
    emb, q, truth = easy_set()
    paths = [f"g/{i}.jpg" for i in range(len(emb))]
    built = GalleryIndex.build(emb, paths, kind=kind, params=EASY_PARAMS[kind], model="m", config_hash="h")
    assert built.spec == resolve_spec(kind, n=len(emb), dim=32, **EASY_PARAMS[kind])
    assert built.meta["index"]["kind"] == kind and built.meta["factory"] == built.spec.factory
    _, idx = built.search(q, k=1)
    assert np.mean(idx[:, 0] == truth) >= 0.9
    if kind in ("ivf-flat", "ivf-pq", "hnsw"):
        knob = "nprobe" if kind != "hnsw" else "ef_search"
        built.set_search_params(**{knob: 7})
    built.save(tmp_path / kind)
    loaded = GalleryIndex.load(tmp_path / kind)
    assert loaded.meta["index"]["params"] == built.meta["index"]["params"]
    if kind in ("ivf-flat", "ivf-pq"):
        import faiss
        assert faiss.extract_index_ivf(loaded.index).nprobe == 7
        assert faiss.extract_index_ivf(loaded.index).nlist == 16
    if kind == "hnsw":
        assert loaded.index.hnsw.efSearch == 7
    _, again = loaded.search(q, k=1)
    assert np.mean(again[:, 0] == truth) >= 0.9


def test_search_params_survive_a_file_that_forgot_them(tmp_path):
    """Load sets nprobe from the JSON even when the faiss file holds another value."""
    import faiss

    emb, q, _ = easy_set()
    built = GalleryIndex.build(emb, [str(i) for i in range(len(emb))], kind="ivf-flat",
                               params={"nlist": 16, "nprobe": 5})
    faiss.extract_index_ivf(built.index).nprobe = 1  # as if the file had been written elsewhere
    built.save(tmp_path / "i")
    assert faiss.extract_index_ivf(GalleryIndex.load(tmp_path / "i").index).nprobe == 5


def test_auto_choice_by_gallery_size():
    assert resolve_spec("auto", n=1000, dim=512).kind == "flat"
    assert resolve_spec("auto", n=AUTO_FLAT_MAX, dim=512).kind == "flat"
    mid = resolve_spec("auto", n=100_000, dim=512)
    assert mid == IndexSpec("ivf-flat", {"nlist": 1024, "nprobe": 16})
    assert resolve_spec("auto", n=1_000_000, dim=512).params["nlist"] == 4096
    big = resolve_spec("auto", n=AUTO_IVF_FLAT_MAX + 1, dim=512)
    assert big.kind == "ivf-pq" and big.params["m"] == 64 and big.params["nbits"] == 8
    # auto keeps only the parameters that apply to what it picked
    assert resolve_spec("auto", n=100, dim=8, nprobe=3).params == {}
    assert resolve_spec("auto", n=100_000, dim=8, nprobe=3).params["nprobe"] == 3
    assert default_nlist(1000) == 16  # capped: each list trains on at least 39 points
    index, spec, on_gpu = make_index(easy_set(n=300)[0], "auto")
    assert spec.kind == "flat" and index.ntotal == 300 and on_gpu is False


def test_bad_index_choices_fail_before_building():
    with pytest.raises(ValueError, match="unknown index kind"):
        resolve_spec("ivf", n=10)
    with pytest.raises(ValueError, match="no parameter nprobes"):
        resolve_spec("ivf-flat", n=10_000, nprobes=4)
    with pytest.raises(ValueError, match="must divide"):
        resolve_spec("ivf-pq", n=10_000, dim=30, m=8)
    with pytest.raises(ValueError, match="exceeds"):
        resolve_spec("ivf-flat", n=100, nlist=256)
    built = GalleryIndex.build(*easy_set(n=200)[:1], [str(i) for i in range(200)], kind="hnsw")
    with pytest.raises(ValueError, match="query time"):
        built.set_search_params(m=4)


class FakeFaiss:
    def __init__(self, gpus, gpu_build=True):
        self.gpus = gpus
        if gpu_build:
            self.StandardGpuResources = object

    def get_num_gpus(self):
        return self.gpus


def test_gpu_path_is_chosen_only_where_it_exists():
    import faiss

    assert wants_gpu("flat", "auto", faiss) is (faiss.get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources"))
    assert wants_gpu("ivf-flat", "auto", FakeFaiss(2)) is True
    assert wants_gpu("ivf-pq", "auto", FakeFaiss(1)) is True
    assert wants_gpu("hnsw", "auto", FakeFaiss(1)) is False  # faiss has no GPU HNSW
    assert wants_gpu("flat", "auto", FakeFaiss(0)) is False
    assert wants_gpu("flat", "auto", FakeFaiss(4, gpu_build=False)) is False
    assert wants_gpu("flat", False, FakeFaiss(4)) is False
    with pytest.raises(ValueError, match="no GPU hnsw"):
        wants_gpu("hnsw", True, FakeFaiss(1))
    with pytest.raises(ValueError, match="no faiss-gpu"):
        wants_gpu("flat", True, FakeFaiss(0))


def test_memory_mapped_float16_gallery_builds_in_chunks(tmp_path):
    emb, q, truth = easy_set()
    np.save(tmp_path / "g.npy", emb.astype(np.float16))
    from geolib.npy import NpyRows

    for source in (np.load(tmp_path / "g.npy", mmap_mode="r"), NpyRows(tmp_path / "g.npy")):
        index, spec, _ = make_index(source, "ivf-flat", {"nlist": 16, "nprobe": 16}, chunk_size=100)
        assert index.ntotal == len(emb)
        assert np.mean(index.search(q, 1)[1][:, 0] == truth) >= 0.9


def test_checkpoint_paths_under_the_outputs_root_are_stored_relative(tmp_path, monkeypatch):
    """Inside one outputs root the JSON holds a relative path; outside it, the path as given."""
    emb, paths, places, coords = gallery()
    root = tmp_path / "outputs"
    monkeypatch.setenv("GEOLIB_OUTPUTS", str(root))
    inside = str(root / "full" / "checkpoints" / "phase1" / "best")
    built = GalleryIndex.build(emb, paths, places, coords, extra={"checkpoint": inside, "view": "drone"})
    built.save(root / "full" / "index" / "phase1_drone")
    assert built.meta["extra"]["checkpoint"] == inside  # the object in memory keeps its absolute path
    on_disk = json.loads((root / "full" / "index" / "phase1_drone" / "index.json").read_text())
    assert on_disk["extra"] == {"checkpoint": "../../checkpoints/phase1/best", "view": "drone"}
    assert GalleryIndex.load(root / "full" / "index" / "phase1_drone").meta["extra"]["checkpoint"] == inside

    outside = str(tmp_path / "elsewhere" / "best")  # and an index written before relative paths: absolute
    GalleryIndex.build(emb, paths, places, coords, extra={"checkpoint": outside}).save(root / "idx2")
    assert json.loads((root / "idx2" / "index.json").read_text())["extra"]["checkpoint"] == outside
    assert GalleryIndex.load(root / "idx2").meta["extra"]["checkpoint"] == outside


def test_saved_files_are_readable_under_the_umask(tmp_path):
    """mkstemp creates 0600 files; an index (and every atomically written file) gets 0666 & ~umask."""
    import os
    import stat

    from geolib.paths import atomic_write_text

    emb, paths, places, coords = gallery()
    old = os.umask(0o022)
    try:
        GalleryIndex.build(emb, paths, places, coords).save(tmp_path / "idx")
        atomic_write_text(tmp_path / "report.html", "<p>hi</p>")
        for name in ("idx/index.faiss", "idx/index.json", "report.html"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_missing_index_names_its_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="no gallery index in this folder; notebook 05 builds"):
        GalleryIndex.load(tmp_path / "phase1_street")
    (tmp_path / "phase1_drone").mkdir()
    (tmp_path / "phase1_drone" / "index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="index.faiss is missing; notebook 02 builds"):
        GalleryIndex.load(tmp_path / "phase1_drone")
