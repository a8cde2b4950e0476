"""Notebook 04's comparison of retrieval and classification on the same place-recognition queries.

CosPlace (GeM, MixVPR) retrieves from a database; Divide&Classify names a map cell. Each trained
method is written beside an untrained network and an exact chance reference measured on the same
queries, per query condition, so a number is never read without its floor. Every record of one run
carries the same notes (data root, dry run, what fell back or was skipped), taken once when the
`Recorder` is made, so a part skipped later does not change what earlier records say.

Training time (`train_s`) and queries per second are wall-clock measurements reported as cost
columns; no result or selection depends on them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import geoclass as phase2
from ..data.datasets import ImageItem, utm_of

COSPLACE_KEYS = ("backbone", "pretrained", "image_size", "out_dim", "M", "alpha", "N", "L", "groups_num",
                 "min_images_per_class", "epochs", "iterations_per_epoch", "batch_size", "backbone_lr",
                 "classifier_lr", "stage", "freeze_backbone", "augment_copies", "hue")
MODEL_ORDER = ("chance", "cosplace-untrained", "cosplace", "cosplace-mixvpr")  # references first, then CosPlace


@dataclasses.dataclass
class Recorder:
    """Writes notebook 04's `vpr` records of one run: who wrote them, on what, with which notes."""

    source: str
    profile: str
    seed: int | None
    dataset: str
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def retrieval(self, model: str, results: Mapping[str, tuple[Any, float]], extra_metrics: Mapping[str, Any],
                  config: Mapping[str, Any], dataset: str | None = None, split: str = "test") -> list[dict[str, Any]]:
        """One `vpr-25m` record per condition of `geoclass.retrieve_conditions`'s results."""
        from ..training.cosplace import write_vpr_record

        return [write_vpr_record(self.source, {**res.metrics, **extra_metrics, "queries_per_s": qps},
                                 dataset=dataset or self.dataset, split=split, profile=self.profile, seed=self.seed,
                                 model=model, query_view=phase2.query_view(cond), config={**config, **self.notes},
                                 preprocess=getattr(res, "preprocess", None))
                for cond, (res, qps) in results.items()]

    def localization(self, model: str, results: Mapping[str, tuple[Any, float]], extra_metrics: Mapping[str, Any],
                     config: Mapping[str, Any], dataset: str | None = None, split: str = "test") -> list[dict[str, Any]]:
        """One `dc-lr-25m` record per condition of `geoclass.localize_conditions`'s results."""
        from ..training.dc import write_dc_record

        return [write_dc_record(self.source, {**res.metrics, **extra_metrics, "queries_per_s": qps},
                                dataset=dataset or self.dataset, split=split, profile=self.profile, seed=self.seed,
                                model=model, query_view=phase2.query_view(cond), config=dict(config),
                                preprocess=getattr(res, "preprocess", None))
                for cond, (res, qps) in results.items()]

    def chance_retrieval(self, database: Sequence[ImageItem],
                         queries: Mapping[str, Sequence[ImageItem]]) -> list[dict[str, Any]]:
        """Expected R@1 of a random database ranking, per condition."""
        from ..training.cosplace import write_vpr_record

        return [write_vpr_record(self.source, {"R@1": phase2.chance_recall(utm_of(items), utm_of(database))},
                                 dataset=self.dataset, profile=self.profile, seed=self.seed, model="chance",
                                 query_view=phase2.query_view(cond),
                                 config={"what": "expected R@1 of a uniformly random ranking"})
                for cond, items in queries.items()]

    def chance_cells(self, centres: np.ndarray, queries: Mapping[str, Sequence[ImageItem]]) -> list[dict[str, Any]]:
        """Expected LR@1 of a random cell among `centres`, per condition."""
        from ..training.dc import write_dc_record

        return [write_dc_record(self.source, {"LR@1": phase2.chance_lr(utm_of(items), centres)},
                                dataset=self.dataset, profile=self.profile, seed=self.seed, model="chance",
                                query_view=phase2.query_view(cond),
                                config={"what": "expected LR@1 of a uniformly random cell", "cells": len(centres)})
                for cond, items in queries.items()]


