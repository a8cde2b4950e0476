"""Cross-view experiments on a University-1652-layout dataset: train, embed, evaluate, record.

Notebooks 02 (Phase 1) and 03 (ablation rows) call these few functions, so every row of every
table is produced by the same code path and recorded with its protocol.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import dryrun
from .datasets import GeoDataset, ImageItem, default_transform, labels_of
from .evaluate import PROTOCOL_UNIVERSITY, label_ranks, metrics_from_ranks, recall_curve, topk_search
from .records import write_record

if TYPE_CHECKING:
    from .embcache import EmbeddingCache
    from .train import FitResult, TrainConfig

DIRECTIONS: tuple[tuple[str, str], ...] = (("street", "drone"), ("street", "satellite"),
                                           ("drone", "satellite"), ("satellite", "drone"))


def direction_name(q: str, g: str) -> str:
    return f"{q}→{g}"


@dataclass
class Embedded:
    """Embeddings of one (role, view) set of a split, with what is needed to score and show them."""

    items: list[ImageItem]
    emb: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return labels_of(self.items)


@dataclass
class DirectionResult:
    query: str
    gallery: str
    metrics: dict[str, float]
    curve: np.ndarray  # R@1..R@K in percent
    n_queries: int
    gallery_size: int


@dataclass
class Evaluation:
    results: dict[str, DirectionResult] = field(default_factory=dict)
    sets: dict[tuple[str, str], Embedded] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> list[dict[str, Any]]:
        return [{"direction": k, "queries": r.n_queries, "gallery": r.gallery_size, **r.metrics}
                for k, r in self.results.items()]


@torch.no_grad()
def embed_set(model: nn.Module, items: Sequence[ImageItem], view: str, image_size: int, device: str = "cpu",
              batch_size: int = 64, flip: bool = False, cache: "EmbeddingCache | None" = None) -> Embedded:
    """`cache` (a `geolib.embcache.EmbeddingCache`) reuses embeddings of the same weights, items and settings."""
    from .train import embed_items

    if not items:
        return Embedded([], np.zeros((0, 1), np.float32))
    if cache is not None:
        emb = cache.get_or_compute(model, items, view, image_size=image_size, flip=flip,
                                   batch_size=batch_size, device=device)
        return Embedded(list(items), emb)
    emb = embed_items(model, items, view, default_transform(image_size), batch_size, device, flip)
    return Embedded(list(items), emb)


def evaluate_crossview(model: nn.Module, ds: GeoDataset, image_size: int,
                       directions: Sequence[tuple[str, str]] = DIRECTIONS, device: str = "cpu",
                       flip: bool = False, batch_size: int = 64, split: str = "test",
                       max_k: int = 50, cache: "EmbeddingCache | None" = None) -> Evaluation:
    """Every direction under the University-1652 official protocol (distractors stay in the gallery).

    Each (role, view) set is embedded once, however many directions use it; with `cache`, once per
    weights, items and settings across calls and notebooks.
    """
    t0 = time.perf_counter()
    ev = Evaluation()
    for q, g in directions:
        for role, view in (("query", q), ("gallery", g)):
            if (role, view) not in ev.sets:
                items = dryrun.items(ds.select(view=view, split=split, role=role))
                ev.sets[(role, view)] = embed_set(model, items, view,
                                                  image_size, device, batch_size, flip, cache)
        qs, gs = ev.sets[("query", q)], ev.sets[("gallery", g)]
        if not qs.items or not gs.items:
            continue
        ev.results[direction_name(q, g)] = score_direction(qs, gs, q, g, max_k)
    ev.seconds = time.perf_counter() - t0
    return ev


def score_direction(qs: Embedded, gs: Embedded, q: str, g: str, max_k: int = 50) -> DirectionResult:
    ranks = label_ranks(qs.emb, qs.labels, gs.emb, gs.labels)
    return DirectionResult(q, g, metrics_from_ranks(ranks), recall_curve(ranks, min(max_k, len(gs.items))),
                           len(qs.items), len(gs.items))


def record_evaluation(ev: Evaluation, *, source: str, model: str, dataset: str, profile: str, seed: int,
                      config: dict[str, Any], protocol: str = PROTOCOL_UNIVERSITY, split: str = "test",
                      task: str = "crossview", extra_metrics: dict[str, float] | None = None) -> list[dict]:
    out = []
    for r in ev.results.values():
        out.append(write_record(source, task=task, protocol=protocol, dataset=dataset, split=split,
                                query_view=r.query, gallery_view=r.gallery, model=model,
                                metrics={**r.metrics, **(extra_metrics or {})}, profile=profile, seed=seed,
                                config={**config, "n_queries": r.n_queries, "gallery_size": r.gallery_size}))
    return out


def top_matches(ev: Evaluation, q: str, g: str, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery (scores, indices) for every query of a direction (for example figures)."""
    qs, gs = ev.sets[("query", q)], ev.sets[("gallery", g)]
    return topk_search(qs.emb, gs.emb, k)


