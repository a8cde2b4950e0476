"""Notebook 04's small pieces worth a test: query sets per condition, chance references, timing,
and the comparison table read back from the metrics records.

Chance references are computed, not sampled, so a rerun cannot move them:
- retrieval: a random database ranking puts a positive first with probability |positives| / |database|;
- classification: a random cell (uniform over the classifier's classes) is right with probability
  (classes whose centre lies within the radius) / (classes).
Both keep queries with no positive in the denominator, as the protocols do.

Evaluation needs only the split it scores: `evaluate_vpr` (a saved CosPlace model, `vpr-25m`) and
`evaluate_localization` (a saved D&C model, `dc-lr-25m`) read `<root>/<split>/` alone, so a
test-only release (Tokyo-XS: test/database and test/queries) or a `val` split works as well as
the root a model was trained on. `resolve_query_folders` names the query folders of a split.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import dryrun
from ..data.datasets import ImageItem, utm_of

# the condition a query folder holds, by the names releases use (the world's export, SF-XS's queries_v1)
FOLDER_CONDITIONS = {"queries": "day", "queries_v1": "day", "queries_day": "day", "queries_night": "night",
                     "queries_fog": "fog"}
DATABASE_FOLDER = "database"


def resolve_query_folders(root: str | Path, split: str = "test",
                          query_folders: str | Mapping[str, str] | None = None,
                          database_folder: str = DATABASE_FOLDER) -> dict[str, str]:
    """{condition: query folder} of `<root>/<split>/`.

    `query_folders` None: the one folder beside `database/` (named in a printed line), or, when
    there are several, each mapped to its condition (queries → day, queries_night → night,
    queries_fog → fog, queries_v1 → day; another name is its own condition). A folder name, or a
    {condition: folder} dict, is checked: a missing folder fails with what the split holds.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        held = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else None
        raise FileNotFoundError(f"{split_dir}: no {split!r} split; {root} holds "
                                f"{held if held is not None else 'nothing (no such folder)'}. Give a VPR root "
                                f"with {split}/{database_folder} and {split}/<query folder>, or another split")
    held = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name != database_folder)
    if query_folders is None:
        if not held:
            raise FileNotFoundError(f"{split_dir}: no query folder beside {database_folder}/ (it holds "
                                    f"{sorted(p.name for p in split_dir.iterdir())}); add one, e.g. {split}/queries")
        out: dict[str, str] = {}
        for name in held:
            cond = FOLDER_CONDITIONS.get(name) or (name[len("queries_"):] if name.startswith("queries_") else name)
            if len(held) == 1 and name in ("queries", "queries_v1"):
                cond = "all"  # a release's one query folder mixes conditions (Tokyo-XS: day, sunset, night)
            out[name if cond in out else cond] = name
        if len(held) == 1:
            print(f"{split_dir}: query folder {held[0]!r} (the only one beside {database_folder}/), "
                  f"as {next(iter(out))} queries")
        else:
            print(f"{split_dir}: query folders " + ", ".join(f"{f} → {c}" for c, f in out.items()))
        return out
    if isinstance(query_folders, str):
        cond = FOLDER_CONDITIONS.get(query_folders, query_folders)
        if query_folders in ("queries", "queries_v1") and not {"queries_night", "queries_fog"} & set(held):
            cond = "all"  # the release's one query folder, whatever conditions it mixes
        wanted = {cond: query_folders}
    else:
        wanted = dict(query_folders)
    missing = [f for f in wanted.values() if not (split_dir / f).is_dir()]
    if missing:
        raise FileNotFoundError(f"{split_dir}: no query folder {', '.join(map(repr, missing))}; the split holds "
                                f"{held or 'no query folder'} beside {database_folder}/. Name one with "
                                f"-p query_folder NAME, or leave it unset to use what the split holds")
    return wanted


