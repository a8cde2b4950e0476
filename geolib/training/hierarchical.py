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

Regions are not part of every dataset: real University-1652 names buildings, not regions, unless a
building → region CSV is supplied. `region_labels` returns None then, so a caller can skip this
classifier with a message. A trained classifier is saved with its region and place id maps
(`save_hierarchical`, safetensors + JSON) and reloaded without its training embeddings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import register_loader, register_model
from ..results import Result, per_query_field
from .groups import (ClassHead, LoopOptions, loaded_result, rank_rows, read_model_files, run_training, save_model_files,
                     saved_model_state, topk_hits, training_settings)
from .loop import LoopResult

PROTOCOL_CLOSED = "closed-set"
PROTOCOL_OPEN = "open-set"
PLACE_MODES = ("conditioned", "masked")


@dataclass
class HierarchicalConfig(LoopOptions):
    """The classifier's settings; the loop's optimisation fields come from `LoopOptions` (what this
    classifier was tuned with: Adam, no schedule)."""

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
        self.dim = int(dim)
        self.register_buffer("place_region", torch.as_tensor(np.asarray(place_region), dtype=torch.long))
        self.num_regions = int(self.place_region.max()) + 1 if len(self.place_region) else 0
        self.encoder = encoder
        self.adapter = (nn.Sequential(nn.Linear(dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden))
                        if cfg.hidden else nn.Identity())
        width = cfg.hidden or dim
        self.region_head = ClassHead(width, self.num_regions, cfg.head, cfg.scale, cfg.margin)
        place_in = width + self.num_regions if self.place_mode == "conditioned" else width
        self.place_head = ClassHead(place_in, len(self.place_region), cfg.head, cfg.scale, cfg.margin)
        # what `geolib.models.create_model(**config)` needs to rebuild it; a fine-tuned encoder is
        # rebuilt from its own config when it has one (a registered model), else it must be passed
        self.config: dict[str, Any] = {
            "name": "hierarchical", "dim": self.dim, "place_region": self.place_region.tolist(),
            **{k: getattr(cfg, k) for k in MODEL_FIELDS},
            "with_encoder": encoder is not None, "encoder": getattr(encoder, "config", None)}

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


MODEL_FIELDS = ("head", "place_mode", "hidden", "scale", "margin")  # the config fields that shape the network


@register_model("hierarchical")
def hierarchical(dim: int, place_region: Sequence[int], encoder: nn.Module | Mapping[str, Any] | None = None,
                 with_encoder: bool = False, **options: Any) -> HierarchicalClassifier:
    """The classifier by name (`HierarchicalClassifier.config`), so `geolib.models.load_model`
    rebuilds it; `encoder` is a module, or the config of a registered one."""
    from ..models import rebuild_model

    unknown = sorted(set(options) - set(MODEL_FIELDS))
    if unknown:
        raise ValueError(f"hierarchical: unknown option(s) {unknown}; the network takes {', '.join(MODEL_FIELDS)}")
    if isinstance(encoder, Mapping):
        encoder = rebuild_model(encoder, "hierarchical encoder")
    if with_encoder and encoder is None:
        raise ValueError("hierarchical: this classifier was fine-tuned with an encoder that records no config; "
                         "build it with create_model('hierarchical', ..., encoder=<that encoder>)")
    return HierarchicalClassifier(dim, place_region, HierarchicalConfig(**options), encoder)


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
                     out_dir: str | Path | None = None, progress: bool = True,
                     region_ids: Sequence[Any] | None = None, place_ids: Sequence[Any] | None = None,
                     settings: dict[str, Any] | None = None) -> tuple[HierarchicalClassifier, LoopResult]:
    """Train on (N, D) frozen embeddings (or, with `encoder`, its inputs, fine-tuned at
    `encoder_lr`). Region and place ids are contiguous from 0.

    With `out_dir`, training resumes from `out_dir/last` and the classifier is saved there
    (`save_hierarchical`, with `region_ids` / `place_ids`: the dataset's id of each local index);
    a folder of other settings (config, labels, and `settings` such as the encoder's name) is
    refused. More epochs in the same folder continue the run."""
    cfg = cfg or HierarchicalConfig()
    full = hierarchical_settings(features, region, place, cfg, **(settings or {}))
    state = saved_model_state(out_dir, "hierarchical", full)
    return _fit_and_save(features, region, place, cfg, encoder, None if state == "nosave" else out_dir, progress,
                         region_ids, place_ids, full)


def hierarchical_settings(features: np.ndarray | Tensor, region: np.ndarray, place: np.ndarray,
                          cfg: HierarchicalConfig, **extra: Any) -> dict[str, Any]:
    """What decides a trained classifier: its config, the labels it learnt (a hash) and the
    embeddings' shape; `extra` names what the labels cannot show (the encoder)."""
    import hashlib

    labels = np.stack([np.asarray(region, np.int64), np.asarray(place, np.int64)])
    data = {"images": int(len(labels[0])), "dim": int(np.shape(features)[1]) if len(np.shape(features)) > 1 else None,
            "labels": hashlib.sha256(labels.tobytes()).hexdigest()[:16]}
    return training_settings(cfg.to_dict(), data=data, **extra)


