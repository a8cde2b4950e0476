"""SAFA: spatial-aware feature aggregation over polar-transformed aerial images (docs/reference.md).

The model keeps two branches that share no weight (panorama, satellite). The satellite branch
polar-transforms its square input inside `forward`, so any aerial tile can be passed as is, and the
polar switch is a model option that the ablation can turn off. Evaluation uses the `cvusa`
protocol, and on VIGOR also reports the hit rate (`vigor-hit`).

As published: ImageNet-initialised backbones (where the weights are found), no augmentation that
moves pixels (a panorama's columns are its bearings, aligned with the polar-transformed tile: a
crop, flip or rotation would break that), SA weights initialised so every head starts as a plain
spatial mean. CVUSA's and CVACT's evaluation split is the split results are reported on, so the
kept epoch is chosen on a validation split carved from the train pairs (`carve_validation`).

A CPU budget: on EfficientNet-Lite0 the branch can stop at a stage (`stage`, the SA map) and keep
its first stages frozen (`frozen_stages`). Their maps do not change during training, so
`train_safa` computes them once per image (`trunk_maps`) and trains only the rest on them: the same
model and loss, several times faster per epoch.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import GeoDataset, ImageItem, labels_of
from ..data.images import IMAGENET_MEAN, IMAGENET_STD, load_image
from ..models.layers import GeM
from ..models import register_model
from ..data.transforms import Preprocess, polar_transform

if TYPE_CHECKING:
    from ..results import Result
    from .loop import LoopResult
    from .multiview import TrainConfig

PROTOCOL_CVUSA = "cvusa"
SAFA_VIEWS = ("panorama", "satellite")
VAL_SPLIT = "safa-val"        # the split name of the validation pairs carved from the train pairs
SELECT_METRIC = "val R@1"     # what the kept epoch is chosen on (panorama→satellite, validation pairs)


SA_INPUTS = ("mean", "max")   # what the SA heads read of the map: its channel mean or channel max


class SpatialAwareAggregation(nn.Module):
    """K heads; per head: channel pooling → Linear(HW, HW/2) → Linear(HW/2, HW) → spatial weights.

    The descriptor of head k is Σ_space weights_k · features (C values); the K descriptors are
    concatenated (K·C) and L2-normalised. There is no activation between the two linears (SAFA).
    SAFA's initialisation (weights N(0, 0.005), biases 0.1) makes every head start as a near-uniform
    spatial mean, so a pretrained backbone's descriptor is usable from the first step.

    `sa_input`: the channel pooling the heads read, "mean" (the default) or "max" (SAFA's public
    code takes the channel max of the map).
    """

    def __init__(self, grid: tuple[int, int], heads: int = 8, sa_input: str = "mean") -> None:
        super().__init__()
        if sa_input not in SA_INPUTS:
            raise ValueError(f"unknown sa_input {sa_input!r}; choose {' or '.join(SA_INPUTS)}")
        hw = int(grid[0] * grid[1])
        self.heads, self.sa_input = heads, sa_input
        self.down = nn.ModuleList(nn.Linear(hw, max(1, hw // 2)) for _ in range(heads))
        self.up = nn.ModuleList(nn.Linear(max(1, hw // 2), hw) for _ in range(heads))
        for lin in [*self.down, *self.up]:
            nn.init.trunc_normal_(lin.weight, std=0.005, a=-0.01, b=0.01)
            nn.init.constant_(lin.bias, 0.1)

    def weights(self, x: Tensor) -> Tensor:
        """(B, K, HW) spatial weights of a (B, C, H, W) map."""
        pooled = (x.amax(dim=1) if self.sa_input == "max" else x.mean(dim=1)).flatten(1)  # (B, HW)
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


def _blockwise(backbone: nn.Module) -> bool:
    """Whether `backbone` is a stem + blocks network with known stage ends (EfficientNet-Lite0),
    which a branch can cut at a stage and split into a frozen trunk and a trained tail."""
    return all(hasattr(backbone, a) for a in ("stem", "blocks", "STAGE_ENDS"))


class SAFABranch(nn.Module):
    """Backbone feature map (last stage, or `stage`) → aggregation; input size fixed at build time
    because the SA linears are sized by the map's HW. `backbone`: a name (built with `pretrained`,
    see `distill4geo.pretrained_backbone`) or an already built multi-stage backbone.

    On a blockwise backbone (EfficientNet-Lite0) the blocks after `stage` are dropped (they would
    cost time and feed nothing), and the stem and the first `frozen_stages` stages form the frozen
    `trunk`, always in eval mode; `tail` is the rest. Other backbones have no trunk.
    """

    def __init__(self, backbone: str | nn.Module, input_hw: tuple[int, int], heads: int = 8, aggregation: str = "sa",
                 stage: int = -1, pretrained: bool | str = False, frozen_stages: int = 0,
                 frozen_blocks: int | None = None, sa_input: str = "mean") -> None:
        super().__init__()
        from .distill4geo import pretrained_backbone

        self.backbone = backbone if isinstance(backbone, nn.Module) else \
            pretrained_backbone(backbone, pretrained, log=lambda _: None)[0]
        self.stage, self.split, self.depth = stage, 0, 0
        if _blockwise(self.backbone):
            ends = tuple(self.backbone.STAGE_ENDS)
            if not -len(ends) <= stage < len(ends):
                raise ValueError(f"stage {stage}: this backbone has stages 0..{len(ends) - 1} (or -1, the last)")
            self.stage = stage % len(ends)
            if not 0 <= frozen_stages <= self.stage + 1:
                raise ValueError(f"frozen_stages {frozen_stages}: between 0 and {self.stage + 1} (the SA map's stage + 1)")
            self.depth = len(self.backbone.blocks)  # the drop-connect schedule of the whole network
            self.backbone.blocks = self.backbone.blocks[:ends[self.stage] + 1]
            self.split = ends[frozen_stages - 1] + 1 if frozen_stages else 0
            if frozen_blocks is not None:  # a finer cut: the stem and this many blocks
                if not 1 <= frozen_blocks <= len(self.backbone.blocks):
                    raise ValueError(f"frozen_blocks {frozen_blocks}: between 1 and {len(self.backbone.blocks)}")
                self.split = int(frozen_blocks)
            self.frozen_stages = frozen_stages
            for m in self.trunk_modules():
                m.requires_grad_(False)
        elif frozen_stages or frozen_blocks:
            raise ValueError(f"frozen_stages {frozen_stages} / frozen_blocks {frozen_blocks} need a backbone made of stem + blocks "
                             "(efficientnet-lite0); this one has no trunk to freeze: use frozen_stages 0")
        else:
            self.frozen_stages = 0
        with torch.no_grad():
            was = self.training
            self.eval()
            fmap = self.feature_map(torch.zeros(1, 3, *input_hw))
            self.train(was)
        self.channels, self.grid = int(fmap.shape[1]), (int(fmap.shape[2]), int(fmap.shape[3]))
        if aggregation == "sa":
            self.pool: nn.Module = SpatialAwareAggregation(self.grid, heads, sa_input)
            self.out_dim = heads * self.channels
        elif aggregation == "gem":
            self.pool, self.out_dim = GeMAggregation(), self.channels
        else:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose sa or gem")

    def trunk_modules(self) -> list[nn.Module]:
        if not self.split:
            return []
        return [self.backbone.stem, *self.backbone.blocks[:self.split]]

    def train(self, mode: bool = True) -> "SAFABranch":
        """Frozen stages stay in eval mode: their BatchNorm statistics are ImageNet's, as cached."""
        super().train(mode)
        for m in self.trunk_modules():
            m.eval()
        return self

    def _blocks(self, x: Tensor, start: int, stop: int) -> Tensor:
        rate = float(getattr(self.backbone, "drop_connect_rate", 0.0) or 0.0)
        for idx in range(start, stop):
            x = self.backbone.blocks[idx](x, drop_connect_rate=rate * idx / max(1, self.depth))
        return x

    def trunk(self, x: Tensor) -> Tensor:
        """The frozen stages' map of an input batch (the input itself when nothing is frozen)."""
        if not self.split:
            return x
        with torch.no_grad():
            return self._blocks(self.backbone.stem(x), 0, self.split)

    def tail(self, t: Tensor) -> Tensor:
        """The SA map of a `trunk` map: the trained stages."""
        if not _blockwise(self.backbone):
            return self.backbone(t)[self.stage]
        x = t if self.split else self.backbone.stem(t)
        return self._blocks(x, self.split, len(self.backbone.blocks))

    def feature_map(self, x: Tensor) -> Tensor:
        return self.tail(self.trunk(x))

    def head(self, t: Tensor) -> Tensor:
        """The embedding of a `trunk` map."""
        return self.pool(self.tail(t))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


