"""Notebook 06's research studies: a base CosPlace configuration and variants that each change one
thing, trained through the shared loop and evaluated per query condition on every evaluation set.

A study (`STUDIES`) is a question and a list of `Variant`s built from the `studies` profile section
(`variants`). `StudyRunner.run(study)` trains each variant (and the base) on each seed through
`cosplace.load_or_train_cosplace`, so the one loop trains it and a saved model of the same settings
is reused, then evaluates it, unchanged, on:

- the VPR root's `val` and `test` splits, and `test-heldout`, the part of each test query condition
  that domain adaptation never sees (`heldout_share`);
- each test-only set (the world's second city `geolib.world.city`, or Tokyo-XS given as
  `vpr_test_roots`), with no retraining.

Every (variant, seed, evaluation set, condition) is one `vpr-25m` metrics record: `model`
`<study>/<variant>` (`<study>/base` for the base), `split` and `dataset` the set, `query_view`
`query-<condition>`. A record carries `config.run_hash`, the hash of everything that decides it
(the model's settings as saved beside its weights, AdaBN and histogram matching, the evaluation sets'
files); a rerun
skips a variant whose records of that hash are all there, and retrains one whose settings changed.

Cheap by construction where the study allows: with a frozen backbone (the default profile), the
backbone's maps of every evaluation image are computed once and each variant only aggregates them;
training maps of each augmentation are cached once per seed and shared by the variants that use them.

Domain adaptation reads the target queries' pixels only, never their coordinates; the records of
`test-heldout` are on queries it did not read at all. Selection ("the best variant") is made on
`val`; `test`, `test-heldout` and the test-only sets only report.

A difference to the base is called *measurable* when there are at least two seeds of both and
|Δ mean| exceeds twice the larger of their two seed standard deviations (docs/studies.md).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import dryrun
from ..data.datasets import ImageItem, utm_of

SOURCE = "06_research_studies"
STUDIES = ("augmentation", "backbone", "aggregation", "vicreg", "adaptation", "optimizer")
QUESTIONS = {
    "augmentation": "Which training augmentation makes the descriptor hold up at night and in fog?",
    "backbone": "How much does the backbone matter: ResNet-18, EfficientNet-Lite0 (ImageNet), a transformer?",
    "aggregation": "GeM, MixVPR, attention pooling or NetVLAD on the same backbone maps?",
    "vicreg": "Does VICReg on two augmented views of each image help, at which weight and with which pair?",
    "adaptation": "Can the unlabelled night and fog queries adapt the model to their domain (AdaBN, CORAL, DANN, "
                  "histogram matching)?",
    "optimizer": "Adam, AdamW, SGD with momentum, ASGD; learning rate × weight decay; schedules.",
}
STUDIES_VERSION = 1  # raise when an evaluation changes, so older records are not reused
HELDOUT = "test-heldout"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One thing changed from the base: CosPlace settings (`changes`), or an adaptation at evaluation
    time: AdaBN (`adabn`), histogram matching of the target queries to the day images (`histmatch`).
    `needs` says why it cannot run here (it is listed and skipped, never silently dropped)."""

    name: str
    changes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    adabn: bool = False
    needs: str | None = None
    histmatch: bool = False


BASE = Variant("base")


def variants(study: str, cfg: Mapping[str, Any]) -> list[Variant]:
    """The variants of `study` for the resolved `studies` section `cfg` (the base not included): all
    of them, or those `cfg["variants"]` names for the study, in the study's order."""
    every = all_variants(study, cfg)
    chosen = (cfg.get("variants") or {}).get(study)
    if chosen is None:
        return every
    names = [v.name for v in every]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"variants of {study!r}: no {', '.join(map(repr, unknown))}; choose among {', '.join(names)}")
    return [v for v in every if v.name in set(chosen)]


def all_variants(study: str, cfg: Mapping[str, Any]) -> list[Variant]:
    """Every variant of `study` the resolved `studies` section `cfg` describes (the base not included)."""
    from ..training import loop
    from ..training.augment import AUGMENTATIONS
    from ..training.cosplace import AGGREGATIONS, backbone_input_size

    base = dict(cfg["base"])
    if study == "augmentation":
        # one input normalisation (a preprocessing change, train and test) and the weather augmentation
        # on top of it: on val, stretch was within a point of the best night R@1 of NORMALIZATIONS and
        # the only one to gain on day and fog too (docs/studies.md)
        return ([Variant(a, {"augment": a}) for a in AUGMENTATIONS if a != "base"]
                + [Variant("input-stretch", {"augment": "base+stretch"}),
                   Variant("weather+input-stretch", {"augment": "weather+stretch"})])
    if study == "backbone":
        tune = {"freeze_backbone": False, "augment_copies": 0, **dict(cfg.get("finetune") or {})}
        names = ["resnet18", "efficientnet-lite0", cfg["transformer"]]
        if base["backbone"] == "resnet18":
            names.append("resnet50")
        out = []
        for name in names:
            if name == base["backbone"] and not base.get("freeze_backbone"):
                continue  # that is the base itself
            lite0 = name == "efficientnet-lite0"
            changes = {"backbone": name, "pretrained": True if lite0 else cfg["backbone_pretrained"],
                       "stage": base.get("stage", -1) if lite0 else -1,
                       "image_size": backbone_input_size(name, base["image_size"]), **tune}
            out.append(Variant(name + ("-finetuned" if name == base["backbone"] else ""), changes))
        return out
    if study == "aggregation":
        return [Variant(a, {"aggregation": a}) for a in AGGREGATIONS if a != base.get("aggregation", "gem")]
    if study == "vicreg":
        weights = list(cfg["vicreg_weights"])
        mid = weights[len(weights) // 2]
        return ([Variant(f"weight-{w:g}", {"vicreg_weight": w}) for w in weights]
                + [Variant(f"pair-{pair}-w{mid:g}", {"vicreg_weight": mid, "vicreg_pair": pair})
                   for pair in ("night", "haze")])
    if study == "adaptation":
        w = cfg["align_weight"]
        return [Variant("adabn", adabn=True), Variant("coral", {"align": "coral", "align_weight": w}),
                Variant("dann", {"align": "dann", "align_weight": w}),
                Variant("adabn+weather-aug", {"augment": "weather"}, adabn=True),
                Variant("histmatch", histmatch=True),
                Variant("histmatch+input-stretch", {"augment": "base+stretch"}, histmatch=True)]
    if study == "optimizer":
        lr = base.get("backbone_lr", 1e-5)
        out = [Variant(f"adamw-lr{g:g}-wd{wd:g}", {"optimizer": "adamw", "backbone_lr": g, "weight_decay": wd})
               for g in cfg["lr_grid"] for wd in cfg["wd_grid"]]
        for name in ("sgd", "asgd"):
            out.append(Variant(f"{name}-momentum" if name == "sgd" else name,
                               {"optimizer": name, "backbone_lr": lr * 10},
                               needs=None if name in loop.OPTIMIZERS else
                               f"geolib.training.loop has no {name!r} optimizer (it has {', '.join(loop.OPTIMIZERS)})"))
        for name in ("cosine", "plateau"):
            out.append(Variant(name, {"scheduler": name},
                               needs=None if name in loop.SCHEDULERS else
                               f"geolib.training.loop has no {name!r} scheduler (it has {', '.join(loop.SCHEDULERS)})"))
        return out
    raise ValueError(f"unknown study {study!r}; choose among {', '.join(STUDIES)}")


# --------------------------------------------------------------------------- data

@dataclasses.dataclass
class EvalSet:
    """One evaluation set: a split of a VPR root (its database and its queries per condition)."""

    dataset: str
    split: str
    database: list[ImageItem]
    queries: dict[str, list[ImageItem]]

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.split)


