"""Notebook 03's Part C: SAFA rows on a CVUSA-, CVACT- or VIGOR-layout dataset.

Each row changes one thing against `C/safa-polar` (SA aggregation with `safa_heads` heads on the
polar-transformed tile): `C/safa-raw` turns the polar transform off, `C/gem-polar` swaps SA for GeM,
`C/safa-polar-k<K>` uses K heads. Every row trains through `train_safa` (the shared loop, the kept
epoch chosen on validation pairs carved from the train pairs), is measured once on the evaluation
split, and leaves a row JSON (`RowRunner`: a rerun with the same settings skips it) and a metrics
record with its protocol, cost and training facts (kept epoch, pairs, seconds).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..training.distill4geo import RowRunner
from .ablation import SOURCE

_MAPS: dict[str, Any] = {}  # the session's `TrunkMaps`: rows on one frozen trunk compute each image's map once


def part_c_rows(heads: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Row name → the SAFA options it changes: polar vs raw, SA vs GeM, and one row per head count
    in `heads` (the main rows use the profile's `safa_heads`)."""
    rows: dict[str, dict[str, Any]] = {"C/safa-polar": {"polar": True}, "C/safa-raw": {"polar": False},
                                       "C/gem-polar": {"polar": True, "aggregation": "gem"}}
    rows.update({f"C/safa-polar-k{k}": {"polar": True, "heads": int(k)} for k in heads})
    return rows


def safa_options(cfg: Mapping[str, Any], changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `SAFAModel` options of a row: the profile's `safa_*` settings, then the row's changes."""
    return {"backbone": cfg["safa_backbone"], "pano_hw": tuple(cfg["pano_hw"]), "sat_size": int(cfg["sat_size"]),
            "heads": int(cfg["safa_heads"]), "aggregation": "sa", "stage": int(cfg["safa_stage"]),
            "frozen_stages": int(cfg["safa_frozen_stages"]), "frozen_blocks": cfg.get("safa_frozen_blocks"),
            "sa_input": str(cfg.get("safa_sa_input", "mean")), **dict(changes or {})}


def safa_train_config(cfg: Mapping[str, Any]) -> Any:
    """The loop settings of every SAFA row (one schedule for all, so rows differ only in their change)."""
    from ..training.multiview import TrainConfig

    epochs = int(cfg["safa_epochs"])
    return TrainConfig(views=("panorama", "satellite"), epochs=epochs, batch_size=int(cfg["safa_batch_size"]),
                       lr=float(cfg["safa_lr"]), weight_decay=float(cfg.get("safa_weight_decay", 0.0)),
                       # a pretrained block steps at a tenth of the lr of the freshly initialised SA heads
                       warmup=0.1, backbone_lr_scale=float(cfg.get("safa_backbone_lr_scale", 0.1)),
                       device=cfg["device"], seed=int(cfg["seed"]), resume=False,
                       num_workers=int(cfg.get("num_workers") or 0))


def run_safa_row(name: str, changes: Mapping[str, Any], ds: Any, cfg: Mapping[str, Any], out: Path,
                 runner: RowRunner, dataset: str) -> dict[str, Any]:
    """Train one SAFA variant on a CVUSA- or CVACT-layout dataset (VIGOR too); R@1/5/10/1% on the
    evaluation split (protocol `cvusa`, or `vigor-hit` with the hit rate on VIGOR), cost, and the
    training facts (`kept_epoch`, `select`, `train_pairs`, `val_pairs`, `train_seconds`).

    `cfg["safa_pretrained"]` (default "available"): ImageNet-initialised backbones where the weights
    are found; where they came from is part of the row's config, so a rerun with other weights
    never reuses the row.
    """
    from ..evaluation.cost import model_cost
    from ..evaluation.metrics import PROTOCOL_VIGOR
    from ..results import record
    from ..training.distill4geo import loaded_weights, weights_status
    from ..training.safa import PROTOCOL_CVUSA, SAFAModel, TrunkMaps, cvusa_splits, evaluate_pairs, train_safa

    pretrained = cfg.get("safa_pretrained", "available")
    opts = safa_options(cfg, changes)
    weights = weights_status(opts["backbone"], pretrained)
    eval_split = cvusa_splits(ds)[1]
    tc = safa_train_config(cfg)
    jitter = float(cfg.get("safa_jitter", 0.0))
    row_cfg = {"row": name, **opts, "pano_hw": list(opts["pano_hw"]), "epochs": tc.epochs,
               "batch_size": tc.batch_size, "lr": tc.lr, "weight_decay": tc.weight_decay,
               "backbone_lr_scale": tc.backbone_lr_scale, "minutes": cfg.get("minutes_per_row"),
               "dataset": dataset, "seed": tc.seed, "weights": weights, "select": "val R@1", "jitter": jitter}

    def run() -> dict[str, Any]:
        maps = _MAPS.setdefault("maps", TrunkMaps())
        torch.manual_seed(tc.seed)
        model = SAFAModel(**opts, pretrained=loaded_weights(pretrained, weights))
        t0 = time.perf_counter()
        res = train_safa(model, ds, tc, out / name.replace("/", "_"), max_minutes=cfg.get("minutes_per_row"),
                         progress=False, jitter=jitter, maps=maps)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = evaluate_pairs(model, ds, model.input_sizes(), eval_split, device=tc.device, maps=maps)
        eval_s = time.perf_counter() - t0
        metrics = dict(result.metrics)
        cost = model_cost(model, tuple(opts["pano_hw"]), runs=int(cfg["cost_runs"]), view="panorama")
        facts = {"kept_epoch": res.extra.get("kept_epoch"), "select": res.extra.get("select"),
                 "train_pairs": res.extra.get("train_pairs"), "val_pairs": res.extra.get("val_pairs"),
                 "trained_on": res.extra.get("trained_on"), "train_seconds": round(train_s, 1),
                 "eval_seconds": round(eval_s, 1)}
        protocol = PROTOCOL_VIGOR if ds.format == "vigor" else PROTOCOL_CVUSA
        record(result, source=SOURCE, task="crossview", protocol=protocol, dataset=dataset, split=eval_split,
               views=("panorama", "satellite"), model=f"safa-{name.split('/')[1]}",
               metrics={**metrics, **cost}, profile=cfg["profile"], seed=tc.seed, config={**row_cfg, **facts})
        return {"directions": {"panorama→satellite": {**metrics, "queries": result.n_queries}}, "cost": cost,
                "history": res.history, "checkpoint": str(res.best_path or res.last_path),
                "cut_by_budget": res.cut_by_budget, "epochs_done": res.epochs_done, **facts}

    return runner.run(name, row_cfg, run)
