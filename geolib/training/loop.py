"""The one training loop of geolib: Phase 1, the ablation rows, SAFA, the Distill4Geo students and
the Phase 2 classifiers (CosPlace, D&C, hierarchical) all train through `run`.

What differs between systems is passed in, not copied: `plan(epoch, rng)` yields an epoch's
batches (drawn from `rng`, seeded by (seed, epoch), so a resumed run replays exactly the batches an
uninterrupted one sees) and `step(batch, epoch)` returns the batch's loss. Everything else lives
here once: optimizer and schedule by name, parameter groups, gradient clipping, AMP, frozen parts,
channels_last, seeding, `best`/`last` checkpoints (safetensors + JSON), resume with a settings
check, history rows, the dry-run caps and an opt-in wall-clock cap.

Example (a classifier with its own head lr)::

    from geolib.training.loop import LoopConfig, run

    model = nn.ModuleDict({"encoder": enc, "head": head})   # every trained part, one checkpoint
    def plan(epoch, rng):                                   # deterministic per (seed, epoch)
        return [rng.choice(len(x), 32, replace=False) for _ in range(10)]
    def step(idx, epoch):
        return head(enc(x[idx]), y[idx])
    cfg = LoopConfig(epochs=5, lr=1e-5, optimizer="adam", scheduler="none")
    groups = [{"params": enc.parameters(), "lr": 1e-5}, {"params": head.parameters(), "lr": 1e-2}]
    result = run(model, step, plan, cfg, out_dir="runs/x", param_groups=groups)

The schedule always runs over the planned steps (`epochs` x steps per epoch). `max_minutes` only
stops a run early, after the epoch in which it runs out; the run then says so (printed line,
`cut_by_budget` in the result, the history and the checkpoint meta), and a rerun continues it.
Selection (`select`) may use only `evaluate`, the validation callback; `watch` metrics (a test
split's curve) are recorded but can never choose the kept model.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import dryrun
from ..checkpoint import load_checkpoint, save_checkpoint

OPTIMIZERS = ("adamw", "adam", "sgd", "asgd")
SCHEDULERS = ("cosine", "none", "plateau")
# "plateau": ReduceLROnPlateau on the mean training loss, stepped once per epoch (no validation split is
# assumed); the rate halves after an epoch that did not improve on the best loss by 1 %.
PLATEAU = {"mode": "min", "factor": 0.5, "patience": 0, "threshold": 0.01}
# Settings that change neither the weights nor the data order, so a run may resume under new values.
RESUME_FREE = ("epochs", "resume", "eval_every", "num_workers", "device", "channels_last", "max_minutes",
               "progress")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: the one place every training and notebook seeds from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- settings

@dataclass
class LoopConfig:
    """The loop's own settings. Defaults are a plain run; each system passes its published ones."""

    epochs: int = 1
    seed: int = 0
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"          # "adamw" (fused where possible) | "adam"
    scheduler: str = "none"           # "cosine" (linear warm-up then cosine to 0) | "none"
    warmup: float = 0.0               # share of all planned steps spent warming up (cosine)
    grad_clip: float = 0.0            # max gradient norm; 0 = no clipping
    amp: bool = False                 # autocast on CUDA (bf16 where supported)
    device: str = "cpu"
    channels_last: bool = False
    freeze: tuple[str, ...] = ()      # parameter-name parts kept frozen (BatchNorm statistics too)
    backbone_lr_scale: float = 1.0    # default groups: `*.backbone.*` at lr x this
    select: str = "last"              # "last" | "train-loss" | a metric name returned by `evaluate`
    eval_every: int = 1
    resume: bool = True
    max_minutes: float | None = None  # opt-in wall-clock cap; never changes the schedule

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.select == "test":
            raise ValueError("select='test' would keep the epoch that scores best on the test split, then report "
                             "that same split: an optimistic number. Use 'last', 'train-loss', or a metric of a "
                             "validation split returned by `evaluate`")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["freeze"] = list(self.freeze)
        return d

    @classmethod
    def of(cls, settings: Any, **overrides: Any) -> "LoopConfig":
        """The loop settings a system's config holds under the loop's own names (`epochs`, `lr`,
        `optimizer`...), and `overrides` for those it names otherwise or lacks."""
        picked = {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}
        if "freeze" in picked:
            picked["freeze"] = tuple(picked["freeze"])
        return cls(**{**picked, **overrides})


@dataclass
class LoopResult:
    """What a training run leaves: its per-epoch rows and where its checkpoints are."""

    history: list[dict[str, Any]]
    best_path: Path | None
    last_path: Path | None
    resumed_from: int
    cut_by_budget: bool = False
    epochs_done: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- optimisation pieces