@dataclasses.dataclass
class StudyData:
    """What the studies train on (the VPR root's train split), evaluate on, and adapt to."""

    root: Path
    dataset: str
    train_items: list[ImageItem]
    eval_sets: list[EvalSet]
    target: dict[str, list[ImageItem]]        # condition -> the unlabelled adaptation queries
    test_sets: list[str]                      # the test-only datasets' names

    @property
    def report_sets(self) -> list[tuple[str, str]]:
        """The sets a study reports: val (where variants are chosen), the held-out test queries (or the
        test split when there are none) and every test-only set."""
        keys = [s.key for s in self.eval_sets]
        test = [k for k in keys if k[1] == HELDOUT] or [k for k in keys if k == (self.dataset, "test")]
        return [k for k in keys if k == (self.dataset, "val")] + test + \
            [k for k in keys if k[0] in self.test_sets]

    @property
    def course_sets(self) -> list[tuple[str, str]]:
        """The course table's rows: val and test of the root, then every test-only set."""
        return [s.key for s in self.eval_sets if s.split != HELDOUT]

    def target_items(self) -> list[ImageItem]:
        return [it for items in self.target.values() for it in items]


def heldout_split(items: Sequence[ImageItem], share: float, seed: int = 0) -> tuple[list[ImageItem], list[ImageItem]]:
    """(adapt, held out) parts of one condition's queries: a seeded draw of `share` of them is held out.
    The draw does not depend on the training seed, so every seed and variant sees the same parts."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"heldout_share {share}: give a share strictly between 0 and 1")
    order = np.random.default_rng([seed, len(items)]).permutation(len(items))
    held = set(order[:int(round(share * len(items)))].tolist())
    return ([it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held])


def prepare(profile: str, cfg: Mapping[str, Any], vpr_root: str | Path | None = None,
            vpr_test_roots: Mapping[str, str | Path] | None = None, query_folder: str | None = None,
            saved: str | Path | None = None) -> StudyData:
    """Check and load every set the studies use before any training (`geoclass.prepare_vpr`): the
    root's train split, its val and test splits by condition, the held-out part of the test queries,
    and the test-only sets; with no data given, the world's export and its second city."""
    from ..profiles import resolve
    from ..training.cosplace import query_condition
    from . import dataroots, geoclass

    seed = int(cfg["seed"])
    preset = resolve(profile, "world")["preset"]
    if vpr_root is None and vpr_test_roots is None:
        from ..world.city import build_city

        city = build_city(dataroots.world(profile, preset, seed), progress=True)
        vpr_test_roots = {f"synthetic-{preset}-city2": city}
    vpr = geoclass.prepare_vpr(profile, preset, seed, vpr_root, vpr_test_roots, query_folder, None, saved)
    if not vpr.train_items:
        raise FileNotFoundError(f"{vpr.root}: no train split; the studies train every variant, so give a "
                                "vpr_root with train/ (SF-XS), and test-only sets as vpr_test_roots")

    def load(root: Path, split: str, dataset: str) -> EvalSet:
        db, queries = geoclass.split_sets(root, split, query_folder if split == "test" and root == vpr.root else None)
        return EvalSet(dataset, split, dryrun.items(db or []), {c: dryrun.items(q) for c, q in queries.items()})

    sets = [load(vpr.root, s, vpr.dataset) for s in vpr.eval_splits]
    test = next((s for s in sets if s.split == "test"), None)
    target: dict[str, list[ImageItem]] = {}
    if test is not None:
        held = {}
        for cond, items in test.queries.items():
            adapt, held[cond] = heldout_split(items, float(cfg["heldout_share"]))
            for it in adapt:  # the condition as the image's name states it (a day query adapts nothing)
                if query_condition(it) != "day":
                    target.setdefault(query_condition(it), []).append(it)
        sets.insert(sets.index(test) + 1, EvalSet(vpr.dataset, HELDOUT, test.database, held))
    for name, root in vpr.test_sets.items():
        for split in dataroots.vpr_splits(root.root) or ["test"]:
            sets.append(load(root.root, split, name))
    print("evaluation sets: " + "; ".join(f"{s.dataset}/{s.split} ({len(s.database)} db, "
                                          + ", ".join(f"{c} {len(q)}" for c, q in s.queries.items()) + ")"
                                          for s in sets))
    print("adaptation target (unlabelled): " + (", ".join(f"{c} {len(v)}" for c, v in target.items()) or "none"))
    return StudyData(vpr.root, vpr.dataset, list(vpr.train_items), sets, target, list(vpr.test_sets))


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class Outcome:
    """One (variant, seed): its metrics per (dataset, split, condition), how it was obtained."""

    study: str
    variant: Variant
    seed: int
    metrics: dict[tuple[str, str, str], dict[str, float]]
    how: str                               # "trained", "loaded", "reused records", "skipped: <why>"
    seconds: float = 0.0
    run_hash: str | None = None


