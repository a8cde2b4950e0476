"""Statistics over training seeds: mean ± std per variant, the difference to a base, and whether
that difference is measurable.

One seed says nothing about how much a number wobbles: on the synthetic world a CosPlace row moves
by several points between seeds. So every comparison the notebooks draw goes through one rule:

    a difference Δ of the means is *measurable* when both sides have at least two seeds and
    |Δ| > 2 · max(std of the variant, std of the base)   (sample standard deviations).

The factor 2 keeps one lucky seed from passing: a gain must stand clear of the seed-to-seed wobble
of both models. With one seed nothing is measurable, and the notebooks say so.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

SPREAD_FACTOR = 2.0


def seed_list(cfg: Mapping[str, Any]) -> list[int]:
    """The seeds a notebook runs its headline comparisons with: `seeds`, else `[seed]`."""
    seeds = cfg.get("seeds")
    return [int(s) for s in seeds] if seeds else [int(cfg["seed"])]


def measurable(delta: float, std: float, std_base: float, n: int, n_base: int) -> bool:
    """The rule of this module's docstring."""
    return n >= 2 and n_base >= 2 and abs(delta) > SPREAD_FACTOR * max(std, std_base)


def summarize(long: Any, keys: Sequence[str], variant: str = "variant", base: str = "base",
              value: str = "value") -> Any:
    """`long` holds one row per (variant, keys..., seed) with its `value`. Returns one row per
    (variant, keys...): mean, sample std (0 for one seed), n, and against the base row of the same
    keys: delta, spread (2 × the larger std) and measurable."""
    import pandas as pd

    cols = [variant, *keys, "mean", "std", "n", "delta", "spread", "measurable"]
    if len(long) == 0:
        return pd.DataFrame(columns=cols)
    group = [variant, *keys]
    agg = long.groupby(group, sort=False, dropna=False)[value].agg(["mean", "std", "count"]).reset_index()
    agg = agg.rename(columns={"count": "n"})
    agg["std"] = agg["std"].fillna(0.0)
    ref = agg[agg[variant] == base].set_index(list(keys)) if keys else agg[agg[variant] == base]
    ref = ref[["mean", "std", "n"]].rename(columns=lambda c: f"{c}_base")
    if keys:
        joined = agg.join(ref, on=list(keys))
    else:
        joined = agg.assign(**{c: (ref[c].iloc[0] if len(ref) else float("nan")) for c in ref.columns})
    joined["delta"] = joined["mean"] - joined["mean_base"]
    joined["spread"] = SPREAD_FACTOR * joined[["std", "std_base"]].max(axis=1)
    joined["measurable"] = [False if math.isnan(nb) else measurable(d, s, sb, n, nb)
                            for d, s, sb, n, nb in zip(joined["delta"], joined["std"], joined["std_base"],
                                                        joined["n"], joined["n_base"])]
    return joined[cols].reset_index(drop=True)


def records_long(records: Iterable[Mapping[str, Any]], metric: str | Sequence[str], fields: Sequence[str] = ("model",),
                 seeds: Sequence[int] | None = None) -> Any:
    """One row per record field combination and seed (the last record of each): the fields, `seed`
    and `value` = the record's `metric` (a sequence: the first one the record has, e.g. R@1 for
    retrieval, LR@1 for D&C). `fields` name record keys (`direction` is query→gallery)."""
    import pandas as pd

    names = [metric] if isinstance(metric, str) else list(metric)
    last: dict[tuple, dict[str, Any]] = {}
    for r in records:
        got = r.get("metrics") or {}
        m = next((got[k] for k in names if k in got), None)
        if m is None or (seeds is not None and r.get("seed") not in seeds):
            continue
        row = {f: _field(r, f) for f in fields}
        last[(*row.values(), r.get("seed"))] = {**row, "seed": r.get("seed"), "value": float(m)}
    return pd.DataFrame(list(last.values()), columns=[*fields, "seed", "value"])


def _field(record: Mapping[str, Any], name: str) -> Any:
    if name == "direction":
        return f"{record.get('query_view')}→{record.get('gallery_view')}"
    return record.get(name)


def mean_std(mean: float, std: float, n: int, digits: int = 1, unit: str = "") -> str:
    """`47.9 ± 1.2 (3 seeds)`, or `47.9 (1 seed)`; `unit` follows the numbers."""
    if n >= 2:
        return f"{mean:.{digits}f} ± {std:.{digits}f}{unit} ({n} seeds)"
    return f"{mean:.{digits}f}{unit} (1 seed)"


def verdict(delta: float, std: float, std_base: float, n: int, n_base: int, expect: int = 1) -> str:
    """How a paper's claim that the variant moves the metric in direction `expect` (+1 up, -1 down)
    fares: "holds", "does not hold" (measurably the other way) or "no measurable effect"; with
    one seed the sign decides, and the verdict says the spread is unknown."""
    if n < 2 or n_base < 2:
        if math.isnan(delta):
            return "not measured"
        return ("holds" if delta * expect > 0 else "does not hold") + " (one seed: spread unknown)"
    if not measurable(delta, std, std_base, n, n_base):
        return "no measurable effect"
    return "holds" if delta * expect > 0 else "does not hold"


def threshold_verdict(mean: float, std: float, n: int, target: float, comparison: str = ">=") -> str:
    """A claim that a number reaches a target: "holds" / "does not hold", decided on the mean over
    seeds; "(one seed)" when there is one."""
    if math.isnan(mean):
        return "not measured"
    ok = mean >= target if comparison == ">=" else mean <= target
    return ("holds" if ok else "does not hold") + ("" if n >= 2 else " (one seed)")


def seed_table(long: Any, rows: str, cols: str | None = None, base: str | None = None, digits: int = 1) -> Any:
    """A table of `mean ± std (n seeds)` cells, `rows` × `cols` of `long` (as `records_long` gives);
    with `base` (a value of `rows`), every other cell adds its Δ to the base in the same column,
    starred when measurable."""
    import pandas as pd

    keys = [cols] if cols else []
    ref = base if base is not None else "\0no base"
    summary = summarize(long, keys, variant=rows, base=ref)
    cells: dict[tuple, str] = {}
    for _, r in summary.iterrows():
        text = mean_std(r["mean"], r["std"], int(r["n"]), digits)
        if base is not None and r[rows] != base and not math.isnan(r["delta"]):
            text += f"; Δ {r['delta']:+.{digits}f}{'*' if r['measurable'] else ''}"
        cells[(r[rows], r[cols] if cols else "value")] = text
    if not cells:
        return pd.DataFrame()
    table = pd.Series(cells).unstack()
    order = list(dict.fromkeys(summary[rows]))
    table = table.reindex(order)
    table.index.name = rows
    return table
