"""Notebook 03's rows: Phase 1 ablation (A), Distill4Geo students (B), SAFA (C).

Every row is one training run through geolib's loops, then the same evaluation and `model_cost`;
its numbers go to a row JSON (`RowRunner`, so a rerun skips finished rows) and to the metrics
records (`task` crossview / distillation, with protocol and cost). The notebook only picks rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..training.distill4geo import RowRunner
from .findings import resolution

SOURCE = "03_distillation_ablation"
PART_A_DIRECTIONS = (("street", "drone"), ("drone", "satellite"))

# Row name → the Phase 1 options it changes (on top of the profile's phase1 section).
PART_A_ROWS: dict[str, dict[str, Any]] = {
    "A/full": {},
    "A/no-l2l": {"l2l": False},
    "A/no-fusion": {"fusion": False},
    "A/attention-pool": {"pooling": "attention"},
    "A/gem-pool": {"pooling": "gem"},
    "A/triplet": {"loss": "triplet"},
}


def part_a_rows(phase1: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows that change something in this profile's Phase 1 (GeM vs attention: whichever is not
    already the base), so no row is a silent duplicate of `A/full`."""
    return {name: ch for name, ch in PART_A_ROWS.items()
            if name == "A/full" or any(phase1.get(k) != v for k, v in ch.items())}