class _MapNet(nn.Module):
    """A backbone's last map, channels-last and flattened, as an embedding network: the one
    embedding path (`geolib.evaluation.embedding.embed`) then embeds it with CosPlace's preprocessing."""

    def __init__(self, backbone: nn.Module, nhwc: bool, pre: Any = None) -> None:
        super().__init__()
        self.backbone, self.nhwc, self.pre = backbone, nhwc, pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x if self.pre is None else self.pre(x))[-1]
        return (maps if self.nhwc else maps.permute(0, 2, 3, 1)).flatten(1)


class _Pre(nn.Module):
    """`net` after an input transform `pre` of the ImageNet-normalised batch (None: `net` itself)."""

    def __init__(self, net: nn.Module, pre: Any = None) -> None:
        super().__init__()
        self.net, self.pre = net, pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x if self.pre is None else self.pre(x))


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    from ..data.images import IMAGENET_MEAN, IMAGENET_STD

    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x * std + mean).clamp(0, 1)


def _renormalize(x: torch.Tensor) -> torch.Tensor:
    from ..data.images import IMAGENET_MEAN, IMAGENET_STD

    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x - mean) / std


class StudyRunner:
    """Trains and evaluates the variants of the studies on one `StudyData`, writing their records.

    Keeps in memory what variants share: the frozen backbone's maps of every evaluation image (and
    their AdaBN versions), the training-map caches, and each run's retrievals (for strips)."""

    def __init__(self, cfg: Mapping[str, Any], data: StudyData, saved: str | Path, profile: str,
                 source: str = SOURCE, device: str = "cpu", progress: bool = False) -> None:
        from ..records import read_records

        self.cfg, self.data, self.saved, self.profile = cfg, data, Path(saved), profile
        self.source, self.device, self.progress = source, device, progress
        from ..evaluation.seeds import seed_list

        if cfg.get("seeds") is not None and not list(cfg["seeds"]):
            raise ValueError("-p seeds []: give at least one training seed, e.g. [0, 1, 2]")
        seeds = seed_list(cfg)  # `seeds`, else the one `seed`
        self.seeds = seeds[:1] if dryrun.active() else seeds
        self.map_cache: dict[Any, Any] = {}
        self._maps: dict[Any, Any] = {}
        self._evaluated: dict[str, tuple[Any, ...]] = {}  # run hash -> this session's (retrievals, config, train_s, model)
        self._adapted: dict[Any, Any] = {}
        self.retrievals: dict[tuple[str, str, int], dict[tuple[str, str, str], Any]] = {}
        self.outcomes: list[Outcome] = []
        self._done = {}
        for r in read_records(profile, source):
            key = (r.get("model"), r.get("seed"), (r.get("config") or {}).get("run_hash"))
            self._done.setdefault(key, {})[(r.get("dataset"), r.get("split"), r.get("query_view"))] = r["metrics"]

    # -- configuration
    def seeds_of(self, study: str) -> list[int]:
        seeded = self.cfg.get("seeded_studies")
        return self.seeds if seeded is None or study in seeded else self.seeds[:1]

    def config(self, variant: Variant, seed: int) -> Any:
        from ..training.cosplace import CosPlaceConfig

        return CosPlaceConfig(**{**dict(self.cfg["base"]), **dict(variant.changes)}, seed=seed, device=self.device)

    def _run_hash(self, cp_cfg: Any, variant: Variant) -> tuple[str, dict[str, Any]]:
        from ..training.cosplace import group_settings
        from ..training.groups import data_fingerprint, settings_hash

        target = self.data.target_items() if cp_cfg.align != "none" else None
        settings = group_settings(self.data.train_items, cp_cfg, target)
        adapts = variant.adabn or variant.histmatch
        decided = {"settings": settings, "adabn": variant.adabn, "version": STUDIES_VERSION,
                   "adapt": data_fingerprint([it.path for it in self.data.target_items()]) if adapts else None,
                   "sets": [[s.dataset, s.split, data_fingerprint([it.path for it in s.database]),
                             {c: data_fingerprint([it.path for it in q]) for c, q in s.queries.items()}]
                            for s in self.data.eval_sets]}
        if variant.histmatch:  # only where it applies: the other runs keep their hash
            decided["histmatch"] = True
        return settings_hash(decided), settings

    def _expected(self) -> set[tuple[str, str, str]]:
        from .geoclass import query_view

        return {(s.dataset, s.split, query_view(c)) for s in self.data.eval_sets for c in s.queries}

    # -- one run
    def run_one(self, study: str, variant: Variant, seed: int) -> Outcome:
        """Train (or load) and evaluate one variant on one seed, or reuse its records of the same hash."""
        from ..training.cosplace import load_or_train_cosplace
        from ..training.groups import settings_hash

        model_name = f"{study}/{variant.name}"
        if variant.needs:
            return self._keep(Outcome(study, variant, seed, {}, f"skipped: {variant.needs}"))
        if (variant.adabn or variant.histmatch) and not self.data.target:
            return self._keep(Outcome(study, variant, seed, {}, "skipped: no night or fog queries to adapt to"))
        cp_cfg = self.config(variant, seed)
        if cp_cfg.align != "none" and not self.data.target:
            return self._keep(Outcome(study, variant, seed, {}, "skipped: no night or fog queries to align with"))
        run_hash, settings = self._run_hash(cp_cfg, variant)
        done = self._done.get((model_name, seed, run_hash), {})
        if self._expected() <= set(done):
            metrics = {(d, s, q.removeprefix("query-")): m for (d, s, q), m in done.items()}
            return self._keep(Outcome(study, variant, seed, metrics, "reused records", run_hash=run_hash))
        start = time.perf_counter()
        if run_hash in self._evaluated:  # the same run under another name (each study's base): not evaluated again
            results, config, train_s, same = self._evaluated[run_hash]
            config = {**config, "study": study, "variant": variant.name, "changes": dict(variant.changes)}
            self.retrievals[(study, variant.name, seed)] = results
            metrics = self._record(model_name, seed, results, config, train_s)
            return self._keep(Outcome(study, variant, seed, metrics, f"same run as {same}",
                                      time.perf_counter() - start, run_hash))
        folder = self.saved / "studies" / settings_hash(settings)
        existed = (folder / "model.json").exists()
        training = load_or_train_cosplace(self.data.train_items, cp_cfg, folder, self.progress,
                                          target=self.data.target_items() if cp_cfg.align != "none" else None,
                                          map_cache=self.map_cache)
        train_s = training.result.extra.get("train_s") or 0.0
        results = self.evaluate(training.model, variant.adabn, augment=cp_cfg.augment, histmatch=variant.histmatch)
        self.retrievals[(study, variant.name, seed)] = results
        config = {"study": study, "variant": variant.name, "changes": dict(variant.changes), "adabn": variant.adabn,
                  "histmatch": variant.histmatch,
                  "run_hash": run_hash, "settings_hash": settings_hash(settings), "model_dir": str(folder),
                  "base": dict(self.cfg["base"]), "heldout_share": self.cfg["heldout_share"],
                  "target": "night/fog test queries not held out, unlabelled"
                  if variant.adabn or variant.histmatch or cp_cfg.align != "none"
                  else None, "dry_run": dryrun.active(),
                  "loss_by_epoch": [round(h["loss"], 3) for h in training.result.history]}
        metrics = self._record(model_name, seed, results, config, train_s)
        self._evaluated[run_hash] = (results, config, train_s, model_name)
        return self._keep(Outcome(study, variant, seed, metrics, "loaded" if existed else "trained",
                                  time.perf_counter() - start, run_hash))

    def _keep(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        return outcome

    def _record(self, model_name: str, seed: int, results: Mapping[tuple[str, str, str], Any],
                config: Mapping[str, Any], train_s: float) -> dict[tuple[str, str, str], dict[str, float]]:
        from ..training.cosplace import write_vpr_record
        from .geoclass import query_view

        out = {}
        for (dataset, split, cond), res in results.items():
            metrics = {**res.metrics, "train_s": train_s}
            rec = write_vpr_record(self.source, metrics, dataset=dataset, profile=self.profile, seed=seed,
                                   model=model_name, split=split, query_view=query_view(cond),
                                   config={**config, "n_queries": int(len(res.predictions))}, result=res)
            self._done.setdefault((model_name, seed, config["run_hash"]), {})[
                (dataset, split, query_view(cond))] = rec["metrics"]
            out[(dataset, split, cond)] = rec["metrics"]
        return out

    # -- evaluation
    def evaluate(self, model: Any, adabn: bool = False, sets: Sequence[EvalSet] | None = None,
                 augment: str = "base", histmatch: bool = False) -> dict[tuple[str, str, str], Any]:
        """`cosplace.Retrieval` per (dataset, split, condition) of `model`, unchanged, on every set.
        A frozen backbone's maps are computed once per image and shared by every variant.

        Every image first goes through the input normalisation `augment` names, if any
        (`geolib.training.augment.input_normalization`: the model trained with it). Then, for the
        queries of a target condition (night, fog) only: with `histmatch`, each channel is mapped so
        that the pooled histogram of that condition's adaptation queries becomes that of the day
        training images (`_match_lut`); with `adabn`, they go through the backbone re-normalised on
        that condition's adaptation queries (the database and day queries through the original)."""
        from ..training.augment import split_name
        from ..training.cosplace import retrieve
        from ..training.groups import embed_paths

        norm = split_name(augment)[1]
        model = model.to(self.device).eval()
        frozen = bool(getattr(model, "freeze_backbone", False))
        size = model.options["image_size"]
        bkey = self._backbone_key(model) if frozen else ""
        out, adapted, done = {}, {}, {}

        def whole(items: Sequence[ImageItem], inp: tuple[str | None, str | None]) -> np.ndarray:
            """Descriptors of the whole network, each image embedded once per input (sets share images)."""
            found = _per_image(done.setdefault(inp, {}), items, lambda missing: embed_paths(
                _Pre(model, self._input(*inp, size)), missing, size, device=self.device))
            return np.stack(found) if found else np.zeros((0, model.out_dim), np.float32)

        for s in sets or self.data.eval_sets:
            if frozen:
                db = self._descriptors(model, bkey, s.database, None, (norm, None))
            else:
                db = whole(s.database, (norm, None))
            for cond, items in s.queries.items():
                target = cond in self.data.target
                adapt = cond if adabn and target else None
                inp = (norm, cond if histmatch and target else None)
                if frozen:
                    q = self._descriptors(model, bkey, items, adapt, inp)
                elif adapt is not None:
                    if (adapt, inp) not in adapted:  # once per condition, not once per set
                        adapted[(adapt, inp)] = self._adapted_model(model, adapt, inp)
                    with torch.no_grad():
                        net = _Pre(adapted[(adapt, inp)], self._input(*inp, size))
                        q = net(self._tensors([it.path for it in items], size)).cpu().numpy()
                else:
                    q = whole(items, inp)
                res = retrieve(q, utm_of(items), db, utm_of(s.database))
                res.preprocess = _spec(size).to_dict()
                out[(s.dataset, s.split, cond)] = res
        return out

    def _backbone_key(self, model: Any) -> str:
        """What decides a frozen backbone's maps: its options and a checksum of its weights (not
        `pretrained`: a saved model is rebuilt without it, and its maps are the trained model's)."""
        import json

        with torch.no_grad():
            weights = float(sum(t.double().sum() for t in model.backbone.state_dict().values()
                                if t.is_floating_point()))
        return json.dumps({**{k: model.options[k] for k in ("backbone", "image_size", "stage")},
                           "weights": weights}, sort_keys=True, default=str)

    def _descriptors(self, model: Any, bkey: str, items: Sequence[ImageItem], adapt: str | None,
                     inp: tuple[str | None, str | None] = (None, None)) -> np.ndarray:
        maps = self._frozen_maps(model, bkey, items, adapt, inp)
        with torch.no_grad():
            parts = [model.aggregate(maps[i:i + 512].to(self.device)).cpu() for i in range(0, len(maps), 512)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, model.out_dim), np.float32)

    def _frozen_maps(self, model: Any, bkey: str, items: Sequence[ImageItem], adapt: str | None,
                     inp: tuple[str | None, str | None] = (None, None)) -> Any:
        from ..evaluation.embedding import embed

        size = model.options["image_size"]
        h, w, c = _grid(model)

        def compute(missing: list[str]) -> Any:
            backbone = model.backbone if adapt is None else self._adapted_backbone(model, bkey, adapt, inp)
            net = _MapNet(backbone, model.nhwc, self._input(*inp, size)).eval()  # embed restores this mode
            flat = embed(net, missing, preprocess=_spec(size), device=self.device, l2=False)
            return torch.from_numpy(flat).reshape(len(missing), h, w, c)

        # image path -> its map, shared by every set and every later evaluation of this backbone
        found = _per_image(self._maps.setdefault((bkey, adapt, inp), {}), items, compute)
        return torch.stack(found) if found else torch.zeros(0, h, w, c)

    def _tensors(self, paths: Sequence[str | Path], size: int) -> Any:
        from ..data.images import load_image

        tf = _spec(size).transform(None)
        return torch.stack([tf(load_image(p)) for p in paths]).to(self.device)

    def _input(self, norm: str | None, match: str | None, size: int) -> Any:
        """What an ImageNet-normalised batch goes through before the backbone: the input
        normalisation `norm` (every image), then the histogram matching of condition `match`
        (its queries only); None when neither applies."""
        from ..training.adaptation import apply_lut
        from ..training.augment import input_normalization

        fn = input_normalization(f"base+{norm}") if norm else None
        lut = self._match_lut(norm, match, size) if match else None
        if fn is None and lut is None:
            return None

        def run(x: torch.Tensor) -> torch.Tensor:
            x = _unnormalize(x)
            if fn is not None:
                x = fn(x)
            if lut is not None:
                x = apply_lut(x, lut.to(x.device))
            return _renormalize(x)

        return run

    def _match_lut(self, norm: str | None, condition: str, size: int) -> torch.Tensor:
        """(3, 256) look-up table mapping `condition`'s adaptation queries (after `norm`) onto the day
        training images: `histogram_match` of their pooled per-channel histograms. The day side is
        the train split's day images (at most 512, evenly spaced); the target side reads pixels only."""
        from ..training.adaptation import histogram_match
        from ..training.cosplace import query_condition

        key = ("lut", norm, condition, size)
        if key not in self._adapted:
            day = [it for it in self.data.train_items if query_condition(it) == "day"]
            day = [day[i] for i in np.linspace(0, len(day) - 1, min(512, len(day))).astype(int)] if day else []
            pre = self._input(norm, None, size)
            images = {}
            for side, items in (("day", day), ("target", self.data.target[condition])):
                x = self._tensors([it.path for it in items], size)
                images[side] = _unnormalize(pre(x) if pre is not None else x)
            self._adapted[key] = histogram_match(images["target"], images["day"])
        return self._adapted[key]

    def _target_batches(self, condition: str, size: int,
                        inp: tuple[str | None, str | None] = (None, None)) -> list[Any]:
        paths = [it.path for it in self.data.target[condition]]
        pre = self._input(*inp, size)
        batches = [self._tensors(paths[i:i + 64], size) for i in range(0, len(paths), 64)]
        return [pre(b) for b in batches] if pre is not None else batches

    def _adapted_backbone(self, model: Any, bkey: str, condition: str,
                          inp: tuple[str | None, str | None] = (None, None)) -> Any:
        from ..training.adaptation import adapt_bn

        key = (bkey, condition, inp)
        if key not in self._adapted:
            self._adapted[key] = adapt_bn(model.backbone, self._target_batches(
                condition, model.options["image_size"], inp), self.device)
        return self._adapted[key]

    def _adapted_model(self, model: Any, condition: str, inp: tuple[str | None, str | None] = (None, None)) -> Any:
        from ..training.adaptation import adapt_bn

        return adapt_bn(model, self._target_batches(condition, model.options["image_size"], inp), self.device)

    # -- studies
    def run(self, study: str, include_base: bool = True) -> list[Outcome]:
        """Every variant of `study` (the base first) on its seeds; one printed line per run."""
        todo = ([BASE] if include_base else []) + variants(study, self.cfg)
        out = []
        for variant in todo:
            for seed in self.seeds_of(study):
                o = self.run_one(study, variant, seed)
                print(f"{study}/{variant.name} seed {seed}: {o.how}" + (f" ({o.seconds:.1f} s)" if o.seconds else ""))
                out.append(o)
        return out

    def retrieval(self, study: str, variant: Variant, seed: int, key: tuple[str, str], cond: str) -> Any:
        """The retrieval of one (variant, seed) on one set and condition, evaluated again from the
        saved model when this session reused its records (for prediction strips)."""
        found = self.retrievals.get((study, variant.name, seed), {}).get((*key, cond))
        if found is not None:
            return found
        from ..training.cosplace import load_cosplace
        from ..training.groups import settings_hash

        folder = self.saved / "studies" / settings_hash(self._run_hash(self.config(variant, seed), variant)[1])
        model = load_cosplace(folder, self.device)
        sets = [s for s in self.data.eval_sets if s.key == key]
        augment = self.config(variant, seed).augment
        return self.evaluate(model, variant.adabn, sets, augment, variant.histmatch)[(*key, cond)]


