"""Losses against values worked out by hand from docs/reference.md's formulas."""
from __future__ import annotations

import math

import pytest
import torch

from geolib.training.losses import (ArcFaceLoss, DistillationLoss, InfoNCE, SoftMarginTriplet,
                           cosface_loss, make_pair_loss)


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def test_infonce_by_hand():
    loss = InfoNCE()
    assert loss.scale.item() == pytest.approx(1 / 0.07)
    eye = torch.eye(2)
    s = 1 / 0.07
    # two classes, smoothing 0.1: targets 0.95 / 0.05 → log(1 + e^-s) + 0.05·s, in both directions
    assert loss(eye, eye).item() == pytest.approx(math.log1p(math.exp(-s)) + 0.05 * s, rel=1e-5)
    # normalisation happens inside; the scale is a trained parameter
    assert loss(3 * eye, eye).item() == pytest.approx(loss(eye, eye).item(), rel=1e-6)
    assert [n for n, _ in loss.named_parameters()] == ["log_scale"]


def test_infonce_is_symmetric_in_its_views():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    loss = InfoNCE()
    assert loss(a, b).item() == pytest.approx(loss(b, a).item(), rel=1e-6)


def test_soft_margin_triplet_by_hand():
    f1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # d = 2 − 2cos = [[0, 0], [2, 2]]; f1 queries: both pairs have d_pos − d_neg = 0 → log 2;
    # f2 queries: f2_0 has 0 − 2 = −2, f2_1 has 2 − 0 = +2, times α = 10
    want = (math.log(2) + (softplus(-20) + softplus(20)) / 2) / 2
    assert SoftMarginTriplet()(f1, f2).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        SoftMarginTriplet()(f1[:1], f2[:1])


def test_distillation_cosine_and_mse_by_hand():
    loss = DistillationLoss(2, {"clip": 2, "dino": 2})
    for head in loss.heads.values():
        head.weight.data = torch.eye(2)
        head.bias.data.zero_()
    student = torch.tensor([[1.0, 0.0]])
    teachers = {"clip": torch.tensor([[0.0, 1.0]]), "dino": torch.tensor([[2.0, 0.0]])}
    assert loss(student, teachers).item() == pytest.approx(0.5)  # mean of 1 − 0 and 1 − 1
    assert loss.last == pytest.approx({"clip": 1.0, "dino": 0.0})
    mse = DistillationLoss(2, {"clip": 2}, kind="mse")
    mse.heads["clip"].weight.data = torch.eye(2)
    mse.heads["clip"].bias.data.zero_()
    assert mse(torch.tensor([[1.0, 2.0]]), {"clip": torch.zeros(1, 2)}).item() == pytest.approx(2.5)
    with pytest.raises(KeyError, match="no projection head"):
        loss(student, {"siglip": torch.zeros(1, 2)})


def test_distillation_projects_to_teacher_width_and_keeps_teacher_frozen():
    loss = DistillationLoss(8, {"clip": 16, "dino": 4})
    student = torch.randn(3, 8, requires_grad=True)
    teacher = {"clip": torch.randn(3, 16, requires_grad=True), "dino": torch.randn(3, 4)}
    loss(student, teacher).backward()
    assert student.grad is not None and teacher["clip"].grad is None


def test_cosface_by_hand():
    loss = cosface_loss(2, 2)  # s = 30, m = 0.4
    loss.W.data = torch.eye(2)
    emb, label = torch.tensor([[0.6, 0.8]]), torch.tensor([0])
    # logits: 30·(0.6 − 0.4) = 6 for the target, 30·0.8 = 24 for the other
    assert loss(emb, label).item() == pytest.approx(softplus(24 - 6), rel=1e-5)


def test_arcface_by_hand():
    loss = ArcFaceLoss(2, 2)  # s = 30, m = 0.5 rad
    loss.W.data = torch.eye(2)
    theta = math.pi / 3  # cos θ = 0.5 to class 0, cos(π/6) to class 1
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    target, other = 30 * math.cos(theta + 0.5), 30 * math.cos(math.pi / 6)
    assert loss(emb, torch.tensor([0])).item() == pytest.approx(softplus(other - target), rel=1e-5)
    # cos θ ≤ 0: no margin (Divide&Classify's rule)
    emb = torch.tensor([[-0.6, 0.8]])
    target, other = 30 * -0.6, 30 * 0.8
    assert loss(emb, torch.tensor([0])).item() == pytest.approx(softplus(other - target), rel=1e-5)


def test_make_pair_loss():
    assert isinstance(make_pair_loss("infonce"), InfoNCE)
    assert make_pair_loss("triplet", alpha=5.0).alpha == 5.0
    with pytest.raises(ValueError, match="infonce, triplet"):
        make_pair_loss("contrastive")


def test_distillation_loss_takes_teachers_named_by_local_folders():
    """A teacher named by its path holds dots, which torch module names may not."""
    loss = DistillationLoss(4, {"clip:/models/clip-vit-b16.v2": 3, "dinov2": 5})
    student = torch.randn(2, 4)
    value = loss(student, {"clip:/models/clip-vit-b16.v2": torch.randn(2, 3), "dinov2": torch.randn(2, 5)})
    assert torch.isfinite(value) and set(loss.last) == {"clip:/models/clip-vit-b16.v2", "dinov2"}
    assert "dinov2" in dict(loss.heads.named_children())  # plain names keep their checkpoint keys
