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

An augmentation name may end in `+<normalisation>` (`base+stretch`, `weather+stretch`): a per-image
photometric normalisation (`NORMALIZATIONS`) run last on every training image, after the
augmentation. It is a **preprocessing** change, not an augmentation: it is deterministic, and the
same function (`input_normalization`) must be applied to every image at test time, database and
queries alike; notebook 06's `StudyRunner` does so. It needs no target-domain image:

- `stretch`: each channel's 1st–99th percentile stretched to [0, 1] (a robust autocontrast: the
  few lit windows of a night image do not set its range, the dark walls do);
- `autocontrast`: torchvision's, each channel's minimum–maximum stretched to [0, 1];
- `equalize`: torchvision's per-channel histogram equalisation;
- `exposure`: one gain per image bringing its median luminance up to 0.4 (an auto-exposure; day
  images are left nearly as they are, night ones brightened, their lit windows saturated).

A model trained with one needs it at evaluation too; `geolib.apps.geoclass.evaluate_vpr` does not
know it, so such a model is evaluated through the studies (or `input_normalization` by hand).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .groups import Augment, color_jitter, normalize, random_resized_crop

AUGMENTATIONS = ("base", "perspective", "erasing", "night", "haze", "weather")
NORMALIZATIONS = ("stretch", "autocontrast", "equalize", "exposure")


def split_name(name: str) -> tuple[str, str | None]:
    """(augmentation, normalisation or None) of an augmentation name such as `weather+stretch`."""
    aug, _, norm = name.partition("+")
    if aug not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {aug!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if norm and norm not in NORMALIZATIONS:
        raise ValueError(f"unknown input normalisation {norm!r} in {name!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return aug, norm or None


def stretch(x: Tensor, low: float = 0.01, high: float = 0.99) -> Tensor:
    """Per image and channel, the `low`–`high` quantile range of a float [0, 1] `(B, 3, H, W)` batch
    stretched to [0, 1] (clipped); a flat channel is only shifted."""
    flat = x.flatten(2)
    q = torch.quantile(flat, torch.tensor([low, high], dtype=flat.dtype, device=x.device), dim=2)
    lo, hi = q[0][..., None, None], q[1][..., None, None]
    return ((x - lo) / (hi - lo).clamp(min=1 / 255)).clamp(0, 1)


def exposure(x: Tensor, target: float = 0.4, max_gain: float = 16.0) -> Tensor:
    """Per image, one gain on all channels that brings its median luminance up to `target` (never
    darkens; at most `max_gain`), clipped: a camera's auto-exposure. Hue ratios are kept; what is
    brighter than the scale allows (lit windows at night) saturates."""
    lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten(1)
    gain = (target / lum.median(dim=1).values.clamp(min=1 / 255)).clamp(1.0, max_gain)
    return (x * gain.view(-1, 1, 1, 1)).clamp(0, 1)


def input_normalization(name: str | None) -> Callable[[Tensor], Tensor] | None:
    """The per-image photometric normalisation of an augmentation name (`base+stretch` → `stretch`),
    on a float [0, 1] `(B, 3, H, W)` batch; None when the name has none. Deterministic: train and
    test images go through the same function."""
    from torchvision.transforms.v2 import functional as f

    norm = split_name(name or "base")[1]
    if norm is None:
        return None
    if norm == "stretch":
        return stretch
    if norm == "exposure":
        return exposure
    if norm == "autocontrast":
        return lambda x: f.autocontrast(x.clamp(0, 1))

    def equalize(x: Tensor) -> Tensor:
        return f.equalize((x.clamp(0, 1) * 255).round().to(torch.uint8)).float() / 255

    return equalize


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
    """The per-image transform of augmentation `name` on a float [0, 1] `(3, H, W)` image (None for
    `base`); a `+<normalisation>` suffix is `input_normalization`'s, not this one's."""
    from torchvision.transforms import v2

    name = split_name(name)[0]
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
    """CosPlace's batch augmentation (`groups.Augment`), then augmentation `extra` per image, then
    `extra`'s input normalisation (if it names one) on every image."""

    extra: str = "base"

    def __post_init__(self) -> None:
        self._extra = extra_transform(self.extra)
        self._norm = input_normalization(self.extra)

    def unnormalized(self, batch: Tensor) -> Tensor:
        """The augmented batch in [0, 1], before ImageNet normalisation: what a figure shows."""
        x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue)
        x = random_resized_crop(x, self.image_size, self.random_resized_crop, self.ratio)
        if self._extra is not None and len(x):
            x = torch.stack([self._extra(img) for img in x]).clamp(0, 1)
        if self._norm is not None and len(x):
            x = self._norm(x)
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