class SAFAModel(nn.Module):
    """`forward(x, view)`: panorama (B,3,H,W) or satellite (B,3,S,S) → L2-normalised K·C embedding.

    `pretrained` (default "available": ImageNet weights where found offline, else random init and
    one line saying so; True: they must load) is looked up once for both branches;
    `config["weights"]` records where they came from. `stage` and `frozen_stages`: see `SAFABranch`;
    `sa_input` (what the SA heads read: channel "mean" or "max"): see `SpatialAwareAggregation`.
    """

    def __init__(self, backbone: str = "resnet10t", pano_hw: tuple[int, int] = (112, 616), sat_size: int = 256,
                 polar: bool = True, heads: int = 8, aggregation: str = "sa", stage: int = -1,
                 frozen_stages: int = 0, pretrained: bool | str = "available",
                 log: Callable[[str], None] = print, frozen_blocks: int | None = None,
                 sa_input: str = "mean") -> None:
        super().__init__()
        from .distill4geo import loaded_weights, pretrained_backbone

        self.pano_hw, self.sat_size, self.polar = tuple(pano_hw), int(sat_size), bool(polar)
        sat_hw = self.pano_hw if polar else (self.sat_size, self.sat_size)
        pano_net, self.weights = pretrained_backbone(backbone, pretrained, log=log)
        sat_net = pretrained_backbone(backbone, loaded_weights(pretrained, self.weights))[0]
        self.branches = nn.ModuleDict({
            "panorama": SAFABranch(pano_net, self.pano_hw, heads, aggregation, stage, frozen_stages=frozen_stages,
                                   frozen_blocks=frozen_blocks, sa_input=sa_input),
            "satellite": SAFABranch(sat_net, sat_hw, heads, aggregation, stage, frozen_stages=frozen_stages,
                                    frozen_blocks=frozen_blocks, sa_input=sa_input)})
        self.embed_dim = self.branches["panorama"].out_dim
        self.frozen_stages = int(frozen_stages) or int(bool(frozen_blocks))  # truthy: a trunk to cache
        self.config = {"name": "safa", "backbone": backbone, "pano_hw": list(self.pano_hw), "sat_size": self.sat_size,
                       "polar": self.polar, "heads": heads, "aggregation": aggregation, "stage": stage,
                       "frozen_stages": int(frozen_stages), "weights": self.weights, "sa_input": sa_input}
        if frozen_blocks is not None:
            self.config["frozen_blocks"] = int(frozen_blocks)

    def _branch(self, view: str) -> SAFABranch:
        if view not in self.branches:
            raise KeyError(f"unknown view {view!r}; SAFA has {', '.join(self.branches)}")
        return self.branches[view]  # type: ignore[return-value]

    def _input(self, x: Tensor, view: str) -> Tensor:
        return polar_transform(x, *self.pano_hw) if view == "satellite" and self.polar else x

    def forward(self, x: Tensor, view: str) -> Tensor:
        branch = self._branch(view)
        return branch(self._input(x, view))

    def trunk(self, x: Tensor, view: str) -> Tensor:
        """The frozen stages' map of a view's images (after the polar transform): what
        `train_safa` caches once per image."""
        return self._branch(view).trunk(self._input(x, view))

    def head(self, t: Tensor, view: str) -> Tensor:
        """The embedding of a `trunk` map; `head(trunk(x, v), v)` is `forward(x, v)`."""
        return self._branch(view).head(t)

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


