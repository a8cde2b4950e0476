"""Retrieval metrics against a brute-force reference and hand-made cases.

Tie order under test: gallery items with exactly equal scores rank by gallery index, lower first
(a stable sort by descending score). Hand-made ties use small integer-valued vectors so that every
score is exact in float32.
"""
from __future__ import annotations

import numpy as np
import pytest

from geolib.evaluation.metrics import (label_ranks, one_percent_k, positive_ranks, recall_curve,
                             retrieval_metrics, topk_search, vpr_positives, vpr_recalls)


def exact_scores(q, g):
    """The documented score of every pair: exact float64 products summed left to right, then float32."""
    prod = q.astype(np.float32).astype(np.float64)[:, None, :] * g.astype(np.float32).astype(np.float64)[None]
    return np.cumsum(prod, axis=2)[..., -1].astype(np.float32)


def brute_force(q, ql, g, gl, ks=(1, 5, 10), junk=-1):
    """University-1652's evaluate loop, rewritten plainly, with a stable tie order."""
    scores = exact_scores(q, g)
    G = len(gl)
    k1 = max(1, round(G / 100))
    hits = {k: 0 for k in (*ks, k1)}
    ap_sum = 0.0
    for i in range(len(q)):
        order = np.argsort(-scores[i], kind="stable")
        order = order[gl[order] != junk]
        good = np.flatnonzero(gl[order] == ql[i]) if ql[i] != junk else np.array([], int)
        if len(good) == 0:
            continue
        for k in hits:
            hits[k] += int(good[0] < k)
        ap = 0.0
        for j, row in enumerate(good):
            precision = (j + 1) / (row + 1)
            old = j / row if row != 0 else 1.0
            ap += (old + precision) / 2 / len(good)
        ap_sum += ap
    n = len(q)
    out = {f"R@{k}": 100 * hits[k] / n for k in ks}
    out["R@1%"] = 100 * hits[k1] / n
    out["AP"] = 100 * ap_sum / n
    return out


def normed(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


@pytest.mark.parametrize("seed,chunk", [(0, 7), (1, 16), (2, 1000), (3, 1)])
def test_random_matches_brute_force(seed, chunk):
    rng = np.random.default_rng(seed)
    q, g = normed(rng, 40, 8), normed(rng, 130, 8)
    ql = rng.integers(0, 25, 40)
    gl = rng.integers(-1, 30, 130)  # includes junk (-1) and labels no query has
    got = retrieval_metrics(q, ql, g, gl, chunk_size=chunk)
    assert_same(got, brute_force(q, ql, g, gl))


def test_many_positives_and_ties_match_brute_force():
    rng = np.random.default_rng(5)
    # coarse integer vectors: many exact ties, many true items per query
    q = rng.integers(-2, 3, (30, 4)).astype(np.float32)
    g = rng.integers(-2, 3, (250, 4)).astype(np.float32)
    ql, gl = rng.integers(0, 4, 30), rng.integers(-1, 5, 250)
    for chunk in (3, 64, 4096):
        assert_same(retrieval_metrics(q, ql, g, gl, chunk_size=chunk), brute_force(q, ql, g, gl))


def test_trapezoid_ap_by_hand():
    # one query; gallery scores 0.9 (wrong), 0.8 (true), 0.7 (wrong), 0.6 (true)
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.9, 0], [0.8, 0], [0.7, 0], [0.6, 0]], np.float32)
    m = retrieval_metrics(q, [1], g, [0, 1, 2, 1], ks=(1, 2))
    # true items at ranks 1 and 3: (0/1 + 1/2)/2 · 1/2 + (1/3 + 2/4)/2 · 1/2
    assert m["AP"] == pytest.approx(100 * ((0 + 0.5) / 4 + (1 / 3 + 0.5) / 4))
    assert (m["R@1"], m["R@2"]) == (0.0, 100.0)
    # a true item at rank 0 has "precision before" 1: AP of one true item at the top is 1
    assert retrieval_metrics(q, [0], g, [0, 1, 2, 1])["AP"] == pytest.approx(100.0)


def test_junk_is_removed_before_ranking():
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.9, 0], [0.8, 0]], np.float32)
    assert retrieval_metrics(q, [1], g, [-1, 1], ks=(1,))["R@1"] == 100.0
    assert retrieval_metrics(q, [1], g, [0, 1], ks=(1,))["R@1"] == 0.0
    assert retrieval_metrics(q, [1], g, [-1, 1], ks=(1,), junk_label=None)["R@1"] == 0.0


