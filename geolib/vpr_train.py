"""What the Phase 2 classification trainings share: class heads, class-balanced batches, batched
augmentation, a small resumable loop, and embedding images.

CosPlace, Divide&Classify and the hierarchical classifier all train "an encoder + one or more class
heads" with two learning rates; only what a batch holds and how the loss is computed differ, and
those are passed in. Everything is kept deterministic: a batch plan is drawn from a generator
seeded by (seed, epoch), so a resumed run replays exactly the batches an uninterrupted run sees.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .losses import ArcFaceLoss, cosface_loss

log = logging.getLogger(__name__)

HEADS = ("cosface", "arcface", "softmax")
_HEAD_ALIASES = {"lmcc": "cosface", "lmcl": "cosface", "aamc": "arcface", "ce": "softmax",
                 "fc_ce": "softmax", "linear": "softmax"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def head_kind(name: str) -> str:
    """The canonical head name: papers call CosFace LMCC/LMCL and ArcFace AAMC."""
    kind = _HEAD_ALIASES.get(name.lower(), name.lower())
    if kind not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)} "
                         f"(or {', '.join(_HEAD_ALIASES)})")
    return kind


class ClassHead(nn.Module):
    """A classifier that is also its own loss: `head(emb, labels)` is the training loss,
    `head.logits(emb)` the scores used at inference (cosines for margin heads, no margin).

    Margin heads reuse `geolib.losses` (pytorch-metric-learning keeps the class weights);
    `softmax` is a plain Linear layer under cross-entropy, D&C's FC_CE baseline.
    """

    def __init__(self, dim: int, num_classes: int, kind: str = "cosface",
                 scale: float | None = None, margin: float | None = None) -> None:
        super().__init__()
        self.kind = head_kind(kind)
        self.num_classes = num_classes
        if self.kind == "cosface":
            self.loss = cosface_loss(num_classes, dim, scale=30.0 if scale is None else scale,
                                     margin=0.40 if margin is None else margin)
        elif self.kind == "arcface":
            self.loss = ArcFaceLoss(num_classes, dim, scale=30.0 if scale is None else scale,
                                    margin=0.5 if margin is None else margin)
        else:
            self.linear = nn.Linear(dim, num_classes)

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        if self.kind == "softmax":
            return F.cross_entropy(self.linear(emb), labels)
        return self.loss(emb, labels)

    def logits(self, emb: Tensor) -> Tensor:
        if self.kind == "softmax":
            return self.linear(emb)
        return F.normalize(emb, dim=-1) @ F.normalize(self.loss.W, dim=0)

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


# --------------------------------------------------------------------------- batches

def class_batches(images_per_class: Sequence[np.ndarray], iterations: int, batch_size: int,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """`iterations` batches of (image indices, class numbers), classes drawn uniformly.

    As in CosPlace, classes (not images) are shuffled and cut into batches, and each class brings
    one random image of its own: every class is seen equally often, however many images it has.
    """
    n = len(images_per_class)
    if n == 0:
        raise ValueError("no classes to train on (every class fell under min_images_per_class?)")
    needed = iterations * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-needed // n))])[:needed]
    images = np.array([images_per_class[c][rng.integers(len(images_per_class[c]))] for c in order],
                      dtype=np.int64)
    return [(images[i:i + batch_size], order[i:i + batch_size])
            for i in range(0, needed, batch_size)]


class ImageTensors(torch.utils.data.Dataset):
    """Images as square uint8 tensors, decoded once per access; augmentation happens later on
    the batch, on the training device (as CosPlace's GPU augmentation)."""

    def __init__(self, paths: Sequence[str | Path], image_size: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        from PIL import Image

        from .images import load_image

        img = load_image(self.paths[i]).resize((self.image_size, self.image_size),
                                               Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class Batches:
    """An epoch's batches decoded by a DataLoader (worker processes when asked), in plan order:
    yields (uint8 images, payload) for each (image indices, payload) of the plan."""

    def __init__(self, images: ImageTensors, plan: Sequence[tuple[np.ndarray, Any]], num_workers: int = 0) -> None:
        self.images, self.plan, self.num_workers = images, list(plan), num_workers

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        loader = torch.utils.data.DataLoader(self.images, batch_sampler=[p[0].tolist() for p in self.plan],
                                             num_workers=self.num_workers)
        return iter(zip(loader, (p[1] for p in self.plan)))


@dataclass
class Augment:
    """CosPlace's training augmentation (its defaults), run on a uint8 batch on any device.

    ColorJitter (brightness, contrast, saturation, hue) and RandomResizedCrop, with one random draw
    per image but computed on the whole batch at once: torchvision's v2 transforms draw one set of
    parameters per call, and calling them image by image costs about a second per batch of 32 on a
    CPU (mostly the HSV round trip of the hue jitter), more than the network's step.

    Differences from torchvision, on purpose: the jitters are applied in a fixed order (brightness,
    contrast, saturation, hue) rather than a random one, and hue is rotated in YIQ colour space (the
    usual linear stand-in for an HSV hue shift); `hue` is a fraction of a full turn, as there.
    """

    image_size: int
    brightness: float = 0.7
    contrast: float = 0.7
    saturation: float = 0.7
    hue: float = 0.5
    random_resized_crop: float = 0.5
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, batch: Tensor) -> Tensor:
        x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue)
        x = random_resized_crop(x, self.image_size, self.random_resized_crop, self.ratio)
        return normalize(x)


def _factors(n: int, amount: float, device: torch.device) -> Tensor:
    """Per-image factors uniform in [max(0, 1 − amount), 1 + amount], shaped to broadcast."""
    low = max(0.0, 1.0 - amount)
    return (torch.rand(n, 1, 1, 1, device=device) * (1.0 + amount - low) + low)


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> Tensor:
    """Per-image ColorJitter of a float batch in [0, 1] (fixed order; hue as a YIQ rotation)."""
    n, dev = len(x), x.device
    if brightness > 0:
        x = (x * _factors(n, brightness, dev)).clamp(0, 1)
    if contrast > 0:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * _factors(n, contrast, dev) + mean).clamp(0, 1)
    if saturation > 0:
        gray = _gray(x)
        x = ((x - gray) * _factors(n, saturation, dev) + gray).clamp(0, 1)
    if hue > 0:
        angle = (torch.rand(n, device=dev) * 2 - 1) * hue * 2 * torch.pi
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        to_yiq = _RGB_TO_YIQ.to(dev)
        matrix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (n, 3, 3), applied per pixel
        x = torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)
    return x