def part_a_phase1(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The Phase 1 settings every Part A row starts from: the profile's `phase1` section, at
    `ablation_image_size` when the distill section sets one.

    The parts ablated act on token grids: at 48 px Lite0's stride-32 stage is a single token, so
    layer-to-layer attention there has one key and a row without fusion pools one token. A
    larger side gives every part a grid to work on; the backbone is still notebook 02's (a CNN takes
    any side), only the neck, pooling and head are trained at the new size.
    """
    p = dict(cfg["phase1"])
    if cfg.get("ablation_image_size"):
        p["image_size"] = int(cfg["ablation_image_size"])
    return p


def part_a_grids(phase1: Mapping[str, Any], changes: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The token grid each part of a Part A row sees at its input side: every backbone stage, each
    layer-to-layer attention (queries and values on its stage's grid, keys from the stage before,
    resampled to it), the fusion's output grid and the pooling's input.

    Read from one forward pass of the row's own model (hooks on its modules, random weights), so it
    is the grid the row uses, not one computed from strides. One dict per part: `part`, `grid`
    (`"HxW"`), `tokens`, `channels`.
    """
    from ..training.crossview import phase1_model

    p = {**phase1, **(changes or {})}
    p["model_options"] = {**(p.get("model_options") or {}), "pretrained": False}  # shapes only: no weights read
    size = int(p["image_size"])
    model = phase1_model(p).eval()
    branch = next(iter(model.branches.values()))  # every branch has the same backbone and input side
    seen: list[dict[str, Any]] = []

    def add(part: str, t: torch.Tensor) -> None:  # (B, H, W, C) maps, as the neck sees them
        seen.append({"part": part, "grid": f"{t.shape[1]}x{t.shape[2]}", "tokens": int(t.shape[1] * t.shape[2]),
                     "channels": int(t.shape[3])})

    def on_stages(_m: Any, _inp: Any, out: Any) -> None:
        for i, m in enumerate(out):
            add(f"backbone stage {i + 1}", m if branch.nhwc else m.permute(0, 2, 3, 1))

    hooks = [branch.backbone.register_forward_hook(on_stages)]
    for i, attn in enumerate(branch.l2l or []):
        hooks.append(attn.register_forward_pre_hook(
            lambda _m, inp, i=i: add(f"L2L on stage {i + 2} (keys: stage {i + 1})", inp[0])))
    if branch.fusion is not None:
        hooks.append(branch.fusion.register_forward_hook(lambda _m, _inp, out: add("fusion output", out)))
    hooks.append(branch.pool.register_forward_pre_hook(
        lambda _m, inp: add(f"pooling ({p['pooling']})", inp[0])))
    try:
        with torch.no_grad():
            branch(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return seen


def single_token_parts(grids: Sequence[Mapping[str, Any]]) -> list[str]:
    """The parts of `part_a_grids` other than the backbone that see a single token (nothing to
    attend over or pool): a row ablating such a part cannot show its effect."""
    return [g["part"] for g in grids if g["tokens"] <= 1 and not g["part"].startswith("backbone")]


def student_spec(entry: str) -> tuple[str, int | None]:
    """`<backbone>[@<px>]` → (backbone, its own input side or None for `student_image_size`).

    Distill4Geo's resolution split: the student may see smaller images than its teacher, which
    cuts its GFLOPs by the square of the ratio; one profile list then holds the trade-off curve."""
    backbone, _, px = str(entry).partition("@")
    if px and not px.isdigit():
        raise ValueError(f"student {entry!r}: write <backbone>@<pixels>, e.g. efficientnet_lite0-b11@32")
    return backbone, (int(px) if px else None)


def part_b_rows(students: Sequence[str], perturb: Sequence[bool], part: str = "B") -> dict[str, dict[str, Any]]:
    """`<part>/student-<backbone>[@<px>]-plain|mp`; `part="B2"` names the rows on the pairs dataset."""
    return {f"{part}/student-{s}-{'mp' if p else 'plain'}": {"backbone": student_spec(s)[0],
                                                            "image_size": student_spec(s)[1], "perturb": bool(p)}
            for s in students for p in perturb}


def selected(rows: Mapping[str, Any], wanted: Sequence[str] | None) -> list[str]:
    """Rows named in `wanted`, or starting with a `wanted` entry that names no row (`["A",
    "C/safa-polar"]` takes all of part A and that one row, not `C/safa-polar-k1`); all when None."""
    from .. import dryrun

    if wanted is None:
        picked = list(rows)
    else:
        exact = [w for w in wanted if w in rows]
        prefixes = [w for w in wanted if w not in rows]
        picked = [r for r in rows if r in exact or any(r.startswith(p) for p in prefixes)]
    return picked[:1] if dryrun.active() else picked  # a dry run checks each part's path once


def checkpoint_id(path: str | Path) -> str:
    """`<path>@<sha1 of its weights>`: rows keyed on it rerun when the trained network changes.

    The weights only: the JSON beside them also holds the run's timings, which differ between two
    runs of the same seed, and a rerun must not be keyed on the machine's speed."""
    import hashlib

    path = Path(path)
    h = hashlib.sha1()
    for f in sorted(path.parent.glob(path.name + ".*")):
        if f.suffix != ".json":
            h.update(f.read_bytes())
    return f"{path}@{h.hexdigest()[:12]}"


def _directions(ev: Any) -> dict[str, dict[str, float]]:
    """Metrics per direction, with the query count: one query's worth of recall is the resolution."""
    return {k: {**r.metrics, "queries": r.n_queries} for k, r in ev.results.items()}


def _training(res: Any) -> dict[str, Any]:
    """What a row's JSON keeps of its training run: the history, the checkpoint, whether the budget cut it."""
    return {"history": res.history, "checkpoint": str(res.last_path), "cut_by_budget": res.cut_by_budget,
            "epochs_done": res.epochs_done}


def _cost(model: torch.nn.Module, size: int | tuple[int, int], view: str, runs: int) -> dict[str, float]:
    from ..evaluation.cost import model_cost

    return model_cost(model, size, runs=runs, view=view)


# --------------------------------------------------------------------------- part A

def run_phase1_row(name: str, changes: Mapping[str, Any], ds: Any, cfg: Mapping[str, Any], out: Path,
                   runner: RowRunner, dataset: str, backbone_from: str | Path | None = None) -> dict[str, Any]:
    """Train one Phase 1 variant; R@1/R@5/AP on street→drone and drone→satellite, and its cost.

    `backbone_from` (a trained Phase 1 checkpoint, notebook 02's): every row starts from its
    backbone, frozen, and trains only its own neck, pooling and loss. A minute on a CPU cannot
    train a backbone, so without this every row lands near chance and the table shows cost only;
    with it, rows differ in exactly the part they change, on the same trained features.
    """
    from ..training.crossview import phase1_fit_options, phase1_model
    from ..evaluation.crossview import evaluate_crossview, record_evaluation
    from ..training.crossview import train_crossview
    from ..training.multiview import TrainConfig

    p = {**part_a_phase1(cfg), **changes}
    row_cfg = {"row": name, **{k: p[k] for k in ("model", "image_size", "model_options", "l2l", "fusion",
                                                 "pooling", "loss")}, "epochs": cfg["epochs"],
               "batch_size": cfg["batch_size"], "lr": p["lr"], "minutes": cfg["minutes_per_row"],
               "dataset": dataset, "seed": cfg["seed"],
               "backbone_from": checkpoint_id(backbone_from) if backbone_from else None}

    def train() -> dict[str, Any]:
        torch.manual_seed(cfg["seed"])
        model = phase1_model(p)
        if backbone_from:
            load_backbone(model, backbone_from)
        tc = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=p["lr"], device=cfg["device"],
                         seed=cfg["seed"], resume=False, eval_every=max(1, cfg["epochs"]),
                         channels_last=p.get("channels_last", False),
                         freeze=(".backbone.",) if backbone_from else ())
        ck = out / name.replace("/", "_")
        res = train_crossview(model, ds, tc, ck, **{**phase1_fit_options(p), "max_minutes": cfg["minutes_per_row"]},
                              eval_directions=(), progress=False)
        ev = evaluate_crossview(model, ds, p["image_size"], PART_A_DIRECTIONS, cfg["device"])
        cost = _cost(model, p["image_size"], "street", cfg["cost_runs"])
        record_evaluation(ev, source=SOURCE, model=f"phase1-{name.split('/')[1]}", dataset=dataset,
                          profile=cfg["profile"], seed=cfg["seed"], config=row_cfg, extra_metrics=cost)
        return {"directions": _directions(ev), "cost": cost, **_training(res)}

    return runner.run(name, row_cfg, train)


