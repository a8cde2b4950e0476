"""Statistics over seeds, the measurable rule, and the claims the notebooks render from records."""
import math

import pandas as pd
import pytest

from geolib.apps import findings
from geolib.apps.seed_runs import extra_seeds, with_seed
from geolib.evaluation import seeds as S
from geolib.profiles import resolve


def rec(model, seed, value, q="street", g="drone", key="R@1", **extra):
    return {"model": model, "seed": seed, "query_view": q, "gallery_view": g, "metrics": {key: value},
            "task": "crossview", "dataset": "w", **extra}


def test_seed_list_defaults_to_the_main_seed_and_extra_seeds_skip_it():
    cfg = resolve("smoke", "phase1")
    assert S.seed_list(cfg) == [cfg["seed"]] and extra_seeds(cfg) == []
    cfg["seeds"] = [0, 1, 2]
    assert S.seed_list(cfg) == [0, 1, 2] and extra_seeds(cfg) == [1, 2]
    other = with_seed(cfg, 5)
    assert other["seed"] == 5 and cfg["seed"] == 0  # a copy: the main run's settings are untouched


def test_measurable_needs_two_seeds_of_both_and_a_gap_beyond_twice_the_larger_std():
    assert not S.measurable(10.0, 0.0, 0.0, 1, 3)  # one seed: never
    assert S.measurable(5.0, 1.0, 2.0, 3, 3) is True  # 5 > 2·2
    assert S.measurable(4.0, 1.0, 2.0, 3, 3) is False  # 4 is not > 4
    assert S.measurable(-5.0, 2.0, 1.0, 2, 2) is True  # either direction


def test_summarize_gives_mean_std_and_delta_to_the_base_per_key():
    long = pd.DataFrame([
        {"variant": "base", "cond": "day", "value": v} for v in (10, 12, 14)] + [
        {"variant": "x", "cond": "day", "value": v} for v in (30, 31, 32)] + [
        {"variant": "x", "cond": "night", "value": 5.0}, {"variant": "base", "cond": "night", "value": 4.0}])
    out = S.summarize(long, ["cond"]).set_index(["variant", "cond"])
    assert out.loc[("base", "day"), "mean"] == 12 and out.loc[("base", "day"), "std"] == pytest.approx(2.0)
    assert out.loc[("x", "day"), "delta"] == pytest.approx(19.0) and out.loc[("x", "day"), "measurable"]
    assert out.loc[("x", "day"), "spread"] == pytest.approx(4.0)
    assert out.loc[("x", "night"), "n"] == 1 and not out.loc[("x", "night"), "measurable"]


def test_records_long_keeps_the_last_record_of_each_seed_and_takes_the_first_metric_present():
    recs = [rec("a", 0, 1.0), rec("a", 0, 2.0), rec("a", 1, 4.0), rec("dc", 0, 9.0, key="LR@1"), rec("a", 7, 99.0)]
    long = S.records_long(recs, ("R@1", "LR@1"), fields=("model", "direction"), seeds=[0, 1])
    got = {(r.model, r.seed): r.value for r in long.itertuples()}
    assert got == {("a", 0): 2.0, ("a", 1): 4.0, ("dc", 0): 9.0}
    assert set(long["direction"]) == {"street→drone"}


def test_seed_table_cells_say_mean_std_seeds_and_starred_delta():
    long = pd.DataFrame([{"model": m, "direction": "s→d", "seed": s, "value": v}
                         for m, vals in (("full", (50, 51, 52)), ("no-l2l", (40, 41, 42))) for s, v in enumerate(vals)])
    table = S.seed_table(long, "model", "direction", base="full")
    assert table.loc["full", "s→d"] == "51.0 ± 1.0 (3 seeds)"
    assert table.loc["no-l2l", "s→d"] == "41.0 ± 1.0 (3 seeds); Δ -10.0*"
    one = S.seed_table(long[long.seed == 0], "model", "direction", base="full")
    assert one.loc["no-l2l", "s→d"] == "40.0 (1 seed); Δ -10.0"  # one seed: never starred


