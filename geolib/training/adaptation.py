"""Domain adaptation with unlabelled target images (notebook 06): AdaBN, CORAL and DANN.

The target domain is the night (or fog) queries; their images are used **without labels**, never
their coordinates, as the course project allows ("use the test queries as the target domain").
Results are also reported on a held-out part of those queries that adaptation never saw.

- AdaBN (Li et al., 2016): the network's batch-norm layers keep their weights, but their running
  mean and variance are re-estimated on target images; at test time target images go through
  those statistics, source images (the day database) through the original ones. No training.
- CORAL (Sun & Saenko, 2016): a loss matching the covariance of source and target descriptors,
  `‖C_s − C_t‖²_F / (4d²)`, added to the CosPlace loss.
- DANN (Ganin et al., 2016): a domain classifier on the descriptors behind a gradient-reversal
  layer; the encoder learns descriptors the classifier cannot tell apart by domain.
- Histogram matching: a per-channel look-up table that maps the pooled pixel histogram of the
  target images onto that of source (day) images, applied to target images before the network
  (`histogram_match`, `apply_lut`). No training; it reaches a frozen backbone, which the two losses
  above cannot.
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALIGNMENTS = ("none", "coral", "dann")


# --------------------------------------------------------------------------- AdaBN

@torch.no_grad()
def adapt_bn(module: nn.Module, batches: Iterable[Tensor], device: str = "cpu") -> nn.Module:
    """A copy of `module` whose batch-norm running statistics are those of `batches` (normalised
    input tensors of target images), averaged over all of them (momentum None: a plain mean, so
    the batch order does not matter). Weights and everything else are the original's; the copy
    is returned in eval mode and `module` is left untouched."""
    adapted = copy.deepcopy(module).to(device)
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(module).__name__} has no batch-norm layer: AdaBN has nothing to re-estimate "
                         "(a transformer uses LayerNorm); use CORAL or DANN for it")
    adapted.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    for x in batches:
        if len(x):
            adapted(x.to(device))
            seen += len(x)
    if seen == 0:
        raise ValueError("AdaBN got no target image; give the target queries' images")
    return adapted.eval()


# --------------------------------------------------------------------------- histogram matching

def histogram_match(source: Tensor, reference: Tensor) -> Tensor:
    """(3, 256) look-up table, per channel, that maps the pooled 8-bit histogram of `source` images onto
    that of `reference` images (both float [0, 1] `(N, 3, H, W)`): classic histogram matching, the
    source's cumulative share of each level sent to the reference level of the same cumulative share."""
    def cdf(x: Tensor) -> np.ndarray:
        levels = (x.clamp(0, 1) * 255).round().long()
        return np.stack([np.cumsum(np.bincount(levels[:, c].flatten().numpy(), minlength=256)) / levels[:, c].numel()
                         for c in range(3)])

    cs, cr = cdf(source.cpu()), cdf(reference.cpu())
    return torch.from_numpy(np.stack([np.interp(cs[c], cr[c], np.arange(256.0)) for c in range(3)])).float() / 255


def apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """A (3, 256) look-up table (`histogram_match`) applied to a float [0, 1] `(B, 3, H, W)` batch."""
    levels = (x.clamp(0, 1) * 255).round().long()
    return torch.stack([lut[c][levels[:, c]] for c in range(3)], dim=1)


# --------------------------------------------------------------------------- CORAL and DANN

def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """CORAL: squared Frobenius distance of the two feature covariances over 4d²."""
    d = source.shape[1]

    def cov(x: Tensor) -> Tensor:
        x = x - x.mean(0, keepdim=True)
        return x.T @ x / max(1, len(x) - 1)

    return (cov(source) - cov(target)).pow(2).sum() / (4 * d * d)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; the gradient flows back multiplied by −`scale` (DANN's reversal layer)."""
    return _Reverse.apply(x, scale)


class Alignment(nn.Module):
    """`alignment(source_descriptors, target_descriptors)` → the alignment loss of `kind`.

    `coral` has no parameters; `dann` owns its domain classifier (trained with the encoder, at the
    heads' learning rate, and reversed into the encoder)."""

    def __init__(self, kind: str, dim: int, hidden: int = 64) -> None:
        super().__init__()
        if kind not in ALIGNMENTS or kind == "none":
            raise ValueError(f"unknown alignment {kind!r}; choose one of {', '.join(ALIGNMENTS[1:])}")
        self.kind = kind
        if kind == "dann":
            self.domain = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        if self.kind == "coral":
            return coral_loss(source, target)
        feats = reverse_gradient(torch.cat([source, target]))
        labels = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(feats.device)
        return F.binary_cross_entropy_with_logits(self.domain(feats).squeeze(1), labels)
