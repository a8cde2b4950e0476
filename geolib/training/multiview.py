"""Multi-view contrastive training of every cross-view model (Phase 1, baselines, ablation rows, SAFA).

The data (places, place batches), the embedding helpers and the multi-view step live here; the
loop itself (optimizer, schedule, checkpoints, resume, caps) is `geolib.training.loop.run`, shared with the
students and the Phase 2 classifiers. `fit` binds the two.

A training sample is one *place* with one image per view; a batch never holds one place twice,
so every other item in the batch is a true negative for InfoNCE and triplet losses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.datasets import ImageItem, by_label
from ..data.images import load_image
from .loop import LoopConfig, LoopResult, distributed, gather, run, wrap_ddp


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
    optimizer: str = "adamw"  # geolib.training.loop.OPTIMIZERS
    scheduler: str = "cosine"  # warm-up + cosine over the planned steps, or "none"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["views"] = list(self.views)
        return d


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


# --------------------------------------------------------------------------- the multi-view step

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


# --------------------------------------------------------------------------- the loop

def place_loader(train_set: MultiViewPlaces, sampler: PlaceBatchSampler, num_workers: int = 0
                 ) -> torch.utils.data.DataLoader:
    """The training loader. Its workers are forked afresh each epoch, not kept: a persistent worker
    holds the dataset copy it was forked with, `set_epoch` never reaches it, and every epoch would
    draw epoch 0's image of each place and view."""
    return torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=num_workers)


def multiview_step(train_model: nn.Module, model: nn.Module, views: Sequence[str],
                   pair_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: str,
                   extra_loss: Callable[..., torch.Tensor] | None = None,
                   memory_format: torch.memory_format = torch.contiguous_format) -> Callable[[Any, int], torch.Tensor]:
    """The loop step of multi-view contrastive training: embed each view of a batch of places, the
    pairwise loss over view pairs on the (under DDP, gathered) global batch, plus `extra_loss` on
    this process's rows. `train_model` is `model` or its DDP wrapper."""
    pairs = view_pairs(views)
    world = distributed()[1]

    def step(batch: Any, epoch: int) -> torch.Tensor:
        images, labels, paths = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
        images = {v: x.to(device, non_blocking=True).contiguous(memory_format=memory_format) for v, x in images.items()}
        labels = labels.to(device)
        local = embed_batch(train_model, model, {v: images[v] for v in views})
        emb = gather(local) if world > 1 else local
        loss = multiview_loss(emb, pair_loss, pairs)
        if extra_loss is not None:
            more = (images, local, labels) if paths is None else (images, local, labels, paths)
            loss = loss + extra_loss(*more)
        return loss
    return step


def fit(model: nn.Module, train_set: MultiViewPlaces, cfg: TrainConfig, out_dir: str | Path,
        pair_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        extra_loss: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
        extra_modules: Sequence[nn.Module] = (), select_metric: str | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
        max_minutes: float | None = None,
        watch: Callable[[nn.Module, int], dict[str, float]] | None = None) -> LoopResult:
    """Multi-view contrastive training of `model` through `geolib.training.loop.run`.

    `pair_loss(a, b)` scores two views' embeddings of the same places. `extra_loss(images,
    embeddings, labels)` adds terms such as distillation or the instance loss, on this process's own
    rows (under DDP, not the gathered batch); when the training set yields a third item (the drawn
    image paths per view, `MultiViewPlaces(with_paths=True)`), it is passed too: `extra_loss(images,
    embeddings, labels, paths)`. `extra_modules` are trained with the model (loss temperature,
    projection heads) and checkpointed with it.
    `evaluate` measures a validation split, the only metrics `select_metric` may name; `watch`
    records curves (a test split) that never select. `select_metric`: None keeps the lowest
    training loss as `best`, "last" the final epoch (written once, when the run ends).
    `max_minutes` is an opt-in cap: the run stops after the epoch in which it runs out, says so, and
    the schedule stays the one planned over all epochs (see `geolib.training.loop`).
    """
    rank, world = distributed()
    device = cfg.device
    bundle = nn.ModuleDict({"model": model, **{f"extra{i}": m for i, m in enumerate(extra_modules)}}).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    bundle.to(memory_format=fmt)
    train_model = wrap_ddp(model, device)
    neighbours = gps_neighbours(train_set.utm, cfg.gps_pool) if cfg.sampling == "gps" else None
    sampler = PlaceBatchSampler(len(train_set), cfg.batch_size, cfg.seed, neighbours, cfg.gps_near,
                                cfg.gps_random, rank, world)
    loader = place_loader(train_set, sampler, cfg.num_workers)

    def plan(epoch: int, rng: np.random.Generator) -> torch.utils.data.DataLoader:
        sampler.set_epoch(epoch)  # the sampler and the images draw from their own (seed, epoch) generators
        train_set.set_epoch(epoch)
        return loader

    step = multiview_step(train_model, model, cfg.views, pair_loss, device, extra_loss, fmt)
    select = {None: "train-loss"}.get(select_metric, select_metric)
    def on_model(fn: Callable[[nn.Module, int], dict[str, float]] | None):  # callbacks see the model, not the bundle
        return None if fn is None else (lambda _bundle, epoch: fn(model, epoch))

    return run(bundle, step, plan, LoopConfig.of(cfg, select=select, max_minutes=max_minutes), out_dir,
               evaluate=on_model(evaluate), watch=on_model(watch),
               settings=cfg.to_dict(), settings_defaults=TrainConfig().to_dict(), steps_per_epoch=len(sampler),
               on_epoch=on_epoch, progress=progress)