def test_verdicts_follow_the_rule_and_say_when_one_seed_cannot_tell():
    assert S.verdict(10.0, 1.0, 1.0, 3, 3) == "holds"
    assert S.verdict(-10.0, 1.0, 1.0, 3, 3) == "does not hold"
    assert S.verdict(1.0, 1.0, 1.0, 3, 3) == "no measurable effect"
    assert S.verdict(1.0, 0.0, 0.0, 1, 1) == "holds (one seed: spread unknown)"
    assert S.verdict(-1.0, 0.0, 0.0, 1, 1, expect=-1) == "holds (one seed: spread unknown)"
    assert S.threshold_verdict(56.0, 1.0, 3, 55.0) == "holds"
    assert S.threshold_verdict(54.0, 0.0, 1, 55.0) == "does not hold (one seed)"
    assert S.threshold_verdict(2.0, 0.0, 3, 3.0, "<=") == "holds"
    assert S.threshold_verdict(math.nan, 0.0, 0, 3.0) == "not measured"


def test_claims_are_computed_from_the_records_of_the_seeds_asked_for():
    recs = [rec("phase1-full", s, v) for s, v in ((0, 30.0), (1, 31.0), (2, 29.0))]
    recs += [rec("phase1-no-l2l", s, v) for s, v in ((0, 20.0), (1, 21.0), (2, 19.0))]
    c = findings.effect_claim("L2L helps", "paper", recs, "R@1", [0, 1, 2], {"model": "phase1-full"},
                              {"model": "phase1-no-l2l"})
    assert c.verdict == "holds" and "Δ +10.0" in c.ours
    c1 = findings.effect_claim("L2L helps", "paper", recs, "R@1", [0], {"model": "phase1-full"},
                               {"model": "phase1-no-l2l"})
    assert c1.verdict == "holds (one seed: spread unknown)"
    t = findings.threshold_claim("bar", "76.89", recs, "R@1", [0, 1, 2], {"model": "phase1-full"}, 55.0)
    assert t.verdict == "does not hold" and t.ours.startswith("30.0 ± 1.0% (3 seeds)")
    missing = findings.effect_claim("x", "p", recs, "R@1", [0], {"model": "nope"}, {"model": "phase1-full"})
    assert missing.verdict == "not measured"
    md = findings.claims_markdown([c, t])
    assert md.splitlines()[0] == "| claim | paper | ours | verdict |" and "**holds**" in md


def test_phase1_finding_uses_the_mean_over_seeds():
    recs = [rec("phase1", s, v, dataset="w") for s, v in ((0, 60.0), (1, 50.0), (2, 40.0))]
    one = findings.phase1(recs, "w")[0]
    assert one.value == 40.0  # the last record
    mean = findings.phase1(recs, "w", seeds=[0, 1, 2])[0]
    assert mean.value == pytest.approx(50.0) and "mean of 3 seeds" in mean.note and mean.holds is False


def test_distill_claims_read_parts_students_and_safa_from_their_records():
    recs = []
    for s in (0, 1, 2):
        recs += [rec("phase1-full", s, 40.0 + s), rec("phase1-no-l2l", s, 30.0 + s), rec("phase1-no-fusion", s, 41.0 + s),
                 rec("phase1-attention-pool", s, 20.0 + s),
                 rec("teacher", s, 44.0, task="distillation", metrics_extra=None),
                 rec("safa-safa-polar", s, 21.0 + s, q="panorama", g="satellite", dataset="pairs"),
                 rec("safa-safa-raw", s, 5.0, q="panorama", g="satellite", dataset="pairs")]
        stu = rec("student-lite-mp", s, 42.0 + s / 2, task="distillation")
        stu["metrics"].update(params=1.0, gflops=0.05)
        recs.append(stu)
    for r in recs:
        r.pop("metrics_extra", None)
        if r["model"] == "teacher":
            r["metrics"].update(params=4.0, gflops=1.0)
    claims = {c.claim.split(" (")[0]: c for c in findings.distill_claims(recs, "w", "pairs", [0, 1, 2])}
    assert claims["Layer-to-layer attention helps"].verdict == "holds"
    assert claims["Multi-scale fusion helps"].verdict == "no measurable effect"
    assert claims["Attention pooling is at least as good as GeM"].verdict == "does not hold"
    distil = next(c for k, c in claims.items() if k.startswith("A Distill4Geo student"))
    assert distil.verdict == "holds" and "1.5 points lost at 4.0× / 20.0×" in distil.ours
    assert claims["SAFA with the polar transform matches panoramas to satellite tiles"].verdict == "holds"
    assert "4.4× raw" in claims["The polar transform raises SAFA's R@1"].ours
