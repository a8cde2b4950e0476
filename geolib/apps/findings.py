"""What each notebook concludes, computed from its metrics records.

A notebook's findings cell used to carry its own thresholds and arithmetic, so a claim could drift
from the numbers it was about and nothing tested it. Here every claim is a `Finding`: the sentence,
the measured value, the target it is held against and whether it holds, computed from the records
that `geolib.records` reads. The notebooks only display them. The targets are the ones each notebook
states in its question (see `TARGETS`); a caller can pass others.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..records import select

# The targets the notebooks set themselves: 01 calibrates the synthetic world, 02 sets Phase 1's bar
# against the non-learned baselines, 03 is Distill4Geo's trade-off, 04 the Phase 2 bars.
TARGETS: dict[str, Any] = {
    "world": {"baseline_max": 10.0, "oracle_min": 50.0, "min_gallery": 200},
    "phase1": {("street", "drone"): (55.0, 5.0), ("street", "satellite"): (30.0, 3.0)},
    "distillation": {"params_ratio": 3.0, "gflops_ratio": 10.0, "max_drop": 3.0, "weak_teacher": 10.0},
    "phase2": {"retrieval_r1": 50.0, "dc_chance_factor": 1.5, "region_chance_factor": 3.0},
}
BASELINES = ("raw-pixels", "color-histogram")  # the world's non-learned baselines


@dataclass(frozen=True)
class Finding:
    """One claim of a notebook and what this run measured for it.

    `target` None makes it an observation (a number worth reporting, with nothing to meet);
    `holds` None means the claim cannot be judged on this run (a missing number, or `note` says
    why it does not apply).
    """

    claim: str
    value: float | None
    target: float | None = None
    holds: bool | None = None
    comparison: str = ">="  # how value is held against target: ">=" or "<="
    unit: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "observed"
        return {True: "met", False: "not met", None: "not judged"}[self.holds]

    def markdown(self) -> str:
        """One bullet: claim, measured value against target, verdict, and the note."""
        value = _fmt(self.value, self.unit)
        text = f"- {self.claim}: {value}"
        if self.target is not None:
            text += f" (target {self.comparison} {_fmt(self.target, self.unit)}): **{self.verdict}**"
        return text + (f". {self.note}" if self.note else ".")


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    if isinstance(value, float) and math.isinf(value):
        return "∞" + unit
    return f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def judge(claim: str, value: float | None, target: float, comparison: str = ">=", *, unit: str = "",
          note: str = "", applicable: bool = True) -> Finding:
    """A Finding with `holds` computed: None when the value is missing or the claim does not apply."""
    if comparison not in (">=", "<="):
        raise ValueError(f"comparison {comparison!r}: use '>=' or '<='")
    measured = value is not None and not (isinstance(value, float) and math.isnan(value))
    holds = None
    if applicable and measured:
        holds = bool(value >= target) if comparison == ">=" else bool(value <= target)
    return Finding(claim, value, target, holds, comparison, unit, note)


def markdown(findings: Iterable[Finding]) -> str:
    """The findings as Markdown bullets, for `IPython.display.Markdown`."""
    return "\n".join(f.markdown() for f in findings)


def table(findings: Iterable[Finding]):
    """The findings as a pandas table (claim, value, target, verdict, note)."""
    import pandas as pd

    return pd.DataFrame([{**asdict(f), "verdict": f.verdict} for f in findings],
                        columns=["claim", "value", "comparison", "target", "unit", "verdict", "holds", "note"])


@dataclass(frozen=True)
class Claim:
    """A paper's claim, the paper's own figure, ours on this data and the verdict: "holds", "does
    not hold" or "no measurable effect" (`geolib.evaluation.seeds`: measurable only beyond the seed
    spread; with one seed the verdict says the spread is unknown)."""

    claim: str
    paper: str
    ours: str
    verdict: str
    note: str = ""


def claims_markdown(claims: Iterable[Claim]) -> str:
    """The claims as a Markdown table, for `IPython.display.Markdown`."""
    rows = ["| claim | paper | ours | verdict |", "|---|---|---|---|"]
    for c in claims:
        ours = c.ours + (f" ({c.note})" if c.note else "")
        rows.append(f"| {c.claim} | {c.paper} | {ours} | **{c.verdict}** |")
    return "\n".join(rows)


def effect_claim(claim: str, paper: str, records: Sequence[Mapping[str, Any]], key: str, seeds: Sequence[int],
                 variant: Mapping[str, Any], base: Mapping[str, Any], expect: int = 1, unit: str = " points"
                 ) -> Claim:
    """A claim that `variant` moves `key` in direction `expect` against `base` (each a record match,
    e.g. {"model": "phase1-full", "query_view": "street"}): Δ of the means over `seeds`, its verdict."""
    from ..evaluation.seeds import mean_std, verdict

    m, s, n = seed_mean(records, key, seeds, **variant)
    mb, sb, nb = seed_mean(records, key, seeds, **base)
    delta = m - mb
    ours = (f"{mean_std(m, s, n)} vs {mean_std(mb, sb, nb)}: Δ {delta:+.1f}{unit}" if n and nb else "not measured")
    return Claim(claim, paper, ours, verdict(delta, s, sb, n, nb, expect) if n and nb else "not measured")


def threshold_claim(claim: str, paper: str, records: Sequence[Mapping[str, Any]], key: str, seeds: Sequence[int],
                    match: Mapping[str, Any], target: float, comparison: str = ">=", unit: str = "%") -> Claim:
    """A claim that `key` (mean over `seeds`) reaches `target` on this data."""
    from ..evaluation.seeds import mean_std, threshold_verdict

    m, s, n = seed_mean(records, key, seeds, **match)
    sign = {">=": "≥", "<=": "≤"}.get(comparison, comparison)
    ours = f"{mean_std(m, s, n, unit=unit)}, target {sign} {target:g}{unit}" if n else "not measured"
    return Claim(claim, paper, ours, threshold_verdict(m, s, n, target, comparison) if n else "not measured")


# --------------------------------------------------------------------------- record look-ups

def latest(records: Iterable[Mapping[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The last of `records.select(records, **match)` (a tuple value matches any of its items)."""
    found = select(records, **match)
    return dict(found[-1]) if found else None


