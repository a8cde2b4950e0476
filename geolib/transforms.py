"""Data-level image transforms that models and figures share: the SAFA polar transform.

The polar transform resamples a square aerial tile so that its columns are bearings, like a
ground panorama's (docs/reference.md). It is a property of the data, not of the synthetic world's
renderer, so a model (safa.py) and a figure (exploration.py) can use it without importing the
renderer.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