def split_sets(root: str | Path, split: str = "test", query_folders: str | Mapping[str, str] | None = None,
               database: bool = True) -> tuple[list[ImageItem] | None, dict[str, list[ImageItem]]]:
    """(database or None, {condition: queries}) of one split, read from that split only; every
    folder goes through the VPR loader's checks (bad names and broken files listed at once)."""
    folders = resolve_query_folders(root, split, query_folders)
    db = _folder_items(root, split, DATABASE_FOLDER, "gallery") if database else None
    return db, {cond: _folder_items(root, split, folder, "query") for cond, folder in folders.items()}


@dataclasses.dataclass
class VPRData:
    """Notebook 04's place-recognition data, checked: the root that trains (`train_items` None when it
    has no train split), its test split by condition, the splits the course table scores, and the
    test-only sets evaluated with the same trained models."""

    root: Path
    dataset: str
    folders: dict[str, str]
    train_items: list[ImageItem] | None
    database: list[ImageItem]
    queries: dict[str, list[ImageItem]]
    eval_splits: list[str]
    test_sets: dict[str, Any]
    needs: Any

    @property
    def conditions(self) -> list[str]:
        return list(self.queries)


def prepare_vpr(profile: str, preset: str, seed: int, vpr_root: str | Path | None = None,
                vpr_test_roots: Mapping[str, str | Path] | None = None, query_folder: str | None = None,
                splits: Sequence[str] | None = None, saved: str | Path | None = None) -> VPRData:
    """Resolve, check and load every place-recognition set a run uses before any training: a bad file,
    a missing split or a missing query folder (also of the test-only sets) fails here, naming it."""
    from ..data.validate import check_data, format_report
    from ..training import cosplace, needs as req
    from . import dataroots

    needs = req.Needs()
    data = dataroots.vpr(profile, preset, seed, vpr_root)
    test_sets = dataroots.vpr_tests(profile, preset, seed, vpr_test_roots, synthetic=data.synthetic)
    root = data.root
    print(data.describe(), "| test-only:", ", ".join(d.describe() for d in test_sets.values()) or "none")
    folders = resolve_query_folders(root, "test", query_folder)
    checked = check_data("vpr", root, split="test", query_folder=next(iter(folders.values())), decode=False)
    print("test:", format_report(checked, max_problems=10))
    checked.raise_on_errors()
    train_items = None
    if (root / "train").is_dir():
        checked = check_data("vpr", root, split="train", query_folder=None, database_folder=".", decode=False)
        print("train:", format_report(checked, max_problems=10))
        checked.raise_on_errors()
        train_items = cosplace.load_train_items(root)  # train split only: database and every query folder, or the plain tree
        needs.met(f"train split: {len(train_items)} images")
    else:
        needs.fallback("train", f"{root} has no train split: the methods are evaluated with the models saved under "
                                f"{saved} by an earlier run on a root with train/, and skipped where there is none")
    for test in test_sets.values():
        for split in dataroots.vpr_splits(test.root) or ["test"]:
            resolve_query_folders(test.root, split)  # fails now, naming the folder, not after training
    eval_splits = list(splits or [s for s in ("val", "test") if s in dataroots.vpr_splits(root)])
    database, queries = split_sets(root, "test", folders)
    database, queries = dryrun.items(database), {c: dryrun.items(q) for c, q in queries.items()}
    print(f"train: {len(train_items or [])} images; test database: {len(database)}; test queries: "
          + ", ".join(f"{c} {len(q)}" for c, q in queries.items()) + f"; course table splits: {eval_splits}")
    return VPRData(root, data.dataset, folders, train_items, database, queries, eval_splits, test_sets, needs)


def _folder_items(root: str | Path, split: str, folder: str, role: str) -> list[ImageItem]:
    from ..data.datasets import load_dataset

    ds = load_dataset("vpr", root, split=split, database_folder=folder, query_folder=None)
    if role == "gallery":
        return ds.items
    return [dataclasses.replace(it, role="query", view="query") for it in ds.items]


