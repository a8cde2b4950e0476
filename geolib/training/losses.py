"""Phase 1 losses with docs/reference.md's defaults.

Contrastive losses take two aligned batches of embeddings, row i of one view matching row i of the
other; every other row is an in-batch negative (so a batch must never hold one place twice, which
the sampler guarantees). Embeddings are normalised inside, so callers may pass raw features.

Margin classifiers (CosFace, ArcFace) come from pytorch-metric-learning, which owns the class
weights; ArcFace is subclassed only to use Divide&Classify's margin rule.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from torch import Tensor, nn


class InfoNCE(nn.Module):
    """Symmetric InfoNCE (Sample4Geo): CE over `s·f₁f₂ᵀ` in both directions, diagonal labels.

    The scale s is learnt in log space (it must stay positive and spans orders of magnitude),
    initialised to 1/temperature.
    """

    def __init__(self, temperature: float = 0.07, label_smoothing: float = 0.1,
                 learn_scale: bool = True) -> None:
        super().__init__()
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.label_smoothing = label_smoothing

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        logits = self.scale * F.normalize(f1, dim=-1) @ F.normalize(f2, dim=-1).T
        target = torch.arange(len(f1), device=f1.device)
        return (F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
                + F.cross_entropy(logits.T, target, label_smoothing=self.label_smoothing)) / 2


class SoftMarginTriplet(nn.Module):
    """Weighted soft-margin triplet (SAFA, L2LTR): `log(1 + exp(α·(d_pos − d_neg)))`, d = 2 − 2cos.

    Every in-batch negative counts; the loss is averaged over both query directions.
    """

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        n = len(f1)
        if n < 2:
            raise ValueError("the triplet loss needs at least 2 pairs per batch (in-batch negatives)")
        dist = 2 - 2 * F.normalize(f1, dim=-1) @ F.normalize(f2, dim=-1).T
        pos = dist.diagonal()
        off = ~torch.eye(n, dtype=torch.bool, device=f1.device)
        forward = F.softplus(self.alpha * (pos[:, None] - dist))[off].mean()  # f1 queries
        backward = F.softplus(self.alpha * (pos[None, :] - dist))[off].mean()  # f2 queries
        return (forward + backward) / 2


def cosine_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean `1 − cos` (Distill4Geo's dual cosine embedding loss, per view). The teacher is frozen."""
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()


class DistillationLoss(nn.Module):
    """Feature distillation from frozen teachers, each through its own projection head.

    The student's embedding is projected to each teacher's width by a Linear head owned here (the
    heads are trained with the student and dropped at inference). `kind="cosine"` is 1 − cos;
    `kind="mse"` regresses the teacher's raw features. The result is the mean over teachers;
    `last` keeps the per-teacher values for logging.
    """

    def __init__(self, student_dim: int, teacher_dims: Mapping[str, int], kind: str = "cosine") -> None:
        super().__init__()
        if kind not in ("cosine", "mse"):
            raise ValueError(f"distillation kind must be 'cosine' or 'mse', got {kind!r}")
        if not teacher_dims:
            raise ValueError("DistillationLoss needs at least one teacher")
        self.kind = kind
        # module names cannot hold "." (a teacher named by its local folder often does)
        self.keys = {name: name if name and "." not in name else f"t{i}_" + "".join(c if c.isalnum() else "_" for c in name)
                     for i, name in enumerate(teacher_dims)}
        self.heads = nn.ModuleDict({self.keys[name]: nn.Linear(student_dim, dim) for name, dim in teacher_dims.items()})
        self.last: dict[str, float] = {}

    def forward(self, student: Tensor, teachers: Mapping[str, Tensor]) -> Tensor:
        missing = set(teachers) - set(self.keys)
        if missing:
            raise KeyError(f"no projection head for teachers {sorted(missing)}; known: {sorted(self.keys)}")
        parts = {name: self._one(self.heads[self.keys[name]](student), t) for name, t in teachers.items()}
        self.last = {name: float(v.detach()) for name, v in parts.items()}
        return torch.stack(list(parts.values())).mean()

    def _one(self, projected: Tensor, teacher: Tensor) -> Tensor:
        if self.kind == "cosine":
            return cosine_distance(projected, teacher)
        return F.mse_loss(projected, teacher.detach().to(projected.dtype))


def cosface_loss(num_classes: int, embedding_dim: int, scale: float = 30.0,
                 margin: float = 0.40) -> pml_losses.CosFaceLoss:
    """CosFace / LMCL (CosPlace): `s·(cos θ − m·onehot)`, with the class weights inside."""
    return pml_losses.CosFaceLoss(num_classes=num_classes, embedding_size=embedding_dim,
                                  margin=margin, scale=scale)


class ArcFaceLoss(pml_losses.ArcFaceLoss):
    """ArcFace / AAMC (Divide&Classify): target logit `cos(θ + m)` where cos θ > 0, else cos θ.

    pytorch-metric-learning's ArcFace takes the margin in degrees and uses a different fallback
    (cos θ − m·sin m past π − m); this keeps its weights and reduction, takes m in radians and
    applies docs/reference.md's rule.
    """

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 30.0,
                 margin: float = 0.5, **kwargs) -> None:
        super().__init__(num_classes=num_classes, embedding_size=embedding_dim,
                         margin=float(np.degrees(margin)), scale=scale, **kwargs)

    def modify_cosine_of_target_classes(self, cosine_of_target_classes: Tensor) -> Tensor:
        cos = cosine_of_target_classes
        with_margin = torch.cos(self.get_angles(cos) + self.margin)
        return torch.where(cos > 0, with_margin, cos)


LOSSES = ("infonce", "triplet")


def make_pair_loss(name: str, **options) -> nn.Module:
    """A two-view contrastive loss by the name a notebook parameter gives."""
    if name == "infonce":
        return InfoNCE(**options)
    if name == "triplet":
        return SoftMarginTriplet(**options)
    raise ValueError(f"unknown pair loss {name!r}; choose one of {', '.join(LOSSES)}")
