"""Named training augmentations beyond CosPlace's ColorJitter + RandomResizedCrop (notebook 06).

Why named: a study compares augmentations as settings (`CosPlaceConfig.augment`), so a saved model
and its records say which one it trained with, and the settings hash tells them apart. Each
variant runs CosPlace's own batch augmentation first (`groups.Augment`), then one extra
torchvision.transforms.v2 transform drawn independently for every image of the batch:

- `perspective`: RandomPerspective, a camera that looks from another angle;
- `erasing`: RandomErasing, an occluder (a parked van, a tree) over part of the view;
- `night`: a night-like photometric change: a gamma curve that crushes the dark tones, an overall
  darkening, and Gaussian sensor noise (the noise a short exposure at night adds);
- `haze`: blur and a blend towards a bright grey-blue airlight, fog's loss of contrast;
- `weather`: one of `night`, `haze` or nothing per image, the query conditions' mixture.

Each extra is applied with a probability below 1, so day-like images stay in every batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .groups import Augment, color_jitter, normalize, random_resized_crop

AUGMENTATIONS = ("base", "perspective", "erasing", "night", "haze", "weather")


class NightLike(nn.Module):
    """Gamma γ ∈ `gamma`, brightness × b ∈ `brightness`, then N(0, σ²) noise with σ ∈ `noise`, on a
    [0, 1] image; applied with probability `p` (torch's global RNG, so a seeded cache repeats)."""

    def __init__(self, p: float = 0.5, gamma: tuple[float, float] = (1.4, 2.6),
                 brightness: tuple[float, float] = (0.12, 0.45), noise: tuple[float, float] = (0.01, 0.05)) -> None:
        super().__init__()
        from torchvision.transforms import v2

        self.p, self.gamma, self.brightness, self.noise = p, gamma, brightness, noise
        self.v2 = v2

    def forward(self, img: Tensor) -> Tensor:
        if torch.rand(()) >= self.p:
            return img
        f = self.v2.functional
        g = float(torch.empty(()).uniform_(*self.gamma))
        b = float(torch.empty(()).uniform_(*self.brightness))
        s = float(torch.empty(()).uniform_(*self.noise))
        img = f.adjust_brightness(f.adjust_gamma(img, g), b)
        return self.v2.GaussianNoise(sigma=s, clip=True)(img)


class Haze(nn.Module):
    """GaussianBlur, then `(1 − t)·img + t·airlight` with t ∈ `amount`: fog's contrast loss, applied
    with probability `p`."""

    def __init__(self, p: float = 0.5, amount: tuple[float, float] = (0.3, 0.75),
                 airlight: tuple[float, float, float] = (0.72, 0.75, 0.78)) -> None:
        super().__init__()
        from torchvision.transforms import v2

        self.p, self.amount = p, amount
        self.register_buffer("airlight", torch.tensor(airlight).view(3, 1, 1), persistent=False)
        self.blur = v2.GaussianBlur(5, sigma=(0.3, 1.5))

    def forward(self, img: Tensor) -> Tensor:
        if torch.rand(()) >= self.p:
            return img
        t = float(torch.empty(()).uniform_(*self.amount))
        return (1 - t) * self.blur(img) + t * self.airlight.to(img.device)


def extra_transform(name: str) -> Callable[[Tensor], Tensor] | None:
    """The per-image transform of augmentation `name` on a float [0, 1] `(3, H, W)` image (None for `base`)."""
    from torchvision.transforms import v2

    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if name == "base":
        return None
    if name == "perspective":
        return v2.RandomPerspective(distortion_scale=0.35, p=0.7)
    if name == "erasing":
        return v2.RandomErasing(p=0.7, scale=(0.03, 0.2), ratio=(0.3, 3.3), value=0.5)
    if name == "night":
        return NightLike()
    if name == "haze":
        return Haze()
    return v2.RandomChoice([NightLike(p=1.0), Haze(p=1.0), nn.Identity()])


@dataclass
class StudyAugment(Augment):
    """CosPlace's batch augmentation (`groups.Augment`), then augmentation `extra` per image."""

    extra: str = "base"

    def __post_init__(self) -> None:
        self._extra = extra_transform(self.extra)

    def unnormalized(self, batch: Tensor) -> Tensor:
        """The augmented batch in [0, 1], before ImageNet normalisation: what a figure shows."""
        x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue)
        x = random_resized_crop(x, self.image_size, self.random_resized_crop, self.ratio)
        if self._extra is not None and len(x):
            x = torch.stack([self._extra(img) for img in x]).clamp(0, 1)
        return x

    def __call__(self, batch: Tensor) -> Tensor:
        return normalize(self.unnormalized(batch))


def make_augment(cfg: Any, name: str | None = None) -> Augment:
    """The training augmentation of a CosPlace config: `groups.Augment` itself for `base` (so a base
    training is bit for bit CosPlace's), else `StudyAugment` with the named extra."""
    name = name or getattr(cfg, "augment", "base")
    args = (cfg.image_size, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, cfg.random_resized_crop)
    if name == "base":
        return Augment(*args)
    return StudyAugment(*args, extra=name)
