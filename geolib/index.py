"""A saved FAISS index of a gallery, with the JSON metadata that makes its answers meaningful.

On disk, a directory with `index.faiss` (faiss's own format, no pickle) and `index.json`: per item
the image path, place label and coordinates, plus the model name and config hash that produced the
embeddings, the count, the width and the index file's SHA-256. Loading checks all of them against
the index, so a gallery re-embedded by another model, or an index and metadata from two different
runs, fail loudly instead of returning plausible wrong places.

Embeddings are compared by inner product (cosine for L2-normalised ones). `factory` takes a faiss
index-factory string; the default `"Flat"` is exact search.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .paths import atomic_path, atomic_write_json

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1


@dataclass
class Hit:
    rank: int
    gallery_index: int
    score: float
    path: str
    place: Any
    coords: list[float] | None


class GalleryIndex:
    """Gallery embeddings in a faiss index plus, per item, path, place and coordinates."""

    def __init__(self, index, meta: dict[str, Any]) -> None:
        self.index = index
        self.meta = meta
        _check(index, meta, source="index")

    @classmethod
    def build(cls, embeddings: np.ndarray, paths: Sequence[str | Path],
              places: Sequence[Any] | None = None, coords: np.ndarray | Sequence | None = None,
              model: str | None = None, config_hash: str | None = None,
              factory: str = "Flat", extra: Mapping[str, Any] | None = None) -> "GalleryIndex":
        """Index `embeddings` (N, D) float32 with one path (and optionally place, coordinates) each."""
        import faiss

        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(paths):
            raise ValueError(f"need (N, D) embeddings and N paths; got {emb.shape} and {len(paths)} paths")
        index = faiss.index_factory(emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(emb)
        index.add(emb)
        meta = {
            "format": FORMAT_VERSION, "factory": factory, "metric": "inner_product",
            "count": int(index.ntotal), "dim": int(index.d), "model": model, "config_hash": config_hash,
            "paths": [str(p) for p in paths],
            "places": _json_list(places, len(paths), "places"),
            "coords": _json_coords(coords, len(paths)),
            "extra": dict(extra or {}),
        }
        return cls(index, meta)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def save(self, directory: str | Path) -> Path:
        """Write `index.faiss` then `index.json` (each atomically); the JSON carries the index's hash."""
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / INDEX_FILE) as tmp:
            faiss.write_index(self.index, str(tmp))
            self.meta["sha256"] = _sha256(tmp)
        atomic_write_json(directory / META_FILE, self.meta, sort_keys=False, indent=None)
        return directory

    @classmethod
    def load(cls, directory: str | Path, expect_config_hash: str | None = None) -> "GalleryIndex":
        """Read an index back; raise ValueError naming the mismatch if metadata and index disagree."""
        import faiss

        directory = Path(directory)
        index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
        for p in (index_path, meta_path):
            if not p.exists():
                raise FileNotFoundError(f"{p} is missing; build the index again (notebook 02)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        digest = _sha256(index_path)
        if meta.get("sha256") != digest:
            raise ValueError(f"{index_path} does not match {meta_path} (SHA-256 differs): "
                             "they come from different runs; rebuild the index")
        if expect_config_hash is not None and meta.get("config_hash") != expect_config_hash:
            raise ValueError(f"{directory} was built by model config {meta.get('config_hash')}, "
                             f"not {expect_config_hash}; rebuild the index for this model")
        index = faiss.read_index(str(index_path))
        _check(index, meta, source=str(directory))
        return cls(index, meta)

    def search(self, query_emb: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(scores, gallery indices), each (Q, k); missing neighbours are -1 (fewer than k items)."""
        q = np.ascontiguousarray(query_emb, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise ValueError(f"queries must be (Q, {self.index.d}), got {q.shape}")
        return self.index.search(q, k)

    def query(self, query_emb: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-k places per query, each with its path, coordinates and score."""
        scores, idx = self.search(query_emb, k)
        return [[self._hit(rank, int(i), float(s)) for rank, (i, s) in enumerate(zip(row_i, row_s)) if i >= 0]
                for row_i, row_s in zip(idx, scores)]

    def query_images(self, model, images, view: str, k: int = 5) -> list[list[Hit]]:
        """Embed a batch of new images (already transformed, `(B, 3, H, W)`) and query."""
        import torch

        if self.meta.get("config_hash") and hasattr(model, "config"):
            from .models import config_hash

            if config_hash(model.config) != self.meta["config_hash"]:
                raise ValueError(f"this index was built by model config {self.meta['config_hash']}, "
                                 f"not by the given model ({config_hash(model.config)})")
        was_training = model.training
        model.eval()
        with torch.no_grad():
            emb = model(images, view=view).float().cpu().numpy()
        model.train(was_training)
        return self.query(emb, k)

    def _hit(self, rank: int, i: int, score: float) -> Hit:
        m = self.meta
        return Hit(rank=rank, gallery_index=i, score=score, path=m["paths"][i],
                   place=m["places"][i] if m["places"] is not None else None,
                   coords=m["coords"][i] if m["coords"] is not None else None)


def hits_table(hits: list[list[Hit]]):
    """Query results as a pandas table (one row per query × rank), for notebooks."""
    import pandas as pd

    return pd.DataFrame([{"query": q, **asdict(h)} for q, row in enumerate(hits) for h in row])


def _check(index, meta: Mapping[str, Any], source: str) -> None:
    problems = []
    if meta.get("count") != index.ntotal:
        problems.append(f"metadata count {meta.get('count')} ≠ index size {index.ntotal}")
    if meta.get("dim") != index.d:
        problems.append(f"metadata dim {meta.get('dim')} ≠ index dim {index.d}")
    for key in ("paths", "places", "coords"):
        values = meta.get(key)
        if (key == "paths" or values is not None) and len(values or []) != index.ntotal:
            problems.append(f"{len(values or [])} {key} for {index.ntotal} items")
    if problems:
        raise ValueError(f"{source}: metadata does not match the index: " + "; ".join(problems))


def _json_list(values: Sequence[Any] | None, n: int, what: str) -> list[Any] | None:
    if values is None:
        return None
    out = [v.item() if hasattr(v, "item") else v for v in values]
    if len(out) != n:
        raise ValueError(f"{len(out)} {what} for {n} embeddings")
    return out


def _json_coords(coords: np.ndarray | Sequence | None, n: int) -> list[list[float]] | None:
    if coords is None:
        return None
    arr = np.asarray(coords, dtype=np.float64)
    if arr.ndim != 2 or len(arr) != n:
        raise ValueError(f"coords must be (N, 2+) for {n} embeddings, got {arr.shape}")
    return arr.tolist()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