def _per_image(rows: dict[str, Any], items: Sequence[ImageItem], compute: Any) -> list[Any]:
    """`rows[path]` for every item, in order; `compute(paths)` runs once, on the paths `rows` lacks
    (each once: the held-out queries and the sets' shared databases are not computed again)."""
    paths = [str(it.path) for it in items]
    missing = list(dict.fromkeys(p for p in paths if p not in rows))
    if missing:
        rows.update(zip(missing, compute(missing)))
    return [rows[p] for p in paths]


def _spec(size: int) -> Any:
    from ..training.groups import preprocess_spec

    return preprocess_spec(size)


def _grid(model: Any) -> tuple[int, int, int]:
    size = model.options["image_size"]
    with torch.no_grad():
        return tuple(int(v) for v in model.features(torch.zeros(1, 3, size, size, device=next(
            model.parameters()).device)).shape[1:])  # type: ignore[return-value]


# --------------------------------------------------------------------------- tables

def summarize(records: Iterable[Mapping[str, Any]], study: str, seeds: Sequence[int] | None = None,
              metrics: Sequence[str] = ("R@1", "R@5"),
              run_hashes: Mapping[tuple[str, int], str | None] | None = None) -> "Any":
    """One row per (variant, dataset, split, condition, metric) of `study`'s records (the last record
    of each seed; with `run_hashes` {(model, seed): hash}, only records of those runs): mean and
    sample std over seeds, n, the difference to the base's mean, the spread that difference must
    exceed (twice the larger std) and whether it is `measurable` (≥ 2 seeds of both, |Δ| > spread)."""
    import pandas as pd

    latest: dict[tuple, Mapping[str, Any]] = {}
    for r in records:
        model = str(r.get("model") or "")
        if not model.startswith(f"{study}/") or r.get("task") != "vpr":
            continue
        if seeds is not None and r.get("seed") not in seeds:
            continue
        if run_hashes is not None and (r.get("config") or {}).get("run_hash") != run_hashes.get((model, r.get("seed"))):
            continue
        latest[(model, r.get("seed"), r.get("dataset"), r.get("split"), r.get("query_view"))] = r
    rows = []
    for (model, seed, dataset, split, view), r in latest.items():
        for m in metrics:
            if m in (r.get("metrics") or {}):
                rows.append({"variant": model.split("/", 1)[1], "seed": seed, "dataset": dataset, "split": split,
                             "condition": str(view).removeprefix("query-"), "metric": m,
                             "value": float(r["metrics"][m])})
    from ..evaluation.seeds import summarize as seed_summary

    keys = ["dataset", "split", "condition", "metric"]
    long = pd.DataFrame(rows, columns=["variant", "seed", *keys, "value"])
    joined = seed_summary(long, keys)  # the measurable rule: geolib.evaluation.seeds
    order = {v: i for i, v in enumerate(dict.fromkeys(["base", *long.variant]))}
    joined = joined.sort_values("variant", key=lambda s: s.map(order), kind="stable")
    return joined.reset_index(drop=True)