def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                       ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine to zero at `total_steps`, over steps only (never a clock, so a
    result does not depend on the machine's speed)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: str, amp: bool):
    """Mixed precision on CUDA only: CPU autocast slows the small CNNs trained here."""
    if amp and device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def freeze_parts(module: nn.Module, parts: Sequence[str]) -> list[nn.Module]:
    """Stop training every submodule whose name contains one of `parts`; returns them, so the
    loop can keep them in eval mode (a frozen backbone must not drift its BatchNorm statistics)."""
    if not parts:
        return []
    picked = [m for name, m in module.named_modules() if any(p in f".{name}." for p in parts)]
    if not picked:
        raise ValueError(f"freeze={list(parts)} matches no submodule; names look like "
                         f"{[n for n, _ in module.named_modules()][1:4]}")
    for m in picked:
        m.requires_grad_(False)
    return picked


def param_groups(module: nn.Module, lr: float, backbone_scale: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: `*.backbone.*` at `lr · backbone_scale`, the rest at `lr`
    (a pretrained backbone needs a smaller step than a freshly initialised neck)."""
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    for name, p in module.named_parameters():
        if p.requires_grad:
            groups[".backbone." in f".{name}"].append(p)
    return [{"params": ps, "lr": lr * (backbone_scale if is_bb else 1.0)}
            for is_bb, ps in groups.items() if ps]


def adamw(params: Any, lr: float, weight_decay: float, device: str | torch.device) -> torch.optim.AdamW:
    """AdamW, fused where the device has the kernel: one call for all parameters instead of a dozen
    small ops per parameter, 4-8 % of a default CPU training step (measured)."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def make_optimizer(name: str, groups: Any, lr: float, weight_decay: float, device: str) -> torch.optim.Optimizer:
    """The optimizer `name` over `groups` (a group's own "lr"/"weight_decay" win over the defaults).
    "adam" is torch's plain (unfused) Adam, what the Phase 2 classifiers were tuned with; "sgd" has
    momentum 0.9; "asgd" is torch's averaged SGD with its defaults."""
    if name == "adamw":
        return adamw(groups, lr, weight_decay, device)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "asgd":
        return torch.optim.ASGD(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


# --------------------------------------------------------------------------- distributed

def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def wrap_ddp(module: nn.Module, device: str = "cpu", **ddp_options: Any) -> nn.Module:
    """`module` in DistributedDataParallel when torch.distributed is initialised, else itself.
    A step calls its forward through the wrapper so gradients are all-reduced. `ddp_options` go to
    DDP (`find_unused_parameters=True` where a step trains only some heads)."""
    if distributed()[1] == 1:
        return module
    ids = [torch.cuda.current_device()] if str(device).startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, **ddp_options)


def gather(emb: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's embeddings, concatenated with gradients kept: in-batch negatives then match a
    single-process run of the global batch."""
    if distributed()[1] == 1:
        return dict(emb)
    from torch.distributed.nn.functional import all_gather

    return {v: torch.cat(all_gather(e), dim=0) for v, e in emb.items()}


# --------------------------------------------------------------------------- resume

def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def check_resumable(last_path: str | Path, settings: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                    free: Sequence[str] = RESUME_FREE) -> dict[str, Any]:
    """The saved run's settings, after checking they are this run's: resuming a run of another
    learning rate, batch size or model would silently mix two experiments. `defaults` fill keys a
    checkpoint written before they existed lacks; keys in `free` may differ."""
    doc_path = Path(last_path).with_suffix(".json")
    meta = json.loads(doc_path.read_text()).get("meta", {})
    saved = {**_plain(dict(defaults or {})), **meta.get("config", {})}
    now = _plain(dict(settings))
    diffs = sorted(k for k in set(saved) | set(now) if k not in free and saved.get(k) != now.get(k))
    if diffs:
        shown = "; ".join(f"{k}: saved {_short(saved.get(k))}, now {_short(now.get(k))}" for k in diffs)
        raise ValueError(f"{doc_path}: the checkpoint here belongs to a run with other settings ({shown}). "
                         f"Resume it with its own settings, train into another directory, or delete "
                         f"{doc_path.parent} to start afresh.")
    return saved


def _is_dry(doc_path: Path) -> bool:
    return bool(json.loads(doc_path.read_text()).get("meta", {}).get("dry_run", False))


# --------------------------------------------------------------------------- the loop

def _model_config(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and "name" in cfg:
        return cfg
    if isinstance(model, nn.ModuleDict) and "model" in model:
        return _model_config(model["model"])
    return None


def steps_in(plan: Callable[[int, np.random.Generator], Iterable[Any]], seed: int) -> int:
    """How many batches epoch 0's plan holds (the schedule's length is planned from it)."""
    batches = plan(0, np.random.default_rng([seed, 0]))
    if not hasattr(batches, "__len__"):
        raise TypeError("the cosine schedule needs the number of steps per epoch: let plan() return a sized "
                        "iterable (list, DataLoader) or pass steps_per_epoch=")
    return len(batches)  # type: ignore[arg-type]


def run(model: nn.Module, step: Callable[[Any, int], torch.Tensor],
        plan: Callable[[int, np.random.Generator], Iterable[Any]], cfg: LoopConfig,
        out_dir: str | Path | None = None, *, param_groups: Sequence[dict[str, Any]] | None = None,
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        watch: Callable[[nn.Module, int], dict[str, float]] | None = None,
        settings: Mapping[str, Any] | None = None, settings_defaults: Mapping[str, Any] | None = None,
        model_config: Mapping[str, Any] | None = None, steps_per_epoch: int | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
        desc: str = "epoch") -> LoopResult:
    """Train `model` for `cfg.epochs` passes of `plan(epoch, rng)`; `step(batch, epoch)` -> loss.

    `model` holds every trained part (encoder, heads, loss parameters), so one checkpoint restores
    the run. `param_groups` (default: backbone at `lr · backbone_lr_scale`, the rest at `lr`) may give
    each group its own lr. `evaluate(model, epoch)` measures a validation split (the only metrics
    `cfg.select` may name); `watch(model, epoch)` records curves (a test split) that never select.
    `settings` are the caller's settings (batch size, loss, data...) that the resume check compares
    with the loop's own, `settings_defaults` their values for checkpoints that predate a key. The
    checkpoint meta's `config.extra.model` is `model_config` (default `model.config`), what
    `geolib.models.create_model` rebuilds the model from.

    A dry run (`geolib.dryrun`) trains `dryrun.EPOCHS` epochs of at most `dryrun.STEPS` steps; its
    checkpoints are marked, never resumed by a real run (which starts afresh), and a dry run meeting
    a real run's checkpoints writes its own beside them (`dry-run-last`, `dry-run-best`).
    """
    if cfg.select not in ("last", "train-loss") and evaluate is None:
        raise ValueError(f"select={cfg.select!r} names a metric, but no `evaluate` callback (a validation split) "
                         "gives one; pass evaluate=, or select 'last' or 'train-loss'")
    rank = distributed()[0]
    dry = dryrun.active()
    epochs = dryrun.epochs(cfg.epochs)
    max_steps = dryrun.steps(None)
    seed_everything(cfg.seed)
    device = cfg.device
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    frozen = freeze_parts(model, cfg.freeze)
    groups = list(param_groups) if param_groups is not None else \
        _default_groups(model, cfg.lr, cfg.backbone_lr_scale)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.weight_decay, device)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_epoch = steps_per_epoch if steps_per_epoch is not None else \
        (steps_in(plan, cfg.seed) if cfg.scheduler == "cosine" else 0)
    total = max(1, cfg.epochs * per_epoch)
    scheduler = cosine_with_warmup(optimizer, int(cfg.warmup * total), total) if cfg.scheduler == "cosine" else None
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **PLATEAU) if cfg.scheduler == "plateau" else None

    mcfg = dict(model_config) if model_config is not None else _model_config(model)
    config: dict[str, Any] = {**cfg.to_dict(), **_plain(dict(settings or {}))}
    if mcfg is not None:
        config["extra"] = {**config.get("extra", {}), "model": mcfg}
    config = _plain(config)

    history: list[dict[str, Any]] = []
    start, best = 0, -math.inf
    last_path = best_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        prefix = ""
        if dry and (out_dir / "last.json").exists() and not _is_dry(out_dir / "last.json"):
            prefix = "dry-run-"
            _say(progress, rank, f"{out_dir}: holds a real run's checkpoints; this dry run writes {prefix}last/best beside them")
        last_path, best_path = out_dir / f"{prefix}last", out_dir / f"{prefix}best"
        doc = last_path.with_suffix(".json")
        if cfg.resume and doc.exists():
            if _is_dry(doc) != dry:
                _say(progress, rank, f"{doc}: written by a dry run; this real run starts afresh")
            else:
                defaults = {**LoopConfig().to_dict(), **dict(settings_defaults or {})}
                saved = check_resumable(last_path, config, defaults)
                meta = load_checkpoint(last_path, model, optimizer, scheduler or plateau, restore_rng=True)
                start, history = int(meta["epoch"]), list(meta.get("history", []))
                best = meta.get("best", -math.inf)
                best = -math.inf if best is None else best
                if meta.get("complete") and saved.get("epochs", 0) >= cfg.epochs:
                    _say(progress, rank, f"{doc}: this run already finished ({start} epochs); nothing to train")
                    return LoopResult(history, _existing(best_path), last_path, start,
                                      bool(meta.get("cut_by_budget", False)), start)
                _say(progress, rank, f"resuming from {doc} after epoch {start}")
    resumed_from = start
    t_start = time.perf_counter()  # the cap counts from here, after any resume
    cut = False
    epoch = start
    for epoch in range(start, epochs):
        model.train()
        for m in frozen:
            m.eval()
        t0, losses = time.perf_counter(), []
        batches: Iterable[Any] = plan(epoch, np.random.default_rng([cfg.seed, epoch]))
        n = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        if max_steps is not None:
            batches = itertools.islice(batches, max_steps)
            n = min(n, max_steps) if n is not None else None
        bar = tqdm(batches, total=n, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress or rank > 0,
                   leave=False)
        for batch in bar:
            with autocast(device, cfg.amp):
                loss = step(batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        lr = scheduler.get_last_lr()[0] if scheduler is not None else optimizer.param_groups[0]["lr"]
        if plateau is not None and losses:
            plateau.step(float(np.mean(losses)))  # the next epoch's rate; this epoch ran at `lr`
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                               "lr": lr, "seconds": round(time.perf_counter() - t0, 2),
                               "minutes_total": round((time.perf_counter() - t_start) / 60, 3)}
        cut = _spent(cfg.max_minutes, t_start) and epoch + 1 < epochs
        last_epoch = epoch + 1 == epochs or cut
        validation: dict[str, float] = {}
        if (epoch + 1) % max(1, cfg.eval_every) == 0 or last_epoch:
            if evaluate is not None:
                validation = dict(evaluate(model, epoch + 1))
                row.update(validation)
            if watch is not None:
                row.update({k: v for k, v in watch(model, epoch + 1).items() if k not in row})
            cut = cut or (_spent(cfg.max_minutes, t_start) and epoch + 1 < epochs)  # an evaluation may use it up
        if cut:
            row["cut_by_budget"] = True
        history.append(row)
        if rank == 0 and last_path is not None and best_path is not None:
            complete = epoch + 1 == epochs
            keep, best = _keep(cfg.select, row, validation, best, complete or cut)
            meta = dict(config=config, dry_run=dry, cut_by_budget=cut, epochs_done=epoch + 1,
                        epochs_planned=epochs)
            if keep:
                save_checkpoint(best_path, model, epoch=epoch + 1, metrics=row, **meta)
            save_checkpoint(last_path, model, optimizer, scheduler or plateau, epoch=epoch + 1, history=history,
                            best=best if math.isfinite(best) else None, complete=complete, **meta)
        if on_epoch is not None and rank == 0:
            on_epoch(row)
        if cut:
            _say(True, rank, f"stopped by the {cfg.max_minutes:g}-minute cap after epoch {epoch + 1} of {epochs}; "
                                 "rerun to continue")
            break
    done = history[-1]["epoch"] if history else start
    return LoopResult(history, _existing(best_path), last_path, resumed_from, cut, int(done))


def _default_groups(model: nn.Module, lr: float, scale: float) -> list[dict[str, Any]]:
    groups = param_groups(model, lr, scale)
    if not groups:
        raise ValueError("the model has no trainable parameter (everything frozen?); check cfg.freeze")
    return groups


def _keep(select: str, row: Mapping[str, Any], validation: Mapping[str, float], best: float, final: bool
          ) -> tuple[bool, float]:
    """Whether this epoch becomes `best`, and the best score so far. A metric is looked up in the
    validation results only, so a watched test-split curve can never choose the kept model."""
    if select == "last":
        return final, best
    if select == "train-loss":
        score = -float(row["loss"])
    else:
        if not validation:
            return False, best  # not evaluated this epoch
        if select not in validation:
            raise ValueError(f"select={select!r}: `evaluate` returned no such metric (it gave "
                             f"{sorted(validation)}); name one of those, or select 'last' or 'train-loss'")
        score = float(validation[select])
    if not math.isfinite(score) or score <= best:
        return False, best
    return True, score


def _spent(max_minutes: float | None, t_start: float) -> bool:
    return max_minutes is not None and (time.perf_counter() - t_start) / 60 >= max_minutes


def _existing(path: Path | None) -> Path | None:
    return path if path is not None and path.with_suffix(".json").exists() else None


def _say(progress: bool, rank: int, text: str) -> None:
    if progress and rank == 0:
        print(text)
