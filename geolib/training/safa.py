"""SAFA: spatial-aware feature aggregation over polar-transformed aerial images (docs/reference.md).

The model keeps two branches that share no weight (panorama, satellite). The satellite branch
polar-transforms its square input inside `forward`, so any aerial tile can be passed as is, and the
polar switch is a model option that the ablation can turn off. Training goes through `multiview.fit`
(`geolib.training.loop`, the same loop as Phase 1) on a CVUSA- or CVACT-layout dataset; evaluation uses the `cvusa`
protocol, and on VIGOR also reports the hit rate (`vigor-hit`).

As published: ImageNet-initialised backbones (where the weights are found), no augmentation that
moves pixels (a panorama's columns are its bearings, aligned with the polar-transformed tile: a
crop, flip or rotation would break that), and the last epoch is the model (never the epoch that
scored best on the evaluation split, which is the split every CVUSA/CVACT number is reported on).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import GeoDataset, ImageItem, labels_of, load_image
from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..models.layers import GeM
from ..models import register_model
from ..data.transforms import Preprocess, polar_transform

if TYPE_CHECKING:
    from ..results import Result
    from .loop import LoopResult
    from .multiview import TrainConfig

PROTOCOL_CVUSA = "cvusa"
SAFA_VIEWS = ("panorama", "satellite")


class SpatialAwareAggregation(nn.Module):
    """K heads; per head: channel mean → Linear(HW, HW/2) → Linear(HW/2, HW) → spatial weights.

    The descriptor of head k is Σ_space weights_k · features (C values); the K descriptors are
    concatenated (K·C) and L2-normalised. There is no activation between the two linears (SAFA).
    """

    def __init__(self, grid: tuple[int, int], heads: int = 8) -> None:
        super().__init__()
        hw = int(grid[0] * grid[1])
        self.heads = heads
        self.down = nn.ModuleList(nn.Linear(hw, max(1, hw // 2)) for _ in range(heads))
        self.up = nn.ModuleList(nn.Linear(max(1, hw // 2), hw) for _ in range(heads))

    def weights(self, x: Tensor) -> Tensor:
        """(B, K, HW) spatial weights of a (B, C, H, W) map."""
        pooled = x.mean(dim=1).flatten(1)  # (B, HW)
        return torch.stack([up(down(pooled)) for down, up in zip(self.down, self.up)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weights(x)                                  # (B, K, HW)
        desc = torch.einsum("bkn,bcn->bkc", w, x.flatten(2))  # (B, K, C)
        return F.normalize(desc.flatten(1), dim=-1)


class GeMAggregation(nn.Module):
    """The ablation's alternative to SA aggregation: GeM over space, L2-normalised (C values)."""

    def __init__(self) -> None:
        super().__init__()
        self.gem = GeM()

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.gem(x.permute(0, 2, 3, 1)), dim=-1)


class SAFABranch(nn.Module):
    """Backbone feature map (last stage, or `stage`) → aggregation; input size fixed at build time
    because the SA linears are sized by the map's HW. `backbone`: a name (built with `pretrained`,
    see `distill4geo.pretrained_backbone`) or an already built multi-stage backbone."""

    def __init__(self, backbone: str | nn.Module, input_hw: tuple[int, int], heads: int = 8, aggregation: str = "sa",
                 stage: int = -1, pretrained: bool | str = False) -> None:
        super().__init__()
        from .distill4geo import pretrained_backbone

        self.backbone = backbone if isinstance(backbone, nn.Module) else \
            pretrained_backbone(backbone, pretrained, log=lambda _: None)[0]
        self.stage = stage
        with torch.no_grad():
            was = self.backbone.training
            self.backbone.eval()
            fmap = self.feature_map(torch.zeros(1, 3, *input_hw))
            self.backbone.train(was)
        self.channels, grid = int(fmap.shape[1]), (int(fmap.shape[2]), int(fmap.shape[3]))
        if aggregation == "sa":
            self.pool: nn.Module = SpatialAwareAggregation(grid, heads)
            self.out_dim = heads * self.channels
        elif aggregation == "gem":
            self.pool, self.out_dim = GeMAggregation(), self.channels
        else:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose sa or gem")

    def feature_map(self, x: Tensor) -> Tensor:
        return self.backbone(x)[self.stage]

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_map(x))