def study_table(summary: "Any", metric: str = "R@1", splits: Sequence[str] | None = None) -> "Any":
    """The study's table for reading: one row per variant, one column per (set, condition) holding
    `mean ± std` over seeds and the difference to the base, `*` when measurable."""
    import pandas as pd

    s = summary[summary.metric == metric]
    if splits is not None:
        s = s[s.split.isin(splits)]
    if s.empty:
        return pd.DataFrame()

    def cell(r: Any) -> str:
        text = f"{r['mean']:.1f}" + (f" ± {r['std']:.1f}" if r["n"] > 1 else "")
        if r["variant"] != "base" and r["delta"] == r["delta"]:
            text += f" ({r['delta']:+.1f}{'*' if r['measurable'] else ''})"
        return text

    root = _root(summary)
    s = s.assign(cell=s.apply(cell, axis=1),
                 column=s.apply(lambda r: f"{_set_name(r['dataset'], r['split'], root)} {r['condition']}", axis=1))
    table = s.pivot_table(index="variant", columns="column", values="cell", aggfunc="first", sort=False)
    table.columns.name = f"{metric} (%), mean ± std over seeds (Δ to base; * measurable)"
    return table


def _set_name(dataset: str, split: str, root: str | None = None) -> str:
    """A set as tables and findings name it: the split for the VPR root (`root`), the dataset (the
    world's second city as `city2`) for a test-only set, so its `test` is never the root's `test`."""
    if dataset == root or (root is None and split in ("val", HELDOUT)):
        return split
    short = dataset.rsplit("-", 1)[-1] if "city" in dataset else dataset
    return short if split == "test" else f"{short} {split}"