def paired_labels(items: Sequence[ImageItem], views: Sequence[str] = SAFA_VIEWS) -> list[int]:
    """Labels that have an image in every view, sorted."""
    return sorted(set.intersection(*({it.label for it in items if it.view == v} for v in views)))


def carve_validation(ds: GeoDataset, share: float = 0.125, train_split: str = "train") -> tuple[GeoDataset, int]:
    """`ds` with the last `share` of its train pairs (by label) moved to split `VAL_SPLIT`, and how
    many pairs moved (0, `ds` unchanged, when fewer than 2 would, or fewer than 2 would stay).

    The last pairs by label, not a random draw: a CVUSA-layout export numbers its pairs region by
    region, so the validation pairs are whole regions apart from the training ones, as the test
    pairs are; a random draw would put each beside training pairs whose tiles overlap it.
    """
    labels = paired_labels([it for it in ds.items if it.split == train_split])
    n_val = int(round(share * len(labels))) if share > 0 else 0
    if n_val < 2 or len(labels) - n_val < 2:
        return ds, 0
    val = set(labels[-n_val:])
    items = [replace(it, split=VAL_SPLIT) if it.split == train_split and it.label in val else it for it in ds.items]
    return replace(ds, items=items), n_val


def _capped_pairs(items: Sequence[ImageItem]) -> list[ImageItem]:
    """A dry run's share of a pair split: every view of the first `dryrun.STEPS · BATCH` pairs."""
    from .. import dryrun

    keep = dryrun.label_cap([it.label for it in items], 4 * dryrun.STEPS * dryrun.BATCH)
    return list(items) if keep is None else [it for it in items if it.label in keep]


