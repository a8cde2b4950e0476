"""The training loop shared by every cross-view model (Phase 1, baselines, ablation rows).

Compact on purpose, in the spirit of CosPlace: seeded, one `fit` function, resumable from its
last checkpoint, per-epoch metrics written as records. What changes between systems (model,
pairwise loss, extra loss terms, evaluation) is passed in, not copied.

A training sample is one *place* with one image per view; a batch never holds one place twice,
so every other item in the batch is a true negative for InfoNCE and triplet losses.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import dryrun
from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import GeoDataset, ImageItem, by_label
from .images import load_image


@dataclass
class TrainConfig:
    views: tuple[str, ...] = ("street", "drone", "satellite")
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: float = 0.1  # share of all steps spent warming up
    grad_clip: float = 1.0
    amp: bool = False
    device: str = "cpu"
    seed: int = 0
    num_workers: int = 0
    sampling: str = "random"  # "random" or "gps" (Sample4Geo GPS-neighbour batches)
    gps_near: int = 32
    gps_random: int = 32
    gps_pool: int = 128
    eval_every: int = 1
    resume: bool = True
    freeze: tuple[str, ...] = ()  # parameter-name parts (".backbone.") kept frozen, their BatchNorm stats too
    backbone_lr_scale: float = 1.0  # backbone lr = lr x this: a pretrained backbone needs less than a new neck
    channels_last: bool = False  # NHWC convolutions: 1.2-1.4x faster CNN steps on CPU (geolib bench)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["views"] = list(self.views)
        return d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data

class MultiViewPlaces(torch.utils.data.Dataset):
    """Item i is place i: one image per view, drawn afresh each epoch, deterministic per (seed, epoch).

    `preload` decodes every image once into memory (uint8): a CPU run draws each image dozens of
    times, and decoding it again each time cost a fifth of a training step (measured).
    """

    def __init__(self, items: Sequence[ImageItem], views: Sequence[str], transform: Callable,
                 seed: int = 0, preload: bool = False, with_paths: bool = False):
        grouped = {v: by_label(it for it in items if it.view == v) for v in views}
        labels = set.intersection(*(set(g) for g in grouped.values())) if grouped else set()
        if not labels:
            have = {v: len(g) for v, g in grouped.items()}
            raise ValueError(f"no place has images in every view {list(views)} (places per view: {have}); "
                             "check the dataset root and the views option")
        self.labels = sorted(labels)
        self.views = list(views)
        self.images = {v: [grouped[v][lab] for lab in self.labels] for v in views}
        self.transform = transform
        self.seed, self.epoch = seed, 0
        self.with_paths = with_paths  # items also name the drawn image of each view (per-image distillation)
        self.decoded: dict[str, torch.Tensor] = {}
        if preload:
            from torchvision.transforms.v2.functional import pil_to_tensor

            paths = {it.path for v in views for group in self.images[v] for it in group}
            self.decoded = {p: pil_to_tensor(load_image(p)) for p in tqdm(sorted(paths), desc="decode", leave=False)}
        first = {lab: grouped[views[0]][lab][0] for lab in self.labels}
        self.utm = np.array([[first[lab].utm_east or np.nan, first[lab].utm_north or np.nan] for lab in self.labels])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int] | tuple[dict[str, torch.Tensor], int, dict[str, str]]:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        out, paths = {}, {}
        for v in self.views:
            choices = self.images[v][i]
            path = choices[rng.integers(len(choices))].path
            out[v] = self.transform(self.decoded[path] if path in self.decoded else load_image(path))
            paths[v] = str(path)
        return (out, self.labels[i], paths) if self.with_paths else (out, self.labels[i])


def gps_neighbours(utm: np.ndarray, k: int = 128) -> np.ndarray:
    """Indices of each place's k nearest other places, nearest first (Sample4Geo's GPS pool)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(utm) - 1)
    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(utm)
    idx = nn_.kneighbors(utm, return_distance=False)
    return np.array([row[row != i][:k] for i, row in enumerate(idx)])


class PlaceBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of distinct places; each place once per epoch.

    With `neighbours`, Sample4Geo sampling: an anchor brings its `near` nearest unused places and
    `rand` random ones from the rest of its pool, so batches hold hard, nearby negatives.
    Under DDP every rank iterates the same global batches and keeps its own slice.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, neighbours: np.ndarray | None = None,
                 near: int = 32, rand: int = 32, rank: int = 0, world_size: int = 1):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} is larger than the {n} training places")
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} does not split over {world_size} processes")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0
        self.neighbours, self.near, self.rand = neighbours, near, rand
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def _global_batches(self) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(self.n)
        if self.neighbours is None:
            return [order[i:i + self.batch_size].tolist() for i in range(0, len(self) * self.batch_size, self.batch_size)]
        used = np.zeros(self.n, bool)
        batches, batch = [], []
        for anchor in order:
            if used[anchor]:
                continue
            pool = self.neighbours[anchor]
            near, rest = pool[: self.near], pool[self.near:]
            extra = rng.permutation(rest)[: self.rand] if len(rest) else rest
            for idx in [anchor, *near, *extra]:
                if not used[idx] and len(batch) < self.batch_size:
                    used[idx] = True
                    batch.append(int(idx))
            if len(batch) == self.batch_size:
                batches.append(batch)
                batch = []
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world_size
        for batch in self._global_batches():
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]


# --------------------------------------------------------------------------- optimisation

def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       clock: Callable[[], float] | None = None):
    """Linear warm-up, then cosine to zero at `total_steps`.

    `clock()` (share of a time budget used, 0..1) lets a budgeted run anneal on time: the cosine
    follows whichever of steps and clock is further along, so a slow machine still ends its
    budget at a low learning rate instead of being cut off at the peak.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if clock is not None:
            progress = max(progress, clock())
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: str, amp: bool):
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
    """Trainable parameters in two groups: `*.backbone.*` at `lr · backbone_scale`, the rest at `lr`."""
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


def input_format(model: nn.Module) -> torch.memory_format:
    """The memory format a model's convolutions were put in, so its inputs can match it."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[2] * p.shape[3] > 1:  # a 1x1 kernel is contiguous both ways
            return torch.channels_last if p.is_contiguous(memory_format=torch.channels_last) \
                and not p.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format


