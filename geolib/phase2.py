"""Notebook 04's small pieces worth a test: query sets per condition, chance references, timing,
and the comparison table read back from the metrics records.

Chance references are computed, not sampled, so a rerun cannot move them:
- retrieval: a random database ranking puts a positive first with probability |positives| / |database|;
- classification: a random cell (uniform over the classifier's classes) is right with probability
  (classes whose centre lies within the radius) / (classes).
Both keep queries with no positive in the denominator, as the protocols do.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .datasets import ImageItem, utm_of

DEFAULT_QUERY_FOLDERS = {"day": "queries", "night": "queries_night", "fog": "queries_fog"}


def query_view(condition: str) -> str:
    """The records' name of a query condition: `query-day`, `query-night`, ..."""
    return f"query-{condition}"


def query_sets(root: str | Path, split: str, folders: Mapping[str, str]) -> tuple[list[ImageItem], dict[str, list[ImageItem]]]:
    """(database, {condition: queries}) of a VPR split; a condition whose folder is missing is
    skipped (real releases have one query folder), the database must exist."""
    from .cosplace import load_test_items

    database: list[ImageItem] | None = None
    queries: dict[str, list[ImageItem]] = {}
    for condition, folder in folders.items():
        if not (Path(root) / split / folder).is_dir():
            continue
        db, q = load_test_items(root, split, folder)
        database = db if database is None else database
        queries[condition] = q
    if database is None:
        raise FileNotFoundError(f"{root}/{split}: none of the query folders {sorted(set(folders.values()))} exists")
    return database, queries


def chance_recall(query_utm: np.ndarray, db_utm: np.ndarray, radius: float = 25.0) -> float:
    """Expected R@1 (percent) of a uniformly random ranking under `vpr-25m`."""
    d = np.linalg.norm(np.asarray(query_utm, float)[:, None, :2] - np.asarray(db_utm, float)[None, :, :2], axis=-1)
    return float(100.0 * np.mean((d <= radius).mean(1))) if len(d) else 0.0


def chance_lr(query_utm: np.ndarray, centres: np.ndarray, radius: float = 25.0) -> float:
    """Expected LR@1 (percent) of a uniformly random cell among `centres` under `dc-lr-25m`."""
    return chance_recall(query_utm, centres, radius)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, wall seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def comparison_table(records: Iterable[Mapping[str, Any]], dataset: str) -> "Any":
    """One row per (model, query view) of this dataset's `vpr` records (the last of duplicates):
    R@1/5 or LR@1/5, whether a database is needed, its or the classifier's memory, queries/s."""
    import pandas as pd

    rows = []
    for r in records:
        if r.get("task") != "vpr" or r.get("dataset") != dataset:
            continue
        m = r.get("metrics") or {}
        retrieval = r.get("protocol") == "vpr-25m"
        rows.append({"model": r["model"], "query": r.get("query_view"), "protocol": r.get("protocol"),
                     "@1": m.get("R@1" if retrieval else "LR@1"), "@5": m.get("R@5" if retrieval else "LR@5"),
                     "database needed": retrieval, "memory MB": m.get("memory_mb"),
                     "train s": m.get("train_s"), "queries/s": m.get("queries_per_s")})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.drop_duplicates(["model", "query", "protocol"], keep="last").reset_index(drop=True)


def retrieve_conditions(model: Any, database: Sequence[ImageItem], queries: Mapping[str, Sequence[ImageItem]],
                        image_size: int, device: str = "cpu", batch_size: int = 64) -> dict[str, tuple[Any, float]]:
    """Per condition: (`cosplace.Retrieval` under vpr-25m, queries per second). The database is
    embedded once; queries/s counts embedding the query and searching the database."""
    from .cosplace import retrieve
    from .vpr_train import embed_paths

    db = embed_paths(model, [it.path for it in database], image_size, batch_size, device)
    out = {}
    for condition, items in queries.items():
        def run():
            q = embed_paths(model, [it.path for it in items], image_size, batch_size, device)
            return retrieve(q, utm_of(items), db, utm_of(database))
        result, seconds = timed(run)
        out[condition] = (result, len(items) / max(seconds, 1e-9))
    return out


def localize_conditions(training: Any, queries: Mapping[str, Sequence[ImageItem]], image_size: int,
                        device: str = "cpu", batch_size: int = 64) -> dict[str, tuple[Any, float]]:
    """Per condition: (`divide_classify.Localization` under dc-lr-25m, queries per second)."""
    from .divide_classify import evaluate_dc

    out = {}
    for condition, items in queries.items():
        result, seconds = timed(lambda: evaluate_dc(training, items, image_size, device=device,
                                                    batch_size=batch_size))
        out[condition] = (result, len(items) / max(seconds, 1e-9))
    return out