def load_backbone(model: torch.nn.Module, checkpoint: str | Path) -> int:
    """Copy a Phase 1 checkpoint's backbone weights into `model` (same backbone and view layout);
    returns how many tensors were copied."""
    from ..checkpoint import read_model_state

    _, state = read_model_state(checkpoint)
    picked = {k: v for k, v in state.items() if ".backbone." in k}
    own = {k for k in model.state_dict() if ".backbone." in k}
    if not picked or set(picked) != own:
        missing, extra = sorted(own - set(picked))[:3], sorted(set(picked) - own)[:3]
        raise ValueError(f"{checkpoint}: its backbone does not fit this row's model (missing {missing}, "
                         f"unexpected {extra}); rows warm-start from a checkpoint of the same backbone and views")
    model.load_state_dict(picked, strict=False)
    return len(picked)


# --------------------------------------------------------------------------- part B

def teacher_size(teacher: torch.nn.Module, cfg: Mapping[str, Any]) -> int:
    """The side the teacher sees: `teacher_image_size`, else the size it was trained at. Distill4Geo's
    teacher may see larger images than its students; a size that lowers its recall weakens it."""
    return int(cfg.get("teacher_image_size") or teacher.img_size)


def run_teacher_row(teacher: torch.nn.Module, ds: Any, cfg: Mapping[str, Any], runner: RowRunner,
                    dataset: str, teacher_id: str) -> dict[str, Any]:
    """The teacher's own R@1 and cost, the reference every student is compared to."""
    from ..evaluation.crossview import record_evaluation

    size = teacher_size(teacher, cfg)
    row_cfg = {"row": "B/teacher", "teacher": teacher_id, "dataset": dataset, "image_size": size}

    def run() -> dict[str, Any]:
        ev = _evaluate(teacher, ds, size, PART_A_DIRECTIONS, cfg["device"])
        cost = _cost(teacher, size, "street", cfg["cost_runs"])
        record_evaluation(ev, source=SOURCE, model="teacher", dataset=dataset, profile=cfg["profile"],
                          seed=cfg["seed"], config=row_cfg, task="distillation", extra_metrics=cost)
        return {"directions": _directions(ev), "cost": cost}

    return runner.run("B/teacher", row_cfg, run)


