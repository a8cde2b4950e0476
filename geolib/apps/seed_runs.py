"""The headline comparisons run again with more training seeds (`-p seeds '[0, 1, 2]'`).

Each notebook's main run uses `seed`; this module trains the other seeds of `seeds` the same way,
records them with their seed, and reads the records back as mean ± std tables
(`geolib.evaluation.seeds`). Later notebooks build on the main run only: a seed run changes no
checkpoint or index they read.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..evaluation.seeds import records_long, seed_list, seed_table
from ..records import select


def extra_seeds(cfg: Mapping[str, Any]) -> list[int]:
    """The seeds of `seeds` besides the main run's `seed`, in order."""
    return [s for s in seed_list(cfg) if s != int(cfg["seed"])]


def with_seed(cfg: Any, seed: int) -> Any:
    out = copy.deepcopy(cfg)
    out["seed"] = int(seed)
    return out


def phase1_seeds(cfg: Any, ds: Any, profile: str, dataset: str, run_config: Mapping[str, Any], source: str,
                 cache: Any = None, progress: bool = True) -> list[int]:
    """Notebook 02 for each extra seed: train (resuming from `checkpoints/phase1-seed<N>`), evaluate
    with the main run's protocol, record as model `phase1` with that seed. Returns the seeds run."""
    from ..evaluation.crossview import evaluate_crossview, record_evaluation
    from ..paths import phase1_checkpoint, phase1_checkpoint_dir
    from ..training.crossview import load_trained_model, phase1_model, train_phase1
    from ..training.loop import seed_everything

    done = []
    for seed in extra_seeds(cfg):
        c = with_seed(cfg, seed)
        seed_everything(seed)
        net = phase1_model(c)
        print(f"Phase 1, seed {seed}")
        _, status = train_phase1(c, ds, net, phase1_checkpoint_dir(profile, seed), cache=cache, progress=progress)
        model, meta = load_trained_model(phase1_checkpoint(profile, seed), c["device"])
        ev = evaluate_crossview(model, ds, c["image_size"], device=c["device"], flip=c["flip_tta"], cache=cache)
        record_evaluation(ev, source=source, model="phase1", dataset=dataset, profile=profile, seed=seed,
                          config={**run_config, "teachers": status, "best_epoch": meta["epoch"]})
        done.append(seed)
    return done


def crossview_seed_table(records: Sequence[Mapping[str, Any]], models: Sequence[str], dataset: str,
                         seeds: Sequence[int], metric: str = "R@1", base: str | None = None) -> Any:
    """Rows: `models` (Δ to `base` when given); columns: query→gallery directions; cells: mean ± std
    of `metric` over `seeds` (the last record of each)."""
    return _direction_table(select(records, task="crossview", dataset=dataset, model=tuple(models)), seeds, metric, base)


def _direction_table(recs: Sequence[Mapping[str, Any]], seeds: Sequence[int], metric: str, base: str | None) -> Any:
    """Rows: models; columns: query→gallery directions; mean ± std of `metric` over `seeds`."""
    long = records_long(recs, metric, fields=("model", "direction"), seeds=list(seeds))
    return seed_table(long, "model", "direction", base=base)


def vpr_seeds(cfg: Any, train_items: Any, dc_items: Any, database: Any, queries: Any, saved: Any, recorder: Any,
              needs: Any, device: str = "cpu") -> list[int]:
    """Notebook 04's CosPlace and D&C for each extra seed, on the same data, each model saved under
    `saved/seed-<N>/` (the main run's models stay where later cells and reruns read them), recorded
    with its seed. Returns the seeds run."""
    from . import vpr_compare as V

    done = []
    for seed in extra_seeds(cfg):
        c = with_seed(cfg, seed)
        rec = dataclasses.replace(recorder, seed=seed)
        folder = Path(saved) / f"seed-{seed}"
        print(f"seed {seed}")
        V.run_cosplace(c, train_items, database, queries, folder, rec, needs, device)
        if dc_items is not None:
            V.run_dc(c, dc_items, queries, folder, rec, needs, device)
        done.append(seed)
    return done


def vpr_seed_table(records: Sequence[Mapping[str, Any]], dataset: str, seeds: Sequence[int],
                   base: str | None = None, split: str = "test") -> Any:
    """Rows: CosPlace variants and D&C heads (Δ to `base` when given); columns: query condition;
    cells: R@1 (retrieval) or LR@1 (D&C) mean ± std over `seeds`."""
    recs = [r for r in select(records, dataset=dataset, split=split)
            if str(r.get("model", "")).startswith(("cosplace", "dc-")) and not str(r["model"]).endswith("untrained")]
    long = records_long(recs, ("R@1", "LR@1"), fields=("model", "query_view"), seeds=list(seeds))
    return seed_table(long, "model", "query_view", base=base)


def distill_seeds(cfg: Any, uni: Any, cvusa: Any, out: Any, rows_folder: Any, dataset: str, pairs_dataset: str | None,
                  trained_backbone: Any, run_c: bool = True) -> list[int]:
    """Notebook 03's headline rows for each extra seed: every selected Part A row, Part B (the teacher
    and the selected students) and the selected Part C rows, each seed in its own row folder and
    checkpoint folder (`seed-<N>/`), recorded with its seed."""
    from ..training.distill4geo import RowRunner
    from . import ablation as ab, safa_rows

    done = []
    for seed in extra_seeds(cfg):
        c = with_seed(cfg, seed)
        c["phase1"] = with_seed(cfg["phase1"], seed)
        runner = RowRunner(Path(rows_folder) / f"seed-{seed}")
        o = Path(out) / f"seed-{seed}"
        print(f"seed {seed}")
        a_rows = ab.part_a_rows(c["phase1"])
        part_a = {name: ab.run_phase1_row(name, a_rows[name], uni, c, o, runner, dataset, backbone_from=trained_backbone)
                  for name in ab.selected(a_rows, c["rows"])}
        ab.run_part_b(uni, c, o, runner, dataset, trained_backbone, part_a)
        if run_c and cvusa is not None:
            c_rows = safa_rows.part_c_rows(c["safa_head_rows"])
            for name in ab.selected(c_rows, c["rows"]):
                safa_rows.run_safa_row(name, c_rows[name], cvusa, c, o, runner, pairs_dataset)
        done.append(seed)
    return done


def distill_seed_tables(records: Sequence[Mapping[str, Any]], dataset: str, pairs_dataset: str | None,
                        seeds: Sequence[int], metric: str = "R@1") -> dict[str, Any]:
    """Notebook 03's headline tables over `seeds`: Part A (Δ to `phase1-full`), the teacher against
    each student (Δ to the teacher), SAFA's rows (Δ to polar)."""
    def table(task: str, data: str | None, prefix: tuple[str, ...], base: str, queries: tuple[str, ...]) -> Any:
        recs = [r for r in select(records, task=task, dataset=data, query_view=queries)
                if str(r.get("model", "")).startswith(prefix)]
        return _direction_table(recs, seeds, metric, base)

    university = ("street", "drone")  # parts A and B: street→drone, drone→satellite
    return {"A": table("crossview", dataset, ("phase1-",), "phase1-full", university),
            "B": table("distillation", dataset, ("teacher", "student-"), "teacher", university),
            "C": table("crossview", pairs_dataset, ("safa-",), "safa-safa-polar", ("panorama",)) if pairs_dataset else None}