def evaluate_vpr(model: Any, root: str | Path, split: str = "test",
                 query_folders: str | Mapping[str, str] | None = None, image_size: int | None = None,
                 device: str = "cpu", batch_size: int = 64) -> dict[str, tuple[Any, float]]:
    """A CosPlace model (a `PlaceNet`, a training, or the folder `save_cosplace` wrote) on any VPR split:
    per condition, (`cosplace.Retrieval` with R@1/5/10/20 under `vpr-25m`, queries per second).
    `image_size` defaults to the size the model was trained at."""
    from ..training.cosplace import load_cosplace

    if isinstance(model, (str, Path)):
        model = load_cosplace(model, device)
    model = getattr(model, "model", model)  # a GroupTraining: its descriptor network
    size = image_size or model.options["image_size"]
    database, queries = split_sets(root, split, query_folders)
    return retrieve_conditions(model, database, queries, size, device, batch_size)


def evaluate_localization(training: Any, root: str | Path, split: str = "test",
                          query_folders: str | Mapping[str, str] | None = None, image_size: int | None = None,
                          device: str = "cpu", batch_size: int = 64) -> dict[str, tuple[Any, float]]:
    """A D&C model (a `GroupTraining`, or the folder `save_dc` wrote) on any split's queries: per
    condition, (`dc.Localization` with LR@1/5/10/20 under `dc-lr-25m`, queries per
    second). No database is read, so the split needs only its query folders."""
    from ..training.dc import load_dc

    if isinstance(training, (str, Path)):
        training = load_dc(training, device)
    size = image_size or training.config.get("image_size") or training.model.options["image_size"]
    _, queries = split_sets(root, split, query_folders, database=False)
    return localize_conditions(training, queries, size, device, batch_size)


def query_view(condition: str) -> str:
    """The records' name of a query condition: `query-day`, `query-night`, ..."""
    return f"query-{condition}"


def chance_recall(query_utm: np.ndarray, db_utm: np.ndarray, radius: float = 25.0) -> float:
    """Expected R@1 (percent) of a uniformly random ranking under `vpr-25m`."""
    from ..evaluation.metrics import chance_recall as chance, vpr_positives

    if len(query_utm) == 0:
        return 0.0
    return chance(vpr_positives(query_utm, db_utm, radius), len(db_utm))


def chance_lr(query_utm: np.ndarray, centres: np.ndarray, radius: float = 25.0) -> float:
    """Expected LR@1 (percent) of a uniformly random cell among `centres` under `dc-lr-25m`."""
    return chance_recall(query_utm, centres, radius)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, wall seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def comparison_table(records: Iterable[Mapping[str, Any]], dataset: str, split: str = "test") -> "Any":
    """One row per (model, query view) of this dataset's `vpr` records on `split` (the last of
    duplicates): R@1/5 or LR@1/5, whether a database is needed, its or the classifier's memory, queries/s."""
    import pandas as pd

    rows = []
    for r in records:
        if r.get("task") != "vpr" or r.get("dataset") != dataset or (r.get("split") or "test") != split:
            continue
        m = r.get("metrics") or {}
        retrieval = r.get("protocol") == "vpr-25m"
        rows.append({"model": r["model"], "query": r.get("query_view"), "protocol": r.get("protocol"),
                     "@1": m.get("R@1" if retrieval else "LR@1"), "@5": m.get("R@5" if retrieval else "LR@5"),
                     "database needed": retrieval, "memory MB": m.get("memory_mb"),
                     "train s": m.get("train_s"), "queries/s": m.get("queries_per_s")})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.drop_duplicates(["model", "query", "protocol"], keep="last").reset_index(drop=True)


def retrieve_conditions(model: Any, database: Sequence[ImageItem], queries: Mapping[str, Sequence[ImageItem]],
                        image_size: int, device: str = "cpu", batch_size: int = 64) -> dict[str, tuple[Any, float]]:
    """Per condition: (`cosplace.Retrieval` under vpr-25m, queries per second). The database is
    embedded once; queries/s counts embedding the query and searching the database. A dry run
    embeds `dryrun.ITEMS` database images and queries per condition."""
    from ..training.cosplace import retrieve
    from ..training.groups import embed_paths, preprocess_spec

    database = dryrun.items(database)
    queries = {cond: dryrun.items(items) for cond, items in queries.items()}
    db = embed_paths(model, [it.path for it in database], image_size, batch_size, device)
    out = {}
    for condition, items in queries.items():
        def run():
            q = embed_paths(model, [it.path for it in items], image_size, batch_size, device)
            out = retrieve(q, utm_of(items), db, utm_of(database))
            if hasattr(out, "preprocess"):  # a Retrieval (tests may stand in other objects)
                out.preprocess = preprocess_spec(image_size).to_dict()
            return out
        result, seconds = timed(run)
        out[condition] = (result, len(items) / max(seconds, 1e-9))
    return out


