"""The one way geolib turns images into embeddings: `embed(model, items_or_paths, ...)`.

Every evaluation, cache, index, teacher cache and `localize` embeds through here, so a gallery and
its queries are always embedded alike and a record can say how (`Preprocess.to_dict()`).

The preprocessing belongs to the model, not to the caller: a model family declares one `Preprocess`
(resize method, size per view, mean and std) and `preprocess_of(model)` finds it. Two resize methods
exist because two families were trained with them and their numbers must not move:

- `"antialias"`: torchvision v2 antialiased resize (`datasets.default_transform`, eval path):
  Phase 1 models, baselines, students, SAFA (per-view sizes), teachers (at their own size);
- `"bilinear-pil"`: PIL bilinear resize to a square, uint8 / 255, then mean/std: the CosPlace,
  D&C and hierarchical descriptor networks (`groups.PREPROCESSING`).

Train-time augmentation is not a `Preprocess`: it lives with each training loop.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data.transforms import Preprocess

if TYPE_CHECKING:
    from PIL import Image

    from .cache import EmbeddingCache

def preprocess_of(model: nn.Module) -> Preprocess:
    """The model's declared preprocessing.

    Order: a `preprocess` attribute (teachers, SAFA, PlaceNet), `config["preprocess"]` (Phase 1
    models), then the image size a model was built for (students: `img_size`).
    """
    spec = getattr(model, "preprocess", None)
    if isinstance(spec, (Preprocess, Mapping)):
        return Preprocess.from_dict(spec)
    config = getattr(model, "config", None)
    config = config if isinstance(config, Mapping) else {}
    if config.get("preprocess"):
        return Preprocess.from_dict(config["preprocess"])
    size = getattr(model, "img_size", None) or config.get("img_size") or config.get("image_size")
    if size is None:
        raise ValueError(f"{type(model).__name__} declares no preprocessing (no `preprocess`, no config "
                         "'preprocess' or 'img_size'); pass embed(..., preprocess=Preprocess(size))")
    return Preprocess(int(size))


# --------------------------------------------------------------------------- embedding

def input_format(model: nn.Module) -> torch.memory_format:
    """The memory format a model's convolutions were put in, so its inputs can match it."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[2] * p.shape[3] > 1:  # a 1x1 kernel is contiguous both ways
            return torch.channels_last if p.is_contiguous(memory_format=torch.channels_last) \
                and not p.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format


def embed_batch(model: nn.Module, x: torch.Tensor, view: str | None = None, flip: bool = False,
                l2: bool = True) -> torch.Tensor:
    """(B, D) float32 CPU embeddings of one transformed batch, in the model's memory format.

    `flip` adds a mirrored pass (a sum: with `l2` that is the mean direction). `view=None` calls
    `model(x)` (descriptor networks and teachers take no view). The caller sets eval mode and no_grad.
    """
    x = x.contiguous(memory_format=input_format(model))
    e = model(x) if view is None else model(x, view=view)
    if flip:
        mirrored = torch.flip(x, dims=[3])
        e = e + (model(mirrored) if view is None else model(mirrored, view=view))
    e = e.float()
    return (nn.functional.normalize(e, dim=-1) if l2 else e).cpu()


@dataclass(frozen=True)
class PathItem:
    """A bare path seen as an item (the cache fingerprints `.path`, `.label`, `.view`)."""

    path: str
    label: Any = None
    view: Any = None


def as_items(items_or_paths: Sequence[Any]) -> list[Any]:
    return [PathItem(os.fspath(it)) if isinstance(it, (str, os.PathLike)) else it for it in items_or_paths]


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Any], load: Callable[[Any], torch.Tensor]) -> None:
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load(self.items[i])


@dataclass
class EmbedSettings:
    """What `embed` was asked to do, resolved: the cache keys on it, records quote `preprocess`."""

    preprocess: Preprocess | None
    view: str | None = None
    flip: bool = False
    l2: bool = True
    transform_name: str | None = None  # a caller-supplied transform (augmentation copies) in place of `preprocess`

    def describe(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess.to_dict() if self.preprocess else None, "view": self.view,
                "flip": bool(self.flip), "l2": bool(self.l2), "transform": self.transform_name}


