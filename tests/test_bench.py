"""`python -m geolib bench --tiny`: rows and records are well-formed. Never asserts speed."""
from __future__ import annotations

import numpy as np
import pytest

from geolib.apps import bench
from geolib.records import REQUIRED, read_records


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny bench run for the module (its own outputs root)."""
    import os

    root = tmp_path_factory.mktemp("bench-outputs")
    old = os.environ.get("GEOLIB_OUTPUTS")
    os.environ["GEOLIB_OUTPUTS"] = str(root)
    try:
        code = bench.main(["--tiny"])
        records = read_records("bench", "bench", root=root)
    finally:
        if old is None:
            os.environ.pop("GEOLIB_OUTPUTS")
        else:
            os.environ["GEOLIB_OUTPUTS"] = old
    return code, records


def test_tiny_bench_writes_well_formed_records(tiny_run):
    code, records = tiny_run
    assert code == 0 and records
    for r in records:
        assert set(REQUIRED) <= set(r)
        assert r["task"] == "bench" and r["profile"] == "bench" and r["metrics"]
        m = r["config"]["machine"]
        assert {"cores", "torch", "device", "faiss"} <= set(m)
        assert r["config"]["section"] in (*bench.SECTIONS, "summary")
    sections = {r["config"]["section"] for r in records}
    assert sections == {*bench.SECTIONS, "summary"}
    assert records[-1]["metrics"]["seconds"] > 0 and records[-1]["config"]["section"] == "summary"


def test_retrieval_rows(tiny_run):
    rows = [r for r in tiny_run[1] if r["config"]["section"] == "retrieval"]
    plan = bench.PLANS["tiny"]
    for embedding in ("structured", "uniform"):
        mine = [r for r in rows if r["config"]["embedding"] == embedding]
        assert {r["config"]["index"] for r in mine} == {"numpy", "flat", "ivf-flat", "ivf-pq", "hnsw"}
        for r in mine:
            c, m = r["config"], r["metrics"]
            assert c["gallery_size"] == plan.sizes[0] and c["dim"] == plan.dim and c["queries"] == plan.queries
            assert isinstance(c["params"], dict)
            assert m["qps"] > 0 and 0 <= m["recall@10_vs_exact"] <= 1 and m["peak_mb"] >= 0
            if c["index"] != "numpy":
                assert m["build_s"] >= 0 and m["speedup_vs_exact"] > 0
        flat = next(r for r in mine if r["config"]["index"] == "flat")
        assert flat["metrics"]["recall@10_vs_exact"] == pytest.approx(1.0)
        ivf = [r for r in mine if r["config"]["index"] == "ivf-flat"]
        assert all("nlist" in r["config"]["params"] and "nprobe" in r["config"]["params"] for r in ivf)


def test_eval_train_render_rows(tiny_run):
    rows = tiny_run[1]
    ev = [r for r in rows if r["config"]["section"] == "eval"]
    assert sorted(r["config"]["mode"] for r in ev) == ["in-memory", "streaming"]
    assert all(r["metrics"]["ranks_identical"] is True and r["metrics"]["seconds"] > 0 for r in ev)
    train = [r for r in rows if r["config"]["section"] == "train"]
    assert {r["config"]["variant"] for r in train} == {"eager", "channels_last"}
    assert all(r["metrics"]["images_per_s"] > 0 and r["config"]["profile"] == "smoke" for r in train)
    render = [r for r in rows if r["config"]["section"] == "render"]
    assert {r["config"]["view"] for r in render} >= {"satellite", "drone", "street"}
    assert all(r["metrics"]["images_per_s"] > 0 for r in render)


def test_table_and_arguments(tiny_run, capsys):
    table = bench.markdown_table(tiny_run[1])
    lines = table.splitlines()
    assert lines[0].startswith("| section | case |") and len(lines) == len(tiny_run[1]) + 2
    assert len({line.count("|") for line in lines}) == 1
    assert bench.main(["--only", "retrieval,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_structured_embeddings_have_their_neighbours_in_their_cluster():
    data = bench.make_embeddings("structured", 2000, 40, 32, seed=3)
    top = bench.numpy_topk(data.queries, data.gallery, k=5)
    assert np.mean(data.gallery_labels[top[:, 0]] == data.query_labels) == 1.0
    full = np.argsort(-(data.queries @ data.gallery.T), axis=1, kind="stable")[:, :5]
    assert bench.recall_overlap(top, full, k=5) == 1.0
    assert bench.recall_overlap(top[:, ::-1], full, k=5) == 1.0  # overlap ignores order
    uni = bench.make_embeddings("uniform", 100, 4, 8)
    assert uni.gallery_labels is None and np.allclose(np.linalg.norm(uni.gallery, axis=1), 1, atol=1e-5)
