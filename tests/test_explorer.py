"""The retrieval explorer without a browser: widgets driven programmatically, checked against the results."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from geolib.apps import explorer as ex
from geolib.evaluation.crossview import Embedded, Evaluation, score_direction
from geolib.data.datasets import ImageItem

# Six places in two regions 1 km apart; place p sits at (500000 + 1000*(p>=3) + 20*p, 4600000 + 10*p).
PLACES = list(range(6))
SHIFT = {0: 0, 1: 2, 2: 2, 3: 3, 4: 0, 5: 5}  # query i embeds nearest to gallery place SHIFT[i]


def _xy(p: int) -> tuple[float, float]:
    return 500000.0 + 1000.0 * (p >= 3) + 20.0 * p, 4600000.0 + 10.0 * p


def _items(tmp: Path, view: str, role: str, places: list[int]) -> list[ImageItem]:
    out = []
    for i, p in enumerate(places):
        path = make_image(tmp / f"{role}_{view}" / f"{p:04d}" / f"{i}.png", seed=hash((view, role, i)) % 1000,
                          size=(20, 20))
        e, n = _xy(p)
        out.append(ImageItem(path, view, "test", role, p, utm_east=e, utm_north=n,
                             meta={"region": "A" if p < 3 else "B"}))
    return out


def _evaluation(tmp: Path) -> Evaluation:
    """Query i (place i) embeds nearest to gallery place SHIFT[i]: queries 1 and 4 are wrong at top-1."""
    qs = Embedded(_items(tmp, "street", "query", PLACES), _query_emb().astype(np.float32))
    gs = Embedded(_items(tmp, "drone", "gallery", PLACES), np.eye(6, dtype=np.float32))
    ev = Evaluation(sets={("query", "street"): qs, ("gallery", "drone"): gs})
    ev.results["street→drone"] = score_direction(qs, gs, "street", "drone", max_k=6)
    return ev


@pytest.fixture
def results(tmp_path) -> ex.ExplorerResults:
    ev = _evaluation(tmp_path)
    res = ex.ExplorerResults.from_evaluation("model-a", ev, k=4)
    # a second run: same images, embeddings that are always right
    ev2 = _evaluation(tmp_path)
    qs = ev2.sets[("query", "street")]
    ev2.sets[("query", "street")] = Embedded(qs.items, np.eye(6, dtype=np.float32))
    ev2.results["street→drone"] = score_direction(ev2.sets[("query", "street")], ev2.sets[("gallery", "drone")],
                                                  "street", "drone", max_k=6)
    return res.add_evaluation("model-b", ev2, k=4)


def _query_emb() -> np.ndarray:
    """Mostly the SHIFT place, some of its own place, and a falling ramp so that no two scores tie."""
    basis = np.eye(6)
    ramp = 0.004 * (6 - np.arange(6))
    q = np.stack([0.9 * basis[SHIFT[i]] + 0.3 * basis[i] + ramp for i in PLACES])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _expected(q: int) -> list[int]:
    """Gallery indices by descending score (gallery embeddings are the identity)."""
    return list(np.argsort(-_query_emb()[q]))


def test_results_hold_ranks_correctness_and_distances(results):
    r = results.get("model-a", "street→drone")
    assert (r.n_queries, r.k, len(r.gallery)) == (6, 4, 6)
    for q in range(6):
        assert list(r.index[q]) == _expected(q)[:4]
    assert list(r.wrong()) == [1, 4]
    assert list(r.first_correct()) == [0, 1, 0, 0, 1, 0]
    assert sorted(r.worst(2)) == [1, 4]
    d = r.distances()
    e0, n0 = _xy(4)
    e1, n1 = _xy(0)
    assert d[4, 0] == pytest.approx(np.hypot(e0 - e1, n0 - n1))
    assert d[0, 0] == 0.0
    assert results.names() == ["model-a", "model-b"] and len(results) == 2
    assert results.get("model-b", "street→drone").metrics["R@1"] == 100.0


def test_widget_shows_ranks_colours_and_distances_of_the_results(results):
    app = ex.explore(results, k=3)
    r = results.get("model-a", "street→drone")
    assert app.query_index == 0 and len(app.shown) == 3
    for q in range(6):
        app.query.value = q
        assert app.query_index == q
        expected = _expected(q)[:3]
        assert [row["rank"] for row in app.shown] == [1, 2, 3]
        assert [row["gallery_index"] for row in app.shown] == expected
        for row, (box, img, cap) in zip(app.shown, app.rank_tiles):
            right = r.gallery.places[row["gallery_index"]] == r.queries.places[q]
            assert row["correct"] is right and row["colour"] == (ex.GREEN if right else ex.RED)
            assert img.layout.border.endswith(row["colour"]) and box.layout.display == ""
            e, n = _xy(r.gallery.places[row["gallery_index"]])
            qe, qn = _xy(q)
            assert row["distance_m"] == pytest.approx(np.hypot(e - qe, n - qn))
            assert f"place {row['place']}" in cap.value and f"{row['distance_m']:.0f} m" in cap.value
            assert f"{row['score']:.3f}" in cap.value
        assert f"query {q} " in app.header.value
    app.k.value = 2
    assert len(app.shown) == 2 and [t[0].layout.display for t in app.rank_tiles] == ["", "", "none", "none"]


def test_only_wrong_toggle_walks_the_wrong_queries(results):
    app = ex.explore(results)
    app.only_wrong.value = True
    assert app.query.max == 1
    seen = []
    for v in (0, 1):
        app.query.value = v
        seen.append(app.query_index)
        assert app.shown[0]["colour"] == ex.RED
    assert seen == [1, 4]
    app.run.value = "model-b"  # every top-1 right: nothing to show, a sentence instead
    assert app.query_index is None and "no query has a wrong top-1" in app.header.value
    app.only_wrong.value = False
    assert app.query_index is not None and app.shown[0]["colour"] == ex.GREEN


def test_map_shows_truth_topk_and_gallery_by_region(results):
    app = ex.explore(results, k=2)
    app.query.value = 4
    names = [t.name for t in app.map.data]
    assert names.count(ex.QUERY_NAME) == 2 and names.count(ex.TOPK_NAME) == 2
    assert {"gallery · region A", "gallery · region B"} <= set(names)
    r = results.get("model-a", "street→drone")
    o = ex._origin(r)
    truth = next(t for t in app.map.data if t.name == ex.QUERY_NAME)
    assert (truth.x[0] + o[0], truth.y[0] + o[1]) == pytest.approx(_xy(4))
    top = next(t for t in app.map.data if t.name == ex.TOPK_NAME)
    assert list(top.marker.line.color) == [row["colour"] for row in app.shown]
    assert (top.x[0] + o[0], top.y[0] + o[1]) == pytest.approx(_xy(app.shown[0]["place"]))
    colours = ex.region_colours(r.gallery.regions)
    region_a = next(t for t in app.map.data if t.name == "gallery · region A")
    assert region_a.marker.color == colours["A"] != colours["B"]


def test_upload_without_index_or_with_a_bad_file_gives_a_message(results):
    app = ex.explore(results)
    assert app.upload.disabled and "notebook 02" in app.upload_message.value
    assert app.handle_upload(b"not an image", "notes.txt") is None
    assert "No gallery index" in app.upload_message.value


def test_static_views(results, tmp_path):
    r = results.get("model-a", "street→drone")
    fig = ex.query_grid(r, r.worst(2), k=3, title="worst")
    assert len(fig.axes) == 2 * 4
    assert "place" in fig.axes[1].get_title() and " m" in fig.axes[1].get_title()
    assert fig.axes[1].title.get_color() in ("red", "green")
    assert ex.map_png(r, 4, 3) is not None and ex.recall_figure(results) is not None
    labels, m = ex.region_confusion(r)
    assert labels == ["A", "B"] and m.tolist() == [[3, 0], [1, 2]]
    assert ex.region_confusion_figure(results, "model-a") is not None
    page = ex.save_map_html(ex.map_figure(r, 1, 3), tmp_path / "map.html").read_text()
    assert "<script src=\"http" not in page and len(page) > 1_000_000  # plotly.js is inside, not fetched
    table = ex.summary_table(results)
    assert list(table["run"]) == ["model-a", "model-b"] and list(table["top-1 wrong"]) == [2, 0]
    lines = ex.findings(results, "model-a")
    assert "R@1 66.7%" in lines[0] and "50% of the wrong top-1s are in the query's own region" in lines[0]


def test_vpr_retrievals_use_the_radius(tmp_path):
    def item(i: int, role: str, east: float) -> ImageItem:
        return ImageItem(make_image(tmp_path / role / f"{i}.png", seed=i, size=(16, 16)), "vpr", "test", role,
                         utm_east=east, utm_north=0.0, meta={"pano_id": f"p{i}"})

    db = [item(i, "gallery", 30.0 * i) for i in range(4)]
    qs = [item(10, "query", 1.0), item(11, "query", 61.0)]
    db_emb = np.eye(4, dtype=np.float32)
    q_emb = np.array([[0.1, 1, 0, 0], [0, 0, 1, 0.1]], dtype=np.float32)  # q0 → db1 (29 m), q1 → db2 (1 m)
    res = ex.ExplorerResults().add_vpr("vpr-run", qs, db, q_emb, db_emb, k=3)
    r = res.get("vpr-run", "query→database")
    assert r.protocol == "vpr-25m" and r.index[:, 0].tolist() == [1, 2]
    assert r.correct[:, 0].tolist() == [False, True] and r.metrics["R@1"] == 50.0
    assert r.distances()[0, 0] == pytest.approx(29.0) and r.gallery.places[1] == "p1"


def test_frontend_detection(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    monkeypatch.delenv("GEOLIB_INTERACTIVE", raising=False)
    assert not ex.frontend_present()
    monkeypatch.setenv("JPY_SESSION_NAME", "/lab/05.ipynb")
    assert ex.frontend_present()
    monkeypatch.setenv("GEOLIB_INTERACTIVE", "0")
    assert not ex.frontend_present()


def test_thumbnails_are_cached_and_survive_bad_files(tmp_path):
    good = make_image(tmp_path / "a.png", size=(300, 200))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    ex.thumbnail_png.cache_clear()
    first = ex.thumbnail_png(str(good), 64)
    assert ex.thumbnail_png(str(good), 64) is first and ex.thumbnail_png.cache_info().hits == 1
    assert ex.thumbnail_png(str(bad), 64).startswith(b"\x89PNG")


# --------------------------------------------------------------------------- notebook 05's checkpoint and records

def test_checkpoint_or_fallback_prefers_notebook_02s_and_refuses_without_epochs(monkeypatch, tmp_path):
    from geolib.paths import outputs_root, phase1_checkpoint

    monkeypatch.setenv("GEOLIB_OUTPUTS", str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="run notebook 02 first .* fallback_epochs > 0"):
        ex.checkpoint_or_fallback("smoke", None, {}, 0)
    folder = outputs_root() / "smoke" / "checkpoints" / "phase1"
    folder.mkdir(parents=True)
    for name in ("last.json", "last.safetensors"):
        (folder / name).write_text("{}")
    said = []
    assert ex.checkpoint_or_fallback("smoke", None, {}, 3, announce=said.append) == (folder / "last", False)
    assert said == [] and phase1_checkpoint("smoke") == folder / "last"


def test_untrained_like_is_the_same_architecture_seeded():
    import torch

    from geolib.training.crossview import phase1_model
    from geolib.profiles import resolve

    model = phase1_model(resolve("smoke", "phase1"))
    a, b = ex.untrained_like(model, 3), ex.untrained_like(model, 3)
    assert a.config == model.config
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_records_summary_keeps_the_last_per_source_model_direction():
    def rec(source, model, q, g, r1, task="crossview", dataset="toy"):
        return {"_source": source, "task": task, "dataset": dataset, "model": model, "query_view": q,
                "gallery_view": g, "protocol": "p", "metrics": {"R@1": r1, "loss": 1.0}}

    records = [rec("02", "phase1", "street", "drone", 10.0), rec("02", "phase1", "street", "drone", 20.0),
               rec("05", "phase1", "street", "drone", 30.0), rec("02", "cosplace", "query", "database", 1.0),
               rec("02", "phase1", "street", "drone", 5.0, dataset="other"),
               rec("02", "phase1", "street", "satellite", 7.0, task="world")]
    t = ex.records_summary(records, "toy")
    assert list(t.columns) == ["source", "model", "direction", "protocol", "R@1", "R@5", "R@10", "AP"]
    assert t[["source", "R@1"]].values.tolist() == [["02", 20.0], ["05", 30.0]]
    assert t["direction"].tolist() == ["street→drone"] * 2
    assert ex.records_summary([], "toy").empty
