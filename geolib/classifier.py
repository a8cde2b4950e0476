"""Hierarchical region → place classifier on frozen embeddings (the seed project's Phase 2).

A region head predicts the region (University-1652's university, the synthetic world's region);
a place head predicts the place either conditioned on the region (it sees the region head's
probabilities beside the embedding) or masked by the predicted region (places of other regions
are ruled out at inference). Heads are plain softmax or margin heads (CosFace, ArcFace).

A classifier cannot name a region it never saw, and University-1652's test universities are
unseen. So two tasks are reported, each under its own protocol:
- `closed-set`: held-out images of the train regions, scored by the classifier;
- `open-set`: unseen regions, solved by nearest-neighbour retrieval of region (and place)
  prototypes, the mean embedding of each region's reference images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vpr_train import ClassHead, TrainResult, topk_hits, train

PROTOCOL_CLOSED = "closed-set"
PROTOCOL_OPEN = "open-set"
PLACE_MODES = ("conditioned", "masked")


@dataclass
class HierarchicalConfig:
    head: str = "softmax"  # softmax | cosface | arcface
    place_mode: str = "conditioned"  # conditioned | masked
    hidden: int | None = None  # a small trainable adapter on the frozen embeddings
    scale: float | None = None
    margin: float | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2
    encoder_lr: float = 1e-5  # when fine-tuning an encoder
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HierarchicalClassifier(nn.Module):
    """`encoder` (optional, fine-tuned) → adapter (optional) → region head and place head."""

    def __init__(self, dim: int, place_region: Sequence[int], cfg: HierarchicalConfig,
                 encoder: nn.Module | None = None) -> None:
        super().__init__()
        if cfg.place_mode not in PLACE_MODES:
            raise ValueError(f"place_mode must be one of {PLACE_MODES}, got {cfg.place_mode!r}")
        self.place_mode = cfg.place_mode
        self.register_buffer("place_region", torch.as_tensor(np.asarray(place_region), dtype=torch.long))
        self.num_regions = int(self.place_region.max()) + 1 if len(self.place_region) else 0
        self.encoder = encoder
        self.adapter = (nn.Sequential(nn.Linear(dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden))
                        if cfg.hidden else nn.Identity())
        width = cfg.hidden or dim
        self.region_head = ClassHead(width, self.num_regions, cfg.head, cfg.scale, cfg.margin)
        place_in = width + self.num_regions if self.place_mode == "conditioned" else width
        self.place_head = ClassHead(place_in, len(self.place_region), cfg.head, cfg.scale, cfg.margin)

    def embed(self, x: Tensor) -> Tensor:
        return self.adapter(self.encoder(x) if self.encoder is not None else x)

    def _place_input(self, f: Tensor, region_logits: Tensor) -> Tensor:
        if self.place_mode == "masked":
            return f
        return torch.cat([f, region_logits.softmax(-1).detach()], dim=-1)

    def loss(self, x: Tensor, region: Tensor, place: Tensor) -> Tensor:
        f = self.embed(x)
        region_logits = self.region_head.logits(f)
        return self.region_head(f, region) + self.place_head(self._place_input(f, region_logits), place)

    @torch.no_grad()
    def scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(region scores, place scores); in masked mode places outside the predicted region −inf."""
        f = self.embed(x)
        region = self.region_head.logits(f)
        place = self.place_head.logits(self._place_input(f, region))
        if self.place_mode == "masked":
            allowed = self.place_region[None, :] == region.argmax(1, keepdim=True)
            place = place.masked_fill(~allowed, float("-inf"))
        return region, place


