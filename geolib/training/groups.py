"""What the Phase 2 classification trainings share: class heads, class-balanced batches, batched
augmentation, their settings and saved files on top of `geolib.training.loop`, and embedding images.

CosPlace, Divide&Classify and the hierarchical classifier all train "an encoder + one or more class
heads" with two learning rates; only what a batch holds and how the loss is computed differ, and
those are passed in as the loop's `plan` and `step`. Everything is kept deterministic: a batch plan
is drawn from a generator seeded by (seed, epoch), so a resumed run replays exactly the batches an
uninterrupted run sees.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import dryrun
from ..checkpoint import read_model_state, save_checkpoint
from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from .loop import LoopConfig, LoopResult, distributed, run, wrap_ddp
from .losses import ArcFaceLoss, cosface_loss

log = logging.getLogger(__name__)

HEADS = ("cosface", "arcface", "softmax")
_HEAD_ALIASES = {"lmcc": "cosface", "lmcl": "cosface", "aamc": "arcface", "ce": "softmax",
                 "fc_ce": "softmax", "linear": "softmax"}


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

    Margin heads reuse `geolib.training.losses` (pytorch-metric-learning keeps the class weights);
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

        from ..data.images import load_image

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
class LoopOptions:
    """The loop's optimisation fields (geolib.training.loop) of a Phase 2 config (`CosPlaceConfig`,
    `HierarchicalConfig` inherit them). Their defaults are how the Phase 2 trainings optimise: plain
    Adam, each parameter group at its own lr, no schedule, no clipping, no AMP (what their numbers
    were obtained with). A config may change any of these; only the changed ones enter its settings,
    so models saved before they existed still match."""

    optimizer: str = "adam"
    scheduler: str = "none"
    warmup: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    amp: bool = False


LOOP_DEFAULTS: dict[str, Any] = asdict(LoopOptions())


@dataclass
class StudyOptions:
    """What notebook 06's studies vary beyond CosPlace's own settings (`CosPlaceConfig` inherits them):
    the training augmentation by name (`geolib.training.augment`), VICReg as an auxiliary loss on two
    augmented views, and feature alignment (CORAL, DANN) with unlabelled target images
    (`geolib.training.adaptation`). At their defaults a training is CosPlace's, and they stay out of
    its settings, so models saved before these fields existed keep their settings hash."""

    augment: str = "base"
    vicreg_weight: float = 0.0
    vicreg_pair: str = "base"
    align: str = "none"
    align_weight: float = 0.0


# fields left out of a model's settings while at these values (`training_settings`)
OPTIONAL_DEFAULTS: dict[str, Any] = {**LOOP_DEFAULTS, **asdict(StudyOptions())}


def loop_config(cfg: Any) -> LoopConfig:
    """The loop settings of a Phase 2 config (`CosPlaceConfig`, `HierarchicalConfig`): its epochs,
    seed, device and optimisation fields. Learning rates are not among them: every parameter group
    of a Phase 2 training names its own."""
    return LoopConfig(epochs=cfg.epochs, seed=cfg.seed, device=cfg.device,
                      **{k: getattr(cfg, k, v) for k, v in LOOP_DEFAULTS.items()})


class _Call(nn.Module):
    """Runs a step inside `forward`, so DistributedDataParallel, which all-reduces the gradients of
    what a forward used, sees the whole step (encoder and the head it trained)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        return fn(*args)


def distributed_step(model: nn.Module, step: Callable[[Any, int], Tensor], device: str = "cpu"
                     ) -> Callable[[Any, int], Tensor]:
    """`step` itself in one process; under torch.distributed, `step` run through DDP over `model`,
    with unused parameters allowed (an epoch trains one group's head, the others get no gradient).
    Each rank then computes its share of a batch (`rank_rows`) and DDP averages the gradients."""
    if distributed()[1] == 1:
        return step
    ddp = wrap_ddp(_Call(model), device, find_unused_parameters=True)
    return lambda batch, epoch: ddp(step, batch, epoch)


def rank_rows(rows: np.ndarray) -> np.ndarray:
    """This process's share of a global batch's rows under torch.distributed (all of them in one
    process, and when the batch has fewer rows than processes: no rank may sit a step out)."""
    rank, world = distributed()
    if world == 1 or len(rows) < world:
        return rows
    return np.array_split(np.asarray(rows), world)[rank]