def dataset_name(data_root: str | None, preset: str | None) -> str:
    return f"synthetic-{preset}" if data_root is None else "university1652"


def train_crossview(model: nn.Module, ds: GeoDataset, cfg: "TrainConfig", out_dir: str | Path, *,
                    image_size: int, loss: str = "infonce", loss_options: dict[str, Any] | None = None,
                    eval_directions: Sequence[tuple[str, str]] = (("street", "drone"), ("street", "satellite")),
                    extra_loss: Callable | None = None, extra_modules: Sequence[nn.Module] = (),
                    max_minutes: float | None = None, progress: bool = True,
                    on_epoch: Callable[[dict[str, Any]], None] | None = None,
                    augment: str = "jitter", preload: bool = False,
                    select: str = "last", flip: bool = False,
                    cache: "EmbeddingCache | None" = None,
                    transform: Callable | None = None) -> "FitResult":
    """Train on the train split's places; after some epochs, R@1 of `eval_directions` on the test split.

    The evaluations are curves to watch, not a selection rule. `select` decides which epoch is kept
    as `best`: "last" (default: the learning rate anneals to zero, so the last epoch is the trained
    model), "train-loss" (the lowest training loss; near the end of an annealed run its minimum is
    noise: in one default run it picked epoch 21 of 24, street->drone R@1 35.8 % against 38.9 % for
    the last), or "test" (the highest test recall, for exploration only: it reports an optimistic
    number for the very queries it was chosen on).
    `flip` and `cache` are those of `evaluate_crossview`: with the final evaluation's settings and
    cache, the curve measures what the table reports, and the last epoch's embeddings are reused.
    `transform` replaces the training transform (near-square crop jitter + `augment`): on a
    panorama that crop would keep a quarter of it, so pair datasets train on plain resizes.
    """
    rules = {"last": "last", "train-loss": None, "test": "mean R@1"}
    if select not in rules:
        raise ValueError(f"select must be one of {', '.join(rules)}, got {select!r}")
    from .losses import make_pair_loss
    from .train import MultiViewPlaces, fit

    if hasattr(model, "config"):
        cfg.extra.setdefault("model", model.config)  # so the checkpoint can rebuild its model
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
    return fit(model, places, cfg, out_dir, pair_loss, evaluate=evaluate if in_training else None,
               extra_loss=extra_loss, extra_modules=[pair_loss, *extra_modules], select_metric=rules[select],
               on_epoch=on_epoch, progress=progress, max_minutes=max_minutes)


def load_trained_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by `train_crossview` (its config names the model)."""
    from .checkpoint import load_weights, read_checkpoint
    from .models import create_model

    doc, _ = read_checkpoint(checkpoint)
    model_cfg = dict(doc["meta"].get("config", {}).get("extra", {}).get("model") or {})
    if not model_cfg:
        raise ValueError(f"{checkpoint}: the checkpoint does not say which model it holds "
                         "(config.extra.model); was it written by train_crossview?")
    name = model_cfg.pop("name")
    model = create_model(name, **model_cfg)
    meta = load_weights(checkpoint, model)
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- from a profile

def phase1_model(cfg: dict[str, Any]) -> nn.Module:
    """The model a resolved `phase1` profile section describes (notebook 02 and `geolib train`)."""
    from .models import create_model

    return create_model(cfg["model"], img_size=cfg["image_size"], l2l=cfg["l2l"], fusion=cfg["fusion"],
                        pooling=cfg["pooling"], **(cfg.get("model_options") or {}))


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
                                           cfg.get("distill_loss", "cosine"), cfg.get("distill_weight", 1.0))
    return module, status


def phase1_fit_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """`train_crossview` keywords a resolved `phase1` section sets (besides the TrainConfig)."""
    return {"image_size": cfg["image_size"], "loss": cfg["loss"], "max_minutes": cfg["minutes"],
            "augment": cfg.get("augment", "jitter"), "preload": cfg.get("preload", False),
            "flip": cfg.get("flip_tta", False)}


def phase1_train_config(cfg: dict[str, Any]) -> "TrainConfig":
    from .train import TrainConfig

    return TrainConfig(views=("street", "drone", "satellite"), epochs=cfg["epochs"],
                       batch_size=cfg["batch_size"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                       warmup=cfg["warmup"], amp=cfg["amp"], device=cfg["device"], seed=cfg["seed"],
                       num_workers=cfg["num_workers"], sampling=cfg["sampling"], eval_every=cfg["eval_every"],
                       channels_last=cfg.get("channels_last", False))


# --------------------------------------------------------------------------- command line

PHASE1_FLAG_HELP = {
    "model": "registry name (phase1, phase1-cpu)", "batch_size": "global batch, split over processes",
    "teachers": 'JSON list of teacher names, "available" or "none"',
    "minutes": 'training time budget in minutes ("none": no budget)',
}


def _phase1_keys() -> dict[str, list[Any]]:
    """Every key of any profile's `phase1` and `common` sections, with the values they take."""
    from .profiles import PROFILES, section_keys

    return {k: [sections[part][k] for sections in PROFILES.values() for part in ("common", "phase1")
                if k in sections.get(part, {})] for k in section_keys("phase1")}