class SAFAModel(nn.Module):
    """`forward(x, view)`: panorama (B,3,H,W) or satellite (B,3,S,S) → L2-normalised K·C embedding.

    `pretrained` (default "available": ImageNet weights where found offline, else random init and
    one line saying so; True: they must load) is looked up once for both branches;
    `config["weights"]` records where they came from.
    """

    def __init__(self, backbone: str = "resnet10t", pano_hw: tuple[int, int] = (112, 616), sat_size: int = 256,
                 polar: bool = True, heads: int = 8, aggregation: str = "sa", stage: int = -1,
                 pretrained: bool | str = "available", log: Callable[[str], None] = print) -> None:
        super().__init__()
        from .distill4geo import loaded_weights, pretrained_backbone

        self.pano_hw, self.sat_size, self.polar = tuple(pano_hw), int(sat_size), bool(polar)
        sat_hw = self.pano_hw if polar else (self.sat_size, self.sat_size)
        pano_net, self.weights = pretrained_backbone(backbone, pretrained, log=log)
        sat_net = pretrained_backbone(backbone, loaded_weights(pretrained, self.weights))[0]
        self.branches = nn.ModuleDict({
            "panorama": SAFABranch(pano_net, self.pano_hw, heads, aggregation, stage),
            "satellite": SAFABranch(sat_net, sat_hw, heads, aggregation, stage)})
        self.embed_dim = self.branches["panorama"].out_dim
        self.config = {"name": "safa", "backbone": backbone, "pano_hw": list(self.pano_hw), "sat_size": self.sat_size,
                       "polar": self.polar, "heads": heads, "aggregation": aggregation, "stage": stage,
                       "weights": self.weights}

    def forward(self, x: Tensor, view: str) -> Tensor:
        if view not in self.branches:
            raise KeyError(f"unknown view {view!r}; SAFA has {', '.join(self.branches)}")
        if view == "satellite" and self.polar:
            x = polar_transform(x, *self.pano_hw)
        return self.branches[view](x)

    def input_sizes(self) -> dict[str, tuple[int, int]]:
        """What each view's transform should resize to (the satellite stays square)."""
        return {"panorama": self.pano_hw, "satellite": (self.sat_size, self.sat_size)}

    @property
    def preprocess(self) -> Preprocess:
        """The evaluation preprocessing: each view resized to its own input size."""
        return Preprocess(dict(self.input_sizes()))


# --------------------------------------------------------------------------- data and training

def pair_transform(size: tuple[int, int], train: bool = False, jitter: float = 0.0) -> Callable:
    """Resize to `size` and normalise; in training, optional photometric jitter and nothing else.

    SAFA trains without augmentation. Anything that moves pixels (a crop, flip or rotation) would
    shift a panorama's bearings against the polar-transformed tile, whose columns are the same
    bearings, so it is not offered; `jitter` (brightness/contrast/saturation) keeps the geometry.
    """
    from torchvision.transforms import v2

    ops: list[Any] = [v2.ToImage(), v2.Resize(tuple(size), antialias=True)]
    if train and jitter:
        ops.append(v2.ColorJitter(jitter, jitter, jitter, 0.0))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(ops)


def view_transforms(sizes: Mapping[str, tuple[int, int]], train: bool, jitter: float = 0.0) -> dict[str, Callable]:
    return {v: pair_transform(tuple(hw), train=train, jitter=jitter) for v, hw in sizes.items()}


class PairedViews(torch.utils.data.Dataset):
    """One-to-one pairs (CVUSA/CVACT) as fit expects them: item i → ({view: image}, pair label).

    Unlike `MultiViewPlaces`, each view has its own transform (panoramas are not square).
    """

    def __init__(self, items: Sequence[ImageItem], transforms: Mapping[str, Callable]) -> None:
        by_view = {v: {it.label: it for it in items if it.view == v} for v in transforms}
        self.labels = sorted(set.intersection(*(set(d) for d in by_view.values())))
        if not self.labels:
            raise ValueError(f"no pair has every view {list(transforms)}; is this a CVUSA-layout split?")
        self.by_view, self.transforms = by_view, dict(transforms)
        self.views = list(transforms)
        self.utm = np.full((len(self.labels), 2), np.nan)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], int]:
        lab = self.labels[i]
        return {v: self.transforms[v](load_image(self.by_view[v][lab].path)) for v in self.views}, lab


def cvusa_splits(ds: GeoDataset) -> tuple[str, str]:
    """(train split, evaluation split) of a CVUSA/CVACT-layout dataset: val when present, else test.

    CVUSA's and CVACT's released val splits are the splits their results are reported on, so the
    evaluation split is a test set: it is measured, never selected on.
    """
    splits = {it.split for it in ds.items}
    return "train", ("val" if "val" in splits else "test")


def _capped_pairs(items: Sequence[ImageItem]) -> list[ImageItem]:
    """A dry run's share of a pair split: every view of the first `dryrun.STEPS · BATCH` pairs."""
    from .. import dryrun

    keep = dryrun.label_cap([it.label for it in items], 4 * dryrun.STEPS * dryrun.BATCH)
    return list(items) if keep is None else [it for it in items if it.label in keep]