def _root(summary: Any) -> str | None:
    """The VPR root's dataset in a summary: the one with `val` records (None when there is none)."""
    vals = summary[summary.split == "val"].dataset if len(summary) else []
    return str(vals.iloc[0]) if len(vals) else None


def outcomes_table(outcomes: Sequence[Outcome]) -> "Any":
    """How each (variant, seed) of a session was obtained, and in how many seconds."""
    import pandas as pd

    return pd.DataFrame([{"model": f"{o.study}/{o.variant.name}", "seed": o.seed, "how": o.how,
                          "seconds": round(o.seconds, 1)} for o in outcomes])


@dataclasses.dataclass
class StudyResult:
    """A study as notebook 06 shows it: its runs, the summary over seeds, the table, findings, figure."""

    name: str
    outcomes: list[Outcome]
    summary: Any
    table: Any
    findings: list[Any]
    figure: Any

    def markdown(self) -> str:
        from .findings import markdown

        skipped = [f"- {o.study}/{o.variant.name}: {o.how}" for o in self.outcomes
                   if o.how.startswith("skipped") and o.seed == self.outcomes[0].seed]
        return markdown(self.findings) + ("\n" + "\n".join(skipped) if skipped else "")


def run_study(runner: StudyRunner, study: str, figures: str | Path | None = None, metric: str = "R@1") -> StudyResult:
    """Notebook 06's one call per study: run every variant and seed (`StudyRunner.run`), summarise
    this session's runs from the records, draw and save the figure, make the table and the findings."""
    from ..records import read_records

    outcomes = runner.run(study)
    hashes = {(f"{o.study}/{o.variant.name}", o.seed): o.run_hash for o in outcomes if o.run_hash}
    summary = summarize(read_records(runner.profile, runner.source), study, runner.seeds_of(study),
                        run_hashes=hashes)
    sets = runner.data.report_sets
    figure = study_figure(summary, study, sets, metric) if not summary.empty else None
    if figure is not None and figures is not None:
        figure.savefig(Path(figures) / f"studies_{study}.png", dpi=110, bbox_inches="tight")
    conditions = list(dict.fromkeys(summary.condition)) if not summary.empty else []
    found = study_findings(summary, study, [k for k in sets if k[1] != "val"], conditions, metric)
    return StudyResult(study, outcomes, summary, study_table(summary, metric), found, figure)