def run_student_row(name: str, spec: Mapping[str, Any], teacher: torch.nn.Module, ds: Any,
                    cfg: Mapping[str, Any], out: Path, runner: RowRunner, dataset: str, teacher_id: str,
                    caches: dict[bool, Any], views: Sequence[str] | None = None,
                    directions: Sequence[tuple[str, str]] = PART_A_DIRECTIONS,
                    split: str = "test") -> dict[str, Any]:
    """Distil one student; teacher embeddings come from `caches` (filled once per perturb setting).

    The student sees `spec["image_size"]` pixels (else `student_image_size`), the teacher its own
    size. `student_init` "teacher" starts a student cut from a Lite0 (`efficientnet_lite0-b<N>`) from
    the teacher's own blocks; other students, and "pretrained", from ImageNet as `student_pretrained`
    says. The schedule is `student_scheduler` with `student_warmup`. `views` (default
    `cfg["views"]`), `directions` and the evaluation `split` make the same row run on a pairs dataset:
    `("panorama", "satellite")`, panorama→satellite on `cvusa_splits(ds)[1]`, recorded under protocol
    `cvusa` (`vigor-hit` with the hit rate on VIGOR).
    """
    from ..evaluation.crossview import record_evaluation
    from ..models import config_hash
    from ..training.distill4geo import (TEACHER_INIT, DistillConfig, StudentModel, cache_teacher, fit_student,
                                        init_from_teacher, loaded_weights, lite0_blocks, save_student,
                                        train_items, weights_status)

    views = tuple(views or cfg["views"])
    size = int(spec.get("image_size") or cfg["student_image_size"])
    pretrained = cfg.get("student_pretrained", "available")
    # "teacher" applies to students cut from a Lite0 (the teacher's own blocks); the others start from ImageNet
    from_teacher = cfg.get("student_init", "pretrained") == "teacher" and lite0_blocks(spec["backbone"]) is not None
    weights = f"{TEACHER_INIT}{teacher_id}" if from_teacher else weights_status(spec["backbone"], pretrained)
    schedule = {"scheduler": cfg.get("student_scheduler", "none"), "warmup": float(cfg.get("student_warmup", 0.0)),
                "contrast": float(cfg.get("student_contrast", 0.0))}
    row_cfg = {"row": name, "teacher": teacher_id, "backbone": spec["backbone"], "perturb": spec["perturb"],
               "image_size": size, "epochs": cfg["student_epochs"], "batch_size": cfg["student_batch_size"],
               "lr": cfg["student_lr"], "copies": cfg["copies"], "dataset": dataset, "seed": cfg["seed"],
               "weights": weights, "teacher_image_size": teacher_size(teacher, cfg), **schedule}
    model_name = f"student-{spec['backbone']}" + (f"@{spec['image_size']}" if spec.get("image_size") else "")

    def run() -> dict[str, Any]:
        perturb = bool(spec["perturb"])
        if perturb not in caches:
            caches[perturb] = cache_teacher(teacher, train_items(ds, views), teacher_size(teacher, cfg), perturb,
                                            cfg["copies"], cfg["seed"], device=cfg["device"])
        torch.manual_seed(cfg["seed"])
        student = StudentModel(spec["backbone"], views, caches[perturb].dim, size,
                               pretrained=False if from_teacher else loaded_weights(pretrained, weights),
                               gray_world=bool(getattr(teacher, "config", {}).get("gray_world", False)))
        if from_teacher:
            init_from_teacher(student, teacher, teacher_id)
        dc = DistillConfig(backbone=spec["backbone"], views=views, image_size=size, epochs=cfg["student_epochs"],
                           batch_size=cfg["student_batch_size"], lr=cfg["student_lr"], perturb=perturb,
                           copies=cfg["copies"], seed=cfg["seed"], device=cfg["device"],
                           minutes=cfg["minutes_per_row"], **schedule)
        ckpt = out / "runs" / f"{name.replace('/', '_')}-{config_hash(row_cfg)}"  # one folder per row settings
        preload = bool((cfg.get("phase1") or {}).get("preload", False))  # the profile holds its images in memory
        res = fit_student(student, caches[perturb], dc, ckpt, preload=preload)
        path = save_student(student, out / name.replace("/", "_"))
        ev = _evaluate(student, ds, size, directions, cfg["device"], split)
        cost = _cost(student, size, directions[0][0], cfg["cost_runs"])
        record_evaluation(ev, source=SOURCE, model=model_name + ("-mp" if perturb else ""),
                          dataset=dataset, profile=cfg["profile"], seed=cfg["seed"], config=row_cfg,
                          task="distillation", extra_metrics=cost, protocol=_protocol(ds), split=split)
        return {"directions": _directions(ev), "cost": cost, **_training(res), "checkpoint": str(path)}

    return runner.run(name, row_cfg, run)


