"""Embeddings on disk: a cache keyed by model, data and embedding settings.

Embedding a gallery is the slow part of every retrieval notebook, and notebooks 02-05 embed the
same gallery with the same model again and again. `geolib.evaluation.embedding.embed(..., cache=EmbeddingCache())`
embeds once and reuses the result anywhere the same model (config hash *and* weights hash: a
retrained model with an unchanged config must not hit a stale entry), the same items (paths,
labels, file sizes and modification times) and the same view, preprocessing (the model's
`geolib.evaluation.embedding.Preprocess`), flip, normalisation and dtype ask again.

Layout: `<root>/<model config hash>/<key>/embeddings.npy` (float32 or float16, numpy's own format,
no pickle) and `meta.json`. The array is written batch by batch into a memory-mapped temporary file
and renamed, then the JSON is written; an entry counts only when both exist and agree, so an
interrupted run leaves nothing that a later run would trust. Entries above `mmap_mb` are returned
memory-mapped read-only, so a million-image gallery costs page cache, not process memory.

An entry is a plain `.npy`, so the streaming evaluation reads it row by row (`geolib.npy.NpyRows`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..paths import atomic_path, atomic_write_json, outputs_root

if TYPE_CHECKING:
    from .embedding import EmbedSettings

ARRAY_FILE = "embeddings.npy"
META_FILE = "meta.json"
CACHE_FORMAT = 2  # 2: keyed by the model's Preprocess spec (geolib.evaluation.embedding), not an image size
DTYPES = ("float32", "float16")


# ----------------------------------------------------------------------------- fingerprints

def weights_hash(model: Any) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): what the model *is* now."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_config_hash(model: Any) -> str:
    """The model's config hash (geolib models), else its class name: the cache's first directory level."""
    from ..models import config_hash

    config = getattr(model, "config", None)
    return config_hash(config) if isinstance(config, Mapping) else type(model).__name__


def items_hash(items: Sequence[Any]) -> str:
    """Paths, labels, sizes and modification times: a re-exported or edited image changes the hash."""
    h = hashlib.sha256()
    for it in items:
        path = Path(it.path)
        try:
            st = path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{path}|{getattr(it, 'label', None)}|{getattr(it, 'view', None)}|{stamp}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the cache

class EmbeddingCache:
    """Gallery (or query) embeddings computed once per model, data and settings; see the module doc."""

    def __init__(self, root: str | os.PathLike | None = None, dtype: str = "float32",
                 mmap_mb: float = 256.0) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.root = Path(root) if root is not None else outputs_root() / "cache" / "embeddings"
        self.dtype, self.mmap_mb = dtype, mmap_mb
        self.hits = self.misses = 0

    def describe(self, model: Any, items: Sequence[Any], settings: "EmbedSettings") -> dict[str, Any]:
        """Everything the embeddings depend on; its hash is the entry's key.

        `settings` (from `geolib.evaluation.embedding.embed`) carries the model's `Preprocess`, so a model
        whose preprocessing changes never reads embeddings made with the old one.
        """
        return {"format": CACHE_FORMAT, "model_config": model_config_hash(model),
                "weights": weights_hash(model), "items": items_hash(items), "count": len(items),
                "dtype": self.dtype, **settings.describe()}

    def entry_dir(self, desc: Mapping[str, Any]) -> Path:
        key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / str(desc["model_config"]) / key

    def lookup(self, desc: Mapping[str, Any]) -> np.ndarray | None:
        """The stored embeddings for `desc`, or None when absent or incomplete."""
        d = self.entry_dir(desc)
        meta_path, arr_path = d / META_FILE, d / ARRAY_FILE
        if not (meta_path.exists() and arr_path.exists()):
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("describe") != dict(desc):
            return None
        big = arr_path.stat().st_size >= self.mmap_mb * 2**20
        arr = np.load(arr_path, mmap_mode="r" if big else None, allow_pickle=False)
        if arr.shape != tuple(meta["shape"]):
            return None
        return arr

    def get_or_compute(self, model: Any, items: Sequence[Any], view: str, *, image_size: int | None = None,
                       flip: bool = False, batch_size: int = 64, device: str = "cpu", num_workers: int = 0,
                       transform: Callable | None = None, transform_name: str | None = None,
                       progress: bool = False) -> np.ndarray:
        """Embeddings of `items` seen as `view`: `geolib.evaluation.embedding.embed(..., cache=self)` with
        the antialiased resize to `image_size` (the model's own preprocessing when None).

        A custom `transform` needs a `transform_name` that changes whenever the transform does.
        """
        from ..data.transforms import Preprocess
        from .embedding import embed

        return embed(model, items, view=view, preprocess=None if image_size is None else Preprocess(int(image_size)),
                     batch_size=batch_size, device=device, flip=flip, cache=self, progress=progress,
                     num_workers=num_workers, transform=transform, transform_name=transform_name)

    def get_settings(self, model: Any, items: Sequence[Any], settings: "EmbedSettings", *,
                     transform: Callable | None = None, batch_size: int = 64, device: str = "cpu",
                     num_workers: int = 0, progress: bool = False) -> np.ndarray:
        """Embeddings of `items` under resolved `embed` settings: read from the cache, or computed
        through `geolib.evaluation.embedding.iter_embeddings`, stored and returned."""
        from .embedding import as_items

        if transform is not None and not settings.transform_name:
            raise ValueError("a custom transform needs a transform_name, or the cache could not tell two apart")
        items = as_items(items)
        desc = self.describe(model, items, settings)
        found = self.lookup(desc)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        d = self.entry_dir(desc)
        shape = _embed_to_npy(model, items, settings, transform, d / ARRAY_FILE, np.dtype(self.dtype),
                              batch_size, device, num_workers, progress)
        atomic_write_json(d / META_FILE, {"describe": desc, "shape": list(shape), "view": settings.view})
        return self.lookup(desc)

    def clear(self) -> None:
        """Delete every entry (they are all recomputable)."""
        import shutil

        if self.root.exists():
            shutil.rmtree(self.root)


def _embed_to_npy(model: Any, items: Sequence[Any], settings: "EmbedSettings", transform: Callable | None,
                  path: Path, dtype: np.dtype, batch_size: int, device: str, num_workers: int,
                  progress: bool) -> tuple[int, int]:
    """Embed batch by batch straight into a memory-mapped temporary `.npy`, then rename it."""
    from .embedding import iter_embeddings

    out, row = None, 0
    with atomic_path(path) as tmp:
        for e in iter_embeddings(model, items, settings, transform=transform, batch_size=batch_size,
                                 device=device, num_workers=num_workers, progress=progress):
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(items), e.shape[1]))
            out[row:row + len(e)] = e
            row += len(e)
        if out is None:
            dim = int(getattr(model, "embed_dim", 0))
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(0, dim))
        shape = out.shape
        out.flush()
        del out
    return shape