# --------------------------------------------------------------------------- findings

def _pick(summary: "Any", variant: str, key: tuple[str, str] | str, condition: str, metric: str = "R@1") -> Any:
    """The summary row of (variant, set, condition, metric); `key` is (dataset, split), or a split name."""
    rows = summary[(summary.variant == variant) & (summary.metric == metric) & (summary.condition == condition)]
    rows = rows[rows.split == key] if isinstance(key, str) else rows[(rows.dataset == key[0]) & (rows.split == key[1])]
    return rows.iloc[0] if len(rows) else None


def best_on_val(summary: "Any", condition: str, metric: str = "R@1", exclude: Sequence[str] = ("base",)) -> str | None:
    """The variant with the highest mean `metric` on `val` queries of `condition` (selection never
    looks at test, the held-out queries or a test-only set)."""
    rows = summary[(summary.split == "val") & (summary.metric == metric) & (summary.condition == condition)
                   & ~summary.variant.isin(list(exclude))]
    if rows.empty:
        return None
    return str(rows.sort_values("mean", ascending=False, kind="stable").iloc[0]["variant"])


def study_findings(summary: "Any", study: str, report_sets: Sequence[tuple[str, str]], conditions: Sequence[str],
                   metric: str = "R@1") -> list[Any]:
    """Per condition: the variant best on `val` and how far it moved `metric` from the base on each
    of `report_sets` ((dataset, split) keys), measurable or within the seed spread."""
    from .findings import Finding

    out = []
    for cond in conditions:
        best = best_on_val(summary, cond, metric)
        if best is None:
            continue
        for where in report_sets:
            row = _pick(summary, best, where, cond, metric)
            if row is None:
                continue
            verdict = ("measurable" if row["measurable"] else
                       f"within the seed spread (±{row['spread']:.1f})" if row["n"] > 1 else "one seed: not judged")
            out.append(Finding(f"{study}: {best} (best on val) vs base, {metric} on {cond} queries of "
                               f"{_set_name(*where, _root(summary))}",
                               float(row["delta"]), unit=" points", note=verdict))
    return out


def goal_candidate(summaries: Mapping[str, "Any"], target: str = "night", metric: str = "R@1") -> tuple[str, str] | None:
    """(study, variant) with the largest gain over its base on `val` `target` queries among the best
    variant of each study on val: the one candidate the research goal is judged on."""
    best, best_val = None, -math.inf
    for study, summary in summaries.items():
        name = best_on_val(summary, target, metric)
        row = _pick(summary, name, "val", target, metric) if name else None
        if row is not None and row["delta"] > best_val:
            best, best_val = (study, name), float(row["delta"])
    return best


def research_goal(summaries: Mapping[str, "Any"], report_sets: Sequence[tuple[str, str]], gain: float = 5.0,
                  day_loss: float = 2.0, target: str = "night", metric: str = "R@1") -> list[Any]:
    """The research goal: the augmentation or adaptation variant best on `val` `target`
    queries (`goal_candidate`) must raise `target` R@1 over its base by ≥ `gain` points beyond the
    seed spread, and lose ≤ `day_loss` points on day queries, on every one of `report_sets` (held-out
    queries, second city). `summaries` is {study: summarize(...)}."""
    from .findings import Finding, judge

    best = goal_candidate(summaries, target, metric)
    if best is None:
        return [judge(f"best variant's {target} {metric} gain", None, gain, unit=" points",
                      note="no augmentation or adaptation variant was evaluated on val")]
    study, name = best
    summary = summaries[study]
    out = []
    for where in report_sets:
        night, day = _pick(summary, name, where, target, metric), _pick(summary, name, where, "day", metric)
        if night is None:
            continue
        delta = float(night["delta"])
        where_name = _set_name(*where, _root(summary))
        out.append(Finding(f"{study}/{name} (chosen on val): {target} {metric} gain over base on {where_name}",
                           delta, gain, bool(night["measurable"]) and delta >= gain, ">=", " points",
                           f"{'beyond' if night['measurable'] else 'within'} the seed spread "
                           f"(±{night['spread']:.1f}, {int(night['n'])} seeds); met only when beyond it"))
        if day is not None:
            out.append(judge(f"{study}/{name}: day {metric} change on {where_name}", float(day["delta"]), -day_loss,
                             unit=" points"))
    return out