PAIRS_VIEWS = ("panorama", "satellite")
PAIRS_DIRECTIONS = (("panorama", "satellite"),)


def _protocol(ds: Any) -> str:
    """University-1652's protocol on its layout; `cvusa` on CVUSA/CVACT pairs, `vigor-hit` on VIGOR."""
    from ..evaluation.crossview import PROTOCOL_UNIVERSITY
    from ..evaluation.metrics import PROTOCOL_VIGOR
    from ..training.safa import PROTOCOL_CVUSA

    fmt = getattr(ds, "format", None)
    return PROTOCOL_VIGOR if fmt == "vigor" else PROTOCOL_CVUSA if fmt in ("cvusa", "cvact") else PROTOCOL_UNIVERSITY


def _evaluate(model: torch.nn.Module, ds: Any, size: int, directions: Sequence[tuple[str, str]], device: str,
              split: str = "test") -> Any:
    """`evaluate_crossview`, reported as each layout's protocol: on pairs R@1/5/10/1% without AP
    (one true tile per query, AP would only restate its rank), and on VIGOR the hit rate as well
    (top-1 is the positive or one of its semi-positives), read from the same embeddings."""
    from ..evaluation.crossview import evaluate_crossview

    ev = evaluate_crossview(model, ds, size, directions, device, split=split)
    if getattr(ds, "format", None) not in ("cvusa", "cvact", "vigor"):
        return ev
    from ..evaluation.metrics import vigor_metrics
    from ..training.safa import vigor_truth

    for r in ev.results.values():
        r.metrics.pop("AP", None)
        if ds.format == "vigor":
            qs, gs = ev.sets[("query", r.query)], ev.sets[("gallery", r.gallery)]
            r.metrics["hit_rate"] = vigor_metrics(qs.emb, gs.emb, *vigor_truth(qs.items, gs.items))["hit_rate"]
    return ev


def paired_train(ds: Any, views: Sequence[str] = PAIRS_VIEWS) -> Any:
    """`ds` with only the train items whose label every view has (the evaluation splits untouched).

    VIGOR's train split holds many tiles that are no panorama's positive; they pair with nothing, so
    a contrastive teacher cannot use them, and a dry run that caps the train split by label could
    keep only such tiles.
    """
    from dataclasses import replace

    train = [it for it in ds.items if it.split == "train"]
    shared = set.intersection(*({it.label for it in train if it.view == v} for v in views))
    if not shared:
        raise ValueError(f"{ds.root}: no train pair has every view {list(views)}; the teacher needs a "
                         "train split of panorama/satellite pairs (a CVUSA, CVACT or VIGOR root with its train split)")
    return replace(ds, items=[it for it in ds.items if it.split != "train" or it.label in shared])