def test_queries_without_true_items_stay_in_denominator():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    g = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    m = retrieval_metrics(q, [0, 7], g, [0, 1], ks=(1,))
    assert m == {"R@1": 50.0, "R@1%": 50.0, "AP": 50.0}
    # a query labelled junk has no true item either
    assert retrieval_metrics(q, [0, -1], g, [0, 1], ks=(1,))["AP"] == 50.0


def test_ties_rank_by_gallery_index():
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], np.float32)  # three exact ties
    assert retrieval_metrics(q, [5], g, [5, 6, 6], ks=(1,))["R@1"] == 100.0  # true item first
    assert retrieval_metrics(q, [6], g, [5, 6, 6], ks=(1, 2))["R@1"] == 0.0  # rank 1
    r = label_ranks(q, [6], g, [5, 6, 6])
    assert r.first_rank.tolist() == [1]
    assert r.ap[0] == pytest.approx(((0 / 1 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def test_one_percent_k():
    assert [one_percent_k(n) for n in (1, 49, 51, 149, 150, 250, 951, 10_000)] == [1, 1, 1, 1, 2, 2, 10, 100]
    rng = np.random.default_rng(9)
    q, g = normed(rng, 50, 4), normed(rng, 951, 4)
    ql, gl = rng.integers(0, 951, 50), np.arange(951)
    r = label_ranks(q, ql, g, gl)
    want = 100 * np.mean(r.first_rank < 10)  # k = round(9.51) = 10
    assert retrieval_metrics(q, ql, g, gl)["R@1%"] == pytest.approx(want)


def test_recall_curve_and_empty_inputs():
    rng = np.random.default_rng(3)
    q, g = normed(rng, 20, 6), normed(rng, 60, 6)
    ql, gl = rng.integers(0, 10, 20), rng.integers(0, 10, 60)
    curve = recall_curve(label_ranks(q, ql, g, gl), max_k=60)
    assert np.all(np.diff(curve) >= 0)
    m = retrieval_metrics(q, ql, g, gl)
    assert curve[0] == pytest.approx(m["R@1"]) and curve[9] == pytest.approx(m["R@10"])
    empty = retrieval_metrics(q[:0], ql[:0], g, gl)
    assert empty["R@1"] == 0.0 and empty["AP"] == 0.0


def test_bad_inputs_are_named():
    q = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(q, [1], q, [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((1, 3), np.nan, np.float32), [1], q, [1, 2])
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        positive_ranks(q, q, [np.array([2]), np.array([0])])
    with pytest.raises(ValueError, match="junk"):
        positive_ranks(q, q, [np.array([1]), np.array([0])], keep=np.array([True, False]))
    with pytest.raises(ValueError, match="width"):
        retrieval_metrics(q, [1, 2], np.zeros((2, 4), np.float32), [1, 2])


def test_positive_ranks_agree_with_topk_search():
    rng = np.random.default_rng(11)
    q, g = normed(rng, 25, 16), normed(rng, 300, 16)
    scores, index = topk_search(q, g, k=20, chunk_size=37)
    full = exact_scores(q, g)
    want = np.argsort(-full, axis=1, kind="stable")[:, :20]
    assert np.array_equal(index, want)
    assert np.array_equal(scores, np.take_along_axis(full, want, 1))
    # the rank of each query's top-1 item, taken as its only true item, is 0
    r = positive_ranks(q, g, [np.array([i]) for i in index[:, 0]], chunk_size=50)
    assert r.first_rank.tolist() == [0] * 25


def test_vpr_radius_is_inclusive_and_misses_count():
    db_utm = np.array([[0.0, 0.0], [25.0, 0.0], [100.0, 0.0]])
    q_utm = np.array([[0.0, 0.0], [50.0, 0.0], [1000.0, 0.0]])
    pos = vpr_positives(q_utm, db_utm, 25.0)
    assert [p.tolist() for p in pos] == [[0, 1], [1], []]  # 25 m exactly is a positive
    db = np.eye(3, dtype=np.float32)
    q = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)  # q0 → db2 (wrong), q1 → db1
    m = vpr_recalls(q_utm, db_utm, q, db, ks=(1, 2, 3))
    # q0: db2 first, then db0/db1 tied at 0 → rank 1; q1: rank 0; q2: no positive → miss
    assert m == {"R@1": pytest.approx(100 / 3), "R@2": pytest.approx(200 / 3), "R@3": pytest.approx(200 / 3)}


def test_vpr_matches_brute_force():
    rng = np.random.default_rng(4)
    db_utm, q_utm = rng.uniform(0, 200, (150, 2)), rng.uniform(0, 200, (30, 2))
    db, q = normed(rng, 150, 8), normed(rng, 30, 8)
    got = vpr_recalls(q_utm, db_utm, q, db, chunk_size=17)
    dist = np.linalg.norm(q_utm[:, None] - db_utm[None], axis=2)
    order = np.argsort(-exact_scores(q, db), axis=1, kind="stable")
    for k in (1, 5, 10, 20):
        hit = [(dist[i, order[i, :k]] <= 25).any() for i in range(30)]
        assert got[f"R@{k}"] == pytest.approx(100 * np.mean(hit))


def test_memory_mapped_embeddings_stream_from_disk(tmp_path):
    rng = np.random.default_rng(8)
    q, g = normed(rng, 30, 8), normed(rng, 90, 8)
    ql, gl = rng.integers(0, 10, 30), rng.integers(-1, 10, 90)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "g.npy", g)
    qm, gm = np.load(tmp_path / "q.npy", mmap_mode="r"), np.load(tmp_path / "g.npy", mmap_mode="r")
    a, b = label_ranks(qm, ql, gm, gl, chunk_size=16), label_ranks(q, ql, g, gl, chunk_size=4096)
    assert np.array_equal(a.first_rank, b.first_rank) and np.allclose(a.ap, b.ap)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_streaming_from_npy_equals_in_memory_bit_for_bit(tmp_path, dtype):
    from geolib.npy import NpyRows
    from geolib.evaluation.metrics import streaming_label_ranks, streaming_retrieval_metrics, streaming_topk

    rng = np.random.default_rng(11)
    q, g = normed(rng, 70, 16).astype(dtype), normed(rng, 300, 16).astype(dtype)
    g[5] = g[9]  # an exact duplicate: a tie broken by gallery index
    ql, gl = rng.integers(0, 40, 70), rng.integers(-1, 45, 300)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "g.npy", g)
    for chunk in (32, 4096):
        disk = streaming_label_ranks(tmp_path / "q.npy", ql, tmp_path / "g.npy", gl, chunk_size=chunk)
        mem = label_ranks(q, ql, g, gl, chunk_size=chunk)
        assert np.array_equal(disk.first_rank, mem.first_rank)
        assert np.array_equal(disk.ap, mem.ap)  # identical float64, not merely close
    assert isinstance(NpyRows(tmp_path / "g.npy")[np.array([3, 1])], np.ndarray)
    want = brute_force(q.astype(np.float32), ql, g.astype(np.float32), gl)
    assert_same(streaming_retrieval_metrics(tmp_path / "q.npy", ql, tmp_path / "g.npy", gl, chunk_size=50), want)
    s_disk, i_disk = streaming_topk(tmp_path / "q.npy", tmp_path / "g.npy", k=5, chunk_size=32)
    s_mem, i_mem = topk_search(q, g, k=5, chunk_size=32)
    assert np.array_equal(i_disk, i_mem) and np.array_equal(s_disk, s_mem)


def test_npy_rows_reads_only_what_is_asked(tmp_path):
    from geolib.npy import NpyRows

    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "a.npy", a)
    rows = NpyRows(tmp_path / "a.npy")
    assert rows.shape == (10, 4) and len(rows) == 10 and rows.dtype == np.float32
    assert np.array_equal(rows[2:5], a[2:5]) and np.array_equal(rows[np.array([7, 2])], a[[7, 2]])
    assert np.array_equal(rows[-1], a[-1]) and np.array_equal(np.asarray(rows), a)
    with pytest.raises(IndexError):
        rows[np.array([3, 10])]
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(ValueError, match="2-D"):
        NpyRows(tmp_path / "v.npy")