def run_training(model: nn.Module, param_groups: list[dict[str, Any]], step: Callable[[Any, int], Tensor],
                 plan: Callable[[int, np.random.Generator], Iterable[Any]], cfg: Any, settings: Mapping[str, Any],
                 out_dir: str | Path | None = None, desc: str = "train", progress: bool = True,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> LoopResult:
    """A Phase 2 training through `geolib.training.loop.run`: `param_groups` each at its own lr, the loop
    settings of `cfg` (`loop_config`), and `settings` (what decides the model, `training_settings`)
    recorded in the checkpoints, so a resume under other settings is refused naming each one
    (`saved_model_state` reads them back). `model` holds every trained part (encoder and heads)."""
    settings = {**dict(settings), "settings_keys": sorted(settings)}  # how `run_settings` reads them back
    if any("lr" not in g for g in param_groups):
        raise ValueError("every parameter group of a Phase 2 training names its lr (backbone, heads...)")
    step = distributed_step(model, step, cfg.device)
    return run(model, step, plan, loop_config(cfg), out_dir, param_groups=param_groups, settings=settings,
               desc=desc, progress=progress, on_epoch=on_epoch)


# --------------------------------------------------------------------------- inference

def embed_paths(model: nn.Module, paths: Sequence[str | Path], image_size: int, batch_size: int = 64,
                device: str = "cpu", num_workers: int = 0, progress: bool = False,
                desc: str = "embed") -> np.ndarray:
    """float32 descriptors of images resized to `image_size` (train and test see the same scale):
    `geolib.evaluation.embedding.embed` with the descriptor networks' preprocessing (`preprocess_spec`). The
    networks L2-normalise their own output, so no further normalisation is applied."""
    from ..evaluation.embedding import embed

    out = embed(model, paths, preprocess=preprocess_spec(image_size), batch_size=batch_size, device=device,
                num_workers=num_workers, progress=progress, l2=False)
    return out if len(out) else np.zeros((0, 0), np.float32)


def preprocess_spec(image_size: int) -> Any:
    """`PREPROCESSING` as a `geolib.evaluation.embedding.Preprocess`: PIL bilinear square resize, uint8 / 255, ImageNet mean/std."""
    from ..data.transforms import Preprocess

    return Preprocess(int(image_size), "bilinear-pil", IMAGENET_MEAN, IMAGENET_STD)


def topk_hits(scores: np.ndarray, labels: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """Top-k accuracy in percent. A true class with score −inf (masked out) is a miss at every k;
    ties are counted against the true class (a pessimistic, order-free rule)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    true = scores[np.arange(len(labels)), labels]
    rank = (scores > true[:, None]).sum(1) + (scores == true[:, None]).sum(1) - 1
    ok = np.isfinite(true)
    return {k: float(100.0 * np.mean(ok & (rank < k))) if len(labels) else 0.0 for k in ks}


# --------------------------------------------------------------------------- saved models

MODEL_NAME = "model"  # a saved model is `<out_dir>/model.json` (settings, maps) + `model.safetensors`
SAVED_FORMAT = 1
PREPROCESSING = {"resize": "square, bilinear (PIL), to image_size", "colour": "RGB",
                 "scale": "uint8 / 255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
_NOT_SETTINGS = ("device", "num_workers")  # change where and how fast, not what is learnt


def data_fingerprint(paths: Sequence[str | Path]) -> dict[str, Any]:
    """What a model was trained on, independent of where the data sits: image count and a hash
    of the sorted file names (VPR names carry the coordinates, so a rebuilt world changes it)."""
    import hashlib

    names = sorted(Path(p).name for p in paths)
    return {"images": len(names), "names": hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]}


def training_settings(config: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The settings that decide a trained model: the config without device and loader workers,
    plus `extra` (the data fingerprint, the encoder...). Optimisation and study fields at their
    defaults (`OPTIONAL_DEFAULTS`) are left out, so the settings (and hash) of a model saved before
    those fields existed still match."""
    out = {k: v for k, v in dict(config).items()
           if k not in _NOT_SETTINGS and not (k in OPTIONAL_DEFAULTS and v == OPTIONAL_DEFAULTS[k])}
    out.update(extra)
    return json.loads(json.dumps(out, default=str))  # tuples → lists, as the JSON will read back


def settings_hash(settings: Mapping[str, Any]) -> str:
    from ..models import config_hash

    return config_hash(settings)


def model_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MODEL_NAME


def read_saved_meta(out_dir: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The JSON side of a saved model, without reading its tensors; clear errors when the folder
    holds no model, or one of another kind."""
    path = model_path(out_dir).with_suffix(".json")
    if not path.exists():
        held = sorted(p.name for p in Path(out_dir).iterdir()) if Path(out_dir).is_dir() else None
        raise FileNotFoundError(f"{path}: no saved model here ({'folder holds ' + str(held) if held is not None else 'no such folder'}); "
                                "train with out_dir=<this folder> first, or give the folder a training saved to")
    meta = json.loads(path.read_text()).get("meta", {})
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path}: holds a {meta.get('kind')!r} model, not a {kind!r} one; give the folder of a "
                         f"{kind} training")
    if int(meta.get("saved_format", 0)) > SAVED_FORMAT:
        raise ValueError(f"{path}: saved with format {meta.get('saved_format')}, newer than this geolib reads "
                         f"({SAVED_FORMAT}); update geolib")
    return meta


def save_model_files(out_dir: str | Path, module: nn.Module, kind: str, settings: Mapping[str, Any],
                     **meta: Any) -> Path:
    """Tensors to `model.safetensors`, then `model.json` (atomic, JSON last: see geolib.checkpoint), its
    meta holding `settings` with their hash and whether a dry run wrote it (what `saved_model_state` reads)."""
    meta = {"settings_hash": settings_hash(settings), "dry_run": dryrun.active(), **meta}
    return save_checkpoint(model_path(out_dir), module, kind=kind, saved_format=SAVED_FORMAT, settings=settings,
                           **meta)


def read_model_files(out_dir: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    read_saved_meta(out_dir, kind)
    return read_model_state(model_path(out_dir), "")


def part(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a state dict under `prefix.`, with the prefix cut."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def settings_diff(saved: Mapping[str, Any], wanted: Mapping[str, Any], limit: int = 8) -> str:
    keys = sorted(set(saved) | set(wanted), key=str)
    diff = [f"{k}: saved {saved.get(k, '(absent)')!r}, now {wanted.get(k, '(absent)')!r}"
            for k in keys if saved.get(k) != wanted.get(k)]
    more = f"; and {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(diff[:limit]) + more


def run_settings(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings an unfinished run recorded in its `last` checkpoint (None: it recorded none).
    The loop keeps them flat beside its own settings, with `settings_keys` naming which are the model's."""
    if isinstance(config.get("settings"), dict):  # written before the one loop
        return dict(config["settings"])
    if not isinstance(config.get("settings_keys"), list):
        return None
    return {k: config.get(k) for k in config["settings_keys"]}


def loaded_result(history: Sequence[dict[str, Any]], out_dir: str | Path, train_s: Any = None) -> LoopResult:
    """The result of a training read back from its saved folder (nothing was trained now)."""
    history = list(history)
    return LoopResult(history, best_path=None, last_path=None, resumed_from=len(history), epochs_done=len(history),
                      extra={"loaded_from": str(out_dir), "train_s": train_s})


def _fill_loop_defaults(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both settings with the optimisation defaults one of them leaves out (`training_settings`)
    written in, so a changed one compares (and is shown) as "saved 0.0, now 1.0", not as absent."""
    a, b = dict(a), dict(b)
    for k, v in OPTIONAL_DEFAULTS.items():
        if k in a or k in b:
            a.setdefault(k, v)
            b.setdefault(k, v)
    return a, b


def saved_model_state(out_dir: str | Path | None, kind: str, settings: Mapping[str, Any]) -> str:
    """What a training should do with `out_dir`: "none" (no folder), "train" (nothing usable saved:
    no model, a dry run's, or one of the same settings trained for fewer epochs, which the resumable
    `last` checkpoint continues), or "load" (a model of these exact settings). A model or an
    unfinished run of other settings is refused, never overwritten or silently resumed; a dry run
    meeting one gets "nosave" (train, keep nothing there), so it never clobbers a real run."""
    if out_dir is None:
        return "none"
    path = model_path(out_dir).with_suffix(".json")
    last = Path(out_dir) / "last.json"
    if path.exists():
        meta = read_saved_meta(out_dir, kind)
        saved, saved_dry, what = meta.get("settings", {}), bool(meta.get("dry_run")), f"a {kind} model"
    elif last.exists():
        meta = json.loads(last.read_text()).get("meta", {})
        saved, saved_dry = run_settings(meta.get("config", {})), bool(meta.get("dry_run"))
        what = f"an unfinished {kind} run (last.json)"
        if saved is None:  # written before settings were recorded: nothing to compare
            return "train"
    else:
        return "train"
    saved, settings = _fill_loop_defaults(saved, settings)
    if saved_dry and not dryrun.active():
        print(f"{out_dir}: holds a dry run's {kind} model; training it for real")
        return "train"
    if settings_hash(saved) == settings_hash(settings):
        return "load" if path.exists() else "train"
    differ = {k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k)}
    if differ == {"epochs"} and int(settings.get("epochs") or 0) >= int(saved.get("epochs") or 0):
        print(f"{out_dir}: {what} trained for {saved.get('epochs')} epochs; continuing to {settings.get('epochs')}")
        return "train"
    if saved_dry:
        print(f"{out_dir}: holds a dry run's {kind} model of other settings; training again")
        return "train"
    if dryrun.active():
        print(f"{out_dir}: holds {what} of other settings; this dry run trains without saving there")
        return "nosave"
    raise ValueError(f"{out_dir} holds {what} trained with other settings "
                     f"({settings_diff(saved, settings)}); give another out_dir for these settings, "
                     "or delete that folder to retrain there")