def run_pairs_teacher_row(ds: Any, cfg: Mapping[str, Any], out: Path, runner: RowRunner,
                          dataset: str) -> Path:
    """Train Distill4Geo's teacher on a CVUSA/CVACT/VIGOR train split; returns its checkpoint.

    The teacher is Sample4Geo-style: the profile's Phase 1 model with one encoder shared by
    panorama and satellite, trained with InfoNCE through `train_crossview`. Its row ("B2/teacher",
    task distillation, model teacher) holds panorama→satellite R@1/5/10/1% on the evaluation split
    (`cvusa_splits`: val for CVUSA/CVACT, test for VIGOR; the hit rate too on VIGOR) and its cost.

    Simplification (geolocal's, not the paper's): the panorama is resized to the model's square
    input (the CPU default's EfficientNet-Lite0, like Swin, takes one square size), not kept at its
    aspect ratio; training uses that plain resize, no crop, so both views keep all their pixels.
    """
    from ..training.crossview import phase1_model
    from ..evaluation.crossview import record_evaluation
    from ..training.crossview import train_crossview
    from ..data.datasets import default_transform
    from ..training.safa import cvusa_splits
    from ..training.multiview import TrainConfig

    p = dict(cfg["phase1"])
    layout = {v: "shared" for v in PAIRS_VIEWS}
    p["model_options"] = {**(p.get("model_options") or {}), "views": layout}
    size = int(p["image_size"])
    eval_split = cvusa_splits(ds)[1]
    name = "B2/teacher"
    row_cfg = {"row": name, **{k: p[k] for k in ("model", "image_size", "model_options", "l2l", "fusion", "pooling")},
               "loss": "infonce", "epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "lr": p["lr"],
               "minutes": cfg["minutes_per_row"], "dataset": dataset, "split": eval_split, "seed": cfg["seed"]}

    def train() -> dict[str, Any]:
        torch.manual_seed(cfg["seed"])
        model = phase1_model(p)
        pairs = paired_train(ds)
        n_train = len({it.label for it in pairs.items if it.split == "train"})
        # a batch is at most every train pair (a tiny tree, a capped dry run): InfoNCE needs no more
        tc = TrainConfig(views=PAIRS_VIEWS, epochs=cfg["epochs"], batch_size=min(int(cfg["batch_size"]), n_train),
                         lr=p["lr"], weight_decay=p.get("weight_decay", 0.05), warmup=p.get("warmup", 0.1),
                         device=cfg["device"], seed=cfg["seed"], resume=False, eval_every=max(1, cfg["epochs"]),
                         channels_last=p.get("channels_last", False))
        res = train_crossview(model, pairs, tc, out / name.replace("/", "_"), image_size=size, loss="infonce",
                              eval_directions=(), max_minutes=cfg["minutes_per_row"], progress=False,
                              preload=p.get("preload", False), transform=default_transform(size))
        ev = _evaluate(model, ds, size, PAIRS_DIRECTIONS, cfg["device"], eval_split)
        cost = _cost(model, size, "panorama", cfg["cost_runs"])
        record_evaluation(ev, source=SOURCE, model="teacher", dataset=dataset, profile=cfg["profile"],
                          seed=cfg["seed"], config=row_cfg, protocol=_protocol(ds), split=eval_split,
                          task="distillation", extra_metrics=cost)
        return {"directions": _directions(ev), "cost": cost, **_training(res)}

    return Path(runner.run(name, row_cfg, train)["results"]["checkpoint"])


# --------------------------------------------------------------------------- tables

def results_table(rows: Sequence[Mapping[str, Any]], direction: str | None = None,
                  reference: Mapping[str, Any] | None = None):
    """One line per (row, direction): R@1/5/10/1%, AP, params, GFLOPs, ms; ratios to `reference`."""
    import pandas as pd

    out = []
    for row in rows:
        res = row["results"]
        for d, m in res["directions"].items():
            if direction is not None and d != direction:
                continue
            line = {"row": row["name"], "direction": d, **{k: m.get(k) for k in ("R@1", "R@5", "R@10", "R@1%", "AP", "hit_rate",
                                                                                 "queries") if k in m},
                    "params_M": res["cost"]["params"] / 1e6, "gflops": res["cost"]["gflops"],
                    "ms_per_image": res["cost"]["ms_per_image"]}
            if reference is not None:
                rc = reference["results"]["cost"]
                line["params_ratio"] = rc["params"] / max(1, res["cost"]["params"])
                line["gflops_ratio"] = rc["gflops"] / max(1e-9, res["cost"]["gflops"])
            out.append(line)
    return pd.DataFrame(out)


def effect_sentences(table: Any, baseline: str, metric: str = "R@1") -> list[str]:
    """"<row>: R@1 x vs y for the baseline (±d points)"; "no measurable effect" when the change is
    within one query's worth of recall (or under 1 point)."""
    lines = []
    for direction, group in table.groupby("direction"):
        base = group[group["row"] == baseline]
        if base.empty:
            continue
        b = float(base[metric].iloc[0])
        res = resolution(base["queries"].iloc[0]) if "queries" in base else 1.0
        for _, r in group[group["row"] != baseline].iterrows():
            d = float(r[metric]) - b
            verdict = "no measurable effect" if abs(d) <= res + 1e-9 else f"{d:+.1f} points"
            lines.append(f"- {direction}, **{r['row']}**: {metric} {r[metric]:.1f} vs {b:.1f} for {baseline} ({verdict}).")
    return lines


# --------------------------------------------------------------------------- notebook steps

