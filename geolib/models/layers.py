"""Neck and pooling layers of the Phase 1 model (docs/reference.md).

Feature maps between the backbone and the pooling are kept channels-last, `(B, H, W, C)`: it is
what transformer backbones emit, attention wants tokens, and `Linear` acts on the last axis.
MixVPR keeps its published `(B, C, H, W)` input.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a `(B, H, W, C)` map: area-average when shrinking (keeps every token's evidence),
    bilinear when growing."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    y = x.permute(0, 3, 1, 2)
    if size[0] <= x.shape[1] and size[1] <= x.shape[2]:
        y = F.adaptive_avg_pool2d(y, size)
    else:
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 2.0) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, int(dim * ratio)), nn.GELU(),
                         nn.Linear(int(dim * ratio), dim))


class LayerToLayerAttention(nn.Module):
    """L2LTR's layer-to-layer attention, between consecutive backbone stages.

    Queries and values come from this stage's tokens; keys come from the previous stage's tokens
    (resampled to this stage's grid and projected to its width), through their own LayerNorm.
    A token therefore gathers this stage's content where the *previous* stage saw related
    structure. The residual branches start scaled down (LayerScale), so a pretrained backbone's
    features pass through almost unchanged at the first step.
    """

    def __init__(self, dim: int, prev_dim: int | None = None, heads: int = 4,
                 mlp_ratio: float = 2.0, init_scale: float = 0.1) -> None:
        super().__init__()
        prev_dim = prev_dim or dim
        self.key_proj = nn.Identity() if prev_dim == dim else nn.Linear(prev_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.key_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, _heads_for(dim, heads), batch_first=True)
        self.mlp = Mlp(dim, mlp_ratio)
        self.gamma_attn = nn.Parameter(torch.full((dim,), init_scale))
        self.gamma_mlp = nn.Parameter(torch.full((dim,), init_scale))

    def forward(self, x: Tensor, prev: Tensor | None = None) -> Tensor:
        """`x`: this stage `(B, H, W, C)`; `prev`: previous stage `(B, H', W', C')`, or None for
        the first stage (its own tokens give the keys)."""
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        keys = tokens if prev is None else self.key_proj(resample(prev, (h, w))).reshape(b, h * w, c)
        qv = self.norm(tokens)
        out, _ = self.attn(qv, self.key_norm(keys), qv, need_weights=False)
        tokens = tokens + self.gamma_attn * out
        tokens = tokens + self.gamma_mlp * self.mlp(tokens)
        return tokens.reshape(b, h, w, c)


class MultiScaleFusion(nn.Module):
    """Fuse stage maps on one grid: each stage normalised and projected to `dim`, resampled to
    `size`, concatenated and mixed by a Linear. Early stages bring the fine layout (window rows,
    roof edges) that the last stage has pooled away."""

    def __init__(self, in_dims: Sequence[int], dim: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)
        self.proj = nn.ModuleList(nn.Sequential(nn.LayerNorm(c), nn.Linear(c, dim)) for c in in_dims)
        self.mix = nn.Sequential(nn.GELU(), nn.Linear(dim * len(in_dims), dim))

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        parts = [resample(p(m), self.size) for p, m in zip(self.proj, maps)]
        return self.mix(torch.cat(parts, dim=-1))


class AttentionPool(nn.Module):
    """A learned query attends over the spatial tokens: the pooling picks *where* to look, instead
    of averaging the layout away."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, _heads_for(dim, heads), batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.norm(x.flatten(1, 2))
        out, _ = self.attn(self.query.expand(len(x), -1, -1), tokens, tokens, need_weights=False)
        return out[:, 0]


class GeM(nn.Module):
    """Generalised mean pooling over space, `(mean(x.clamp(ε)^p))^(1/p)`, p learnable."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        if learn_p:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.register_buffer("p", torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """`x`: `(B, H, W, C)` → `(B, C)`."""
        p = self.p.to(x)
        return x.clamp(min=self.eps).pow(p).mean(dim=(1, 2)).pow(1.0 / p)


class AvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2))


class FeatureMixer(nn.Module):
    """One MixVPR block along the flattened spatial axis: `x + Linear(ReLU(Linear(LN(x))))`."""

    def __init__(self, length: int, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        hidden = int(length * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(length), nn.Linear(length, hidden), nn.ReLU(),
                                 nn.Linear(hidden, length))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(x)


class MixVPR(nn.Module):
    """MixVPR aggregation: `(B, C, H, W)` → L2-normalised `out_channels·out_rows` descriptor.

    Mixer blocks act on each channel's flattened H·W map, so they learn global spatial relations;
    then Linear over channels (C → out_channels) and over rows (HW → out_rows).
    """

    def __init__(self, in_channels: int, in_h: int, in_w: int, out_channels: int = 1024,
                 mix_depth: int = 4, mlp_ratio: float = 1.0, out_rows: int = 4) -> None:
        super().__init__()
        self.in_hw = (in_h, in_w)
        self.mix = nn.Sequential(*(FeatureMixer(in_h * in_w, mlp_ratio) for _ in range(mix_depth)))
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(in_h * in_w, out_rows)
        self.out_dim = out_channels * out_rows

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.in_hw:
            raise ValueError(f"MixVPR was built for {self.in_hw} maps, got {tuple(x.shape[2:])}")
        x = self.mix(x.flatten(2))  # (B, C, HW)
        x = self.channel_proj(x.transpose(1, 2))  # (B, HW, out_channels)
        x = self.row_proj(x.transpose(1, 2))  # (B, out_channels, out_rows)
        return F.normalize(x.flatten(1), dim=-1)


class MixVPRPool(MixVPR):
    """MixVPR on the model's channels-last maps."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 3, 1, 2))


def _heads_for(dim: int, heads: int) -> int:
    """The largest head count ≤ `heads` that divides `dim` (small CPU widths are not multiples)."""
    for h in range(min(heads, dim), 0, -1):
        if dim % h == 0:
            return h
    return 1
