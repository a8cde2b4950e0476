"""Divide&Classify (Trivigno et al., ICCV 2023): localize by classifying map cells, no database.

Cells are M × M metres (`class = (⌊e/M⌋·M, ⌊n/M⌋·M)`, no heading), split into N×N groups as in
CosPlace, one classifier per group, epochs cycling over the groups. At inference every group's
classifier scores the query, the scores are concatenated, and the top-N classes are read as their
cell centres `(e_r + M/2, n_r + M/2)`. LR@N is the share of queries with one of the first N
centres within 25 m (inclusive). The memory of the method is the classifiers' weights, however
many database images the area has.

Difference from the reference code, on purpose: classes of all groups are ranked by cosine
(normalised class weights, the quantity the margin heads train); the reference ranks AAMC/LMCC
classes by the raw inner product with unnormalised weights.

A saved D&C model (`save_dc`) holds the network, the heads and the division's cells (rounded
corners, groups), so `load_dc` localizes queries with no train data and no database.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import dryrun
from .cosplace import CosPlaceConfig, Division, GroupTraining, _heads_from, _placenet_from, _save_group_model, group_model
from ..data.datasets import ImageItem, utm_of
from ..models import register_loader
from ..results import Result, per_query_field
from .groups import embed_paths, head_kind, loaded_result, part, preprocess_spec, read_model_files

PROTOCOL_DC = "dc-lr-25m"


def dc_config(head: str = "aamc", **overrides: Any) -> CosPlaceConfig:
    """D&C's defaults on top of the shared config: M=20, N=2, all N² groups, AAMC with s=100,
    m=0.2 (LMCC keeps s=30, m=0.4). Heading settings are unused."""
    kind = head_kind(head)
    scale, margin = (100.0, 0.2) if kind == "arcface" else (30.0, 0.40)
    n = int(overrides.get("N", 2))
    base = dict(M=20, N=n, groups_num=n * n, head=kind, scale=scale, margin=margin,
                backbone="efficientnet_b0", random_resized_crop=0.34, brightness=0.0, contrast=0.0,
                saturation=0.0, hue=0.0)
    base.update(overrides)
    return CosPlaceConfig(**base)


def train_dc(items: Sequence[ImageItem], cfg: CosPlaceConfig | None = None,
             out_dir: str | Path | None = None, progress: bool = True) -> GroupTraining:
    """Cells without heading, one head per group (`groups_num`, all N² by default; fewer when the
    data has fewer groups, said in one line and kept as `config["groups_used"]`), then train.

    With `out_dir`, training resumes from `out_dir/last` and the model is saved there (`save_dc`);
    a folder holding a model of other settings is refused."""
    return group_model(items, cfg or dc_config(), out_dir, progress, "dc", save_dc, reuse=False)


def load_or_train_dc(items: Sequence[ImageItem], cfg: CosPlaceConfig, out_dir: str | Path,
                     progress: bool = True) -> GroupTraining:
    """The D&C model saved in `out_dir` when trained with these settings and data (one printed
    line, no training), else `train_dc(items, cfg, out_dir)`; other settings are refused."""
    return group_model(items, cfg, out_dir, progress, "dc", save_dc)


# --------------------------------------------------------------------------- saving and loading

class _Cells(nn.Module):
    """The division a D&C model needs at inference, as tensors beside the weights: each class's
    rounded corner (float64: exact UTM), the group ids, and each group's classes in head order."""

    def __init__(self, division: Division) -> None:
        super().__init__()
        self.register_buffer("class_ids", torch.as_tensor(np.asarray(division.class_ids, np.float64)))
        self.register_buffer("group_ids", torch.as_tensor(np.asarray(division.group_ids, np.int64)))
        order = [np.asarray(c, np.int64) for c in division.classes_per_group]
        self.register_buffer("group_classes", torch.as_tensor(np.concatenate(order) if order else np.zeros(0, np.int64)))
        self.register_buffer("group_sizes", torch.as_tensor(np.array([len(c) for c in order], np.int64)))


def save_dc(training: GroupTraining, out_dir: str | Path, settings: dict[str, Any] | None = None) -> Path:
    """`out_dir/model.safetensors` (network, group heads, cells) and `out_dir/model.json` (network
    options, preprocessing, cell size M and N, config, loss history): enough to localize queries
    with `load_dc(out_dir)` and no train data."""
    d = training.division
    return _save_group_model(training, out_dir, "dc", settings, {"cells": _Cells(d)},
                             division={"M": d.M, "N": d.N, "alpha": d.alpha, "L": d.L,
                                       "min_images_per_class": d.min_images_per_class,
                                       "classes": int(len(d.class_ids)), "groups": d.num_groups,
                                       "dropped_classes": d.dropped_classes, "dropped_images": d.dropped_images})