def frozen_teacher(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """A trained checkpoint as a frozen teacher, and its id (path + weights hash: a retrained teacher
    reruns every row keyed on it)."""
    from ..training.crossview import load_trained_model

    teacher, _ = load_trained_model(path, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval(), checkpoint_id(path)


def run_part_b(ds: Any, cfg: Mapping[str, Any], out: Path, runner: RowRunner, dataset: str,
               teacher_path: str | Path | None, part_a: Mapping[str, Any] | None = None,
               log: Any = print) -> tuple[dict[str, Any], Any]:
    """Notebook 03's Part B: the teacher row and every selected student row; (rows, table).

    `teacher_path` is `teacher_checkpoint` or notebook 02's checkpoint; without one, this run's
    `A/full` row (trained here if Part A did not) teaches, so Part B never depends on notebook 02.
    """
    student_rows = part_b_rows(cfg["students"], cfg["perturb"])
    rows: dict[str, Any] = {}
    if not selected({"B/teacher": 1, **student_rows}, cfg["rows"]):
        return rows, results_table([])
    if teacher_path is None:
        full = (part_a or {}).get("A/full") or run_phase1_row("A/full", {}, ds, cfg, out, runner, dataset)
        teacher_path = Path(full["results"]["checkpoint"])
    teacher, teacher_id = frozen_teacher(teacher_path, cfg["device"])
    if selected({"B/teacher": 1}, cfg["rows"]):
        rows["B/teacher"] = run_teacher_row(teacher, ds, cfg, runner, dataset, teacher_id)
    caches: dict[Any, Any] = {}
    for name in selected(student_rows, cfg["rows"]):
        rows[name] = run_student_row(name, student_rows[name], teacher, ds, cfg, out, runner, dataset,
                                     teacher_id, caches)
        log(name, "skipped (done)" if name in runner.skipped else f"trained in {rows[name]['seconds']} s")
    return rows, results_table(list(rows.values()), reference=rows.get("B/teacher"))


def run_part_b2(ds: Any, cfg: Mapping[str, Any], out: Path, runner: RowRunner, dataset: str,
                enabled: bool = True, log: Any = print) -> tuple[dict[str, Any], Any]:
    """Notebook 03's Part B on the pairs: the Sample4Geo-style teacher (trained or reused whenever
    any B2 row runs, since the students need it) and the selected students; (rows, table)."""
    from ..training.safa import cvusa_splits

    b2_rows = part_b_rows(cfg["students"], cfg["perturb"], part="B2")
    rows: dict[str, Any] = {}
    if not enabled or not selected({"B2/teacher": 1, **b2_rows}, cfg["rows"]):
        return rows, results_table([])
    split = cvusa_splits(ds)[1]
    path = run_pairs_teacher_row(ds, cfg, out, runner, dataset)
    rows["B2/teacher"] = runner.load("B2/teacher")
    log("B2/teacher", "skipped (done)" if "B2/teacher" in runner.skipped
        else f"trained in {rows['B2/teacher']['seconds']} s")
    teacher, teacher_id = frozen_teacher(path, cfg["device"])
    caches: dict[Any, Any] = {}
    for name in selected(b2_rows, cfg["rows"]):
        rows[name] = run_student_row(name, b2_rows[name], teacher, ds, cfg, out, runner, dataset, teacher_id,
                                     caches, views=PAIRS_VIEWS, directions=PAIRS_DIRECTIONS, split=split)
        log(name, "skipped (done)" if name in runner.skipped else f"trained in {rows[name]['seconds']} s")
    return rows, results_table(list(rows.values()), reference=rows.get("B2/teacher"))


FIGURE_PARTS = (("A", "A/", "o"), ("B", "B/", "s"), ("B2", "B2/", "D"), ("C", "C/", "^"))
FIGURE_TITLES = {"A": "A · street→drone", "B": "B · street→drone", "B2": "B2 · panorama→satellite",
                 "C": "C · panorama→satellite"}


def headline_table(table_a: Any, table_b: Any, table_b2: Any, table_c: Any):
    """One line per model: street→drone for parts A and B, panorama→satellite for B2 and C (their only direction)."""
    import pandas as pd

    def street_drone(t: Any) -> Any:
        return t[t.direction == "street→drone"] if len(t) else t

    return pd.concat([street_drone(table_a), street_drone(table_b), table_b2, table_c], ignore_index=True)


def cost_figures(table_a: Any, table_b: Any, table_b2: Any, table_c: Any, figures: str | Path | None = None):
    """Notebook 03's two figures, R@1 against GFLOPs (every model, labelled) and R@1 per part;
    saved as `03_pareto.png` and `03_parts.png` under `figures` when given. Returns both figures."""
    import matplotlib.pyplot as plt

    main = headline_table(table_a, table_b, table_b2, table_c)
    rows = main.row if len(main) else main.get("row", [])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for part, prefix, marker in FIGURE_PARTS:
        sub = main[rows.str.startswith(prefix)] if len(main) else main
        if not len(sub):
            ax.scatter([], [], marker=marker, label=f"part {part}")
            continue
        ax.scatter(sub.gflops, sub["R@1"], marker=marker, label=f"part {part}")
        for _, r in sub.iterrows():
            ax.annotate(r.row.split("/", 1)[1], (r.gflops, r["R@1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log"); ax.set_xlabel("GFLOPs per image (log)"); ax.set_ylabel("R@1 (%)"); ax.legend()
    ax.set_title("Accuracy against cost")
    fig.tight_layout()
    # one panel per part that ran (a part left out of `rows` gets no empty panel)
    shown = [(part, prefix) for part, prefix, _ in FIGURE_PARTS if len(main) and rows.str.startswith(prefix).any()]
    shown = shown or [FIGURE_PARTS[0][:2]]
    bars, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 3.8), squeeze=False)
    for ax, (part, prefix) in zip(axes[0], shown):
        t = main[rows.str.startswith(prefix)] if len(main) else main
        ax.barh([r.split("/", 1)[1] for r in t.row] if len(t) else [], t["R@1"] if len(t) else [])
        ax.set_title(FIGURE_TITLES[part]); ax.set_xlabel("R@1 (%)")
    bars.tight_layout()
    if figures is not None:
        fig.savefig(Path(figures) / "03_pareto.png", dpi=120)
        bars.savefig(Path(figures) / "03_parts.png", dpi=120)
    return fig, bars


def findings_text(records: Sequence[Mapping[str, Any]], runner: RowRunner, profile: str, pooling: str,
                  frozen_backbone: bool, table_a: Any, part_b: Mapping[str, Any], part_b2: Mapping[str, Any],
                  table_c: Any, dataset: str, pairs_dataset: str) -> str:
    """Notebook 03's findings (Markdown), built from this run's rows and the metrics records.

    `pooling`: Phase 1's pooling (`A/full`'s); `frozen_backbone`: whether Part A's rows trained on
    notebook 02's frozen backbone, which decides what a small difference between rows can mean."""
    from . import findings

    lines = [f"Profile `{profile}`, rows: {len(runner.ran)} trained now, {len(runner.skipped)} reused from an earlier run.", ""]
    if len(table_a):
        lines += ["With few test queries one query moves recall by 100/queries points; a change no larger than "
                  "that (or than 1 point) is reported as no measurable effect.", "",
                  f"**Part A** (each change against `A/full`, whose pooling is `{pooling}`; "
                  + ("every row on notebook 02's frozen backbone, training its own neck, pooling and loss):" if frozen_backbone
                     else "every row trained from ImageNet weights within its budget, so small rows mostly show cost):")]
        lines += effect_sentences(table_a, "A/full") or ["- only one row ran."]
    for title, part, rows, on, direction in (("Part B (Distill4Geo, street→drone)", "B", part_b, dataset, ("street", "drone")),
                                             (f"Part B on the pairs ({pairs_dataset}, panorama→satellite; the panorama is resized "
                                              "to a square for teacher and students, geolocal's simplification)", "B2", part_b2,
                                              pairs_dataset, PAIRS_DIRECTIONS[0])):
        found = (findings.distillation(records, on, direction, rows=rows)
                 + findings.perturbation(records, on, direction, part=part, rows=rows))
        if found:
            lines += ["", f"**{title}** (teacher/student ratios above 1: the student is smaller):", findings.markdown(found)]
    if len(table_c):
        base = "C/safa-polar" if "C/safa-polar" in set(table_c.row) else table_c.row.iloc[0]
        lines += ["", f"**Part C** (panorama→satellite, against `{base}`):"] + effect_sentences(table_c, base)
    return "\n".join(lines)