def metric(records: Iterable[Mapping[str, Any]], key: str, **match: Any) -> float:
    """One metric of the last matching record; NaN when there is none (so a claim reads 'not measured')."""
    r = latest(records, **match)
    value = (r or {}).get("metrics", {}).get(key)
    return float(value) if value is not None else float("nan")


def seed_mean(records: Iterable[Mapping[str, Any]], key: str, seeds: Sequence[int], **match: Any
              ) -> tuple[float, float, int]:
    """(mean, sample std, n) of `key` over the last record of each seed in `seeds` matching `match`."""
    last: dict[Any, float] = {}
    for r in select(records, **match):
        if r.get("seed") in seeds and key in (r.get("metrics") or {}):
            last[r.get("seed")] = float(r["metrics"][key])
    values = list(last.values())
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b if b > 0 else float("inf")


def resolution(queries: Any) -> float:
    """The smallest recall change worth a word: one point, or one query's worth when queries are few."""
    try:
        return max(1.0, 100.0 / float(queries))
    except (TypeError, ValueError, ZeroDivisionError):
        return 1.0


# --------------------------------------------------------------------------- 01 · the synthetic world

def world(records: Sequence[Mapping[str, Any]], gallery_places: int | None = None,
          targets: Mapping[str, Any] | None = None) -> list[Finding]:
    """Notebook 01: is the synthetic world honestly hard yet learnable?

    The non-learned baselines (raw pixels, colour histograms) must stay low street→satellite and
    street→drone while the oracle (which knows the world's facade→roof colour map) is high. Pass the
    records of one world (`task` "world", one `config.key`). With fewer than `min_gallery` test places
    chance alone is too high for the calibration to mean anything, so it is reported, not judged.
    """
    t = {**TARGETS["world"], **(targets or {})}
    recs = select(records, task="world")
    applicable = gallery_places is None or gallery_places >= t["min_gallery"]
    why = "" if applicable else (f"not applicable: {gallery_places} gallery places, fewer than "
                                 f"{t['min_gallery']} (use the default preset)")

    def r1(model: str, q: str, g: str) -> float:
        return metric(recs, "R@1", model=model, query_view=q, gallery_view=g)

    out = []
    for q, g in (("street", "satellite"), ("street", "drone")):
        values = [v for v in (r1(m, q, g) for m in BASELINES) if not math.isnan(v)]
        best = max(values) if values else float("nan")
        out.append(judge(f"best non-learned baseline R@1, {q}→{g}", best, t["baseline_max"], "<=", unit="%",
                         note=why or f"chance {r1('chance', q, g):.1f}%", applicable=applicable))
    out.append(judge("oracle R@1, street→satellite", r1("oracle", "street", "satellite"), t["oracle_min"],
                     unit="%", note=why, applicable=applicable))
    return out