def base_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The CosPlace settings of a resolved `phase2` section that every CosPlace record carries."""
    return {k: cfg[k] for k in COSPLACE_KEYS if k in cfg}


def metrics_frame(results: Mapping[str, Mapping[str, tuple[Any, float]]]) -> "Any":
    """{model: {condition: (result, qps)}} as a table: one column per (model, condition)."""
    import pandas as pd

    return pd.DataFrame({(n, c): r.metrics for n, res in results.items() for c, (r, _) in res.items()})


def _trained_or_saved(name: str, items: Sequence[ImageItem] | None, config: Any, saved: Path, device: str,
                      load_or_train: Any, load: Any, recorder: Recorder, needs: Any) -> tuple[Any, float] | None:
    """(training, seconds) of one CosPlace or D&C row: `load_or_train(items, config, saved/name)` when
    there are train items, else `load(saved/name, device)` (evaluate only: no train split here), else
    None with the reason in `needs`."""
    if items:
        return phase2.timed(lambda: load_or_train(items, config, saved / name))
    if (saved / name / "model.json").exists():
        return load(saved / name, device), 0.0
    needs.skip(name, f"no train split in {recorder.notes.get('root')} and no saved model in {saved / name}")
    return None


def _loss_line(config: Mapping[str, Any]) -> str:
    losses = config.get("loss_by_epoch") or []
    return f", loss {losses[0]} → {losses[-1]}" if losses else ""


# --------------------------------------------------------------------------- references and CosPlace

def run_untrained(cfg: Mapping[str, Any], database: Sequence[ImageItem], queries: Mapping[str, Sequence[ImageItem]],
                  recorder: Recorder, device: str = "cpu") -> dict[str, tuple[Any, float]]:
    """CosPlace's network before training (the backbone's initial weights, a seeded projection),
    GeM-aggregated, on the test queries: what training adds is measured against it."""
    from ..training.cosplace import PlaceNet
    from ..training.loop import seed_everything

    seed_everything(cfg["seed"])
    untrained = PlaceNet(cfg["backbone"], "gem", cfg["out_dim"], cfg["image_size"], cfg["pretrained"])
    results = phase2.retrieve_conditions(untrained, database, queries, cfg["image_size"], device)
    recorder.retrieval("cosplace-untrained", results, {}, base_config(cfg))
    return results


def cosplace_variants(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The CosPlace rows `cfg["methods"]` asks for, each with its aggregation's overrides."""
    variants = {"cosplace": dict(aggregation="gem", **(cfg.get("gem") or {})),
                "cosplace-mixvpr": dict(aggregation="mixvpr", **(cfg.get("mixvpr") or {}))}
    return {name: opts for name, opts in variants.items() if name in cfg["methods"]}


def run_cosplace(cfg: Mapping[str, Any], train_items: Sequence[ImageItem] | None, database: Sequence[ImageItem],
                 queries: Mapping[str, Sequence[ImageItem]], saved: str | Path, recorder: Recorder, needs: Any,
                 device: str = "cpu") -> tuple[dict[str, Any], dict[str, dict[str, tuple[Any, float]]]]:
    """({name: training}, {name: per-condition results}) of each CosPlace variant.

    A variant trains on `train_items` (or loads the model saved under `saved/<name>` with the same
    settings); without a train split it is evaluated from a saved model, or skipped with the reason
    in `needs` when there is none.
    """
    from ..training.cosplace import CosPlaceConfig, load_cosplace, load_or_train_cosplace

    saved, base = Path(saved), base_config(cfg)
    trained: dict[str, Any] = {}
    retrievals: dict[str, dict[str, tuple[Any, float]]] = {}
    for name, opts in cosplace_variants(cfg).items():
        cp_cfg = CosPlaceConfig(**{**base, **opts}, seed=cfg["seed"], device=device)
        found = _trained_or_saved(name, train_items, cp_cfg, saved, device, load_or_train_cosplace, load_cosplace,
                                  recorder, needs)
        if found is None:
            continue
        training, elapsed = found
        model = getattr(training, "model", training)
        result = getattr(training, "result", None)
        train_s = (result.extra.get("train_s") if result is not None else None) or elapsed
        results = phase2.retrieve_conditions(model, database, queries, cfg["image_size"], device)
        memory_mb = next(iter(results.values()))[0].database_bytes / 2**20
        config = {**base, **opts, "descriptor_dim": model.out_dim,
                  "groups_used": getattr(training, "config", {}).get("groups_used"),
                  "loss_by_epoch": [round(h["loss"], 3) for h in (result.history if result is not None else [])]}
        recorder.retrieval(name, results, {"train_s": train_s, "memory_mb": memory_mb}, config)
        trained[name], retrievals[name] = training, results
        print(f"{name}: {train_s:.0f} s of training{_loss_line(config)}")
    return trained, retrievals


