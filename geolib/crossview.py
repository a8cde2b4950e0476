"""Cross-view experiments on a University-1652-layout dataset: train, embed, evaluate, record.

Notebooks 02 (Phase 1) and 03 (ablation rows) call these few functions, so every row of every
table is produced by the same code path and recorded with its protocol.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from torch import nn

from . import dryrun
from .datasets import GeoDataset, ImageItem, default_transform, labels_of
from .evaluate import PROTOCOL_UNIVERSITY, label_ranks, metrics_from_ranks, recall_curve, topk_search
from .embedding import Preprocess, embed
from .results import Result, record

if TYPE_CHECKING:
    from .embcache import EmbeddingCache
    from .loop import LoopResult
    from .train import TrainConfig

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
    the first true item (`first_rank`), `ap` and `n_positives` (from `evaluate.Ranks`), and in
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
    """`geolib.embedding.embed` with the antialiased resize to `image_size` (the Phase 1 path);
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


def dataset_name(data_root: str | None, preset: str | None) -> str:
    return f"synthetic-{preset}" if data_root is None else "university1652"


def train_crossview(model: nn.Module, ds: GeoDataset, cfg: "TrainConfig", out_dir: str | Path, *,
                    image_size: int, loss: str = "infonce", loss_options: dict[str, Any] | None = None,
                    eval_directions: Sequence[tuple[str, str]] = (("street", "drone"), ("street", "satellite")),
                    extra_loss: Callable | None = None, extra_modules: Sequence[nn.Module] = (),
                    max_minutes: float | None = None, progress: bool = True,
                    on_epoch: Callable[[dict[str, Any]], None] | None = None,
                    augment: str = "jitter", preload: bool = False,
                    select: str = "last", flip: bool = False,
                    cache: "EmbeddingCache | None" = None,
                    transform: Callable | None = None) -> "LoopResult":
    """Train on the train split's places; after some epochs, R@1 of `eval_directions` on the test split
    (recorded as a curve: `geolib.loop` never selects on it).

    The evaluations are curves to watch, not a selection rule. `select` decides which epoch is kept
    as `best`: "last" (default: the learning rate anneals to zero, so the last epoch is the trained
    model), "train-loss" (the lowest training loss; near the end of an annealed run its minimum is
    noise: in one default run it picked epoch 21 of 24, street->drone R@1 35.8 % against 38.9 % for
    the last). Selecting on the test split is refused: it would report an optimistic number for the
    very queries the model was chosen on.
    `max_minutes` is an opt-in cap that stops the run early (the result says `cut_by_budget`);
    the learning-rate schedule is always over `cfg.epochs`. `cfg` is not modified.
    `flip` and `cache` are those of `evaluate_crossview`: with the final evaluation's settings and
    cache, the curve measures what the table reports, and the last epoch's embeddings are reused.
    `transform` replaces the training transform (near-square crop jitter + `augment`): on a
    panorama that crop would keep a quarter of it, so pair datasets train on plain resizes.
    """
    rules = {"last": "last", "train-loss": None}
    if select == "test":
        raise ValueError("select='test' is refused: it keeps the epoch that scores best on the test split and then "
                         "reports that same split, an optimistic number. Use select='last' (default) or "
                         "'train-loss'; the test recall is still recorded each evaluation as a curve")
    if select not in rules:
        raise ValueError(f"select must be one of {', '.join(rules)}, got {select!r}")
    from .losses import make_pair_loss
    from .train import MultiViewPlaces, fit

    if hasattr(model, "config") and "model" not in cfg.extra:  # so the checkpoint can rebuild its model
        cfg = replace(cfg, extra={**cfg.extra, "model": model.config})
    train_items = dryrun.places(ds.select(split="train"))
    places = MultiViewPlaces(train_items, cfg.views,
                             transform or default_transform(image_size, train=True, colour=augment),
                             seed=cfg.seed, preload=preload, with_paths=bool(getattr(extra_loss, "needs_paths", False)))
    pair_loss = make_pair_loss(loss, **(loss_options or {}))

    def evaluate(m: nn.Module, epoch: int) -> dict[str, float]:
        ev = evaluate_crossview(m, ds, image_size, eval_directions, cfg.device, flip=flip, cache=cache)
        row = {f"{k} R@1": r.metrics["R@1"] for k, r in ev.results.items()}
        row["mean R@1"] = float(np.mean(list(row.values()))) if row else 0.0
        return row

    in_training = bool(eval_directions) and not dryrun.active()  # a dry run evaluates once, at the end
    return fit(model, places, cfg, out_dir, pair_loss, watch=evaluate if in_training else None,
               extra_loss=extra_loss, extra_modules=[pair_loss, *extra_modules], select_metric=rules[select],
               on_epoch=on_epoch, progress=progress, max_minutes=max_minutes)


def load_trained_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a `train_crossview` checkpoint and its metadata (`geolib.models.load_model_and_meta`)."""
    from .models import load_model_and_meta

    return load_model_and_meta(checkpoint, device)


# --------------------------------------------------------------------------- teachers from a profile


FOUNDATION_TEACHERS = ("clip-vit-b16", "dinov2-vit-s14")


def phase1_distillation(cfg: dict[str, Any], ds: GeoDataset, model: nn.Module, cache_dir: str | Path,
                        log: Callable[[str], None] = print) -> tuple[nn.Module | None, dict[str, str]]:
    """The `extra_loss` distilling frozen teachers into Phase 1, and the status of each teacher.

    `cfg["teachers"]`: a list of names (each must load), `"available"` (CLIP ViT-B/16 and DINOv2
    ViT-S/14 where their weights are found, one line for each that is not) or None. Teacher
    embeddings of the training images are cached on disk, so each image goes through a teacher
    once, however many epochs and runs follow; each training image is distilled toward the
    teachers' embeddings of that same image.
    """
    from .teachers import ImageDistillation, build_teacher_cache, describe, load_teachers

    teachers, status = load_teachers(cfg.get("teachers"), default=FOUNDATION_TEACHERS, log=log)
    if not teachers:
        return None, status
    views = ("street", "drone", "satellite")
    items = [it for it in dryrun.places(ds.select(split="train")) if it.view in views]
    caches = {n: build_teacher_cache(t.to(cfg["device"]), [it.path for it in items], cache_dir)
              for n, t in teachers.items()}
    log(f"teachers used: {describe(teachers)}")
    module = ImageDistillation.from_caches(caches, items, views, model.embed_dim,
                                           cfg.get("distill_loss", "cosine"), cfg.get("distill_weight", 1.0))
    return module, status