def world_build(records: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """Notebook 01: how fast the world rendered (observations from the `renderer` record)."""
    build = (latest(records, task="world", model="renderer") or {}).get("metrics", {})
    return [Finding("images rendered", build.get("images")),
            Finding("rendering speed", build.get("images_per_s"), unit=" images/s"),
            Finding("whole export build time", build.get("total_seconds"), unit=" s")]


# --------------------------------------------------------------------------- 02 · Phase 1

def phase1(records: Sequence[Mapping[str, Any]], dataset: str, model: str = "phase1",
           targets: Mapping[tuple[str, str], tuple[float, float]] | None = None,
           seeds: Sequence[int] | None = None) -> list[Finding]:
    """Notebook 02: does the trained Phase 1 model clear its bar on the unseen test regions?

    Per direction two claims: R@1 at least the target, and at least `factor`× the best non-learned
    baseline of the same world (a multiple, because the absolute bar alone would pass on an easy
    world). Reads the last `crossview`/`world` test records of `dataset`; with `seeds`, the trained
    model's R@1 is the mean over those seeds' last records.
    """
    recs = select(records, task=("crossview", "world"), dataset=dataset)
    out = []
    for (q, g), (target, factor) in (targets or TARGETS["phase1"]).items():
        def r1(name: str) -> float:
            return metric(recs, "R@1", model=name, query_view=q, gallery_view=g)

        trained, rand = r1(model), r1(f"{model}-random-init")
        if seeds:
            mean, std, n = seed_mean(recs, "R@1", seeds, model=model, query_view=q, gallery_view=g)
            trained = mean if n else trained
        values = [v for v in (r1(b) for b in BASELINES) if not math.isnan(v)]
        base = max(values) if values else float("nan")
        spread = f"; mean of {n} seeds, std {std:.1f}" if seeds and n >= 2 else "; one seed"
        out.append(judge(f"{q}→{g} R@1 after training", trained, target, unit="%",
                         note=f"random init {_fmt(rand, '%')}{spread}"))
        out.append(judge(f"{q}→{g} R@1 against the best non-learned baseline", _ratio(trained, base), factor,
                         unit="×", note=f"baseline {_fmt(base, '%')}"))
    return out


def phase1_claims(records: Sequence[Mapping[str, Any]], dataset: str, seeds: Sequence[int]) -> list[Claim]:
    """Notebook 02's claims: the seed model's published street→drone figure, and this toolkit's bars
    for the world (TARGETS), on the mean over `seeds`."""
    recs = select(records, task="crossview", dataset=dataset, model="phase1")
    (sd, (t_sd, _)), (ss, (t_ss, _)) = list(TARGETS["phase1"].items())[:2]
    return [
        threshold_claim("Phase 1 matches street photos to drone views", "R@1 76.89 (University-1652)",
                        recs, "R@1", seeds, {"query_view": sd[0], "gallery_view": sd[1]}, t_sd),
        threshold_claim("... and to satellite views", "not reported", recs, "R@1", seeds,
                        {"query_view": ss[0], "gallery_view": ss[1]}, t_ss),
    ]


def phase1_curve(history: Sequence[Mapping[str, Any]], final: Mapping[str, float] | None = None,
                 direction: str = "street→drone", rising: float = 1.0) -> list[Finding]:
    """Notebook 02: was R@1 still rising when training stopped?

    From the training history's in-training evaluations (`<direction> R@1`, `minutes_total`), with
    the final model's R@1 (`final[direction]`) appended at the end of training when the last
    evaluation came earlier. Compares the end with the last point at or before 60 % of training
    time: the second half runs at a low learning rate, so a gain above `rising` points there says
    the budget, not the method, limits the run.
    """
    col = f"{direction} R@1"
    points = [(float(h["minutes_total"]), float(h[col])) for h in history
              if h.get(col) is not None and not math.isnan(float(h[col]))]
    if not history:
        return []
    end = float(history[-1]["minutes_total"])
    if final and direction in final and (not points or points[-1][0] < end):
        points.append((end, float(final[direction])))
    out = [Finding(f"{direction} R@1 at {m:.1f} min of training", v, unit="%") for m, v in points]
    if len(points) >= 2:
        early = [p for p in points if p[0] <= 0.6 * points[-1][0]]
        ref = early[-1] if early else points[0]
        gain = points[-1][1] - ref[1]
        out.append(judge(f"{direction} R@1 gain over the last {points[-1][0] - ref[0]:.1f} min", gain, rising,
                         unit=" points",
                         note="still rising: the training budget limits this run" if gain >= rising else
                         "flat at the end: more of the same training would not help much"))
    return out


# --------------------------------------------------------------------------- 03 · distillation

def _rows(records: Iterable[Mapping[str, Any]], dataset: str, q: str, g: str,
          rows: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Row name (`config.row`, else the model) → its last record, for one dataset and direction;
    only the named `rows` when given (an earlier run's other students stay in the records)."""
    keep = set(rows) if rows is not None else None
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("dataset") == dataset and r.get("query_view") == q and r.get("gallery_view") == g:
            name = (r.get("config") or {}).get("row") or r["model"]
            if keep is None or name in keep:
                out[name] = dict(r)
    return out


def distillation(records: Sequence[Mapping[str, Any]], dataset: str, direction: tuple[str, str] = ("street", "drone"),
                 teacher: str = "teacher", targets: Mapping[str, float] | None = None,
                 rows: Iterable[str] | None = None) -> list[Finding]:
    """Notebook 03: does the best distilled student keep the teacher's recall at a fraction of its cost?

    Distill4Geo's claim: ≥ 3× fewer parameters, ≥ 10× fewer GFLOPs, ≤ 3 R@1 points lost. Reads the
    `distillation` records (teacher and students, each with its `params` and `gflops`) of one dataset
    and direction; the best student is the one with the highest R@1. A weak teacher (R@1 under
    `weak_teacher`) is called out, since a small gap to it says little. `rows` limits the look-up to
    this run's row names (`config.row`).
    """
    t = {**TARGETS["distillation"], **(targets or {})}
    q, g = direction
    rows = _rows((r for r in records if r.get("task") == "distillation"), dataset, q, g, rows)
    tea = next((r for name, r in rows.items() if r["model"] == teacher), None)
    students = {name: r for name, r in rows.items() if r["model"] != teacher}
    if tea is None or not students:
        return []
    tm = tea["metrics"]
    def r1(rec: Mapping[str, Any]) -> float:
        value = rec["metrics"].get("R@1")
        return float(value) if value is not None else -math.inf

    name, best = max(students.items(), key=lambda kv: r1(kv[1]))
    sm = best["metrics"]
    t_r1, s_r1 = float(tm["R@1"]), float(sm["R@1"])
    where = f"{q}→{g}, best student {name}"
    out = [Finding(f"teacher R@1, {q}→{g}", t_r1, unit="%"),
           Finding(f"best student R@1 ({name})", s_r1, unit="%"),
           judge(f"teacher/student parameters ({where})", _ratio(float(tm["params"]), float(sm["params"])),
                 t["params_ratio"], unit="×"),
           judge(f"teacher/student GFLOPs ({where})", _ratio(float(tm["gflops"]), float(sm["gflops"])),
                 t["gflops_ratio"], unit="×"),
           judge(f"R@1 points lost ({where})", t_r1 - s_r1, t["max_drop"], "<=", unit=" points")]
    if t_r1 < t["weak_teacher"]:
        out.append(judge("teacher R@1 high enough for the gap to mean something", t_r1, t["weak_teacher"], unit="%",
                         note="give it a trained teacher (notebook 02's checkpoint, or `teacher_checkpoint`)"))
    return out


def distill_claims(records: Sequence[Mapping[str, Any]], dataset: str, pairs_dataset: str | None,
                   seeds: Sequence[int], direction: tuple[str, str] = ("street", "drone")) -> list[Claim]:
    """Notebook 03's paper claims, each on the means over `seeds`: each Phase 1 part against the row
    without it, attention pooling against GeM, Distill4Geo's student within 3 points of its teacher at
    ≥ 3× fewer parameters and ≥ 10× fewer GFLOPs, SAFA's polar transform (R@1 and its gain over raw)."""
    from ..evaluation.seeds import mean_std, threshold_verdict

    q, g = direction
    a = {"task": "crossview", "dataset": dataset, "query_view": q, "gallery_view": g}
    models = {r.get("model") for r in select(records, **a)}
    out = []
    for part, row, paper in (("Layer-to-layer attention", "phase1-no-l2l", "L2LTR: R@1 94.05 on CVUSA with it"),
                             ("Multi-scale fusion", "phase1-no-fusion", "the seed project's design; no ablation figure")):
        if row in models:
            out.append(effect_claim(f"{part} helps ({q}→{g})", paper, records, "R@1", seeds,
                                    {"model": "phase1-full", **a}, {"model": row, **a}))
    if "phase1-attention-pool" in models:
        out.append(effect_claim(f"Attention pooling is at least as good as GeM ({q}→{g})", "the seed project's choice",
                                records, "R@1", seeds, {"model": "phase1-attention-pool", **a}, {"model": "phase1-full", **a}))
    elif "phase1-gem-pool" in models:
        out.append(effect_claim(f"Attention pooling is at least as good as GeM ({q}→{g})", "the seed project's choice",
                                records, "R@1", seeds, {"model": "phase1-full", **a}, {"model": "phase1-gem-pool", **a}))
    b = {"task": "distillation", "dataset": dataset, "query_view": q, "gallery_view": g}
    students = sorted({str(r["model"]) for r in select(records, **b) if str(r.get("model", "")).startswith("student-")})
    t_m, t_s, t_n = seed_mean(records, "R@1", seeds, model="teacher", **b)
    best = max(students, key=lambda m: seed_mean(records, "R@1", seeds, model=m, **b)[0], default=None)
    if best and t_n:
        s_m, s_s, s_n = seed_mean(records, "R@1", seeds, model=best, **b)
        tea, stu = latest(records, model="teacher", **b), latest(records, model=best, **b)
        params = _ratio(float(tea["metrics"].get("params", math.nan)), float(stu["metrics"].get("params", math.nan)))
        gflops = _ratio(float(tea["metrics"].get("gflops", math.nan)), float(stu["metrics"].get("gflops", math.nan)))
        drop = t_m - s_m
        cheap = params >= TARGETS["distillation"]["params_ratio"] and gflops >= TARGETS["distillation"]["gflops_ratio"]
        verdict = threshold_verdict(drop, s_s, s_n, TARGETS["distillation"]["max_drop"], "<=")
        if not cheap:
            verdict = "does not hold" + (" (one seed)" if s_n < 2 else "")
        out.append(Claim("A Distill4Geo student keeps the teacher's R@1 (≤ 3 points lost) at ≥ 3× fewer parameters "
                         "and ≥ 10× fewer GFLOPs", "0.76 points lost at 3× / 13.5× (CVUSA)",
                         f"{best}: {mean_std(s_m, s_s, s_n, unit='%')} vs teacher {mean_std(t_m, t_s, t_n, unit='%')}, "
                         f"{drop:.1f} points lost at {params:.1f}× / {gflops:.1f}×", verdict))
    if pairs_dataset:
        c = {"task": "crossview", "dataset": pairs_dataset, "query_view": "panorama"}
        polar = {"model": "safa-safa-polar", **c}  # row C/safa-polar
        if latest(records, **polar) is not None:
            out.append(threshold_claim("SAFA with the polar transform matches panoramas to satellite tiles",
                                       "R@1 89.84 (CVUSA)", records, "R@1", seeds, polar, 20.0))
            if latest(records, model="safa-safa-raw", **c) is not None:
                claim = effect_claim("The polar transform raises SAFA's R@1", "it doubled recall (SAFA, NeurIPS 2019)",
                                     records, "R@1", seeds, polar, {"model": "safa-safa-raw", **c})
                p_m = seed_mean(records, "R@1", seeds, **polar)[0]
                r_m = seed_mean(records, "R@1", seeds, model="safa-safa-raw", **c)[0]
                out.append(Claim(claim.claim, claim.paper, f"{claim.ours}; {_ratio(p_m, r_m):.1f}× raw", claim.verdict))
    return out


def perturbation(records: Sequence[Mapping[str, Any]], dataset: str, direction: tuple[str, str] = ("street", "drone"),
                 part: str = "B", rows: Iterable[str] | None = None) -> list[Finding]:
    """Notebook 03: what marginal perturbation changes, per student backbone (`<part>/student-X-mp`
    against `<part>/student-X-plain`); a change within one query's worth of recall is no effect."""
    q, g = direction
    rows = _rows((r for r in records if r.get("task") == "distillation"), dataset, q, g, rows)
    out = []
    for name, mp in rows.items():
        if not (name.startswith(f"{part}/student-") and name.endswith("-mp")):
            continue
        plain = rows.get(name[:-3] + "-plain")
        if plain is None:
            continue
        a, b = float(plain["metrics"]["R@1"]), float(mp["metrics"]["R@1"])
        d = b - a
        small = abs(d) <= resolution((mp.get("config") or {}).get("n_queries")) + 1e-9
        backbone = name[len(f"{part}/student-"):-3]
        out.append(Finding(f"{backbone}: R@1 change with marginal perturbation ({b:.1f} vs {a:.1f})", d,
                           unit=" points", note="no measurable effect" if small else ""))
    return out


# --------------------------------------------------------------------------- 04 · Phase 2

def phase2_claims(records: Sequence[Mapping[str, Any]], dataset: str, seeds: Sequence[int], condition: str = "day",
                  retrieval: str = "cosplace-mixvpr", dc: str = "dc-aamc", max_gap: float = 10.0) -> list[Claim]:
    """Notebook 04's paper claims on `condition` test queries, on the means over `seeds`: CosPlace
    retrieves the place, and D&C's classification competes with it (LR@1 within `max_gap` points of
    the retrieval R@1) with no database. When D&C falls further behind, the last claim's note says
    what its own records show limits it."""
    from ..evaluation.seeds import mean_std, threshold_verdict

    match = {"dataset": dataset, "split": "test", "query_view": f"query-{condition}"}
    recs = [r for r in records if r.get("task") == "vpr"]
    r_m, r_s, r_n = seed_mean(recs, "R@1", seeds, model=retrieval, **match)
    d_m, d_s, d_n = seed_mean(recs, "LR@1", seeds, model=dc, **match)
    out = [threshold_claim(f"CosPlace ({retrieval}) retrieves the place, {condition} queries",
                           "R@1 88.6 (Tokyo 24/7, ResNet-101)", recs, "R@1", seeds, {"model": retrieval, **match},
                           TARGETS["phase2"]["retrieval_r1"])]
    if not (r_n and d_n):
        return out + [Claim(f"D&C ({dc}) competes with retrieval, no database", "LR@1 61.5 (SF-XL queries_v1)",
                            "not measured", "not measured")]
    gap = r_m - d_m
    ours = f"LR@1 {mean_std(d_m, d_s, d_n, unit='%')} vs R@1 {mean_std(r_m, r_s, r_n, unit='%')}: {gap:.1f} points behind"
    note = dc_limits(records, dataset, dc, condition) if gap > max_gap else ""
    return out + [Claim(f"D&C ({dc}) competes with retrieval (≤ {max_gap:g} points behind), no database",
                        "LR@1 61.5 (SF-XL queries_v1)", ours,
                        threshold_verdict(gap, 0.0, min(r_n, d_n), max_gap, "<="), note)]


def dc_limits(records: Sequence[Mapping[str, Any]], dataset: str, dc: str = "dc-aamc", condition: str = "day") -> str:
    """What the D&C run's own record says limits it: cells against the images that teach them, the
    cell side against the 25 m radius, the loss at the end, and chance."""
    rec = latest([r for r in records if r.get("task") == "vpr"], model=dc, dataset=dataset, split="test",
                 query_view=f"query-{condition}")
    if rec is None:
        return ""
    cfg, m = rec.get("config") or {}, rec.get("metrics") or {}
    chance = metric([r for r in records if r.get("task") == "vpr"], "LR@1", model="chance", protocol="dc-lr-25m",
                    dataset=dataset, query_view=f"query-{condition}")
    parts = []
    cells, images = cfg.get("classes"), cfg.get("train_images")
    if cells:
        parts.append(f"{cells} cells learnt from {images} images ({images / cells:.1f} per cell)" if images else
                     f"{cells} cells")
    losses = cfg.get("loss_by_epoch") or []
    if losses:
        parts.append(f"training loss {losses[0]} → {losses[-1]}")
    if m.get("LR@5") is not None:
        parts.append(f"LR@5 {m['LR@5']:.1f} % (the right cell is often near the top, not first)")
    if not math.isnan(chance):
        parts.append(f"chance {chance:.1f} %")
    return "limits: " + "; ".join(parts) if parts else ""



def phase2(records: Sequence[Mapping[str, Any]], dataset: str, condition: str = "day", split: str = "test",
           hierarchical_dataset: str | None = None, targets: Mapping[str, float] | None = None) -> list[Finding]:
    """Notebook 04: do the Phase 2 models place queries better than chance by the stated margins?

    - every trained retrieval model (`vpr-25m`, not `chance`, not `*-untrained`): R@1 ≥ 50 % on
      `condition` queries;
    - every Divide & Classify model (`dc-lr-25m`): LR@1 ≥ 1.5× the chance LR@1 of the same queries;
    - the hierarchical classifier (`closed-set`): region top-1 ≥ 3× region chance.
    """
    t = {**TARGETS["phase2"], **(targets or {})}
    qv = f"query-{condition}"
    vpr = [r for r in records if r.get("task") == "vpr" and r.get("dataset") == dataset
           and (r.get("split") or "test") == split and r.get("query_view") == qv]
    out = []
    models = dict.fromkeys(r["model"] for r in vpr if r.get("protocol") == "vpr-25m")
    for m in models:
        if m == "chance" or m.endswith("-untrained"):
            continue
        out.append(judge(f"{m} R@1 on {condition} queries (vpr-25m)",
                         metric(vpr, "R@1", model=m, protocol="vpr-25m"), t["retrieval_r1"], unit="%",
                         note=f"chance {_fmt(metric(vpr, 'R@1', model='chance', protocol='vpr-25m'), '%')}"))
    chance = metric(vpr, "LR@1", model="chance", protocol="dc-lr-25m")
    for m in dict.fromkeys(r["model"] for r in vpr if r.get("protocol") == "dc-lr-25m"):
        if m == "chance":
            continue
        lr1 = metric(vpr, "LR@1", model=m, protocol="dc-lr-25m")
        out.append(judge(f"{m} LR@1 on {condition} queries against chance (dc-lr-25m)", _ratio(lr1, chance),
                         t["dc_chance_factor"], unit="×", note=f"LR@1 {_fmt(lr1, '%')}, chance {_fmt(chance, '%')}"))
    match = {"task": "classification", "protocol": "closed-set"}
    if hierarchical_dataset is not None:
        match["dataset"] = hierarchical_dataset
    classified = select(records, **match)
    for m in dict.fromkeys(r["model"] for r in classified):
        rec = latest(classified, model=m)["metrics"]
        top1, ch = float(rec.get("region_top1", float("nan"))), float(rec.get("region_chance", float("nan")))
        out.append(judge(f"{m} region top-1 against region chance (closed-set)", _ratio(top1, ch),
                         t["region_chance_factor"], unit="×",
                         note=f"region top-1 {_fmt(top1, '%')}, chance {_fmt(ch, '%')}"))
    return out