def _flag_type(values: Sequence[Any]) -> tuple[str, Callable[[str], Any]]:
    """(kind, parser) of a profile key from the values its profiles give it."""
    import json

    seen = [v for v in values if v is not None]

    def maybe(convert: Callable[[str], Any]) -> Callable[[str], Any]:
        def parse(text: str) -> Any:
            return None if text.strip().lower() in ("none", "null") else convert(text)
        parse.__name__ = getattr(convert, "__name__", "value")
        return parse

    def json_or_text(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    json_or_text.__name__ = "JSON"
    if seen and all(isinstance(v, bool) for v in seen):
        return "bool", bool
    if any(isinstance(v, (dict, list)) for v in seen):
        return "json", maybe(json_or_text)
    if seen and all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
        return "int", maybe(int)
    if seen and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
        return "float", maybe(float)
    return "str", maybe(str)


def build_parser():
    """One flag per key of the profiles' `phase1` (and `common`) sections, generated from the keys,
    so a new profile setting is a new flag without touching this parser."""
    import argparse

    from .profiles import PROFILE_NAMES

    p = argparse.ArgumentParser(prog="python -m geolib train",
                                description="Train Phase 1 outside a notebook, teachers included, as notebook 02 "
                                            "does; under torchrun it runs DDP. Unset flags take the profile's value.")
    p.add_argument("--profile", default="default", choices=PROFILE_NAMES)
    p.add_argument("--u1652-root", "--data-root", dest="u1652_root",
                   help="a University-1652 root holding train/ and test/; default: the synthetic world's")
    p.add_argument("--u1652-coordinates", help="CSV building -> utm_east, utm_north (needed by --sampling gps)")
    p.add_argument("--out", help="checkpoint folder (default outputs/<profile>/checkpoints/phase1)")
    p.add_argument("--dry-run", action="store_true",
                   help="the profile's models and sizes on capped work (geolib.dryrun): does this command get through?")
    for key, values in sorted(_phase1_keys().items()):
        kind, parse = _flag_type(values)
        flags = [f"--{key.replace('_', '-')}"]
        shown = ", ".join(sorted({json.dumps(v) for v in values}))
        helptext = PHASE1_FLAG_HELP.get(key, f"profiles: {shown}")
        if kind == "bool":
            p.add_argument(*flags, dest=key, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            meta = {"json": "JSON", "int": "N", "float": "X"}.get(kind, key.split("_")[-1].upper())
            p.add_argument(*flags, dest=key, type=parse, default=None, metavar=meta,
                           help=helptext + (" (JSON)" if kind == "json" else ""))
    return p


def validate_phase1(cfg: dict[str, Any]) -> list[str]:
    """One line per setting that cannot train, so a bad command fails before any data is read."""
    errors = []
    for key in ("epochs", "batch_size", "image_size", "eval_every"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(f"--{key.replace('_', '-')} must be an integer ≥ 1, got {value!r}")
    if not isinstance(cfg.get("lr"), (int, float)) or not cfg["lr"] > 0:
        errors.append(f"--lr must be a number > 0, got {cfg.get('lr')!r}")
    if cfg.get("minutes") is not None and not (isinstance(cfg["minutes"], (int, float)) and cfg["minutes"] >= 0):
        errors.append(f"--minutes must be a number ≥ 0 or none, got {cfg['minutes']!r}")
    if not isinstance(cfg.get("model_options", {}), dict):
        errors.append(f"--model-options must be a JSON object, got {cfg.get('model_options')!r}")
    teachers = cfg.get("teachers")
    if not (teachers is None or isinstance(teachers, str) or
            (isinstance(teachers, list) and all(isinstance(t, str) for t in teachers))):
        errors.append(f'--teachers must be a JSON list of names, "available" or "none", got {teachers!r}')
    return errors


def dry_run_dataset(ds: GeoDataset) -> GeoDataset:
    """The share of a dataset a dry run touches: the train places of `dryrun.STEPS` batches and
    `dryrun.items` of every evaluated (split, role, view) set."""
    from dataclasses import replace

    from . import dryrun

    train = [it for it in ds.items if it.split == "train"]
    keep = dryrun.label_cap([it.label for it in train], 4 * dryrun.STEPS * dryrun.BATCH) or set()
    items = [it for it in train if it.label in keep]
    groups: dict[tuple[str, str, str], list[ImageItem]] = {}
    for it in ds.items:
        if it.split != "train":
            groups.setdefault((it.split, it.role, it.view), []).append(it)
    for group in groups.values():
        items += dryrun.items(group)
    return replace(ds, items=items, pairs=[])


def main(argv: list[str] | None = None) -> int:
    """`python -m geolib train …`; `torchrun --nproc_per_node N -m geolib train …` for DDP.

    Bad arguments and dataset errors print one message and exit (2 and 1), without a traceback.
    """
    import os
    import sys

    from . import dataroots, dryrun
    from .datasets import DatasetError
    from .needs import NeedMissing, Needs
    from .needs import phase1 as phase1_needs
    from .paths import outputs_root, profile_dir
    from .profiles import resolve

    args = build_parser().parse_args(argv)
    data_flags = ("profile", "out", "dry_run", "u1652_root", "u1652_coordinates")
    overrides = {k: v for k, v in vars(args).items() if k not in data_flags}
    if args.dry_run:
        os.environ[dryrun.ENV] = "1"  # resolve() then caps epochs, batches and the world's size
    cfg = resolve(args.profile, "phase1", **overrides)
    for key in argv_keys(argv) & set(overrides):
        if overrides[key] is None:
            cfg[key] = None  # "--minutes none", "--teachers none": unset, not the profile's value
    errors = validate_phase1(cfg)
    if args.u1652_root and not Path(args.u1652_root).is_dir():
        errors.append(f"--u1652-root {args.u1652_root} is not a folder; give the University-1652 root")
    if errors:
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return 2
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        backend = "nccl" if cfg["device"].startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if cfg["device"].startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = int(os.environ.get("RANK", "0"))
    try:  # the data as notebook 02 reads it
        data = dataroots.u1652(args.profile, cfg["preset"], cfg["seed"], args.u1652_root, args.u1652_coordinates)
        ds = data.load()
        cfg = phase1_needs(cfg, ds.items, Needs(log=print if rank == 0 else (lambda _: None)))
    except (DatasetError, FileNotFoundError, NeedMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if dryrun.active():
        ds = dry_run_dataset(ds)
    net = phase1_model(cfg)
    train_cfg = phase1_train_config(cfg)
    out = Path(args.out) if args.out else profile_dir(args.profile, "checkpoints") / "phase1"
    # as notebook 02: teachers cached under outputs/cache/teachers; rank 0 embeds, the others then read
    if world_size > 1 and rank > 0:
        torch.distributed.barrier()
    distill, status = phase1_distillation(cfg, ds, net, outputs_root() / "cache" / "teachers",
                                          log=print if rank == 0 else (lambda _: None))
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    if rank == 0 and status:
        print(f"teachers: {status}")
    res = train_crossview(net, ds, train_cfg, out, **phase1_fit_options(cfg), progress=rank == 0,
                          extra_loss=distill, extra_modules=[distill] if distill else [],
                          eval_directions=(("street", "drone"), ("street", "satellite")) if rank == 0 or world_size == 1 else ())
    if rank == 0:
        print(f"trained {len(res.history)} epoch(s); last: {res.history[-1] if res.history else None}")
        print(f"checkpoints in {out}")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0


def argv_keys(argv: list[str] | None) -> set[str]:
    """Profile keys named on the command line (`--flip-tta` → `flip_tta`)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    return {a[2:].split("=")[0].replace("-", "_") for a in args if a.startswith("--")}