def save_strips(retrievals: Mapping[str, Mapping[str, tuple[Any, float]]], database: Sequence[ImageItem],
                queries: Mapping[str, Sequence[ImageItem]], folder: str | Path, num_preds_to_save: int,
                save_only_wrong: bool, tile: int = 96) -> dict[tuple[str, str], list[Path]]:
    """Query + top-N strips of every (model, condition) under `folder/<model>/<condition>/`; `database`
    and `queries` are the (dry-run capped) sets the results were retrieved from."""
    from ..training.cosplace import save_prediction_strips

    return {(name, cond): save_prediction_strips([q.path for q in queries[cond]],
                                                 [d.path for d in database], res.predictions,
                                                 res.correct, Path(folder) / name / cond,
                                                 num_preds_to_save=num_preds_to_save,
                                                 save_only_wrong=save_only_wrong, tile=tile)
            for name, results in retrievals.items() for cond, (res, _) in results.items()}


def pick_strips(paths: Sequence[Path], n: int = 3) -> list[Path]:
    """A correct strip first when there is one, then wrong ones: both kinds are worth seeing."""
    ok = [p for p in paths if p.stem.endswith("correct")]
    return (ok[:1] + [p for p in paths if p.stem.endswith("wrong")])[:n]


def strips_figure(strips: Mapping[tuple[str, str], Sequence[Path]], model: str, num_preds: int) -> "Any | None":
    """A few of `model`'s strips stacked in one figure (None when it saved none)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = [(k, p) for k, paths in strips.items() if k[0] == model for p in pick_strips(paths)]
    if not shown:
        return None
    fig, axes = plt.subplots(len(shown), 1, figsize=(1.3 * (num_preds + 1), 1.35 * len(shown)), squeeze=False)
    for ax, ((name, cond), path) in zip(axes[:, 0], shown):
        with Image.open(path) as im:
            ax.imshow(im.copy())
        ax.set_axis_off()
        ax.set_title(f"{name} · {cond} · {path.stem.split('_')[-1]}", fontsize=7)
    fig.tight_layout()
    return fig


def label_distribution_figure(division: Any) -> "Any":
    """Images per CosPlace class, and images and classes per group (largest group first)."""
    import matplotlib.pyplot as plt

    summary, sizes = division.summary(), division.class_sizes()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].hist(sizes, bins=np.arange(0.5, sizes.max() + 1.5, 1) if len(sizes) else 1, color="tab:blue")
    axes[0].set(title=f"images per class ({len(sizes)} classes)", xlabel="images", ylabel="classes")
    axes[1].bar(range(division.num_groups), summary["images_per_group"], color="tab:orange", label="images")
    axes[1].bar(range(division.num_groups), summary["classes_per_group"], color="tab:green", label="classes")
    axes[1].set(title="groups (largest first)", xlabel="group", ylabel="count")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- Divide&Classify

def dc_configs(cfg: Mapping[str, Any], device: str = "cpu") -> dict[str, Any]:
    """{`dc-<head>`: CosPlaceConfig} of the D&C heads `cfg` asks for; a `dc_*` key overrides the
    CosPlace setting of the same name, which applies where it is unset."""
    from ..training.dc import dc_config

    if "dc" not in cfg["methods"]:
        return {}
    return {f"dc-{head}": dc_config(
        head, M=cfg["dc_M"], N=cfg["dc_N"], backbone=cfg.get("dc_backbone") or cfg["backbone"],
        pretrained=cfg["pretrained"], image_size=cfg["image_size"], out_dim=cfg["out_dim"],
        min_images_per_class=cfg.get("dc_min_images_per_class") or cfg["min_images_per_class"],
        epochs=cfg.get("dc_epochs") or cfg["epochs"], batch_size=cfg["batch_size"],
        iterations_per_epoch=cfg.get("dc_iterations_per_epoch") or cfg["iterations_per_epoch"],
        backbone_lr=cfg["backbone_lr"], classifier_lr=cfg["classifier_lr"], seed=cfg["seed"], device=device,
        **{k: cfg[k] for k in ("stage", "freeze_backbone", "augment_copies") if k in cfg},
        **(cfg.get("dc_options") or {})) for head in cfg["dc_heads"]}


def select_dc(cfg: Mapping[str, Any], root: str | Path, train_items: Sequence[ImageItem] | None, saved: str | Path,
              recorder: Recorder, device: str = "cpu", split: str = "val") -> tuple[dict[str, Any], Any]:
    """D&C's cell side and head, chosen on `split` (validation), never on test.

    `cfg["dc_select"]` maps settings to the values tried: `dc_M` and `dc_heads` (one head per
    candidate) are chosen; any other `dc_*` key (e.g. `dc_iterations_per_epoch`) only shapes the
    candidates, a shorter proxy run. Each candidate of the product trains on what the main run trains
    on (the validation area's database when `dc_train` is "test-database", else `train_items`) and is
    scored by LR@1 on `split`'s queries of its first condition; each is a record with `split` = `split`.
    Returns the winning `dc_M` / `dc_heads` ({} without a grid or such a split) and the table.
    """
    import itertools

    import pandas as pd
    from ..training.dc import load_or_train_dc

    grid = dict(cfg.get("dc_select") or {})
    if not grid or "dc" not in cfg["methods"] or not (Path(root) / split).is_dir():
        return {}, pd.DataFrame()
    database, queries = phase2.split_sets(root, split)
    first = next(iter(queries))
    items = database if cfg["dc_train"] == "test-database" else train_items
    if not items:
        return {}, pd.DataFrame()
    grid.setdefault("dc_M", [cfg["dc_M"]])
    grid.setdefault("dc_heads", list(cfg["dc_heads"]))
    rows = []
    for values in itertools.product(*grid.values()):
        cand = dict(zip(grid, values))
        head = cand["dc_heads"]
        dc_cfg = dc_configs({**cfg, **cand, "dc_heads": [head]}, device)[f"dc-{head}"]
        folder = Path(saved) / "dc-select" / "-".join(f"{k.removeprefix('dc_')}{v}" for k, v in cand.items())
        training = load_or_train_dc(items, dc_cfg, folder, progress=False)
        results = phase2.localize_conditions(training, {first: queries[first]}, cfg["image_size"], device)
        recorder.localization(f"dc-{head}", results, {}, {**dc_cfg.to_dict(), "selection": True, **recorder.notes},
                              split=split)
        res = results[first][0]
        rows.append({**cand, "cells": len(training.division.class_ids),
                     **{k: res.metrics.get(k) for k in ("LR@1", "LR@5")}})
    table = pd.DataFrame(rows)
    best = int(table["LR@1"].astype(float).to_numpy().argmax())  # the first of the best, in grid order
    table["chosen"] = [i == best for i in range(len(table))]
    m = table.dc_M.iloc[best]
    return {"dc_M": m.item() if hasattr(m, "item") else m, "dc_heads": [str(table.dc_heads.iloc[best])]}, table


def run_dc(cfg: Mapping[str, Any], items: Sequence[ImageItem] | None, queries: Mapping[str, Sequence[ImageItem]],
           saved: str | Path, recorder: Recorder, needs: Any, device: str = "cpu"
           ) -> tuple[dict[str, Any], dict[str, dict[str, tuple[Any, float]]]]:
    """({name: training}, {name: per-condition results}) of each D&C head, trained on the cells of
    `items` (or loaded from `saved/<name>`, or skipped with the reason in `needs`), then the chance
    of a random cell among the first model's cells."""
    from ..training.dc import load_dc, load_or_train_dc

    saved = Path(saved)
    trainings: dict[str, Any] = {}
    localizations: dict[str, dict[str, tuple[Any, float]]] = {}
    for name, dc_cfg in dc_configs(cfg, device).items():
        # without train items the cells come with the saved model
        found = _trained_or_saved(name, items, dc_cfg, saved, device, load_or_train_dc, load_dc, recorder, needs)
        if found is None:
            continue
        training, elapsed = found
        train_s = training.result.extra.get("train_s") or elapsed
        results = phase2.localize_conditions(training, queries, cfg["image_size"], device)
        memory_mb = next(iter(results.values()))[0].classifier_bytes / 2**20
        config = {**dc_cfg.to_dict(), "trained_on": cfg["dc_train"], "classes": len(training.division.class_ids),
                  "train_images": len(items) if items else None,
                  "groups_used": training.config.get("groups_used"), **recorder.notes,
                  "loss_by_epoch": [round(h["loss"], 3) for h in training.result.history]}
        recorder.localization(name, results, {"train_s": train_s, "memory_mb": memory_mb}, config)
        localizations[name], trainings[name] = results, training
        print(f"{name}: {len(training.division.class_ids)} cells, {train_s:.0f} s of training{_loss_line(config)}")
    if trainings:
        recorder.chance_cells(next(iter(trainings.values())).division.centres(), queries)
    return trainings, localizations


# --------------------------------------------------------------------------- the course table

def evaluate_course_sets(recorder: Recorder, trained: Mapping[str, Any], dc_trainings: Mapping[str, Any],
                         root: str | Path, splits: Sequence[str], test_sets: Mapping[str, Any],
                         config: Mapping[str, Any], device: str = "cpu") -> list[tuple[str, str]]:
    """Every trained model, unchanged, on `root`'s other `splits` and on each test-only set's splits;
    returns the (dataset, split) rows of the course table. `test` of `root` was recorded already."""
    from .dataroots import vpr_splits

    sets = [(recorder.dataset, s) for s in splits]
    targets = [(recorder.dataset, Path(root), s) for s in splits if s != "test"]
    for name, test in test_sets.items():
        for split in vpr_splits(test.root) or ["test"]:
            sets.append((name, split))
            targets.append((name, Path(test.root), split))
    for dataset, where, split in targets:
        for name, training in trained.items():
            recorder.retrieval(name, phase2.evaluate_vpr(training, where, split, device=device), {}, config,
                               dataset=dataset, split=split)
        for name, training in dc_trainings.items():
            recorder.localization(name, phase2.evaluate_localization(training, where, split, device=device), {},
                                  recorder.notes, dataset=dataset, split=split)
    return sets


def sorted_comparison(table: "Any", order: Sequence[str] = MODEL_ORDER) -> "Any":
    """`geoclass.comparison_table` by protocol, then references and CosPlace in `order`, other models
    alphabetically after them, then query condition."""
    if table.empty:
        return table
    rank = {m: i for i, m in enumerate(order)}

    def key(s):
        return s.map(rank).fillna(len(rank) + s.rank(method="dense")) if s.name == "model" else s

    return table.sort_values(["protocol", "model", "query"], key=key, kind="stable").reset_index(drop=True)


def chance_by_view(records: Iterable[Mapping[str, Any]], dataset: str) -> dict[tuple[str, str], float]:
    """{(protocol, query view): chance R@1 or LR@1} of `dataset`'s chance records (the last wins)."""
    return {(r["protocol"], r["query_view"]): (r["metrics"].get("R@1") or r["metrics"].get("LR@1"))
            for r in records if r.get("model") == "chance" and r.get("dataset") == dataset}


def recall_figure(curves: Mapping[str, Mapping[str, Mapping[str, float]]], conditions: Sequence[str],
                  chance: Mapping[tuple[str, str], float] | None = None) -> "Any":
    """R@N (solid) and LR@N (dashed, `dc-` models) against N, one panel per query condition, with
    chance at N=1 dotted. `curves` is {model: {condition: metrics}}."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(conditions), figsize=(3.8 * len(conditions), 3.3), squeeze=False)
    for ax, cond in zip(axes[0], conditions):
        for name, per in curves.items():
            m = per.get(cond, {})
            keys = sorted((k for k in m if k.startswith(("R@", "LR@"))), key=lambda k: int(k.split("@")[1]))
            ax.plot([int(k.split("@")[1]) for k in keys], [m[k] for k in keys], marker="o", ms=3,
                    ls="--" if name.startswith("dc-") else "-", label=name)
        for (protocol, qv), value in (chance or {}).items():
            if qv == phase2.query_view(cond) and value is not None:
                ax.axhline(value, color="gray" if protocol == "vpr-25m" else "black", lw=0.8, ls=":")
        ax.set(title=f"{cond} queries", xlabel="N", ylabel="R@N (solid) / LR@N (dashed), %", ylim=(0, 101))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("dotted: chance at N=1 (gray retrieval, black cells)", fontsize=8)
    fig.tight_layout()
    return fig


def curves_of(*results: Mapping[str, Mapping[str, tuple[Any, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {condition: metrics}} of several {model: per-condition results} mappings, in order."""
    return {n: {c: r.metrics for c, (r, _) in res.items()} for group in results for n, res in group.items()}


# --------------------------------------------------------------------------- observations

def observations(records: Sequence[Mapping[str, Any]], dataset: str, conditions: Sequence[str],
                 split: str = "test") -> list[Any]:
    """What notebook 04 reports beside its targets (`findings.phase2` judges those): each trained
    model's @1 per condition, MixVPR against GeM, the domain shift from the first condition, memory
    and queries/s, and whether a CosPlace loss was still falling at the end. Each is a
    `findings.Finding` with no target, computed from this run's records."""
    from .findings import Finding

    table = phase2.comparison_table(records, dataset, split)
    if table.empty or not conditions:
        return []

    def at1(model: str, cond: str, protocol: str) -> float:
        row = table[(table.model == model) & (table["query"] == phase2.query_view(cond)) & (table.protocol == protocol)]
        value = row["@1"].iloc[0] if len(row) else None
        return float(value) if value is not None and value == value else float("nan")

    first, out = conditions[0], []
    trained = [(m, p) for m, p in dict.fromkeys(zip(table.model, table.protocol))
               if m != "chance" and not m.endswith("-untrained")]
    for model, protocol in trained:
        at = "R@1" if protocol == "vpr-25m" else "LR@1"
        for cond in conditions:
            out.append(Finding(f"{model} {at} on {cond} queries ({protocol})", at1(model, cond, protocol), unit="%"))
    retrieval = [m for m, p in trained if p == "vpr-25m"]
    if "cosplace" in retrieval and "cosplace-mixvpr" in retrieval:
        gain = at1("cosplace-mixvpr", first, "vpr-25m") - at1("cosplace", first, "vpr-25m")
        out.append(Finding(f"MixVPR minus GeM, R@1 on {first} queries", gain, unit=" points",
                           note="MixVPR ahead" if gain > 0 else "GeM ahead" if gain < 0 else "a tie"))
    if retrieval:
        for cond in conditions[1:]:
            out.append(Finding(f"domain shift of {retrieval[0]}: R@1 on {cond} minus {first} queries",
                               at1(retrieval[0], cond, "vpr-25m") - at1(retrieval[0], first, "vpr-25m"), unit=" points"))
    for model, value in table.dropna(subset=["memory MB"]).groupby("model", sort=False)["memory MB"].first().items():
        out.append(Finding(f"{model} memory (database descriptors or classifier heads)", float(value), unit=" MB"))
    for model, value in table.dropna(subset=["queries/s"]).groupby("model", sort=False)["queries/s"].median().items():
        out.append(Finding(f"{model} queries per second (median over conditions)", float(value)))
    for model in retrieval:
        rec = next((r for r in reversed(records) if r.get("model") == model and r.get("dataset") == dataset
                    and r.get("protocol") == "vpr-25m" and (r.get("config") or {}).get("loss_by_epoch")), None)
        losses = (rec or {}).get("config", {}).get("loss_by_epoch") or []
        if len(losses) > 1 and losses[-1] < losses[-2]:
            out.append(Finding(f"{model} training loss change over the last epoch", losses[-1] - losses[-2],
                               note=f"still falling ({losses[-2]:.2f} → {losses[-1]:.2f}): more iterations would likely help"))
    return out