def evaluate_pairs(model: nn.Module, ds: GeoDataset, sizes: Mapping[str, tuple[int, int]],
                   split: str | None = None, query_view: str = "panorama", gallery_view: str = "satellite",
                   batch_size: int = 64, device: str = "cpu", maps: "TrunkMaps | None" = None) -> "Result":
    """R@1/5/10/1% of panorama→satellite under the `cvusa` protocol (one true tile per query); on a
    VIGOR dataset, `hit_rate` too (`vigor-hit`: top-1 is the positive or a semi-positive).

    A `geolib.results.Result` (`result["R@1"]` reads a metric, as the older dict did); each view is
    embedded by `geolib.evaluation.embedding.embed` at its own size in `sizes` (`pair_transform`'s eval path).
    With `maps`, a SAFA model with frozen stages at its own sizes embeds their kept maps instead
    (the same numbers: `head(trunk(x))` is `forward(x)`), computing only the missing ones."""
    from .. import dryrun
    from ..evaluation.embedding import embed
    from ..evaluation.metrics import PROTOCOL_VIGOR, label_ranks, metrics_from_ranks, vigor_metrics
    from ..results import Result

    split = split or cvusa_splits(ds)[1]
    spec = Preprocess({v: tuple(hw) for v, hw in sizes.items()})
    q = dryrun.items(ds.select(view=query_view, split=split))
    g = dryrun.items(ds.select(view=gallery_view, split=split))
    if not q or not g:
        raise ValueError(f"split {split!r} has {len(q)} {query_view} and {len(g)} {gallery_view} images")
    if maps is not None and getattr(model, "frozen_stages", 0) and spec == model.preprocess:
        qe, ge = (embed_maps(model, maps.get(model, items, v, device), v, device=device)
                  for items, v in ((q, query_view), (g, gallery_view)))
    else:
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


class _Trunk(nn.Module):
    """`model.trunk` as a view model, so trunk maps go through the one embedding path (`embed`)."""

    def __init__(self, model: SAFAModel) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # `embed` restores this mode on the model when it is done

    def forward(self, x: Tensor, view: str) -> Tensor:
        return self.model.trunk(x, view).flatten(1)


def trunk_maps(model: SAFAModel, items: Sequence[ImageItem], view: str, batch_size: int = 64,
               device: str = "cpu", num_workers: int = 0) -> Tensor:
    """(N, C, h, w) frozen-stage maps of `items` seen as `view`, at the model's input size: computed
    once, since the frozen stages (in eval mode) give every epoch the same map."""
    from ..evaluation.embedding import embed, input_format

    h, w = model.input_sizes()[view]
    with torch.no_grad():
        shape = model.trunk(torch.zeros(1, 3, h, w, device=device), view).shape[1:]
    # channels-last: the depthwise convolutions run 1.45x faster on one CPU thread (64x256 panoramas,
    # batch 64; same maps to 4e-5); the model goes back to the format it came in
    before = input_format(model)
    model.to(memory_format=torch.channels_last)
    try:
        flat = embed(_Trunk(model), list(items), view=view, preprocess=model.preprocess, batch_size=batch_size,
                     device=device, l2=False, num_workers=num_workers)
    finally:
        model.to(memory_format=before)
    return torch.from_numpy(flat).reshape(len(items), *shape)