def iter_embeddings(model: nn.Module, items: Sequence[Any], settings: EmbedSettings, *,
                    transform: Callable | None = None, batch_size: int = 64, device: str = "cpu",
                    num_workers: int = 0, progress: bool = False) -> Iterator[np.ndarray]:
    """Batches of embeddings, in order; the model is left in the mode it was in."""
    from tqdm.auto import tqdm

    from ..data.images import load_image

    tf = transform or settings.preprocess.transform(settings.view)  # type: ignore[union-attr]
    loader = torch.utils.data.DataLoader(_Images(list(items), lambda it: tf(load_image(it.path))),
                                         batch_size=batch_size, num_workers=num_workers)
    with _inference(model):
        for x in tqdm(loader, desc=f"embed {settings.view or ''}".strip(), disable=not progress, leave=False):
            yield embed_batch(model, x.to(device), settings.view, settings.flip, settings.l2).numpy()


def embed(model: nn.Module, items_or_paths: Sequence[Any], *, view: str | None = None,
          preprocess: Preprocess | Mapping[str, Any] | None = None, batch_size: int = 64,
          device: str = "cpu", flip: bool = False, cache: "EmbeddingCache | None" = None,
          progress: bool = False, l2: bool = True, num_workers: int = 0,
          transform: Callable | None = None, transform_name: str | None = None) -> np.ndarray:
    """(N, D) float32 embeddings of images (ImageItems or paths) seen as `view`.

    `preprocess` defaults to the model's own (`preprocess_of`); pass one only to reproduce a
    path that predates it. `l2` L2-normalises each row (every retrieval path; teacher caches keep
    raw outputs). `flip` averages a mirrored pass. `cache` reuses embeddings of the same weights,
    items and settings. `transform` replaces the preprocessing with a caller's own (the perturbed
    teacher copies of distillation); with a cache it needs a `transform_name`.
    """
    spec = None if transform is not None else _spec(model, preprocess)
    settings = EmbedSettings(spec, view, flip, l2, transform_name if transform is not None else None)
    items = as_items(items_or_paths)
    if cache is not None:
        return cache.get_settings(model, items, settings, transform=transform, batch_size=batch_size,
                                  device=device, num_workers=num_workers, progress=progress)
    parts = list(iter_embeddings(model, items, settings, transform=transform, batch_size=batch_size,
                                 device=device, num_workers=num_workers, progress=progress))
    if parts:
        return np.concatenate(parts).astype(np.float32, copy=False)
    return np.zeros((0, int(getattr(model, "embed_dim", 0) or 0)), np.float32)


def embed_images(model: nn.Module, images: Sequence["Image.Image"], *, view: str | None = None,
                 preprocess: Preprocess | Mapping[str, Any] | None = None, device: str = "cpu",
                 flip: bool = False, l2: bool = True) -> np.ndarray:
    """(N, D) embeddings of decoded images (an upload), through the same preprocessing as `embed`."""
    tf = _spec(model, preprocess).transform(view)
    batch = torch.stack([tf(img) for img in images]).to(device)
    return embed_tensors(model, batch, view, flip, l2)


def embed_tensors(model: nn.Module, batch: torch.Tensor, view: str | None = None, flip: bool = False,
                  l2: bool = True) -> np.ndarray:
    """(B, D) embeddings of an already transformed batch; eval mode, no gradients, mode restored."""
    with _inference(model):
        return embed_batch(model, batch, view, flip, l2).numpy()


def _spec(model: nn.Module, preprocess: Preprocess | Mapping[str, Any] | None) -> Preprocess:
    """The preprocessing a caller asked for, else the model's own (`preprocess_of`)."""
    return Preprocess.from_dict(preprocess) if preprocess is not None else preprocess_of(model)


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients; the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