def test_vigor_hit_rate_counts_semi_positives_on_a_hand_case():
    from geolib.evaluation.metrics import hit_rate, vigor_metrics

    # top-1 of query 0 is its positive, of query 1 a semi-positive, of query 2 neither
    assert hit_rate([4, 7, 1], [4, 0, 2], [[5, 6, 8], [7, 3, 9], [3, 5, 6]]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="one of each per query"):
        hit_rate([1, 2], [1], [[2]])
    # gallery: 4 one-hot tiles; queries equal to tile 1 (positive 0, semi 1), tile 2 (positive 2), tile 3 (positive 0)
    g = np.eye(4, dtype=np.float32)
    q = g[[1, 2, 3]]
    out = vigor_metrics(q, g, [0, 2, 0], [[1, 3], [0], [2]], ks=(1, 2))
    assert out["R@1"] == pytest.approx(100 / 3)  # only query 1 ranks its positive first
    assert out["hit_rate"] == pytest.approx(200 / 3)  # query 0's top-1 is a semi-positive
    # ties (query 2 scores 0 against tiles 0, 1, 2) go to the lower index: tile 0, its positive, ranks first
    assert vigor_metrics(np.array([[0, 0, 0, 1.0]], np.float32), g[:3], [0], [[]])["R@1"] == 100.0


