"""Data-level image transforms that models and figures share: a model's evaluation
preprocessing (`Preprocess`) and the SAFA polar transform.

`Preprocess` is declared by each model family and read by every embedding path
(`geolib.evaluation.embedding`), so it sits below both. The polar transform resamples a square aerial tile so that its columns are bearings, like a
ground panorama's (docs/reference.md). It is a property of the data, not of the synthetic world's
renderer, so a model (safa.py) and a figure (exploration.py) can use it without importing the
renderer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .images import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from PIL import Image


def polar_grid(size: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampling rows x and columns y of docs/reference.md: bottom row at the tile centre, j=0 south."""
    i = np.arange(height, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    r = (size / 2) * (height - 1 - i) / height
    x = size / 2 + r * np.cos(2 * np.pi * j / width)
    y = size / 2 - r * np.sin(2 * np.pi * j / width)
    return x, y


def polar_transform(tile: np.ndarray | torch.Tensor, height: int, width: int):
    """SAFA polar transform of a square aerial tile (H, W[, C] numpy or (B, C, S, S) torch).

    Bilinear, zero outside, with pixel centres at integer indices; returns the same kind of array.
    """
    is_np = isinstance(tile, np.ndarray)
    t = torch.as_tensor(np.asarray(tile, dtype=np.float32)) if is_np else tile.float()
    if is_np:
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    s = t.shape[-1]
    x, y = polar_grid(s, height, width)
    gx = torch.as_tensor(y / (s - 1) * 2 - 1, dtype=torch.float32)   # grid x = column
    gy = torch.as_tensor(x / (s - 1) * 2 - 1, dtype=torch.float32)   # grid y = row
    grid = torch.stack([gx, gy], dim=-1)[None].expand(t.shape[0], -1, -1, -1)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if not is_np:
        return out
    out = out[0].permute(1, 2, 0).numpy()
    out = out[..., 0] if np.asarray(tile).ndim == 2 else out
    return out.astype(np.asarray(tile).dtype) if np.asarray(tile).dtype == np.uint8 else out


RESIZES = ("antialias", "bilinear-pil")


@dataclass(frozen=True)
class Preprocess:
    """How a model's evaluation images are resized and normalised.

    `size` is one side (square), one `(h, w)`, or per view `{view: (h, w)}` (SAFA's panorama and
    satellite differ). Frozen, so a model's spec cannot drift between a gallery and its queries.
    """

    size: int | tuple[int, int] | tuple[tuple[str, tuple[int, int]], ...]
    resize: str = "antialias"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"preprocess resize must be one of {RESIZES}, got {self.resize!r}")
        size = self.size
        if isinstance(size, Mapping):
            size = tuple(sorted((str(v), _hw(hw)) for v, hw in size.items()))
        elif isinstance(size, (list, tuple)) and size and isinstance(size[0], (list, tuple)):
            size = tuple(sorted((str(v), _hw(hw)) for v, hw in size))
        elif not isinstance(size, int):
            size = _hw(size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def per_view(self) -> bool:
        return isinstance(self.size, tuple) and bool(self.size) and isinstance(self.size[0], tuple)

    def hw(self, view: str | None = None) -> tuple[int, int]:
        """The (height, width) images of `view` are resized to."""
        if isinstance(self.size, int):
            return (self.size, self.size)
        if not self.per_view:
            return self.size  # type: ignore[return-value]
        sizes = dict(self.size)  # type: ignore[arg-type]
        if view not in sizes:
            raise KeyError(f"this preprocessing has sizes for views {', '.join(sizes)}, not {view!r}; "
                           "pass one of those views")
        return sizes[view]

    def transform(self, view: str | None = None) -> Callable[["Image.Image"], torch.Tensor]:
        """PIL image → normalised float32 (3, H, W) tensor."""
        h, w = self.hw(view)
        if self.resize == "antialias":
            from .datasets import default_transform

            return default_transform((h, w), mean=self.mean, std=self.std)
        return _PilBilinear((h, w), self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in a model config and in every record's `config.preprocess`."""
        size: Any = self.size
        if self.per_view:
            size = {v: list(hw) for v, hw in self.size}  # type: ignore[union-attr]
        elif isinstance(size, tuple):
            size = list(size)
        return {"size": size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: "Preprocess | Mapping[str, Any]") -> "Preprocess":
        if isinstance(d, Preprocess):
            return d
        if not isinstance(d, Mapping) or "size" not in d:
            raise ValueError(f"a preprocess spec needs at least 'size' (and resize, mean, std), got {d!r}")
        return cls(d["size"], d.get("resize", "antialias"), tuple(d.get("mean", IMAGENET_MEAN)),
                   tuple(d.get("std", IMAGENET_STD)))

    def resized(self, size: int | tuple[int, int] | None) -> "Preprocess":
        """The same method at another size (a caller that evaluates at a size of its own)."""
        return self if size is None else Preprocess(size, self.resize, self.mean, self.std)


def _hw(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    raise ValueError(f"an image size is one int or (height, width), got {size!r}")


class _PilBilinear:
    """PIL bilinear resize, uint8 → [0, 1] → mean/std: the descriptor networks' training input."""

    def __init__(self, hw: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.hw = hw
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, img: "Image.Image") -> torch.Tensor:
        from PIL import Image

        img = img.resize((self.hw[1], self.hw[0]), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std