# --------------------------------------------------------------------------- figures

def augmentation_grid(items: Sequence[ImageItem], cfg: Mapping[str, Any], names: Sequence[str] | None = None,
                      n: int = 6, seed: int = 0) -> "Any":
    """What the network sees: `n` training images (columns) under each augmentation (rows), drawn
    with a fixed seed so the figure repeats."""
    import matplotlib.pyplot as plt
    from ..training.augment import AUGMENTATIONS, StudyAugment, make_augment
    from ..training.cosplace import CosPlaceConfig
    from ..training.groups import ImageTensors

    names = list(names or [*AUGMENTATIONS, "base+stretch"])  # and what the input normalisation shows it
    base_cfg = CosPlaceConfig(**dict(cfg["base"]))
    picked = [items[i] for i in np.linspace(0, len(items) - 1, min(n, len(items))).astype(int)]
    images = ImageTensors([it.path for it in picked], max(64, base_cfg.image_size))
    batch = torch.stack([images[i] for i in range(len(images))])
    fig, axes = plt.subplots(len(names), len(picked), figsize=(1.3 * len(picked), 1.35 * len(names)), squeeze=False)
    state = torch.get_rng_state()
    try:
        for row, name in enumerate(names):
            torch.manual_seed(seed)
            aug = make_augment(dataclasses.replace(base_cfg, image_size=images.image_size), name)
            if not isinstance(aug, StudyAugment):  # the base: the same draws, shown before normalising
                aug = StudyAugment(**dataclasses.asdict(aug))
            shown = aug.unnormalized(batch)
            for col, img in enumerate(shown):
                ax = axes[row][col]
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_xticks([]), ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(name, fontsize=8)
    finally:
        torch.set_rng_state(state)
    fig.suptitle("training augmentations (rows), one random draw per image", fontsize=9)
    fig.tight_layout()
    return fig


def study_figure(summary: "Any", study: str, sets: Sequence[tuple[str, str]], metric: str = "R@1") -> "Any":
    """`metric` per variant (bars, mean over seeds with ± std) for each condition, one panel per set."""
    import matplotlib.pyplot as plt

    s = summary[summary.metric == metric]
    sets = [x for x in sets if ((s.dataset == x[0]) & (s.split == x[1])).any()]
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(4.2 * max(1, len(sets)), 3.2), squeeze=False)
    variants_ = list(dict.fromkeys(s.variant))
    for ax, where in zip(axes[0], sets):
        part = s[(s.dataset == where[0]) & (s.split == where[1])]
        conds = list(dict.fromkeys(part.condition))
        width = 0.8 / max(1, len(conds))
        for k, cond in enumerate(conds):
            rows = part[part.condition == cond].set_index("variant").reindex(variants_)
            ax.bar(np.arange(len(variants_)) + k * width, rows["mean"], width, yerr=rows["std"], label=cond,
                   capsize=2)
        ax.set_xticks(np.arange(len(variants_)) + width * (len(conds) - 1) / 2)
        ax.set_xticklabels(variants_, rotation=45, ha="right", fontsize=7)
        ax.set(title=f"{study} · {_set_name(*where, _root(summary))}", ylabel=f"{metric} (%)", ylim=(0, 100))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def strips_figure(runner: StudyRunner, study: str, best: str, key: tuple[str, str], condition: str = "night",
                  n: int = 4, num_preds: int = 3, folder: str | Path | None = None) -> "Any | None":
    """Prediction strips of the base and of `best` on the same first `n` queries of `condition` of
    `key`'s set: the query, then each model's top predictions (green within 25 m, red beyond)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ..training.cosplace import save_prediction_strips

    sets = [s for s in runner.data.eval_sets if s.key == key]
    if not sets or condition not in sets[0].queries or not sets[0].queries[condition]:
        return None
    s, seed = sets[0], runner.seeds_of(study)[0]
    chosen = next((v for v in variants(study, runner.cfg) if v.name == best), None)
    if chosen is None:
        return None
    queries = s.queries[condition][:n]
    rows = []
    for variant in (BASE, chosen):
        res = runner.retrieval(study, variant, seed, key, condition)
        out = Path(folder or runner.saved / "strips") / study / variant.name
        paths = save_prediction_strips([q.path for q in queries], [d.path for d in s.database],
                                       res.predictions[:n], res.correct[:n], out, num_preds_to_save=num_preds)
        rows.append((variant.name, paths))
    fig, axes = plt.subplots(len(queries), 2, figsize=(2.6 * (num_preds + 1), 1.4 * len(queries)), squeeze=False)
    for col, (name, paths) in enumerate(rows):
        for row, path in enumerate(paths):
            with Image.open(path) as im:
                axes[row][col].imshow(im.copy())
            axes[row][col].set_axis_off()
            axes[row][col].set_title(f"{name} · {path.stem.split('_')[-1]}", fontsize=7)
    fig.suptitle(f"{condition} queries of {_set_name(*key, runner.data.dataset)}: base (left) and {best} (right)", fontsize=8)
    fig.tight_layout()
    return fig