def random_resized_crop(x: Tensor, size: int, amount: float,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """Per-image RandomResizedCrop: area share in [1 − amount, 1], aspect ratio in `ratio`
    (log-uniform), a random position inside the image, resampled bilinearly to `size`²."""
    n, dev = len(x), x.device
    if amount <= 0:
        return x if x.shape[-2:] == (size, size) else F.interpolate(x, (size, size), mode="bilinear",
                                                                   align_corners=False, antialias=True)
    area = 1.0 - amount * torch.rand(n, device=dev)
    log_r = torch.empty(n, device=dev).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # crop width and height as shares of the image's sides
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, (n, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize(batch: Tensor) -> Tensor:
    """uint8 (or [0, 1] float) batch → ImageNet-normalised float."""
    x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    resumed_from: int
    last_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: nn.Module, param_groups: list[dict[str, Any]],
          step: Callable[[Any, int], Tensor], plan: Callable[[int, np.random.Generator], Iterable[Any]],
          epochs: int, seed: int = 0, out_dir: str | Path | None = None, resume: bool = True,
          config: dict[str, Any] | None = None, desc: str = "train", progress: bool = True,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Adam over `param_groups` (each with its own lr), `epochs` passes of `plan(epoch, rng)`.

    `step(batch, epoch)` returns the loss. `model` must hold every trained module (encoder and all
    heads) so one checkpoint restores them. Heads that get no gradient in an epoch are left
    untouched by Adam, which is what CosPlace's per-group optimizers achieve. With `out_dir`,
    `out_dir/last` is written after every epoch (weights, optimizer, RNG), and a rerun resumes
    after the last finished epoch, replaying the same batches.
    """
    seed_everything(seed)
    optimizer = torch.optim.Adam(param_groups)
    last = Path(out_dir) / "last" if out_dir is not None else None
    history: list[dict[str, Any]] = []
    start = 0
    if resume and last is not None and last.with_name("last.json").exists():
        meta = load_checkpoint(last, model, optimizer, restore_rng=True)
        start, history = int(meta["epoch"]), list(meta.get("history", []))
        log.info("resuming %s from %s after epoch %d", desc, last, start)
    for epoch in range(start, epochs):
        model.train()
        rng = np.random.default_rng([seed, epoch])
        losses = []
        bar = tqdm(plan(epoch, rng), desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        for batch in bar:
            loss = step(batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan")}
        history.append(row)
        if last is not None:
            save_checkpoint(last, model, optimizer, epoch=epoch + 1, history=history, config=config or {})
        if on_epoch is not None:
            on_epoch(row)
    return TrainResult(history, start, last)


# --------------------------------------------------------------------------- inference

@torch.no_grad()
def embed_paths(model: nn.Module, paths: Sequence[str | Path], image_size: int, batch_size: int = 64,
                device: str = "cpu", num_workers: int = 0, progress: bool = False,
                desc: str = "embed") -> np.ndarray:
    """float32 descriptors of images resized to `image_size` (train and test see the same scale)."""
    model.eval()
    loader = torch.utils.data.DataLoader(ImageTensors(paths, image_size), batch_size=batch_size,
                                         num_workers=num_workers)
    out = [model(normalize(x.to(device))).float().cpu()
           for x in tqdm(loader, desc=desc, disable=not progress, leave=False)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def topk_hits(scores: np.ndarray, labels: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """Top-k accuracy in percent. A true class with score −inf (masked out) is a miss at every k;
    ties are counted against the true class (a pessimistic, order-free rule)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels]
    rank = (scores > true[:, None]).sum(1) + (scores == true[:, None]).sum(1) - 1
    ok = np.isfinite(true)
    return {k: float(100.0 * np.mean(ok & (rank < k))) if len(labels) else 0.0 for k in ks}