def localize_conditions(training: Any, queries: Mapping[str, Sequence[ImageItem]], image_size: int,
                        device: str = "cpu", batch_size: int = 64) -> dict[str, tuple[Any, float]]:
    """Per condition: (`dc.Localization` under dc-lr-25m, queries per second)."""
    from ..training.dc import evaluate_dc

    out = {}
    for condition, items in queries.items():
        items = dryrun.items(items)
        result, seconds = timed(lambda: evaluate_dc(training, items, image_size, device=device,
                                                    batch_size=batch_size))
        out[condition] = (result, len(items) / max(seconds, 1e-9))
    return out


def course_table(records: Iterable[Mapping[str, Any]], models: Sequence[str],
                 sets: Sequence[tuple[str, str]]) -> "Any":
    """The course project's first table: one row per (dataset, split, query condition) of `sets`,
    R@1 and R@5 (LR@1/LR@5 for D&C) of each model, read from the records (the last of duplicates)."""
    import pandas as pd

    cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    wanted = set(sets)
    for r in records:
        if r.get("task") != "vpr" or r.get("model") not in models or (r.get("dataset"), r.get("split")) not in wanted:
            continue
        m = r.get("metrics") or {}
        at = ("R@1", "R@5") if r.get("protocol") == "vpr-25m" else ("LR@1", "LR@5")
        row = cells.setdefault((r["dataset"], r["split"], r.get("query_view") or ""), {})
        for k in at:
            row[f"{r['model']} {k}"] = m.get(k)
    order = {s: i for i, s in enumerate(sets)}
    rows = [{"dataset": d, "split": s, "queries": q.removeprefix("query-"), **v}
            for (d, s, q), v in sorted(cells.items(), key=lambda kv: (order[kv[0][:2]], kv[0][2]))]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the hierarchical classifier

@dataclasses.dataclass
class Encoder:
    """The frozen street encoder of the hierarchical classifier, and what its records call it."""

    model: Any
    name: str          # "phase1", or "phase1-random-init" when notebook 02 saved no checkpoint
    image_size: int
    id: str            # the checkpoint's content id (or the init seed): a saved classifier of another encoder is refused
    checkpoint: Path | None


def phase1_encoder(checkpoint: str | Path | None, phase1: Mapping[str, Any], seed: int,
                   device: str = "cpu") -> Encoder:
    """Notebook 02's Phase 1 model when its checkpoint (`<name>.json`) exists, else the same
    architecture at random init: the classifier still runs, and its records say which it was."""
    from .ablation import checkpoint_id
    from ..training.crossview import phase1_model
    from ..training.crossview import load_trained_model
    from ..training.loop import seed_everything

    ckpt = Path(checkpoint).with_suffix(".json") if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        model, meta = load_trained_model(ckpt, device)
        size = int(meta.get("config", {}).get("extra", {}).get("image_size") or phase1["image_size"])
        return Encoder(model, "phase1", size, checkpoint_id(ckpt.with_suffix("")), ckpt)
    seed_everything(seed)
    return Encoder(phase1_model(dict(phase1)).eval(), "phase1-random-init", int(phase1["image_size"]),
                   f"random-init-{seed}", None)


@dataclasses.dataclass
class HierarchicalRun:
    """Both protocols' results of one run, the config its records carry, and the records."""

    results: dict[str, Any]        # protocol -> classifier.ClassificationResult
    config: dict[str, Any]
    records: list[dict[str, Any]]

    def table(self) -> "Any":
        import pandas as pd

        return pd.DataFrame({k: v.metrics for k, v in self.results.items()})


