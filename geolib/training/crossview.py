"""Cross-view training: Phase 1 from a resolved profile section to a trained checkpoint.

The evaluation half (`geolib.evaluation.crossview`) scores what this trains; notebook 02 and
`python -m geolib train` call the profile adapters (`phase1_model`, `phase1_train_config`,
`phase1_fit_options`) so both build the same run from the same settings.
"""
from __future__ import annotations

import functools
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from torch import nn

from .. import dryrun
from ..config import Phase1
from ..evaluation.crossview import evaluate_crossview
from ..data.datasets import GeoDataset, default_transform

if TYPE_CHECKING:
    from ..evaluation.cache import EmbeddingCache
    from .loop import LoopResult
    from .multiview import TrainConfig


def train_crossview(model: nn.Module, ds: GeoDataset, cfg: "TrainConfig", out_dir: str | Path, *,
                    image_size: int, loss: str = "infonce", loss_options: dict[str, Any] | None = None,
                    eval_directions: Sequence[tuple[str, str]] = (("street", "drone"), ("street", "satellite")),
                    extra_loss: Callable | None = None, extra_modules: Sequence[nn.Module] = (),
                    max_minutes: float | None = None, progress: bool = True,
                    on_epoch: Callable[[dict[str, Any]], None] | None = None,
                    augment: str = "jitter", preload: bool = False,
                    select: str = "last", flip: bool = False,
                    cache: "EmbeddingCache | None" = None,
                    transform: Callable | None = None) -> "LoopResult":
    """Train on the train split's places; after some epochs, R@1 of `eval_directions` on the test split
    (recorded as a curve: `geolib.training.loop` never selects on it).

    The evaluations are curves to watch, not a selection rule. `select` decides which epoch is kept
    as `best`: "last" (default: the learning rate anneals to zero, so the last epoch is the trained
    model), "train-loss" (the lowest training loss; near the end of an annealed run its minimum is
    noise: in one default run it picked epoch 21 of 24, street->drone R@1 35.8 % against 38.9 % for
    the last). Selecting on the test split is refused: it would report an optimistic number for the
    very queries the model was chosen on.
    `max_minutes` is an opt-in cap that stops the run early (the result says `cut_by_budget`);
    the learning-rate schedule is always over `cfg.epochs`. `cfg` is not modified.
    `flip` and `cache` are those of `evaluate_crossview`: with the final evaluation's settings and
    cache, the curve measures what the table reports, and the last epoch's embeddings are reused.
    `transform` replaces the training transform (near-square crop jitter + `augment`): on a
    panorama that crop would keep a quarter of it, so pair datasets train on plain resizes.
    """
    if select == "test":
        raise ValueError("select='test' is refused: it keeps the epoch that scores best on the test split and then "
                         "reports that same split, an optimistic number. Use select='last' (default) or "
                         "'train-loss'; the test recall is still recorded each evaluation as a curve")
    if select not in ("last", "train-loss"):
        raise ValueError(f"select must be one of last, train-loss, got {select!r}")
    from .losses import make_pair_loss
    from .multiview import MultiViewPlaces, fit

    train_items = dryrun.places(ds.select(split="train"))
    places = MultiViewPlaces(train_items, cfg.views,
                             transform or default_transform(image_size, train=True, colour=augment),
                             seed=cfg.seed, preload=preload, with_paths=bool(getattr(extra_loss, "needs_paths", False)))
    pair_loss = make_pair_loss(loss, **(loss_options or {}))

    def evaluate(m: nn.Module, epoch: int) -> dict[str, float]:
        ev = evaluate_crossview(m, ds, image_size, eval_directions, cfg.device, flip=flip, cache=cache)
        row = {f"{k} R@1": r.metrics["R@1"] for k, r in ev.results.items()}
        row["mean R@1"] = float(np.mean(list(row.values()))) if row else 0.0
        return row

    in_training = bool(eval_directions) and not dryrun.active()  # a dry run evaluates once, at the end
    return fit(model, places, cfg, out_dir, pair_loss, watch=evaluate if in_training else None,
               extra_loss=extra_loss, extra_modules=[pair_loss, *extra_modules], select_metric=select,
               on_epoch=on_epoch, progress=progress, max_minutes=max_minutes)


