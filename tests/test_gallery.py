"""Notebook 05's gallery indexes (load only when the model built them) and new-photo benchmark."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from geolib.apps import gallery
from geolib.data.datasets import GeoDataset, ImageItem
from geolib.retrieval.index import GalleryIndex
from geolib.records import read_records


def _unit(vectors) -> np.ndarray:
    v = np.asarray(vectors, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _index(places: list[int]) -> GalleryIndex:
    emb = np.eye(4, dtype=np.float32)[: len(places)]
    return GalleryIndex.build(emb, [f"/g/{p}.png" for p in places], places=places,
                              coords=[[500000.0 + p, 4600000.0] for p in places])


def _photos(labels: list[int]) -> list[ImageItem]:
    return [ImageItem(Path(f"/photos/{i}.jpg"), "street", "test", "query", label) for i, label in enumerate(labels)]


def test_photo_benchmark_ranks_the_true_place_per_gallery():
    photos = _photos([0, 1, 2])
    emb = _unit([[1, 0, 0, 0], [0.9, 0.5, 0, 0], [0.2, 0.1, -1, 0.5]])  # place 0 first; 1 second; 2 past k
    bench = gallery.photo_benchmark(photos, emb, {"drone": _index([0, 1, 2]), "satellite": _index([0, 1, 3])}, k=2)
    drone = bench.located[bench.located.gallery == "drone"]
    assert drone["rank"].tolist()[:2] == [1, 2] and drone["answer"].tolist()[:2] == [0, 0]
    assert bench.rate.loc["drone", "first"] == pytest.approx(33.3) and bench.rate.loc["drone", "top5"] == pytest.approx(66.7)
    assert list(bench.rate.index) == ["drone", "satellite"]
    assert list(bench.display_table().columns) == ["true place first (%)", "in the top 5 (%)"]
    with pytest.raises(ValueError, match="3 photos but 2 embeddings"):
        gallery.photo_benchmark(photos, emb[:2], {"drone": _index([0, 1])}, k=2)


def test_benchmark_records_and_findings():
    photos = _photos([0, 1])
    bench = gallery.photo_benchmark(photos, _unit([[1, 0, 0, 0], [0, 0, 1, 0]]), {"drone": _index([0, 1, 2])}, k=3,
                                    new=False)
    recs = gallery.write_benchmark_records(bench, "05_bench", dataset="toy", profile="smoke", seed=1,
                                           config={"checkpoint": "/c/best", "k": 3, "flip": False})
    (rec,) = read_records("smoke", "05_bench")
    assert recs[0]["metrics"] == rec["metrics"]
    assert (rec["protocol"], rec["query_view"], rec["gallery_view"]) == ("localize-new-street-photo", "street", "drone")
    assert rec["metrics"] == {"R@1": 50.0, "R@5": 100.0}  # k=3 of 3 places: both within the top 5 and rec["config"]["photos"] == 2
    assert rec["config"]["counted_over"] == "distinct gallery places"
    from geolib.retrieval.localize import top_places

    ex = gallery.Localized(photos[1], top_places(_index([0, 1, 2]), _unit([[1, 0, 0, 0]]), 2), None)
    assert ex.sentence("drone", 2) == "photo 1.jpg of place 1, against the drone gallery: the true place is not in the top-2"
    first, over = gallery.benchmark_findings(bench, ex, "drone", 2)
    assert "not in the top-2" in first and "best answer is place 0" in first
    assert "50.0% against the drone gallery" in over and "over all 2 new street photos" in over.lower()


def test_benchmark_photos_on_real_data_are_the_street_queries(tmp_path):
    items = _photos([3, 1]) + [ImageItem(Path("/d.png"), "drone", "test", "query", 3)]
    photos, new = gallery.benchmark_photos(GeoDataset("university1652", tmp_path, items), None, "smoke", 0, tmp_path)
    assert not new and [p.label for p in photos] == [3, 1]


def test_gallery_index_is_reused_only_for_the_model_that_built_it(tmp_path, one_torch_thread, capsys):
    from geolib.training.crossview import phase1_model
    from geolib.evaluation.cache import EmbeddingCache
    from geolib.profiles import resolve

    p1 = resolve("smoke", "phase1")
    items = [ImageItem(make_image(tmp_path / "img" / f"{p}.png", seed=p, size=(32, 32)), "drone", "test", "gallery",
                       p, utm_east=500000.0 + p, utm_north=4600000.0) for p in range(3)]
    ds = GeoDataset("university1652", tmp_path, items)
    model = phase1_model(p1).eval()
    kw = dict(cache=EmbeddingCache(tmp_path / "cache"), image_size=32, checkpoint=tmp_path / "best")
    built = gallery.gallery_index(tmp_path / "ix", "drone", model, ds, **kw)
    assert "no saved drone index" in capsys.readouterr().out and len(built) == 3
    again = gallery.gallery_index(tmp_path / "ix", "drone", model, ds, **kw)
    assert capsys.readouterr().out == "" and again.meta["config_hash"] == built.meta["config_hash"]
    other = phase1_model({**p1, "model_options": {**p1["model_options"], "embed_dim": 8}}).eval()
    rebuilt = gallery.gallery_index(tmp_path / "ix", "drone", other, ds, **kw)
    assert "-> indexing the drone gallery" in capsys.readouterr().out
    assert rebuilt.meta["config_hash"] != built.meta["config_hash"]
    with pytest.raises(ValueError, match="no satellite gallery image"):
        gallery.gallery_index(tmp_path / "ix_sat", "satellite", model, ds, **kw)


def test_save_gallery_indexes_writes_one_index_per_view_from_the_evaluation(tmp_path):
    from geolib.evaluation.crossview import Embedded, Evaluation
    from geolib.models import config_hash

    items = {v: [ImageItem(Path(f"/g/{v}{p}.png"), v, "test", "gallery", p) for p in (1, 2, 3)]
             for v in ("drone", "satellite")}
    emb = {"drone": _unit(np.eye(3, 4)), "satellite": _unit(np.eye(3, 4)[::-1])}
    ev = Evaluation(sets={("gallery", v): Embedded(items[v], emb[v]) for v in items})
    config = {"name": "tiny", "width": 4}
    saved = gallery.save_gallery_indexes(ev, ("satellite", "drone"), config, tmp_path / "ck" / "best",
                                         tmp_path / "index", flip=True)
    assert sorted(p.name for p in saved.values()) == ["phase1_drone", "phase1_satellite"]
    index = GalleryIndex.load(saved["satellite"])
    assert index.meta["config_hash"] == config_hash(config) and index.meta["extra"]["view"] == "satellite"
    assert index.meta["extra"]["flip"] is True and index.meta["places"] == [1, 2, 3]
    _, idx = index.search(emb["satellite"][2:3], 1)
    assert index.meta["places"][idx[0][0]] == 3
