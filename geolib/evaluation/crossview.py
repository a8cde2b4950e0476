"""Cross-view evaluation on a University-1652-layout dataset: embed, score, record.

Notebooks 02 (Phase 1) and 03 (ablation rows) call these few functions, so every row of every
table is produced by the same code path and recorded with its protocol; training
(`geolib.training.crossview`) evaluates through them too, so its curve measures what the table reports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from torch import nn

from .. import dryrun
from ..data.datasets import GeoDataset, ImageItem, labels_of
from .metrics import PROTOCOL_UNIVERSITY, label_ranks, metrics_from_ranks, recall_curve, topk_search
from ..data.transforms import Preprocess
from .embedding import embed
from ..results import Result, record

if TYPE_CHECKING:
    from .cache import EmbeddingCache

DIRECTIONS: tuple[tuple[str, str], ...] = (("street", "drone"), ("street", "satellite"),
                                           ("drone", "satellite"), ("satellite", "drone"))


def direction_name(q: str, g: str) -> str:
    return f"{q}→{g}"


@dataclass
class Embedded:
    """Embeddings of one (role, view) set of a split, with what is needed to score and show them."""

    items: list[ImageItem]
    emb: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return labels_of(self.items)


class DirectionResult(Result):
    """One direction's `Result` (protocol `university1652-official`): per query the 0-based rank of
    the first true item (`first_rank`), `ap` and `n_positives` (from `metrics.Ranks`), and in
    `info` the R@1..R@K `curve` (percent), `n_queries` and `gallery_size`."""

    def __init__(self, query: str, gallery: str, metrics: dict[str, float], curve: np.ndarray, n_queries: int,
                 gallery_size: int, ranks: Any = None, protocol: str = PROTOCOL_UNIVERSITY,
                 preprocess: dict[str, Any] | None = None, **fields: Any) -> None:
        per_query = {} if ranks is None else {"first_rank": np.asarray(ranks.first_rank), "ap": np.asarray(ranks.ap),
                                              "n_positives": np.asarray(ranks.n_positives)}
        super().__init__(metrics, protocol, per_query,
                         query_view=query, gallery_view=gallery, task="crossview", preprocess=preprocess,
                         info={"curve": curve, "n_queries": int(n_queries), "gallery_size": int(gallery_size)},
                         **fields)

    @property
    def query(self) -> str:
        return self.query_view  # type: ignore[return-value]

    @property
    def gallery(self) -> str:
        return self.gallery_view  # type: ignore[return-value]

    @property
    def curve(self) -> np.ndarray:
        return self.info["curve"]

    @property
    def gallery_size(self) -> int:
        return int(self.info["gallery_size"])


@dataclass
class Evaluation:
    """Every direction's `Result`, the embedded sets they were scored on, and the preprocessing used."""

    results: dict[str, DirectionResult] = field(default_factory=dict)
    sets: dict[tuple[str, str], Embedded] = field(default_factory=dict)
    seconds: float = 0.0
    preprocess: dict[str, Any] | None = None

    def table(self) -> list[dict[str, Any]]:
        return [{"direction": k, "queries": r.n_queries, "gallery": r.gallery_size, **r.metrics}
                for k, r in self.results.items()]


def embed_set(model: nn.Module, items: Sequence[ImageItem], view: str, image_size: int, device: str = "cpu",
              batch_size: int = 64, flip: bool = False, cache: "EmbeddingCache | None" = None) -> Embedded:
    """`geolib.evaluation.embedding.embed` with the antialiased resize to `image_size` (the Phase 1 path);
    `cache` reuses embeddings of the same weights, items and settings."""
    if not items:
        return Embedded([], np.zeros((0, 1), np.float32))
    emb = embed(model, items, view=view, preprocess=Preprocess(int(image_size)), batch_size=batch_size,
                device=device, flip=flip, cache=cache)
    return Embedded(list(items), emb)


def evaluate_crossview(model: nn.Module, ds: GeoDataset, image_size: int,
                       directions: Sequence[tuple[str, str]] = DIRECTIONS, device: str = "cpu",
                       flip: bool = False, batch_size: int = 64, split: str = "test",
                       max_k: int = 50, cache: "EmbeddingCache | None" = None) -> Evaluation:
    """Every direction under the University-1652 official protocol (distractors stay in the gallery).

    Each (role, view) set is embedded once, however many directions use it; with `cache`, once per
    weights, items and settings across calls and notebooks.
    """
    t0 = time.perf_counter()
    ev = Evaluation(preprocess=Preprocess(int(image_size)).to_dict())
    for q, g in directions:
        for role, view in (("query", q), ("gallery", g)):
            if (role, view) not in ev.sets:
                items = dryrun.items(ds.select(view=view, split=split, role=role))
                ev.sets[(role, view)] = embed_set(model, items, view,
                                                  image_size, device, batch_size, flip, cache)
        qs, gs = ev.sets[("query", q)], ev.sets[("gallery", g)]
        if not qs.items or not gs.items:
            continue
        ev.results[direction_name(q, g)] = score_direction(qs, gs, q, g, max_k, ev.preprocess)
    ev.seconds = time.perf_counter() - t0
    return ev


def score_direction(qs: Embedded, gs: Embedded, q: str, g: str, max_k: int = 50,
                    preprocess: dict[str, Any] | None = None) -> DirectionResult:
    ranks = label_ranks(qs.emb, qs.labels, gs.emb, gs.labels)
    return DirectionResult(q, g, metrics_from_ranks(ranks), recall_curve(ranks, min(max_k, len(gs.items))),
                           len(qs.items), len(gs.items), ranks=ranks, preprocess=preprocess)


def record_evaluation(ev: Evaluation, *, source: str, model: str, dataset: str, profile: str, seed: int,
                      config: dict[str, Any], protocol: str = PROTOCOL_UNIVERSITY, split: str = "test",
                      task: str = "crossview", extra_metrics: dict[str, float] | None = None) -> list[dict]:
    """One record per direction, through `geolib.results.record`."""
    return [record(r, source=source, task=task, protocol=protocol, dataset=dataset, split=split, model=model,
                   metrics={**r.metrics, **(extra_metrics or {})}, profile=profile, seed=seed,
                   config={**config, "n_queries": r.n_queries, "gallery_size": r.gallery_size})
            for r in ev.results.values()]


def top_matches(ev: Evaluation, q: str, g: str, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery (scores, indices) for every query of a direction (for example figures)."""
    qs, gs = ev.sets[("query", q)], ev.sets[("gallery", g)]
    return topk_search(qs.emb, gs.emb, k)