class TrunkMaps:
    """Frozen-stage maps kept by (trunk, view input, image): rows that share a frozen trunk (ImageNet
    weights, the same input size; every polar row, and every row's panoramas) compute each image's
    map once per session, for training, validation and the evaluation split alike."""

    def __init__(self) -> None:
        self.maps: dict[tuple[str, str], Tensor] = {}

    @staticmethod
    def key(model: SAFAModel, view: str) -> str:
        """What decides a trunk map besides the image: the view's input and the trunk's weights."""
        import hashlib

        h = hashlib.sha1(f"{view}|{model.input_sizes()[view]}|{model.polar and view == 'satellite'}".encode())
        for mod in model.branches[view].trunk_modules():  # type: ignore[union-attr]
            for name, t in mod.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def get(self, model: SAFAModel, items: Sequence[ImageItem], view: str, device: str = "cpu",
            num_workers: int = 0) -> Tensor:
        key = self.key(model, view)
        missing = list({str(it.path): it for it in items if (key, str(it.path)) not in self.maps}.values())
        if missing:
            for it, m in zip(missing, trunk_maps(model, missing, view, device=device, num_workers=num_workers)):
                self.maps[(key, str(it.path))] = m
        return torch.stack([self.maps[(key, str(it.path))] for it in items])