def load_or_fit_hierarchical(features: np.ndarray | Tensor, region: np.ndarray, place: np.ndarray,
                             cfg: HierarchicalConfig, out_dir: str | Path, region_ids: Sequence[Any] | None = None,
                             place_ids: Sequence[Any] | None = None, settings: dict[str, Any] | None = None,
                             progress: bool = False) -> tuple[HierarchicalClassifier, LoopResult]:
    """The classifier saved in `out_dir` when trained with these settings and labels (one printed
    line, no training), else `fit_hierarchical(..., out_dir=out_dir)`; other settings are refused."""
    full = hierarchical_settings(features, region, place, cfg, **(settings or {}))
    state = saved_model_state(out_dir, "hierarchical", full)  # checked once: it prints what it decides
    if state == "load":
        print(f"hierarchical: loading {out_dir} (trained with these settings); delete it to retrain")
        saved = load_hierarchical(out_dir, cfg.device)
        return saved.model, loaded_result(saved.history, out_dir)
    return _fit_and_save(features, region, place, cfg, None, None if state == "nosave" else out_dir, progress,
                         region_ids, place_ids, full)


def _fit_and_save(features: np.ndarray | Tensor, region: np.ndarray, place: np.ndarray, cfg: HierarchicalConfig,
                  encoder: nn.Module | None, out_dir: str | Path | None, progress: bool,
                  region_ids: Sequence[Any] | None, place_ids: Sequence[Any] | None,
                  settings: dict[str, Any]) -> tuple[HierarchicalClassifier, LoopResult]:
    """Train (resuming `out_dir/last`), then save to `out_dir` when given; the caller checked the folder."""
    model, result = _fit(features, region, place, cfg, encoder, out_dir, progress, settings)
    if out_dir is not None:
        save_hierarchical(model, out_dir, region_ids, place_ids, cfg, result.history, settings)
    return model, result


def _fit(features: np.ndarray | Tensor, region: np.ndarray, place: np.ndarray, cfg: HierarchicalConfig,
         encoder: nn.Module | None, out_dir: str | Path | None, progress: bool,
         settings: dict[str, Any]) -> tuple[HierarchicalClassifier, LoopResult]:
    from .. import dryrun

    batch_size = dryrun.batch(cfg.batch_size)
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
        return [rank_rows(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]

    def step(index: np.ndarray, epoch: int) -> Tensor:
        i = torch.as_tensor(index)
        return model.loss(x[i].to(cfg.device), y_region[i].to(cfg.device), y_place[i].to(cfg.device))

    result = run_training(model, groups, step, plan, cfg, settings, out_dir, desc="hierarchical", progress=progress)
    return model.eval(), result


# --------------------------------------------------------------------------- regions, saving, loading

def region_labels(items: Sequence[Any], regions_csv: str | Path | None = None) -> np.ndarray | None:
    """Each item's region, or None when the items carry none (real University-1652 names
    buildings only), so the caller can skip the hierarchical classifier with a message.

    `regions_csv` (columns `label` — or building/place/id — and `region`) maps each item's label
    (building id) to a region; without it, `item.meta["region"]` is read. Integer-looking regions
    come back as int64, others as strings. Some items with a region and some without is an error.
    """
    items = list(items)
    if regions_csv is not None:
        mapping = _read_regions_csv(Path(regions_csv))
        missing = sorted({it.label for it in items if it.label not in mapping}, key=str)
        if missing:
            raise ValueError(f"{regions_csv}: no region for {len(missing)} label(s) of the images, e.g. "
                             f"{missing[:10]}; add a row (label,region) for each building")
        values = [mapping[it.label] for it in items]
    else:
        values = [(it.meta or {}).get("region") for it in items]
        values = [None if v is None or (isinstance(v, str) and not v.strip()) else v for v in values]
        absent = [it for it, v in zip(items, values) if v is None]
        if len(absent) == len(items):
            return None
        if absent:
            raise ValueError(f"{len(absent)} of {len(items)} images carry no region (first: {absent[0].path}); "
                             "give every building a region (locations.csv's region column, or a regions CSV)")
    try:
        return np.array([int(v) for v in values], np.int64)
    except (TypeError, ValueError):
        return np.array([str(v) for v in values])


def _read_regions_csv(path: Path) -> dict[Any, Any]:
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path}: regions CSV not found; give a CSV with columns label,region "
                                "(one row per building id)")
    table = pd.read_csv(path, dtype=str)
    cols = {c.strip().lower(): c for c in table.columns}
    key = next((cols[c] for c in ("label", "building", "place", "id", "class") if c in cols), None)
    if key is None or "region" not in cols:
        raise ValueError(f"{path}: columns {list(table.columns)}; expected a building column (label, building, "
                         "place or id) and a region column")
    out: dict[Any, Any] = {}
    for raw, region in zip(table[key], table[cols["region"]]):
        raw = str(raw).strip()
        out[int(raw) if raw.isdigit() else raw] = str(region).strip()
    return out