def test_ties_do_not_depend_on_blocking(one_torch_thread):
    """Duplicate gallery and query rows of non-integer floats: a float32 product of differently
    shaped blocks may round them an ulp apart, so ranks, top-k and metrics are compared at every
    chunk_size from 1 to the gallery size (16 queries keep the 1-row blocks few)."""
    rng = np.random.default_rng(21)
    q, g = normed(rng, 16, 16), normed(rng, 300, 16)
    g[rng.choice(300, 60, replace=False)] = g[rng.choice(300, 60)]  # exact duplicate rows
    g[::7] = q[rng.integers(0, 16, len(g[::7]))]  # items equal to a query: top scores tie too
    q[8:12] = q[:4]  # duplicate queries, in other query blocks at most chunk sizes
    ql, gl = rng.integers(0, 12, 16), rng.integers(-1, 12, 300)
    ql[8:12] = ql[:4]
    for dup in range(150, 160):  # a true item and its duplicate under another label
        g[dup], gl[dup] = g[dup - 100], (gl[dup - 100] + 1) % 12
    base_ranks = label_ranks(q, ql, g, gl, chunk_size=4096)
    base_metrics = retrieval_metrics(q, ql, g, gl, ks=(1, 5), chunk_size=4096)
    base_s, base_i = topk_search(q, g, k=12, chunk_size=4096)
    assert np.array_equal(base_ranks.first_rank[8:12], base_ranks.first_rank[:4])
    assert np.array_equal(base_ranks.ap[8:12], base_ranks.ap[:4])
    assert np.array_equal(base_i[8:12], base_i[:4])
    tied = np.diff(base_s, axis=1) == 0
    assert tied.any(), "the test data must contain exact ties in the top-k"
    assert (np.diff(base_i, axis=1)[tied] > 0).all()  # equal scores in gallery order
    for chunk in range(1, 301):
        r = label_ranks(q, ql, g, gl, chunk_size=chunk)
        assert np.array_equal(r.first_rank, base_ranks.first_rank), chunk
        assert np.array_equal(r.ap, base_ranks.ap), chunk
        s, i = topk_search(q, g, k=12, chunk_size=chunk)
        assert np.array_equal(i, base_i) and np.array_equal(s, base_s), chunk
    for chunk in (1, 3, 8, 13, 299):
        assert retrieval_metrics(q, ql, g, gl, ks=(1, 5), chunk_size=chunk) == base_metrics, chunk
    # the top-1 of the exact search ranks 0 when taken as the only true item, ties included
    top1 = positive_ranks(q, g, [np.array([i]) for i in base_i[:, 0]], chunk_size=7)
    assert top1.first_rank.tolist() == [0] * 16


def test_chance_recall_by_hand_and_against_random_rankings():
    from geolib.evaluation.metrics import chance_recall, label_chance_recall

    # query 0 has 2 of 4 kept items true, query 1 none (junk is not ranked): (2/4 + 0) / 2
    assert label_chance_recall([1, 7], [1, 1, 2, -1, 3]) == pytest.approx(100 * (2 / 4) / 2)
    assert chance_recall([], 10) == 0.0
    q_utm, db_utm = np.array([[0.0, 0.0], [0.0, 100.0]]), np.array([[0.0, 25.0], [0.0, 30.0], [0.0, 90.0]])
    assert chance_recall(vpr_positives(q_utm, db_utm, 25.0), 3) == pytest.approx(100 * (1 / 3 + 1 / 3) / 2)
    # the expectation over many random rankings
    rng = np.random.default_rng(2)
    ql, gl = rng.integers(0, 5, 30), rng.integers(0, 5, 40)
    hits = [np.mean(gl[rng.permutation(40)[0]] == ql) for _ in range(20000)]
    assert label_chance_recall(ql, gl) == pytest.approx(100 * np.mean(hits), abs=1.5)