def embed_maps(model: SAFAModel, maps: Tensor, view: str, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """(N, D) embeddings of trunk maps, in eval mode; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [model.head(maps[i:i + batch_size].to(device), view).float().cpu()
                   for i in range(0, len(maps), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32)


def _recall1(model: SAFAModel, maps: Mapping[str, Tensor], labels: Sequence[int], device: str) -> float:
    """Panorama→satellite R@1 of pairs given by their trunk maps (label i of both views at row i)."""
    from ..evaluation.metrics import label_ranks, recall_at

    q = embed_maps(model, maps["panorama"], "panorama", device=device)
    g = embed_maps(model, maps["satellite"], "satellite", device=device)
    return recall_at(label_ranks(q, labels, g, labels), 1)


def train_safa(model: SAFAModel, ds: GeoDataset, cfg: "TrainConfig", out_dir: str | Path, *, alpha: float = 10.0,
               val_share: float = 0.125, max_minutes: float | None = None, progress: bool = True,
               jitter: float = 0.0, on_epoch: Callable[[dict[str, Any]], None] | None = None,
               maps: TrunkMaps | None = None) -> "LoopResult":
    """SAFA's weighted soft-margin triplet (α=10) through the shared loop (`geolib.training.loop`), on
    un-augmented pairs (`jitter`: optional photometric jitter); on return `model` holds the kept epoch.

    The kept epoch is the one with the best panorama→satellite R@1 (`SELECT_METRIC`) on the
    validation pairs `carve_validation` takes from the train pairs (`val_share`); the evaluation
    split (`cvusa_splits`, a test set) is never read. Without enough train pairs to carve from (a
    dry run, a toy set), the last epoch is kept. `result.extra` says which epoch was kept, on what,
    and how many pairs trained and validated.

    A model with frozen stages and no jitter trains on their maps, computed once (`trunk_maps`), by
    `loop.run` (`maps`: a `TrunkMaps` shared with other rows); any other trains on images through
    `multiview.fit`. `max_minutes` is an opt-in cap
    (the schedule stays over `cfg.epochs`). `cfg` is not modified. A dry run trains `dryrun` capped
    epochs, batches and pairs.
    """
    from .. import dryrun
    from ..checkpoint import load_weights
    from .losses import SoftMarginTriplet

    cfg = replace(cfg, views=SAFA_VIEWS, epochs=dryrun.epochs(cfg.epochs), batch_size=dryrun.batch(cfg.batch_size))
    train_split = cvusa_splits(ds)[0]
    capped = replace(ds, items=_capped_pairs(ds.select(split=train_split)))
    carved, n_val = carve_validation(capped, val_share, train_split)
    train_items = carved.select(split=train_split)
    n_train = len(paired_labels(train_items))
    select = SELECT_METRIC if n_val else "last"
    cached = bool(getattr(model, "frozen_stages", 0)) and not jitter
    extra = {"select": select, "train_pairs": n_train, "val_pairs": n_val, "val_share": val_share,
             "trained_on": "trunk maps" if cached else "images"}
    if cached:
        res = _train_on_maps(model, carved, train_split, cfg, out_dir, SoftMarginTriplet(alpha), select,
                             max_minutes, progress, on_epoch, {"alpha": alpha, "val_share": val_share},
                             maps if maps is not None else TrunkMaps())
    else:
        res = _train_on_images(model, carved, train_split, cfg, out_dir, SoftMarginTriplet(alpha), select,
                               max_minutes, progress, jitter, on_epoch)
    if res.best_path is not None:
        kept = load_weights(res.best_path, model)
        extra["kept_epoch"] = int(kept["epoch"])
    else:  # a rank > 0 or an interrupted run: the model holds the last epoch trained
        extra["kept_epoch"] = res.epochs_done
    res.extra.update(extra)
    return res


def _train_on_images(model: SAFAModel, ds: GeoDataset, train_split: str, cfg: "TrainConfig", out_dir: str | Path,
                     loss: nn.Module, select: str, max_minutes: float | None, progress: bool, jitter: float,
                     on_epoch: Callable[[dict[str, Any]], None] | None) -> "LoopResult":
    from .multiview import fit

    sizes = model.input_sizes()
    places = PairedViews(ds.select(split=train_split), view_transforms(sizes, train=True, jitter=jitter))

    def validate(m: nn.Module, epoch: int) -> dict[str, float]:
        return {SELECT_METRIC: evaluate_pairs(m, ds, sizes, VAL_SPLIT, device=cfg.device)["R@1"]}

    return fit(model, places, cfg, out_dir, loss, evaluate=validate if select != "last" else None,
               select_metric=select, progress=progress, max_minutes=max_minutes, on_epoch=on_epoch)


def _train_on_maps(model: SAFAModel, ds: GeoDataset, train_split: str, cfg: "TrainConfig", out_dir: str | Path,
                   loss: nn.Module, select: str, max_minutes: float | None, progress: bool,
                   on_epoch: Callable[[dict[str, Any]], None] | None, settings: Mapping[str, Any],
                   maps: TrunkMaps) -> "LoopResult":
    from .loop import LoopConfig, run
    from .multiview import TrainConfig

    def maps_of(split: str) -> tuple[list[int], dict[str, Tensor]]:
        items = ds.select(split=split)
        labels = paired_labels(items)
        by_view = {v: {it.label: it for it in items if it.view == v} for v in SAFA_VIEWS}
        return labels, {v: maps.get(model, [by_view[v][lab] for lab in labels], v, device=cfg.device,
                                    num_workers=cfg.num_workers) for v in SAFA_VIEWS}

    model.to(cfg.device)
    train_labels, train_maps = maps_of(train_split)
    val_labels, val_maps = maps_of(VAL_SPLIT) if select != "last" else ([], {})
    n, batch = len(train_labels), min(cfg.batch_size, len(train_labels))
    if batch < 2:
        raise ValueError(f"{ds.root}: {n} training pair(s); the triplet loss needs at least 2 per batch")
    bundle = nn.ModuleDict({"model": model})

    def plan(epoch: int, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(n)
        return [order[i:i + batch] for i in range(0, n - batch + 1, batch)]

    def step(idx: np.ndarray, epoch: int) -> Tensor:
        rows = torch.as_tensor(idx, dtype=torch.long)
        emb = [model.head(train_maps[v][rows].to(cfg.device), v) for v in SAFA_VIEWS]
        return loss(*emb)

    def validate(_bundle: nn.Module, epoch: int) -> dict[str, float]:
        return {SELECT_METRIC: _recall1(model, val_maps, val_labels, cfg.device)}

    return run(bundle, step, plan, LoopConfig.of(cfg, select=select, max_minutes=max_minutes), out_dir,
               evaluate=validate if select != "last" else None, settings={**cfg.to_dict(), **settings},
               settings_defaults=TrainConfig().to_dict(), on_epoch=on_epoch, progress=progress)


@register_model("safa")
def create_safa(weights: str | None = None, **options: Any) -> SAFAModel:
    """`geolib.models.create_model("safa", **model.config)` (`distill4geo.rebuild`)."""
    from .distill4geo import rebuild

    return rebuild(SAFAModel, weights, options)