class _HeadParts(nn.Module):
    """The trained part of a classifier (adapter, heads, place → region map), without the
    encoder, which has its own checkpoint."""

    def __init__(self, model: HierarchicalClassifier) -> None:
        super().__init__()
        self.adapter, self.region_head, self.place_head = model.adapter, model.region_head, model.place_head
        self.register_buffer("place_region", model.place_region)


def save_hierarchical(model: HierarchicalClassifier, out_dir: str | Path, region_ids: Sequence[Any] | None = None,
                      place_ids: Sequence[Any] | None = None, config: HierarchicalConfig | dict[str, Any] | None = None,
                      history: list[dict[str, Any]] | None = None, settings: dict[str, Any] | None = None) -> Path:
    """`out_dir/model.safetensors` + `model.json`: the heads and adapter, the embedding width, the
    config, and the dataset ids of local regions and places (`region_ids[r]`, `place_ids[p]`)."""
    config = config.to_dict() if isinstance(config, HierarchicalConfig) else dict(config or {})
    n_regions, n_places = model.num_regions, len(model.place_region)
    region_ids = list(range(n_regions)) if region_ids is None else np.asarray(region_ids).tolist()
    place_ids = list(range(n_places)) if place_ids is None else np.asarray(place_ids).tolist()
    if len(region_ids) != n_regions or len(place_ids) != n_places:
        raise ValueError(f"{len(region_ids)} region ids and {len(place_ids)} place ids for a classifier of "
                         f"{n_regions} regions and {n_places} places; give one id per local index")
    settings = settings if settings is not None else training_settings(config)
    return save_model_files(out_dir, _HeadParts(model), "hierarchical", dim=model.dim,
                            place_region=model.place_region.tolist(), region_ids=region_ids, place_ids=place_ids,
                            config=config, history=history or [], settings=settings,
                            encoder_saved=False, with_encoder=model.encoder is not None)


@dataclass
class SavedHierarchical:
    """A reloaded classifier with the dataset ids of its local regions and places."""

    model: HierarchicalClassifier
    region_ids: np.ndarray
    place_ids: np.ndarray
    config: HierarchicalConfig
    history: list[dict[str, Any]] = field(default_factory=list)


def load_hierarchical(out_dir: str | Path, device: str = "cpu", encoder: nn.Module | None = None) -> SavedHierarchical:
    """The classifier `save_hierarchical` wrote, in eval mode; pass the `encoder` it was trained
    with if it was fine-tuned with one (the file holds the heads only)."""
    meta, state = read_model_files(out_dir, "hierarchical")
    if meta.get("with_encoder") and encoder is None:
        raise ValueError(f"{out_dir}: this classifier was trained with an encoder, which is saved apart; "
                         "pass it as load_hierarchical(..., encoder=...)")
    known = {k: v for k, v in meta.get("config", {}).items() if k in HierarchicalConfig.__dataclass_fields__}
    cfg = HierarchicalConfig(**{**known, "device": device})
    model = HierarchicalClassifier(int(meta["dim"]), meta["place_region"], cfg, encoder)
    _HeadParts(model).load_state_dict(state)
    return SavedHierarchical(model.to(device).eval(), np.asarray(meta["region_ids"]), np.asarray(meta["place_ids"]),
                             cfg, list(meta.get("history", [])))


@torch.no_grad()
def _encoder_dim(encoder: nn.Module, sample: Tensor) -> int:
    was = encoder.training
    encoder.eval()
    dim = encoder(sample).shape[-1]
    encoder.train(was)
    return int(dim)


class ClassificationResult(Result):
    """Region/place top-k under `closed-set` or `open-set` (a `geolib.results.Result`): per query the
    predicted region and place; the region `confusion` matrix beside them."""

    region_pred = per_query_field("region_pred", "(Q,) predicted region id")
    place_pred = per_query_field("place_pred", "(Q,) predicted place id")

    def __init__(self, metrics: dict[str, float], region_pred: np.ndarray, place_pred: np.ndarray,
                 confusion: np.ndarray, protocol: str | None = None, **fields: Any) -> None:
        fields.setdefault("task", "classification")
        super().__init__(metrics, protocol, {"region_pred": region_pred, "place_pred": place_pred}, **fields)
        self.confusion = confusion


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
    res = _result(r, p, np.asarray(region), np.asarray(place), model.num_regions)
    res.protocol = PROTOCOL_CLOSED
    return res


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
    res.protocol = PROTOCOL_OPEN
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
                                config: dict[str, Any] | None = None, result: Result | None = None,
                                **extra: Any) -> dict[str, Any]:
    """A `classification` record under `closed-set` or `open-set` (`geolib.results.record`)."""
    from ..results import record

    if protocol not in (PROTOCOL_CLOSED, PROTOCOL_OPEN):
        raise ValueError(f"protocol must be {PROTOCOL_CLOSED!r} or {PROTOCOL_OPEN!r}, got {protocol!r}")
    return record(result or Result(metrics, protocol), source=source, task="classification", protocol=protocol,
                  dataset=dataset, split=split, views=(query_view, None), model=model, metrics=metrics,
                  profile=profile, seed=seed, config=config, **extra)


register_loader("hierarchical", load_hierarchical)