def evaluate_pairs(model: nn.Module, ds: GeoDataset, sizes: Mapping[str, tuple[int, int]],
                   split: str | None = None, query_view: str = "panorama", gallery_view: str = "satellite",
                   batch_size: int = 64, device: str = "cpu") -> "Result":
    """R@1/5/10/1% of panorama→satellite under the `cvusa` protocol (one true tile per query); on a
    VIGOR dataset, `hit_rate` too (`vigor-hit`: top-1 is the positive or a semi-positive).

    A `geolib.results.Result` (`result["R@1"]` reads a metric, as the older dict did); each view is
    embedded by `geolib.evaluation.embedding.embed` at its own size in `sizes` (`pair_transform`'s eval path)."""
    from .. import dryrun
    from ..data.transforms import Preprocess
    from ..evaluation.embedding import embed
    from ..evaluation.metrics import PROTOCOL_VIGOR, label_ranks, metrics_from_ranks, vigor_metrics
    from ..results import Result

    split = split or cvusa_splits(ds)[1]
    spec = Preprocess({v: tuple(hw) for v, hw in sizes.items()})
    q = dryrun.items(ds.select(view=query_view, split=split))
    g = dryrun.items(ds.select(view=gallery_view, split=split))
    if not q or not g:
        raise ValueError(f"split {split!r} has {len(q)} {query_view} and {len(g)} {gallery_view} images")
    qe = embed(model, q, view=query_view, preprocess=spec, batch_size=batch_size, device=device)
    ge = embed(model, g, view=gallery_view, preprocess=spec, batch_size=batch_size, device=device)
    common = dict(split=split, query_view=query_view, gallery_view=gallery_view, task="crossview",
                  preprocess=spec.to_dict(), info={"n_queries": len(q), "gallery_size": len(g)})
    if ds.format == "vigor":
        return Result(vigor_metrics(qe, ge, *vigor_truth(q, g)), PROTOCOL_VIGOR, **common)
    ranks = label_ranks(qe, labels_of(q), ge, labels_of(g))
    out = metrics_from_ranks(ranks, ks=(1, 5, 10))
    return Result({k: out[k] for k in ("R@1", "R@5", "R@10", "R@1%") if k in out}, PROTOCOL_CVUSA,
                  {"first_rank": np.asarray(ranks.first_rank)}, **common)


def vigor_truth(queries: Sequence[ImageItem], gallery: Sequence[ImageItem]) -> tuple[list[list[int]], list[list[int]]]:
    """Per panorama: gallery positions of its positive tile and of its semi-positives.

    `load_vigor` labels a tile with its own item index and a panorama with its positive's; the
    semi-positives are item indices too. Tiles outside `gallery` (a capped set) are left out.
    """
    where = {int(it.label): i for i, it in enumerate(gallery)}
    pos = [[where[int(it.label)]] if int(it.label) in where else [] for it in queries]
    semi = [[where[s] for s in it.meta.get("semi_positives", []) if s in where] for it in queries]
    return pos, semi


def train_safa(model: SAFAModel, ds: GeoDataset, cfg: "TrainConfig", out_dir: str | Path, *, alpha: float = 10.0,
               max_minutes: float | None = None, progress: bool = True, jitter: float = 0.0,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> "LoopResult":
    """SAFA's weighted soft-margin triplet (α=10) through `multiview.fit` (`geolib.training.loop`), on un-augmented
    pairs (`jitter`: optional photometric jitter). The kept (`best`) checkpoint is the last epoch's:
    the CVUSA/CVACT/VIGOR releases here have no validation split, so R@1 on the evaluation split (a
    test set) each `eval_every` epochs is only a curve to watch. `max_minutes` is an opt-in cap (the
    schedule stays over `cfg.epochs`). `cfg` is not modified. A dry run trains `dryrun` capped
    epochs, batches and pairs."""
    from .. import dryrun
    from .losses import SoftMarginTriplet
    from .multiview import fit

    cfg = replace(cfg, views=SAFA_VIEWS, epochs=dryrun.epochs(cfg.epochs), batch_size=dryrun.batch(cfg.batch_size))
    train_split, eval_split = cvusa_splits(ds)
    sizes = model.input_sizes()
    places = PairedViews(_capped_pairs(ds.select(split=train_split)), view_transforms(sizes, train=True, jitter=jitter))

    def watch(m: nn.Module, epoch: int) -> dict[str, float]:
        return {"panorama→satellite R@1": evaluate_pairs(m, ds, sizes, eval_split, device=cfg.device)["R@1"]}

    return fit(model, places, cfg, out_dir, SoftMarginTriplet(alpha), watch=watch,
               select_metric="last", progress=progress, max_minutes=max_minutes, on_epoch=on_epoch)


@register_model("safa")
def create_safa(weights: str | None = None, **options: Any) -> SAFAModel:
    """`geolib.models.create_model("safa", **model.config)` (`distill4geo.rebuild`)."""
    from .distill4geo import rebuild

    return rebuild(SAFAModel, weights, options)
