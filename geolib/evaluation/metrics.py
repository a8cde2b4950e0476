"""Retrieval metrics and protocols (docs/reference.md), in bounded memory.

Every number here is derived from one quantity: the 0-based rank of each true gallery item in the
query's ranking. R@K is "the best true item ranks below K"; AP needs the ranks of all true items.
Ranks are computed exactly by *counting*, for each true item, how many gallery items score above it,
one (query chunk × gallery chunk) block at a time, so the Q×G score matrix never exists: peak extra
memory is a few `chunk_size²` arrays, whatever Q and G are.

Tie order (documented, deterministic): gallery items with exactly equal scores are ranked by
gallery index, lower index first, i.e. the order a stable sort by descending score would give.
The University-1652 reference uses numpy's unstable argsort, whose tie order is machine-dependent;
scores from real embeddings almost never tie exactly, so the protocols agree in practice, except
on galleries with duplicate images, which is why the score itself must not depend on blocking.

Streaming from disk: every function here reads embeddings only through `x[a:b]` / `x[rows]`, one
chunk at a time, so arrays, `np.load(..., mmap_mode="r")` memmaps and `geolib.npy.NpyRows`
readers all work. `streaming_label_ranks` / `streaming_retrieval_metrics` / `streaming_topk` take
`.npy` paths (e.g. `EmbeddingCache` entries) and read both queries and gallery in chunks with plain
file reads, so neither is ever resident whole; float16 files are converted chunk by chunk. Their
ranks equal the in-memory path's bit for bit, at any `chunk_size`. Peak extra memory is set by
`chunk_size` (a score block and its rank counters, a few tens of bytes per chunk_size² entry:
measured 0.69 GB at 4096 and 0.10 GB at 1024 for 20k × 100k × 512-d by `python -m geolib bench`),
not by Q×G.

Scores are inner products of the embeddings (cosine for L2-normalised ones), defined pair by pair
(`pair_scores`: exact float64 products of the float32 values, summed left to right, rounded to
float32), so a pair's score never depends on the block it was computed in. A float32 block product
rounds the same pair differently in differently shaped blocks (two identical gallery rows then
score an ulp apart and swap with `chunk_size`); here it only pre-sorts: an item is compared by
its block product only when that product is further from the other score than its error bound
(`score_band`), otherwise by `pair_scores`. Ranks, top-k and metrics are therefore the same at
every `chunk_size`. Cost against the former all-float32 ranking, same run, 2,000 queries × 50,000
× 512-d at chunk 4096 on 2 busy cores: `label_ranks` 1.07-1.17×, `topk_search` 1.19-1.28× (best of 2).

Protocols:
- `university1652-official` (`retrieval_metrics`): true items share the query's label; junk
  (label `junk_label`) is removed from the ranking; distractors stay; queries with no true item
  stay in the denominator as AP 0 and a miss; AP is the trapezoid variant; R@1% is recall at
  k = max(1, round(G/100)) with G the whole gallery as given (junk included, as the reference's
  `len(gallery_label)`), Python rounding (half to even). The reference prints its "1%" figure at
  k = round(G/100)+1; ours is the stated k.
- `vpr-25m` (`vpr_recalls`): true items lie within `radius` metres (inclusive) in UTM; queries
  with no database image in the radius stay in the denominator as misses.
- `vigor-hit` (`vigor_metrics`): R@K counts only the positive tile; the hit rate counts a query
  when its top-1 tile is the positive or one of its semi-positives (VIGOR's second number).
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

PROTOCOL_UNIVERSITY = "university1652-official"
PROTOCOL_UNIVERSITY_NO_DISTRACTORS = "university1652-no-distractors"
PROTOCOL_VPR = "vpr-25m"
PROTOCOL_VIGOR = "vigor-hit"

# an in-memory array, a memmap, a geolib.npy.NpyRows reader, or the path of a 2-D .npy file
EmbeddingSource = Union[np.ndarray, str, PathLike]


@dataclass
class Ranks:
    """Per-query ranking outcome, enough to derive every retrieval metric and curve.

    `first_rank[q]` is the 0-based rank of the best true item, or `n_ranked` when the query has
    none (so it is a miss at every k). `ap[q]` is the trapezoid AP (0 without true items).
    """

    first_rank: np.ndarray
    ap: np.ndarray
    n_positives: np.ndarray
    n_ranked: int
    gallery_size: int


# --------------------------------------------------------------------------------------------
# public API


def retrieval_metrics(query_emb: np.ndarray, query_labels: Sequence[int] | np.ndarray,
                      gallery_emb: np.ndarray, gallery_labels: Sequence[int] | np.ndarray,
                      ks: Iterable[int] = (1, 5, 10), chunk_size: int = 4096,
                      junk_label: int | None = -1) -> dict[str, float]:
    """R@k for each k, R@1% and AP, in percent, under the University-1652 official protocol."""
    ranks = label_ranks(query_emb, query_labels, gallery_emb, gallery_labels,
                        chunk_size=chunk_size, junk_label=junk_label)
    return metrics_from_ranks(ranks, ks)


def label_ranks(query_emb: np.ndarray, query_labels: Sequence[int] | np.ndarray,
                gallery_emb: np.ndarray, gallery_labels: Sequence[int] | np.ndarray,
                chunk_size: int = 4096, junk_label: int | None = -1) -> Ranks:
    """Ranks of the same-label gallery items; the building block of `retrieval_metrics`."""
    q_labels = np.asarray(query_labels).reshape(-1)
    g_labels = np.asarray(gallery_labels).reshape(-1)
    _check_shapes(query_emb, q_labels, gallery_emb, g_labels)
    keep = np.ones(len(g_labels), bool) if junk_label is None else g_labels != junk_label
    positives = label_positives(q_labels, g_labels, keep, junk_label)
    return positive_ranks(query_emb, gallery_emb, positives, keep=keep, chunk_size=chunk_size)


def streaming_label_ranks(query: EmbeddingSource, query_labels: Sequence[int] | np.ndarray,
                          gallery: EmbeddingSource, gallery_labels: Sequence[int] | np.ndarray,
                          chunk_size: int = 4096, junk_label: int | None = -1) -> Ranks:
    """`label_ranks` with queries and gallery read from `.npy` files chunk by chunk (see module doc)."""
    from ..npy import open_rows

    return label_ranks(open_rows(query), query_labels, open_rows(gallery), gallery_labels,
                       chunk_size=chunk_size, junk_label=junk_label)


def streaming_retrieval_metrics(query: EmbeddingSource, query_labels: Sequence[int] | np.ndarray,
                                gallery: EmbeddingSource, gallery_labels: Sequence[int] | np.ndarray,
                                ks: Iterable[int] = (1, 5, 10), chunk_size: int = 4096,
                                junk_label: int | None = -1) -> dict[str, float]:
    """`retrieval_metrics` over on-disk embeddings: a VIGOR-size evaluation in bounded memory."""
    ranks = streaming_label_ranks(query, query_labels, gallery, gallery_labels, chunk_size, junk_label)
    return metrics_from_ranks(ranks, ks)


def streaming_topk(query: EmbeddingSource, gallery: EmbeddingSource, k: int,
                   chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`topk_search` one query chunk at a time; only the (Q, k) answer is held whole."""
    from ..npy import open_rows

    q, g = open_rows(query), open_rows(gallery)
    parts = [topk_search(q[q0:q0 + chunk_size], g, k, chunk_size) for q0 in range(0, len(q), chunk_size)]
    if not parts:
        return np.zeros((0, min(k, len(g))), np.float32), np.zeros((0, min(k, len(g))), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def vpr_recalls(query_utm: np.ndarray, db_utm: np.ndarray, query_emb: np.ndarray,
                db_emb: np.ndarray, ks: Iterable[int] = (1, 5, 10, 20), radius: float = 25.0,
                chunk_size: int = 4096) -> dict[str, float]:
    """R@k in percent under `vpr-25m`: a database image within `radius` m (inclusive) is true."""
    query_utm = np.asarray(query_utm, dtype=np.float64)
    db_utm = np.asarray(db_utm, dtype=np.float64)
    if len(query_utm) != len(query_emb) or len(db_utm) != len(db_emb):
        raise ValueError(f"{len(query_utm)} query coordinates for {len(query_emb)} embeddings, "
                         f"{len(db_utm)} database coordinates for {len(db_emb)} embeddings")
    positives = vpr_positives(query_utm, db_utm, radius)
    ranks = positive_ranks(query_emb, db_emb, positives, chunk_size=chunk_size)
    return {f"R@{k}": recall_at(ranks, k) for k in ks}


def vpr_positives(query_utm: np.ndarray, db_utm: np.ndarray, radius: float = 25.0) -> list[np.ndarray]:
    """Database indices within `radius` of each query; sklearn's radius search is inclusive (≤)."""
    from sklearn.neighbors import NearestNeighbors

    knn = NearestNeighbors(n_jobs=1).fit(np.asarray(db_utm, dtype=np.float64)[:, :2])
    found = knn.radius_neighbors(np.asarray(query_utm, dtype=np.float64)[:, :2], radius=radius,
                                 return_distance=False)
    return [np.sort(p).astype(np.int64) for p in found]


def hit_rate(top1: Sequence[int] | np.ndarray, positives: Sequence[int | Sequence[int]],
             semi_positives: Sequence[Sequence[int]]) -> float:
    """VIGOR's hit rate, in percent, from each query's top-1 gallery index (a ranking's first column).

    A semi-positive tile also covers the panorama's location, so VIGOR counts it as a hit even
    though R@1 does not.
    """
    top1 = np.asarray(top1).reshape(-1)
    if not (len(top1) == len(positives) == len(semi_positives)):
        raise ValueError(f"{len(top1)} top-1 indices, {len(positives)} positive and "
                         f"{len(semi_positives)} semi-positive lists: one of each per query")
    if len(top1) == 0:
        return 0.0
    hits = [int(t) in set(np.atleast_1d(p).tolist()) | set(np.atleast_1d(s).tolist())
            for t, p, s in zip(top1.tolist(), positives, semi_positives)]
    return float(100.0 * np.mean(hits))


def vigor_metrics(query_emb: np.ndarray, gallery_emb: np.ndarray, positives: Sequence[int | Sequence[int]],
                  semi_positives: Sequence[Sequence[int]], ks: Iterable[int] = (1, 5, 10),
                  chunk_size: int = 4096) -> dict[str, float]:
    """R@k, R@1% (the positive tile only) and `hit_rate` (top-1 is the positive or a semi-positive).

    The hit is read from exact ranks, as R@1 is, so both follow the documented tie order: a query
    whose positive or semi-positive ties with another tile for first place is decided by index.
    """
    pos = [np.atleast_1d(np.asarray(p, np.int64)) for p in positives]
    either = [np.union1d(p, np.asarray(s, np.int64)) for p, s in zip(pos, semi_positives)]
    if len(either) != len(pos):
        raise ValueError(f"{len(pos)} positive lists but {len(semi_positives)} semi-positive lists")
    out = metrics_from_ranks(positive_ranks(query_emb, gallery_emb, pos, chunk_size=chunk_size), ks)
    out.pop("AP", None)  # one true tile per query: AP would only restate the rank
    out["hit_rate"] = recall_at(positive_ranks(query_emb, gallery_emb, either, chunk_size=chunk_size), 1)
    return out


def chance_recall(positives: Sequence[np.ndarray], n_ranked: int) -> float:
    """Expected R@1, in percent, of a uniformly random ranking: each query's share of true items.

    The floor every table compares against, for any protocol: give it `label_positives` (with
    the kept gallery size) or `vpr_positives` (with the database size). Queries without a true
    item count as 0, as they do in the metrics.
    """
    if len(positives) == 0 or n_ranked <= 0:
        return 0.0
    return float(100.0 * np.mean([len(p) / n_ranked for p in positives]))


def label_chance_recall(query_labels: Sequence[int] | np.ndarray, gallery_labels: Sequence[int] | np.ndarray,
                        junk_label: int | None = -1) -> float:
    """`chance_recall` under the University-1652 protocol (junk removed from the gallery)."""
    q_labels, g_labels = np.asarray(query_labels).reshape(-1), np.asarray(gallery_labels).reshape(-1)
    keep = np.ones(len(g_labels), bool) if junk_label is None else g_labels != junk_label
    return chance_recall(label_positives(q_labels, g_labels, keep, junk_label), int(keep.sum()))


def metrics_from_ranks(ranks: Ranks, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    out = {f"R@{k}": recall_at(ranks, k) for k in ks}
    out["R@1%"] = recall_at(ranks, one_percent_k(ranks.gallery_size))
    out["AP"] = float(100.0 * ranks.ap.mean()) if len(ranks.ap) else 0.0
    return out


def one_percent_k(gallery_size: int) -> int:
    """k of R@1%: max(1, round(G/100)), Python rounding."""
    return max(1, round(gallery_size / 100))


def recall_at(ranks: Ranks, k: int) -> float:
    """Share of queries, in percent, whose best true item ranks in the top k."""
    if len(ranks.first_rank) == 0:
        return 0.0
    return float(100.0 * np.mean(ranks.first_rank < k))


def recall_curve(ranks: Ranks, max_k: int = 100) -> np.ndarray:
    """R@1..R@max_k in percent (the CMC curve), for Recall@K plots."""
    k = np.arange(1, max_k + 1)
    if len(ranks.first_rank) == 0:
        return np.zeros(max_k)
    return 100.0 * (ranks.first_rank[:, None] < k[None, :]).mean(axis=0)


def label_positives(query_labels: np.ndarray, gallery_labels: np.ndarray,
                    keep: np.ndarray | None = None, junk_label: int | None = -1) -> list[np.ndarray]:
    """Gallery indices sharing each query's label (junk never counts as true)."""
    keep = np.ones(len(gallery_labels), bool) if keep is None else keep
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(gallery_labels[kept], kind="stable")]
    labels, starts = np.unique(gallery_labels[order], return_index=True)
    groups = np.split(order, starts[1:])
    by_label = {lab: np.sort(g) for lab, g in zip(labels.tolist(), groups)}
    empty = np.zeros(0, np.int64)
    return [empty if (junk_label is not None and lab == junk_label) else by_label.get(lab, empty)
            for lab in query_labels.tolist()]


def positive_ranks(query_emb: np.ndarray, gallery_emb: np.ndarray, positives: Sequence[np.ndarray],
                   keep: np.ndarray | None = None, chunk_size: int = 4096) -> Ranks:
    """Exact 0-based ranks of each query's true gallery items, among the kept gallery items.

    `positives[q]` lists the gallery indices that are true for query q (all must be kept);
    `keep` masks the gallery items that take part in the ranking (junk is not kept).
    """
    if len(positives) != len(query_emb):
        raise ValueError(f"{len(positives)} positive lists for {len(query_emb)} queries")
    if query_emb.ndim != 2 or gallery_emb.ndim != 2 or query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(f"embeddings must be 2-D with one width: {query_emb.shape} vs {gallery_emb.shape}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    n_gallery = len(gallery_emb)
    keep = np.ones(n_gallery, bool) if keep is None else np.asarray(keep, bool)
    n_ranked = int(keep.sum())
    first = np.full(len(query_emb), n_ranked, np.int64)
    ap = np.zeros(len(query_emb), np.float64)
    n_pos = np.array([len(p) for p in positives], np.int64)
    _check_positives(positives, keep)
    for q0 in range(0, len(query_emb), chunk_size):
        q1 = min(q0 + chunk_size, len(query_emb))
        pos = _padded(positives[q0:q1])
        if pos.shape[1] == 0:
            continue
        rank = _chunk_ranks(_as_f32(query_emb[q0:q1]), gallery_emb, keep, pos, chunk_size)
        first[q0:q1], ap[q0:q1] = _first_and_ap(rank, pos >= 0, n_ranked)
    return Ranks(first_rank=first, ap=ap, n_positives=n_pos, n_ranked=n_ranked, gallery_size=n_gallery)


def topk_search(query_emb: np.ndarray, gallery_emb: np.ndarray, k: int,
                chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery (scores, indices) per query by inner product, one gallery chunk at a time.

    The one exact top-k of the library: the k best items by `pair_scores`, equal scores by gallery
    index, so the answer is the same at every `chunk_size` and agrees with `positive_ranks` (a
    top-1 item ranks 0). Float32 searches only shortlist (`shortlist`): a running list per query
    keeps every item within the error bound of its k-th float32 score, and only the final list is
    rescored exactly, each gallery chunk read once more for the rows it still holds.
    """
    q = _as_f32(query_emb)
    n, k = len(q), max(0, min(int(k), len(gallery_emb)))
    if k == 0 or n == 0:
        return np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    import faiss  # its float32 top-k shortlists a chunk faster than a numpy product and a partition

    q_norm = row_norms(q)
    band = np.zeros(n, np.float32)  # running max of the chunks' error bounds, per query
    rows, items, approx = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    for g0 in range(0, len(gallery_emb), chunk_size):
        g = _as_f32(gallery_emb[g0:g0 + chunk_size])
        band = np.maximum(band, _block_band(q_norm, g))
        r, c, s = shortlist(lambda depth: faiss.knn(q, g, depth, metric=faiss.METRIC_INNER_PRODUCT),
                            len(g), min(k, len(g)), band, with_scores=True)
        rows, items, approx = _prune(n, k, np.concatenate([rows, r]), np.concatenate([items, c + g0]),
                                     np.concatenate([approx, s]), band)
    return _merge_candidates(n, k, rows, items, _exact_scores(q, gallery_emb, rows, items, chunk_size))


def _prune(n: int, k: int, rows: np.ndarray, items: np.ndarray, approx: np.ndarray,
           band: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop candidates whose float32 score lies more than 2·band below their row's k-th: k items
    then score above them exactly, whatever later chunks bring (band only grows)."""
    order = np.lexsort((-approx, rows))
    rows, items, approx = rows[order], items[order], approx[order]
    starts = np.searchsorted(rows, np.arange(n))
    counts = np.diff(np.append(starts, len(rows)))
    kth = np.where(counts >= k, approx[np.minimum(starts + k - 1, max(len(rows) - 1, 0))], -np.inf)
    keep = approx >= (kth - 2 * band)[rows]
    return rows[keep], items[keep], approx[keep]


def shortlist(search: Callable[[int], tuple[np.ndarray, np.ndarray]], n_items: int, kk: int,
              band: np.ndarray, with_scores: bool = False) -> tuple[np.ndarray, ...]:
    """(row, item) pairs holding every item whose exact score can reach the row's top kk.

    `search(depth)` is a float32 top-`depth` search (scores, items), e.g. faiss's; it is widened
    until the last item it returns lies more than twice the error bound `band` below the kk-th:
    an item not returned then scores, exactly, below at least kk returned ones. `with_scores`
    adds the float32 scores of the pairs.
    """
    depth = min(n_items, max(2 * kk, kk + 16))
    while True:
        s, i = search(depth)
        floor = s[:, kk - 1] - 2 * band
        if depth >= n_items or bool((s[:, -1] < floor).all()):
            break
        depth = min(n_items, depth * 4)
    rows, pos = np.nonzero((s >= floor[:, None]) & (i >= 0))
    out = (rows.astype(np.int64), i[rows, pos].astype(np.int64))
    return (*out, s[rows, pos].astype(np.float32)) if with_scores else out


def exact_topk_of_candidates(query_emb: np.ndarray, rows: np.ndarray, items: np.ndarray,
                             vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per query among shortlisted (query row, gallery item) pairs, in `topk_search`'s order,
    for a shortlist that provably holds the exact top k (`shortlist`).

    `vectors[j]` is the embedding of the j-th distinct item (`np.unique(items)`), so each gallery
    vector is read once however many queries shortlist it.
    """
    q = _as_f32(query_emb)
    rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
    uniq, local = np.unique(items, return_inverse=True)
    if len(vectors) != len(uniq):
        raise ValueError(f"{len(vectors)} vectors for {len(uniq)} distinct shortlisted items")
    return _merge_candidates(len(q), k, rows, items, pair_scores(q, _as_f32(vectors), rows, local.reshape(-1)))


def pair_scores(query_emb: np.ndarray, gallery_emb: np.ndarray, rows: np.ndarray,
                cols: np.ndarray, batch: int = 8192) -> np.ndarray:
    """The score of each (query row, gallery row) pair, a function of the two vectors alone.

    A float32 matrix product rounds one pair differently in differently shaped blocks, so two
    identical gallery rows could score an ulp apart and swap order with `chunk_size`. Here the
    products are exact in float64, summed left to right (`cumsum`: one fixed order whatever the
    batch), and rounded once to float32. Every ranking and top-k in this module compares these.
    """
    out = np.empty(len(rows), np.float32)
    for a in range(0, len(rows), batch):
        r, c = rows[a:a + batch], cols[a:a + batch]
        prod = query_emb[r].astype(np.float64) * gallery_emb[c].astype(np.float64)
        out[a:a + batch] = np.cumsum(prod, axis=1)[:, -1] if prod.shape[1] else 0.0
    return out


# --------------------------------------------------------------------------------------------
# internals


def _check_shapes(query_emb: np.ndarray, q_labels: np.ndarray, gallery_emb: np.ndarray,
                  g_labels: np.ndarray) -> None:
    if len(query_emb) != len(q_labels) or len(gallery_emb) != len(g_labels):
        raise ValueError(f"{len(q_labels)} query labels for {len(query_emb)} embeddings, "
                         f"{len(g_labels)} gallery labels for {len(gallery_emb)} embeddings")


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf; check the model output")
    return x


def _check_positives(positives: Sequence[np.ndarray], keep: np.ndarray) -> None:
    """Every true item must be a kept gallery item, else its score would never be read."""
    flat = np.concatenate([np.asarray(p, np.int64).reshape(-1) for p in positives] or [np.zeros(0, np.int64)])
    if len(flat) and (flat.min() < 0 or flat.max() >= len(keep)):
        raise ValueError(f"true gallery indices must lie in [0, {len(keep)}), got {flat.min()}..{flat.max()}")
    if len(flat) and not keep[flat].all():
        raise ValueError("a true gallery item is marked junk; junk never counts as true")


def _padded(positives: Sequence[np.ndarray]) -> np.ndarray:
    """Ragged positive lists → (n, P) int64 with -1 padding."""
    width = max((len(p) for p in positives), default=0)
    out = np.full((len(positives), width), -1, np.int64)
    for r, p in enumerate(positives):
        out[r, :len(p)] = p
    return out


def _gallery_blocks(gallery_emb: np.ndarray, keep: np.ndarray,
                    chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(kept gallery indices, their embeddings) per chunk; junk never enters a score block."""
    for g0 in range(0, len(gallery_emb), chunk_size):
        idx = np.flatnonzero(keep[g0:g0 + chunk_size]) + g0
        if len(idx):
            yield idx, _as_f32(gallery_emb[idx])


def _chunk_ranks(q: np.ndarray, gallery_emb: np.ndarray, keep: np.ndarray, pos: np.ndarray,
                 chunk_size: int) -> np.ndarray:
    """Ranks (n, P) of the padded positives `pos` for the query chunk `q`.

    Pass 1 takes each positive's exact score (`pair_scores`) from the block holding it; pass 2
    counts, per positive, the items scoring strictly higher plus the equal items of lower index.
    A block's float32 product decides an item's side only where its error bound allows; items
    within the bound of a positive's score (the positive itself, duplicates, near ties) are
    rescored exactly, so the ranks do not depend on how the gallery or the queries are blocked.
    """
    pos_score = np.full(pos.shape, np.inf, np.float32)
    rows, cols = np.nonzero(pos >= 0)
    pos_score[rows, cols] = _exact_scores(q, gallery_emb, rows, pos[rows, cols], chunk_size)
    order = np.argsort(pos_score, axis=1, kind="stable")  # ascending; padding (+inf) last
    sorted_score = np.take_along_axis(pos_score, order, axis=1)
    sorted_index = np.take_along_axis(pos, order, axis=1)
    q_norm = row_norms(q)
    above = np.zeros(pos.shape, np.int64)
    for idx, g in _gallery_blocks(gallery_emb, keep, chunk_size):
        band = _block_band(q_norm, g)[:, None]
        above += _count_above(q, g, _block_scores(q, g), band, idx, sorted_score, sorted_index)
    ranks = np.empty_like(above)
    np.put_along_axis(ranks, order, above, axis=1)
    return ranks


def _block_scores(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    return q @ g.T


def _exact_scores(q: np.ndarray, gallery_emb: np.ndarray, rows: np.ndarray, items: np.ndarray,
                  chunk_size: int) -> np.ndarray:
    """`pair_scores` of (query row, gallery item) pairs, reading from each gallery chunk that holds
    one of the items only the distinct items it holds (bounded memory, each row read once)."""
    out = np.empty(len(rows), np.float32)
    block = items // chunk_size
    for b in np.unique(block).tolist():
        sel = np.flatnonzero(block == b)
        uniq, local = np.unique(items[sel], return_inverse=True)
        out[sel] = pair_scores(q, _as_f32(gallery_emb[uniq]), rows[sel], local.reshape(-1))
    return out


def _merge_candidates(n: int, k: int, rows: np.ndarray, items: np.ndarray,
                      scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k best (row, item) candidates per row, by score then gallery index, as (n, k) arrays.

    Every row must hold the same count (at least k, or all its items), which the shortlists
    guarantee: a block either gives each row at least its own k or all of its items.
    """
    all_r, all_i, all_s = rows.astype(np.int64), items.astype(np.int64), scores.astype(np.float32)
    order = np.lexsort((all_i, -all_s, all_r))
    all_r, all_i, all_s = all_r[order], all_i[order], all_s[order]
    starts = np.searchsorted(all_r, np.arange(n))
    counts = np.diff(np.append(starts, len(all_r)))
    width = int(min(k, counts.min())) if n else 0
    keep = (np.arange(len(all_r)) - starts[all_r]) < width
    return all_s[keep].reshape(n, width), all_i[keep].reshape(n, width)


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, in float64 (the input of `score_band`)."""
    return np.sqrt(np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64)))


def score_band(q_norm: np.ndarray, g_max_norm: float, dim: int) -> np.ndarray:
    """Per query, a bound on |float32 product − `pair_scores`| for gallery rows of norm ≤ `g_max_norm`.

    A float32 dot product of length D is within γ_D·Σ|q_i g_i| ≤ D·u·‖q‖‖g‖ of the exact value
    (u = 2⁻²⁴, any summation order, with or without FMA); the exact score is off by one more
    rounding. (2D + 8)·u·‖q‖·max‖g‖ covers both, plus the rounding of `s ± band` itself.
    Any valid bound gives the same answer; a tighter one only saves rescoring.
    """
    return ((2 * dim + 8) * 2.0 ** -24 * np.asarray(q_norm, np.float64) * g_max_norm).astype(np.float32)


def _block_band(q_norm: np.ndarray, g: np.ndarray) -> np.ndarray:
    return score_band(q_norm, float(row_norms(g).max()) if len(g) else 0.0, g.shape[1])


def _count_above(q: np.ndarray, g: np.ndarray, scores: np.ndarray, band: np.ndarray, idx: np.ndarray,
                 sorted_score: np.ndarray, sorted_index: np.ndarray) -> np.ndarray:
    """Per (query, sorted positive j): block items ranked above positive j.

    `searchsorted` places each item between the query's sorted positive scores: an item whose
    product lies more than `band` above `left` positives outranks positives 0..left-1 for sure;
    positives in [left, right) lie within the band and are compared with the item's exact score.
    """
    n, p = sorted_score.shape
    seq = torch.from_numpy(sorted_score)
    left = torch.searchsorted(seq, torch.from_numpy(scores - band), right=False, out_int32=True).numpy()
    right = torch.searchsorted(seq, torch.from_numpy(scores + band), right=True, out_int32=True).numpy()
    offsets = np.arange(n, dtype=np.int64)[:, None] * (p + 1)
    hist = np.bincount((left + offsets).reshape(-1), minlength=n * (p + 1)).reshape(n, p + 1)
    # items with `left` = b lie above positives j < b: count for j = sum of hist[b] over b > j
    above = hist[:, ::-1].cumsum(1)[:, ::-1][:, 1:]
    rows, cols = np.nonzero(right > left)
    if len(rows):
        above = above + _near_above(rows, idx[cols], pair_scores(q, g, rows, cols), left[rows, cols],
                                    right[rows, cols], sorted_score, sorted_index)
    return above


def _near_above(rows: np.ndarray, item: np.ndarray, score: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                sorted_score: np.ndarray, sorted_index: np.ndarray) -> np.ndarray:
    """Count, per (row, positive j in [lo, hi)), items whose exact score is higher, or equal with a
    lower gallery index (the documented tie order)."""
    span = (hi - lo).astype(np.int64)
    r = np.repeat(rows, span)
    it = np.repeat(item, span)
    sc = np.repeat(score, span)
    j = np.repeat(lo.astype(np.int64), span) + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
    ps = sorted_score[r, j]
    before = (sc > ps) | ((sc == ps) & (it < sorted_index[r, j]))
    out = np.zeros(sorted_index.shape, np.int64)
    np.add.at(out, (r[before], j[before]), 1)
    return out


def _first_and_ap(rank: np.ndarray, valid: np.ndarray, n_ranked: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank and trapezoid AP per query from the ranks of its true items.

    The i-th true item found (0-based) at rank r adds (1/n)·(p_before + p_at)/2 with
    p_at = (i+1)/(r+1) and p_before = i/r, or 1 when r = 0 (University-1652's compute_mAP).
    """
    r = np.sort(np.where(valid, rank, np.iinfo(np.int64).max), axis=1)
    n = valid.sum(axis=1)
    first = np.where(n > 0, r[:, 0] if r.shape[1] else n_ranked, n_ranked)
    i = np.arange(r.shape[1])[None, :].astype(np.float64)
    ok = i < n[:, None]
    rf = np.where(ok, r, 1).astype(np.float64)
    p_at = (i + 1) / (rf + 1)
    p_before = np.where(rf > 0, i / np.maximum(rf, 1), 1.0)
    terms = np.where(ok, (p_at + p_before) / 2, 0.0)
    # left to right (`cumsum`), not numpy's pairwise `sum`: a query's AP must not depend on how
    # many padding zeros its query chunk adds
    total = np.cumsum(terms, axis=1)[:, -1] if terms.shape[1] else np.zeros(len(terms))
    ap = total / np.maximum(n, 1)
    return first.astype(np.int64), ap