def place_regions(region: np.ndarray, place: np.ndarray) -> np.ndarray:
    """Region of each place id 0..P−1; a place in two regions is a labelling error."""
    region, place = np.asarray(region, np.int64), np.asarray(place, np.int64)
    out = np.full(place.max() + 1, -1, np.int64)
    for r, p in set(zip(region.tolist(), place.tolist())):
        if out[p] not in (-1, r):
            raise ValueError(f"place {p} appears in regions {out[p]} and {r}; places must nest in regions")
        out[p] = r
    if (out < 0).any():
        raise ValueError(f"place ids {np.flatnonzero(out < 0).tolist()[:10]} have no image; use contiguous ids")
    return out


def closed_set_split(place: np.ndarray, test_share: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices holding out ~`test_share` of each place's images; every place keeps
    at least one training image, so the closed-set test only asks about known classes."""
    rng = np.random.default_rng(seed)
    place = np.asarray(place)
    train_idx, test_idx = [], []
    for p in np.unique(place):
        idx = rng.permutation(np.flatnonzero(place == p))
        n_test = min(len(idx) - 1, int(round(test_share * len(idx))))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def fit_hierarchical(features: np.ndarray | Tensor, region: np.ndarray, place: np.ndarray,
                     cfg: HierarchicalConfig | None = None, encoder: nn.Module | None = None,
                     out_dir: str | Path | None = None, progress: bool = True) -> tuple[HierarchicalClassifier, TrainResult]:
    """Train on (N, D) frozen embeddings (or, with `encoder`, its inputs, fine-tuned at
    `encoder_lr`). Region and place ids are contiguous from 0."""
    cfg = cfg or HierarchicalConfig()
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
    x = x.float() if x.is_floating_point() else x
    y_region = torch.as_tensor(np.asarray(region), dtype=torch.long)
    y_place = torch.as_tensor(np.asarray(place), dtype=torch.long)
    torch.manual_seed(cfg.seed)
    dim = x.shape[1] if encoder is None else _encoder_dim(encoder, x[:1])
    model = HierarchicalClassifier(dim, place_regions(region, place), cfg, encoder).to(cfg.device)
    heads = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": heads, "lr": cfg.lr}]
    if encoder is not None:
        groups.append({"params": [p for p in encoder.parameters() if p.requires_grad], "lr": cfg.encoder_lr})

    def plan(epoch: int, rng: np.random.Generator):
        order = rng.permutation(len(x))
        return [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    def step(index: np.ndarray, epoch: int) -> Tensor:
        i = torch.as_tensor(index)
        return model.loss(x[i].to(cfg.device), y_region[i].to(cfg.device), y_place[i].to(cfg.device))

    result = train(model, groups, step, plan, cfg.epochs, seed=cfg.seed, out_dir=out_dir,
                   config=cfg.to_dict(), desc="hierarchical", progress=progress)
    return model.eval(), result


@torch.no_grad()
def _encoder_dim(encoder: nn.Module, sample: Tensor) -> int:
    was = encoder.training
    encoder.eval()
    dim = encoder(sample).shape[-1]
    encoder.train(was)
    return int(dim)


@dataclass
class ClassificationResult:
    metrics: dict[str, float]
    region_pred: np.ndarray
    place_pred: np.ndarray
    confusion: np.ndarray


def evaluate_closed_set(model: HierarchicalClassifier, features: np.ndarray | Tensor, region: np.ndarray,
                        place: np.ndarray, batch_size: int = 1024, device: str = "cpu") -> ClassificationResult:
    """Region top-1/top-3 and place top-1/top-5 in percent, with the region confusion matrix."""
    model = model.to(device).eval()
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
    # an empty held-out set (every place has a single image) scores 0 rather than crashing
    parts = [model.scores(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)] or \
        [(torch.zeros(0, model.num_regions), torch.zeros(0, len(model.place_region)))]
    r = torch.cat([p[0] for p in parts]).cpu().numpy()
    p = torch.cat([p[1] for p in parts]).cpu().numpy()
    return _result(r, p, np.asarray(region), np.asarray(place), model.num_regions)


def _result(region_scores: np.ndarray, place_scores: np.ndarray, region: np.ndarray, place: np.ndarray,
            num_regions: int) -> ClassificationResult:
    from sklearn.metrics import confusion_matrix

    rk, pk = topk_hits(region_scores, region, (1, 3)), topk_hits(place_scores, place, (1, 5))
    metrics = {"region_top1": rk[1], "region_top3": rk[3], "place_top1": pk[1], "place_top5": pk[5],
               "region_chance": 100.0 / max(1, num_regions)}
    region_pred = region_scores.argmax(1) if len(region) else np.zeros(0, np.int64)
    confusion = (confusion_matrix(region, region_pred, labels=np.arange(num_regions)) if len(region)
                 else np.zeros((num_regions, num_regions), np.int64))
    return ClassificationResult(metrics, region_pred, place_scores.argmax(1) if len(place) else region_pred, confusion)


def prototypes(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted label ids, L2-normalised mean of each label's L2-normalised embeddings)."""
    emb = F.normalize(torch.as_tensor(np.asarray(emb), dtype=torch.float32), dim=-1).numpy()
    ids, inverse = np.unique(np.asarray(labels), return_inverse=True)
    sums = np.zeros((len(ids), emb.shape[1]), np.float64)
    np.add.at(sums, inverse.reshape(-1), emb)
    return ids, (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def evaluate_open_set(ref_emb: np.ndarray, ref_region: np.ndarray, ref_place: np.ndarray,
                      query_emb: np.ndarray, query_region: np.ndarray, query_place: np.ndarray) -> ClassificationResult:
    """Unseen regions: rank region and place prototypes (built from the reference images) by
    cosine to each query. A query whose region or place has no reference image is a miss."""
    region_ids, region_protos = prototypes(ref_emb, ref_region)
    place_ids, place_protos = prototypes(ref_emb, ref_place)
    q = F.normalize(torch.as_tensor(np.asarray(query_emb), dtype=torch.float32), dim=-1).numpy()
    r_scores, p_scores = _with_missing(q @ region_protos.T), _with_missing(q @ place_protos.T)
    r_lab = _local(region_ids, query_region, len(region_ids))
    p_lab = _local(place_ids, query_place, len(place_ids))
    res = _result(r_scores, p_scores, r_lab, p_lab, len(region_ids) + 1)
    res.metrics["region_chance"] = 100.0 / max(1, len(region_ids))
    res.region_pred = region_ids[res.region_pred.clip(max=len(region_ids) - 1)]
    res.place_pred = place_ids[res.place_pred.clip(max=len(place_ids) - 1)]
    res.confusion = res.confusion[:len(region_ids), :len(region_ids)]
    return res


def _with_missing(scores: np.ndarray) -> np.ndarray:
    """Append a −inf column: the label of queries whose class has no prototype (always a miss)."""
    return np.concatenate([scores, np.full((len(scores), 1), -np.inf, scores.dtype)], axis=1)


def _local(ids: np.ndarray, labels: np.ndarray, missing: int) -> np.ndarray:
    pos = np.searchsorted(ids, labels).clip(max=max(len(ids) - 1, 0))
    return np.where(ids[pos] == labels, pos, missing) if len(ids) else np.full(len(labels), missing)


def write_classification_record(source: str, metrics: dict[str, float], *, protocol: str, dataset: str,
                                profile: str, seed: int | None, model: str = "hierarchical",
                                split: str = "test", query_view: str | None = None,
                                config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A `classification` record under `closed-set` or `open-set`."""
    from .records import write_record

    if protocol not in (PROTOCOL_CLOSED, PROTOCOL_OPEN):
        raise ValueError(f"protocol must be {PROTOCOL_CLOSED!r} or {PROTOCOL_OPEN!r}, got {protocol!r}")
    return write_record(source, task="classification", protocol=protocol, dataset=dataset, split=split,
                        query_view=query_view, gallery_view=None, model=model, metrics=metrics,
                        profile=profile, seed=seed, config=config, **extra)