def load_trained_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a `train_crossview` checkpoint and its metadata (`geolib.models.load_model_and_meta`)."""
    from ..models import load_model_and_meta

    return load_model_and_meta(checkpoint, device)


# --------------------------------------------------------------------------- teachers from a profile


FOUNDATION_TEACHERS = ("clip-vit-b16", "dinov2-vit-s14")


def phase1_distillation(cfg: dict[str, Any], ds: GeoDataset, model: nn.Module, cache_dir: str | Path,
                        log: Callable[[str], None] = print) -> tuple[nn.Module | None, dict[str, str]]:
    """The `extra_loss` distilling frozen teachers into Phase 1, and the status of each teacher.

    `cfg["teachers"]`: a list of names (each must load), `"available"` (CLIP ViT-B/16 and DINOv2
    ViT-S/14 where their weights are found, one line for each that is not) or None. Teacher
    embeddings of the training images are cached on disk, so each image goes through a teacher
    once, however many epochs and runs follow; each training image is distilled toward the
    teachers' embeddings of that same image.
    """
    from .teachers import ImageDistillation, build_teacher_cache, describe, load_teachers

    teachers, status = load_teachers(cfg.get("teachers"), default=FOUNDATION_TEACHERS, log=log)
    if not teachers:
        return None, status
    views = ("street", "drone", "satellite")
    items = [it for it in dryrun.places(ds.select(split="train")) if it.view in views]
    caches = {n: build_teacher_cache(t.to(cfg["device"]), [it.path for it in items], cache_dir)
              for n, t in teachers.items()}
    log(f"teachers used: {describe(teachers)}")
    module = ImageDistillation.from_caches(caches, items, views, model.embed_dim,
                                           _phase1_value(cfg, "distill_loss"), _phase1_value(cfg, "distill_weight"))
    return module, status


def train_phase1(cfg: Mapping[str, Any], ds: GeoDataset, net: nn.Module, out_dir: str | Path,
                 cache: Any = None, progress: bool = True, log: Callable[[str], None] = print
                 ) -> tuple["LoopResult", dict[str, str]]:
    """Train `net` as a resolved `phase1` section says, with its teachers: notebook 02's run, and each
    extra seed's. Returns the loop's result and the status of each teacher (used, or why not)."""
    from ..paths import outputs_root

    distill, status = phase1_distillation(dict(cfg), ds, net, outputs_root() / "cache" / "teachers", log=log)
    result = train_crossview(net, ds, phase1_train_config(cfg), out_dir, **phase1_fit_options(cfg),
                             extra_loss=distill, extra_modules=[distill] if distill else [], cache=cache,
                             progress=progress)
    return result, status


# --------------------------------------------------------------------------- phase1 -> run objects

def _phase1_value(cfg: Mapping[str, Any], name: str) -> Any:
    """`cfg[name]`, or the Phase1 default for a plain dict written before the field existed."""
    if name in cfg:
        return cfg[name]
    default = Phase1.default(name)
    if default is MISSING:
        raise KeyError(f"phase1 settings lack {name!r}, which has no default: build them with "
                       "geolib.profiles.resolve(profile, 'phase1') instead of by hand")
    return default


def phase1_model(cfg: Mapping[str, Any]) -> "nn.Module":
    """The model a resolved `phase1` profile section describes (notebook 02 and `geolib train`)."""
    from ..models import create_model

    return create_model(cfg["model"], img_size=cfg["image_size"], l2l=cfg["l2l"], fusion=cfg["fusion"],
                        pooling=cfg["pooling"], **(cfg.get("model_options") or {}))


def phase1_fit_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`train_crossview` keywords a resolved `phase1` section sets (besides the TrainConfig); the
    teachers' `distill_loss`/`distill_weight` reach `crossview.phase1_distillation` through `cfg`."""
    return {"image_size": cfg["image_size"], "loss": cfg["loss"], "max_minutes": _phase1_value(cfg, "minutes"),
            "augment": cfg.get("augment", "jitter"), "preload": cfg.get("preload", False),
            "flip": cfg.get("flip_tta", False)}


def phase1_train_config(cfg: Mapping[str, Any]) -> "TrainConfig":
    """The loop's config: every `phase1` field the loop reads, under the loop's name for it."""
    from .multiview import TrainConfig

    v = functools.partial(_phase1_value, cfg)
    # optimizer and scheduler where this TrainConfig has them (the loop gained them later)
    later = {k: v(k) for k in ("optimizer", "scheduler") if k in {f.name for f in fields(TrainConfig)}}
    return TrainConfig(views=("street", "drone", "satellite"), epochs=cfg["epochs"],
                       batch_size=cfg["batch_size"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                       warmup=cfg["warmup"], grad_clip=v("grad_clip"), amp=cfg["amp"], device=cfg["device"],
                       seed=cfg["seed"], num_workers=cfg["num_workers"], sampling=cfg["sampling"],
                       gps_near=v("gps_near"), gps_random=v("gps_random"), gps_pool=v("gps_pool"),
                       eval_every=cfg["eval_every"], freeze=tuple(v("freeze") or ()),
                       backbone_lr_scale=v("backbone_lr_scale"), channels_last=v("channels_last") or False, **later)


def phase1_run_config(cfg: Mapping[str, Any], model: nn.Module, root: str | Path, notes: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """What notebook 02's records say about the run: the model's config and the settings that change
    its numbers, the data root, whether it was a dry run, and `notes` (what the data check found)."""
    return {"model": model.config, "loss": cfg["loss"], "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
            "lr": cfg["lr"], "image_size": cfg["image_size"], "root": str(root), "sampling": cfg["sampling"],
            "flip_tta": cfg["flip_tta"], "dry_run": dryrun.active(), **(notes or {})}