def load_dc(out_dir: str | Path, device: str = "cpu") -> GroupTraining:
    """A saved D&C model as a `GroupTraining` (`evaluate_dc` takes it); its division holds the cells
    only (no train images: `image_class` is empty), its result the saved loss history."""
    meta, state = read_model_files(out_dir, "dc")
    cells = part(state, "cells")
    sizes = cells["group_sizes"].numpy()
    flat = cells["group_classes"].numpy()
    per_group = np.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) else []
    info = meta["division"]
    division = Division(cells["class_ids"].numpy(), cells["group_ids"].numpy(), list(per_group),
                        np.zeros(0, np.int64), float(info["M"]), info.get("alpha"), int(info["N"]), info.get("L"),
                        int(info["min_images_per_class"]), dropped_classes=int(info.get("dropped_classes", 0)),
                        dropped_images=int(info.get("dropped_images", 0)))
    model = _placenet_from(meta, state).to(device).eval()
    heads = _heads_from(meta, state).to(device).eval()
    result = loaded_result(meta.get("history", []), out_dir, meta.get("train_s"))
    return GroupTraining(model, heads, division, result, {**meta.get("config", {}), "image_size": meta["image_size"],
                                                          "groups_used": meta.get("groups_used")})


# --------------------------------------------------------------------------- inference

@torch.no_grad()
def predict_cells(query_emb: np.ndarray, heads: nn.ModuleList, division: Division, top: int = 20,
                  device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-`top` classes over all groups' heads: (class indices, cell centres `(Q, top, 2)`)."""
    emb = torch.as_tensor(query_emb, dtype=torch.float32, device=device)
    heads = heads.to(device).eval()
    scores = torch.cat([h.logits(emb) for h in heads], dim=1)
    classes = torch.as_tensor(np.concatenate([division.classes_per_group[g] for g in range(len(heads))]),
                              device=device)
    best = scores.topk(min(top, scores.shape[1]), dim=1).indices
    predicted = classes[best].cpu().numpy()
    return predicted, division.centres(predicted.reshape(-1)).reshape(*predicted.shape, 2)


def cells_within(query_utm: np.ndarray, centres: np.ndarray, radius: float = 25.0) -> np.ndarray:
    """(Q, top) whether each predicted cell centre is within `radius` metres of its query (inclusive,
    UTM distance)."""
    query_utm = np.asarray(query_utm, np.float64)[:, None, :2]
    return np.linalg.norm(np.asarray(centres, np.float64) - query_utm, axis=-1) <= radius


def lr_at_n(hit: np.ndarray, ns: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """LR@N in percent from `cells_within`: a query counts when one of its first N predicted centres
    is within the radius. Every query stays in the denominator."""
    first = np.where(hit.any(1), hit.argmax(1), np.iinfo(np.int64).max)
    return {f"LR@{n}": float(100.0 * np.mean(first < n)) if len(first) else 0.0 for n in ns}


class Localization(Result):
    """LR@N under `dc-lr-25m` (a `geolib.results.Result`), and per query its top predicted `classes`,
    their cell `centres` and whether each is within the radius (`correct`)."""

    classes = per_query_field("classes", "(Q, top) predicted class indices, best first")
    centres = per_query_field("centres", "(Q, top, 2) UTM centres of those cells")
    correct = per_query_field("correct", "(Q, top) whether each centre is within the radius")

    def __init__(self, metrics: dict[str, float], classes: np.ndarray, centres: np.ndarray, correct: np.ndarray,
                 classifier_bytes: int = 0, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        fields.setdefault("task", "vpr")
        super().__init__(metrics, PROTOCOL_DC, {"classes": classes, "centres": centres, "correct": correct},
                         **fields)
        self.classifier_bytes, self.extra = int(classifier_bytes), dict(extra or {})


def evaluate_dc(training: GroupTraining, query_items: Sequence[ImageItem], image_size: int | None = None,
                ns: Sequence[int] = (1, 5, 10, 20), radius: float = 25.0, device: str = "cpu",
                batch_size: int = 64, num_workers: int = 0, progress: bool = False) -> Localization:
    """Embed the queries, classify, score LR@N; no database is read (a dry run embeds
    `dryrun.ITEMS` queries)."""
    query_items = dryrun.items(query_items)
    size = image_size or training.config.get("image_size", 224)
    emb = embed_paths(training.model.to(device), [it.path for it in query_items], size, batch_size, device,
                      num_workers, progress, "embed queries")
    classes, centres = predict_cells(emb, training.heads, training.division, max(ns), device)
    correct = cells_within(utm_of(query_items), centres, radius)
    return Localization(lr_at_n(correct, ns), classes, centres, correct,
                        sum(h.weight_bytes() for h in training.heads), preprocess=preprocess_spec(size).to_dict())


def write_dc_record(source: str, metrics: dict[str, float], *, dataset: str, profile: str, seed: int | None,
                    model: str = "dc-aamc", split: str = "test", query_view: str = "query",
                    config: dict[str, Any] | None = None, result: Result | None = None,
                    **extra: Any) -> dict[str, Any]:
    """A `vpr` / `dc-lr-25m` record: classification localisation, no gallery (`geolib.results.record`;
    `result`, a `Localization`, brings its preprocessing into the config)."""
    from ..results import record

    return record(result or Result(metrics, PROTOCOL_DC), source=source, task="vpr", protocol=PROTOCOL_DC,
                  dataset=dataset, split=split, views=(query_view, None), model=model, metrics=metrics,
                  profile=profile, seed=seed, config=config, **extra)


register_loader("dc", load_dc)