def run_hierarchical(items: Sequence[ImageItem], encoder: Encoder, *, head: str, place_mode: str, epochs: int,
                     seed: int, device: str, saved: str | Path, source: str, profile: str, dataset: str,
                     root: str | Path, notes: Mapping[str, Any] | None = None,
                     test_share: float = 0.25) -> HierarchicalRun:
    """Notebook 04's hierarchical classifier, region → place on frozen street embeddings.

    `closed-set` holds out `test_share` of each train place's images (split `train` in the record);
    `open-set` asks for the unseen test regions of the test queries by nearest prototype of the test
    gallery (split `test`). The classifier is saved in `saved` and reused when the encoder and labels
    match. A dry run caps the train places and the test images.
    """
    from ..training import hierarchical as H
    from ..evaluation.crossview import embed_set
    from ..data.transforms import Preprocess

    street = [it for it in items if it.view == "street"]
    train = dryrun.places([it for it in street if it.split == "train"])
    ref = dryrun.items([it for it in street if it.split == "test" and it.role == "gallery"])
    query = dryrun.items([it for it in street if it.split == "test" and it.role == "query"])
    if not train:
        raise ValueError(f"{root}: no street image in the train split; the hierarchical classifier learns "
                         "regions and places from train street images (street/ of the University-1652 train folder)")
    emb = {k: embed_set(encoder.model, v, "street", encoder.image_size, device).emb
           for k, v in (("train", train), ("ref", ref), ("query", query))}
    spec = Preprocess(int(encoder.image_size)).to_dict()  # embed_set's resize
    r_ids, r_local = np.unique(H.region_labels(train), return_inverse=True)
    p_ids, p_local = np.unique(_labels(train), return_inverse=True)
    tr_idx, te_idx = H.closed_set_split(p_local, test_share, seed)
    h_cfg = H.HierarchicalConfig(head=head, place_mode=place_mode, epochs=epochs, seed=seed, device=device)
    (model, _), train_s = timed(lambda: H.load_or_fit_hierarchical(
        emb["train"][tr_idx], r_local[tr_idx], p_local[tr_idx], h_cfg, saved, region_ids=r_ids, place_ids=p_ids,
        settings={"encoder": encoder.id, "encoder_size": encoder.image_size}))
    closed = H.evaluate_closed_set(model, emb["train"][te_idx], r_local[te_idx], p_local[te_idx])
    ref_regions = H.region_labels(ref) if ref else np.zeros(0, np.int64)
    opened = H.evaluate_open_set(emb["ref"], ref_regions, _labels(ref), emb["query"],
                                 H.region_labels(query) if query else np.zeros(0, np.int64), _labels(query))
    config = {**h_cfg.to_dict(), "encoder": encoder.name, "train_s": train_s, "root": str(root),
              "regions": len(r_ids), "places": len(p_ids), "test_images": len(te_idx), **(notes or {})}
    results, records = {}, []
    for protocol, res, split, n_regions in ((H.PROTOCOL_CLOSED, closed, "train", len(r_ids)),
                                            (H.PROTOCOL_OPEN, opened, "test", len(np.unique(ref_regions)))):
        res.preprocess = spec
        records.append(H.write_classification_record(source, res.metrics, protocol=protocol, dataset=dataset,
                                                      profile=profile, seed=seed, split=split, query_view="street",
                                                      config={**config, "regions_scored": n_regions},
                                                      result=res))
        results[protocol] = res
    return HierarchicalRun(results, config, records)


def _labels(items: Sequence[ImageItem]) -> np.ndarray:
    return np.array([int(it.label) for it in items], np.int64)


def region_confusion_figure(results: Mapping[str, Any]) -> "Any":
    """One row-normalised region confusion matrix per protocol: where a region's images go."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.3), squeeze=False)
    im = None
    for ax, (protocol, res) in zip(axes[0], results.items()):
        cm = res.confusion.astype(float)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
        ax.set(title=f"region confusion · {protocol} (top-1 {res.metrics['region_top1']:.1f}%)",
               xlabel="predicted region", ylabel="true region")
        ax.title.set_fontsize(9)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of the true region's images")
    return fig
