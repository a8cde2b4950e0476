"""Typed run settings, and from a resolved profile section to the objects a run builds.

Each profile section (`common`, `world`, `phase1`, `phase2`, `distill`, `explorer`, `studies`) is one dataclass
here; `geolib.profiles` holds the three profiles' values and validates them against these classes
at import. The trailing comment on each field is its documentation: `geolib train --help` shows it,
so the notebook parameters cell, the CLI flags and the library cannot disagree about a setting.

A section instance is also a mapping (`cfg["epochs"]`, `cfg.get(...)`, `{**cfg}`, `dict(cfg)`):
notebooks and library code written against the old dict sections keep working, while a misspelt
key fails loudly, naming the closest valid one, instead of silently adding a setting nobody reads.

`geolib.training.crossview`'s `phase1_model`, `phase1_train_config` and `phase1_fit_options` turn
a `phase1` section into the model, the loop's config and `train_crossview`'s options. Notebooks,
`geolib train` and the ablation rows all go through them, so a profile key means the same thing
everywhere.
"""
from __future__ import annotations

import ast
import difflib
import functools
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

# Fields the run fills in (which profile, dry run, a nested section), not settings a user passes.
DERIVED = {"derived": True}


class UnknownSetting(ValueError, KeyError):
    """A key the section has no field for: a `ValueError` for callers, a `KeyError` for mappings."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def unknown_setting(key: str, section: str, valid: list[str]) -> UnknownSetting:
    """The error for a key `section` lacks, with the closest valid name (a typo's likely fix)."""
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UnknownSetting(f"unknown setting {key!r} for section {section!r}: {hint}"
                          f"valid settings: {', '.join(valid)}")


class Settings(MutableMapping):
    """Base of the section dataclasses: attribute access, the mapping protocol, validation."""

    SECTION: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._repr_pretty_ = Settings._repr_pretty_  # IPython takes the first of these up the MRO

    # -- the mapping protocol, over the fields
    def __getitem__(self, key: str) -> Any:
        if key not in self.names():
            raise unknown_setting(key, self.SECTION, self.names())
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.names():
            raise unknown_setting(key, self.SECTION, self.names())
        setattr(self, key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"settings of section {self.SECTION!r} cannot be removed; set {key!r} to None instead")

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, key: object) -> bool:
        return key in self.names()

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.names() else default

    def to_dict(self) -> dict[str, Any]:
        """A plain, deep-copied dict (nested sections too), for records and JSON."""
        return asdict(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """A notebook cell ending in `cfg` shows one setting per line, as it did for the dict."""
        printer.text(f"{type(self).__name__} ")
        printer.pretty(self.to_dict())

    # -- the class's description of itself
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return _names(cls)

    @classmethod
    def settable(cls) -> list[str]:
        """The fields a profile, `-p` or a CLI flag may set (`common`'s first): not the derived ones."""
        return [f.name for f in fields(cls) if not f.metadata.get("derived")]

    @classmethod
    def types(cls) -> dict[str, Any]:
        return _types(cls)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's trailing comment in this file: the one place a setting is documented."""
        return _help(cls)

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default; `MISSING` for a field every profile must set."""
        f = next(f for f in fields(cls) if f.name == name)
        if f.default_factory is not MISSING:
            return f.default_factory()
        return f.default

    @classmethod
    def build(cls, values: Mapping[str, Any], where: str) -> "Settings":
        """An instance from `values`, every key known, every required one present, every value of its
        field's type; `where` says in the error which profile, override or file gave the values."""
        valid = cls.names()
        unknown = [k for k in values if k not in valid]
        if unknown:
            raise ValueError(f"{where}: {unknown_setting(unknown[0], cls.SECTION, cls.settable())}")
        missing = [f.name for f in fields(cls) if f.name not in values
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"{where}: section {cls.SECTION!r} needs {', '.join(missing)}; add them to the "
                             "profile (geolib/profiles.py) or give a default in geolib/config.py")
        hints = cls.types()
        for key, value in values.items():
            if not matches(value, hints[key]):
                raise ValueError(f"{where}: setting {key!r} of section {cls.SECTION!r} must be "
                                 f"{type_name(hints[key])}, got {value!r}")
        return cls(**values)


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


@functools.cache
def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _help(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if "__dataclass_fields__" not in vars(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source shipped: no help, nothing else lost
            continue
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        body = ast.parse(source).body[0]
        for node in getattr(body, "body", []):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
                text = next((comments[n] for n in lines if n in comments), "")
                if text:
                    out[node.target.id] = text
    return out


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the type hint (a bool is not an int here; an int is a float)."""
    if hint is Any:
        return True
    if hint is type(None):  # get_type_hints turns a `None` annotation into NoneType
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(matches(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict:
        args = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def type_name(hint: Any) -> str:
    """A type hint as a user reads it in an error (`int`, `float or None`, `"random" or "gps"`)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin in (list, tuple):
        return f"a list of {type_name(typing.get_args(hint)[0])}" if typing.get_args(hint) else "a list"
    if origin is dict:
        return "a dict"
    return getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------- the sections
# kw_only: `common`'s derived fields have defaults, the sections' required fields come after them.

@dataclass(kw_only=True, eq=False)
class Common(Settings):
    SECTION: ClassVar[str] = "common"
    seed: int  # random seed of data order, initialisation and sampling
    seeds: list[int] | None = None  # seeds of the headline comparisons, mean ± std over them (None: [seed]); later notebooks build on the `seed` run
    device: str  # "auto" (CUDA when present, else CPU) | "cpu" | "cuda" | "cuda:N"
    amp: bool  # mixed precision; switched off on a CPU, where it does not pay
    num_workers: int  # data-loader worker processes (0: load in the training process)
    profile: str = field(default="", metadata=DERIVED)  # the profile these settings came from
    dry_run: bool = field(default=False, metadata=DERIVED)  # work capped by geolib.dryrun (GEOLIB_DRY_RUN=1)


@dataclass(kw_only=True, eq=False)
class World(Common):
    SECTION: ClassVar[str] = "world"
    preset: str  # synthetic world preset: smoke | default | large


@dataclass(kw_only=True, eq=False)
class Phase1(Common):
    SECTION: ClassVar[str] = "phase1"
    preset: str  # synthetic world preset used when no University-1652 root is given: smoke | default | large
    model: str  # model registry name: "phase1-cpu" (scaled down for CPU) or "phase1" (Swin-T)
    image_size: int  # input side in pixels, every view
    model_options: dict[str, Any] = field(default_factory=dict)  # registry options, e.g. {"backbone": "efficientnet-lite0", "pretrained": true}
    l2l: bool  # layer-to-layer attention on/off
    fusion: bool  # multi-scale fusion on/off
    pooling: str  # "attention" | "gem" | "mixvpr" | "avg"
    loss: str  # pair loss: "infonce" | "triplet"
    epochs: int  # training epochs (fixed: results depend on settings, not on the machine's speed)
    batch_size: int  # places per batch (each with one image of every view), split over DDP processes
    lr: float  # peak learning rate of the neck (AdamW)
    weight_decay: float  # AdamW weight decay
    warmup: float  # share of all steps spent warming up the learning rate
    optimizer: str = "adamw"  # "adamw" | "adam"
    scheduler: str = "cosine"  # "cosine" (linear warm-up, then cosine to 0 over the planned steps) | "none"
    grad_clip: float | None = 1.0  # gradient-norm clip (0: no clipping)
    freeze: list[str] = field(default_factory=list)  # parameter-name parts kept frozen, e.g. [".backbone."]
    backbone_lr_scale: float = 1.0  # backbone learning rate = lr x this (a pretrained backbone needs less)
    minutes: float | None = None  # optional wall-clock cap in minutes (opt-in; None: train every epoch)
    sampling: Literal["random", "gps"]  # "random" place batches | "gps" (Sample4Geo GPS neighbours; needs coordinates)
    gps_near: int = 32  # with sampling "gps": nearest unused places an anchor brings into its batch
    gps_random: int = 32  # with sampling "gps": places an anchor adds at random from the rest of its pool
    gps_pool: int = 128  # with sampling "gps": an anchor's pool, its nearest places by GPS
    eval_every: int  # epochs between the curve's evaluations
    flip_tta: bool  # evaluate with horizontal-flip test-time augmentation
    augment: str  # "gain" (camera gain) | "jitter" (colour jitter) | "none"
    preload: bool  # hold decoded training images in memory
    channels_last: bool  # NHWC convolutions (faster CNN steps on CPU)
    teachers: list[str] | str | None = None  # JSON list of teacher names (clip-vit-b16, dinov2-vit-s14, hub ids, dirs, timm:NAME, geolib:CKPT), "available" or None
    distill_loss: str = "cosine"  # loss pulling the model toward each teacher's embedding: "cosine" | "mse"
    distill_weight: float = 1.0  # weight of the teachers' distillation term


@dataclass(kw_only=True, eq=False)
class Phase2(Common):
    SECTION: ClassVar[str] = "phase2"
    methods: list[str]  # rows to run: "hierarchical", "cosplace", "cosplace-mixvpr", "dc"
    backbone: str  # CosPlace backbone (timm or torchvision name)
    pretrained: bool | str  # ImageNet weights: True, False or "available" (where they are offline)
    aggregation: str  # descriptor aggregation: "gem" | "mixvpr"
    out_dim: int  # descriptor width
    image_size: int  # input side in pixels
    stage: int = -1  # backbone stage whose map is aggregated (-1: the last)
    freeze_backbone: bool = False  # train only the aggregation and heads
    augment_copies: int = 0  # augmented copies of each image cached through the frozen backbone (0: augment each batch)
    hue: float = 0.5  # colour-jitter hue range of CosPlace's augmentation
    gem: dict[str, Any] | None = None  # CosPlace settings that differ for the GeM row, e.g. {"iterations_per_epoch": 1000}
    mixvpr: dict[str, Any]  # MixVPR aggregation options and CosPlace settings of the MixVPR row
    M: float  # CosPlace cell side in metres
    alpha: float  # CosPlace heading bin in degrees (360: headings ignored)
    N: int  # CosPlace cells per group side
    L: int  # CosPlace heading groups
    groups_num: int  # CosPlace groups trained
    min_images_per_class: int  # classes with fewer images are dropped
    dc_backbone: str | None = None  # D&C backbone (None: backbone)
    dc_M: float  # D&C cell side in metres
    dc_N: int  # D&C cells per group side
    dc_heads: list[str]  # D&C classifier heads: "aamc" | "lmcc" | "ce"
    dc_train: str  # images D&C learns its cells on: "train" | "test-database"
    dc_select: dict[str, list] | None = None  # {"dc_M": [...], "dc_heads": [...]} tried on the val split (LR@1), the best replaces dc_M / dc_heads; None: no selection
    dc_min_images_per_class: int | None = None  # D&C's min_images_per_class (None: min_images_per_class)
    dc_epochs: int | None = None  # D&C epochs (None: epochs)
    dc_iterations_per_epoch: int | None = None  # D&C iterations per epoch (None: iterations_per_epoch)
    dc_options: dict[str, Any] | None = None  # D&C model options, e.g. {"aggregation": "mixvpr", ...}
    epochs: int  # CosPlace epochs (per group)
    iterations_per_epoch: int  # CosPlace iterations per epoch
    batch_size: int  # images per batch
    backbone_lr: float  # backbone learning rate
    classifier_lr: float  # classifier heads' learning rate
    head: str  # hierarchical classifier head: "softmax" | "cosface" | ...
    place_mode: str  # hierarchical classifier's place prediction: "conditioned" | ...
    classifier_epochs: int  # hierarchical classifier epochs
    num_preds_to_save: int  # predictions shown per query in the saved strips
    save_only_wrong: bool  # save strips only for queries whose top prediction is wrong
    threads: int | None  # torch CPU threads (None: torch's default)


@dataclass(kw_only=True, eq=False)
class Distill(Common):
    SECTION: ClassVar[str] = "distill"
    rows: list[str] | None  # rows (or parts, "A") to run; None: every row
    epochs: int  # epochs of each Part A row and of the SAFA rows
    ablation_image_size: int | None = None  # input side of the Part A rows (None: phase1's image_size); the backbone is notebook 02's either way
    batch_size: int  # places per batch of the Part A and SAFA rows
    minutes_per_row: float | None  # optional wall-clock cap per row (opt-in)
    cost_runs: int  # timed forward passes per model for the cost columns
    threads: int | None  # torch CPU threads (None: torch's default)
    teacher_checkpoint: str | None  # Phase 1 checkpoint used as the teacher (None: notebook 02's)
    views: list[str]  # views the students learn
    students: list[str]  # student backbones (timm names, efficientnet_lite0-b<N> for Lite0 cut after block N), each optionally <name>@<px> for its own input size
    perturb: list[bool]  # with/without marginal perturbation, one student row each
    copies: int  # augmented copies per image the students see
    student_image_size: int  # student input side in pixels
    student_epochs: int  # student training epochs
    student_batch_size: int  # student images per batch
    student_lr: float  # student learning rate
    student_pretrained: bool | str  # ImageNet-initialised students: True, False or "available"
    student_init: str = "pretrained"  # student weights: "pretrained" (as student_pretrained says) | "teacher" (efficientnet_lite0-b<N> students start from their Lite0 teacher's own blocks, the others as "pretrained")
    student_scheduler: str = "cosine"  # student lr schedule: "cosine" (warm-up, then cosine to 0) | "none"
    student_warmup: float = 0.05  # share of the student's steps spent warming up
    student_contrast: float = 0.0  # weight of an in-batch InfoNCE term beside the dual cosine loss (0: Distill4Geo's loss alone)
    teacher_image_size: int | None = None  # side the Part B teacher sees (None: the size it was trained at); larger than the students' is Distill4Geo's resolution split
    safa_backbone: str  # SAFA backbone (timm name or "vgg16")
    pano_hw: list[int]  # SAFA panorama height, width
    sat_size: int  # SAFA aerial image side
    safa_heads: int  # SAFA spatial-aware heads
    safa_head_rows: list[int]  # extra SAFA rows with these head counts
    safa_lr: float  # SAFA learning rate
    safa_pretrained: bool | str  # ImageNet-initialised SAFA backbone: True, False or "available"
    safa_stage: int = -1  # backbone stage whose map SA aggregates (-1: the last); efficientnet-lite0 stops there
    safa_frozen_stages: int = 0  # leading efficientnet-lite0 stages kept frozen, their maps computed once per image
    safa_epochs: int = 1  # epochs of each SAFA row (the kept one chosen on validation pairs from the train split)
    safa_batch_size: int = 32  # pairs per SAFA batch (the in-batch negatives of the triplet loss)
    safa_frozen_blocks: int | None = None  # a finer cut than safa_frozen_stages: the stem and this many Lite0 blocks
    safa_sa_input: str = "mean"  # what the SA heads read of the map: its channel "mean" or channel "max" (SAFA's code)
    phase1: Phase1 | None = field(default=None, metadata=DERIVED)  # the resolved phase1 section the Part A rows vary


@dataclass(kw_only=True, eq=False)
class Explorer(Common):
    SECTION: ClassVar[str] = "explorer"
    k: int  # top-k kept per query
    n_examples: int  # example rows shown
    grid_k: int  # gallery matches shown per photo
    interactive: bool | str  # "auto" (when a widget frontend is present) | True | False
    fallback_epochs: int  # epochs of a fallback Phase 1 model when notebook 02 has not run (0: none)


@dataclass(kw_only=True, eq=False)
class Studies(Common):
    SECTION: ClassVar[str] = "studies"
    studies: list[str]  # studies to run: "augmentation", "backbone", "aggregation", "vicreg", "adaptation", "optimizer"
    seeded_studies: list[str] | None = None  # studies trained on every seed of `seeds` (None: all); the others on the first seed only
    variants: dict[str, list[str]] | None = None  # per study, the variants run by name (a study not named, None or {}: all of its variants)
    base: dict[str, Any]  # the base CosPlace settings every variant changes one thing of (CosPlaceConfig keys)
    finetune: dict[str, Any] = field(default_factory=dict)  # settings of the variants that train their backbone (backbone study)
    backbone_pretrained: bool = False  # ImageNet weights for the backbone study's timm backbones (none offline)
    transformer: str = "vit_tiny_patch16_224"  # the backbone study's transformer (timm name; built for its input size)
    vicreg_weights: list[float]  # VICReg loss weights swept
    align_weight: float = 0.1  # weight of the CORAL / DANN alignment loss
    lr_grid: list[float]  # backbone_lr values of the optimizer study's AdamW grid (with a frozen backbone: the aggregation's lr)
    wd_grid: list[float]  # weight decays of that grid
    heldout_share: float = 0.5  # share of each condition's test queries held out from adaptation (reported apart)
    num_preds_to_save: int  # predictions per query in the base-vs-best prediction strips
    threads: int | None  # torch CPU threads (None: torch's default)


SECTIONS: dict[str, type[Settings]] = {c.SECTION: c for c in (Common, World, Phase1, Phase2, Distill, Explorer,
                                                               Studies)}