def embed_batch(train_model: nn.Module, model: nn.Module, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One call for all views when the model takes a dict (views sharing a branch then run as one
    batch), else one call per view. Either way through `train_model`, so DDP sees the forward."""
    if hasattr(model, "embed_views"):
        return train_model(images)
    return {v: train_model(x, view=v) for v, x in images.items()}


def view_pairs(views: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(views) for b in views[i + 1:]]


def multiview_loss(embeddings: dict[str, torch.Tensor], pair_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Mean of the pairwise loss over view pairs (street–drone, street–satellite, drone–satellite)."""
    return torch.stack([pair_loss(embeddings[a], embeddings[b]) for a, b in pairs]).mean()


# --------------------------------------------------------------------------- embedding

def embed_tensor(model: nn.Module, x: torch.Tensor, view: str, flip: bool = False) -> torch.Tensor:
    """(B, D) L2-normalised float32 CPU embeddings of one transformed batch, in the model's memory
    format; `flip` averages a mirrored pass. Every evaluation, cache, index and `localize` embeds
    through here, so a gallery and its queries are always embedded alike. The caller sets eval mode
    and no_grad."""
    x = x.contiguous(memory_format=input_format(model))
    e = model(x, view=view)
    if flip:
        e = e + model(torch.flip(x, dims=[3]), view=view)
    return nn.functional.normalize(e.float(), dim=-1).cpu()


@torch.no_grad()
def embed_items(model: nn.Module, items: Sequence[ImageItem], view: str, transform: Callable,
                batch_size: int = 64, device: str = "cpu", flip: bool = False,
                num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings of `items` seen as `view`; `flip` averages a mirrored pass."""
    from .datasets import ImageDataset

    model.eval()
    loader = torch.utils.data.DataLoader(ImageDataset(items, transform), batch_size=batch_size,
                                         num_workers=num_workers)
    out = [embed_tensor(model, x.to(device), view, flip)
           for x, _ in tqdm(loader, desc=f"embed {view}", disable=not progress, leave=False)]
    dim = out[0].shape[1] if out else 0
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


# --------------------------------------------------------------------------- the loop

@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_path: Path | None
    last_path: Path
    resumed_from: int


def place_loader(train_set: MultiViewPlaces, sampler: PlaceBatchSampler, num_workers: int = 0
                 ) -> torch.utils.data.DataLoader:
    """The training loader. Its workers are forked afresh each epoch, not kept: a persistent worker
    holds the dataset copy it was forked with, `set_epoch` never reaches it, and every epoch would
    draw epoch 0's image of each place and view."""
    return torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=num_workers)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def fit(model: nn.Module, train_set: MultiViewPlaces, cfg: TrainConfig, out_dir: str | Path,
        pair_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        extra_loss: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
        extra_modules: Sequence[nn.Module] = (), select_metric: str | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
        max_minutes: float | None = None) -> FitResult:
    """Train, evaluate every `cfg.eval_every` epochs, keep `best` and `last` checkpoints, resume.

    `pair_loss(a, b)` scores two views' embeddings of the same places. `extra_loss(images,
    embeddings, labels)` adds terms such as distillation or the instance loss, on this process's own
    rows (under DDP, not the gathered batch); when the training set yields a third item (the drawn
    image paths per view, `MultiViewPlaces(with_paths=True)`), it is passed too: `extra_loss(images,
    embeddings, labels, paths)`. `extra_modules` are
    trained with the model (loss temperature, projection heads) and checkpointed with it.
    `select_metric` names the history field whose highest value is kept as `best` (default: the
    lowest training loss); `"last"` keeps the final epoch, written once at the end.
    `max_minutes` stops cleanly after the epoch in which the time budget runs out, and the learning
    rate anneals on that clock too (see `cosine_with_warmup`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _distributed()
    seed_everything(cfg.seed)
    device = cfg.device
    bundle = nn.ModuleDict({"model": model, **{f"extra{i}": m for i, m in enumerate(extra_modules)}}).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    bundle.to(memory_format=fmt)
    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None)

    neighbours = gps_neighbours(train_set.utm, cfg.gps_pool) if cfg.sampling == "gps" else None
    sampler = PlaceBatchSampler(len(train_set), cfg.batch_size, cfg.seed, neighbours, cfg.gps_near,
                                cfg.gps_random, rank, world)
    loader = place_loader(train_set, sampler, cfg.num_workers)
    frozen = freeze_parts(bundle, cfg.freeze)
    params = [p for p in bundle.parameters() if p.requires_grad]
    optimizer = adamw(param_groups(bundle, cfg.lr, cfg.backbone_lr_scale), cfg.lr, cfg.weight_decay, device)
    total = max(1, cfg.epochs * len(sampler))
    t_start = time.perf_counter()
    clock = (lambda: (time.perf_counter() - t_start) / (60 * max_minutes)) if max_minutes else None

    def spent() -> bool:  # max_minutes=0 is a budget too: one epoch
        return max_minutes is not None and (time.perf_counter() - t_start) / 60 >= max_minutes
    scheduler = cosine_with_warmup(optimizer, int(cfg.warmup * total), total, clock)
    pairs = view_pairs(cfg.views)

    history: list[dict[str, Any]] = []
    start_epoch, best = 0, -math.inf
    last_path, best_path = out_dir / "last", out_dir / "best"
    if cfg.resume and last_path.with_suffix(".json").exists():
        saved = check_resumable(last_path, cfg, max_minutes)
        meta = load_checkpoint(last_path, bundle, optimizer, scheduler, restore_rng=True)
        start_epoch, history, best = meta["epoch"], meta.get("history", []), meta.get("best", -math.inf)
        if meta.get("complete") and saved.get("epochs", 0) >= cfg.epochs:
            if progress and rank == 0:
                print(f"{last_path}.json: this run already finished ({start_epoch} epochs); nothing to train")
            return FitResult(history, best_path if best_path.with_suffix(".json").exists() else None,
                             last_path, start_epoch)
        if progress and rank == 0:
            print(f"resuming from {last_path}.json after epoch {start_epoch}")
    resumed_from = start_epoch
    max_steps = dryrun.steps(None)  # a dry run checks the path with a few steps
    t_start = time.perf_counter()  # the budget counts from here, after any resume
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        bundle.train()
        for m in frozen:
            m.eval()
        t0, losses = time.perf_counter(), []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank > 0, leave=False)
        for step, batch in enumerate(bar):
            if max_steps is not None and step >= max_steps:
                break
            images, labels, paths = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
            images = {v: x.to(device, non_blocking=True).contiguous(memory_format=fmt) for v, x in images.items()}
            labels = labels.to(device)
            with autocast(device, cfg.amp):
                local = embed_batch(train_model, model, {v: images[v] for v in cfg.views})
                emb = _gather(local) if world > 1 else local
                loss = multiview_loss(emb, pair_loss, pairs)
                if extra_loss is not None:
                    more = (images, local, labels) if paths is None else (images, local, labels, paths)
                    loss = loss + extra_loss(*more)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                               "seconds": round(time.perf_counter() - t0, 2), "lr": scheduler.get_last_lr()[0],
                               "minutes_total": round((time.perf_counter() - t_start) / 60, 3)}
        out_of_time = spent()
        if evaluate is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or out_of_time):
            row.update(evaluate(model, epoch + 1))  # the last epoch of a budgeted run is evaluated too
            out_of_time = out_of_time or spent()  # an evaluation that ends the budget ends the run
        history.append(row)
        if rank == 0:
            complete = out_of_time or epoch + 1 == cfg.epochs
            if select_metric == "last":  # `best` is the final model: written once, when the run ends
                keep = complete
            else:
                score = row.get(select_metric, -row["loss"]) if select_metric else -row["loss"]
                keep = score is not None and score > best
                best = score if keep else best
            if keep:
                save_checkpoint(best_path, bundle, epoch=epoch + 1, config=cfg.to_dict(), metrics=row)
            save_checkpoint(last_path, bundle, optimizer, scheduler, epoch=epoch + 1, config=cfg.to_dict(),
                            history=history, best=best, complete=complete, max_minutes=max_minutes)
            if on_epoch:
                on_epoch(row)
        if out_of_time:
            break
    return FitResult(history, best_path if best_path.with_suffix(".json").exists() else None, last_path, resumed_from)


# Settings that change neither the weights nor the data order, so a run may resume under new values.
RESUME_FREE = ("epochs", "resume", "eval_every", "num_workers", "device", "channels_last")


def check_resumable(last_path: Path, cfg: TrainConfig, max_minutes: float | None = None) -> dict[str, Any]:
    """The saved run's config, after checking it is this run's: resuming a different run (another
    learning rate, batch size or model) would silently mix two experiments."""
    doc_path = Path(last_path).with_suffix(".json")
    meta = json.loads(doc_path.read_text()).get("meta", {})
    def plain(c: TrainConfig) -> dict[str, Any]:
        return json.loads(json.dumps(c.to_dict(), default=str))

    saved = {**plain(TrainConfig()), **meta.get("config", {})}  # settings added since: their defaults
    now = plain(cfg)
    if "max_minutes" in meta:  # checkpoints written before budgets were recorded carry none
        saved["max_minutes"], now["max_minutes"] = meta["max_minutes"], max_minutes
    diffs = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE and saved.get(k) != now.get(k))
    if diffs:
        shown = "; ".join(f"{k}: saved {_short(saved.get(k))}, now {_short(now.get(k))}" for k in diffs)
        raise ValueError(f"{doc_path}: the checkpoint here belongs to a run with other settings ({shown}). "
                         f"Resume it with its own settings, train into another directory, or delete "
                         f"{doc_path.parent} to start afresh.")
    return saved


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _gather(emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All ranks see the global batch, so in-batch negatives match a single-process run."""
    from torch.distributed.nn.functional import all_gather

    return {v: torch.cat(all_gather(e), dim=0) for v, e in emb.items()}
