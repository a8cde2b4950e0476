"""The notebooks' findings: each claim judged from tiny record lists, once holding and once failing."""
import math

import pytest

from geolib.apps import findings


def rec(model, q, g, metrics, task="crossview", dataset="synthetic-smoke", **extra):
    return {"task": task, "dataset": dataset, "model": model, "query_view": q, "gallery_view": g,
            "metrics": metrics, "split": "test", **extra}


def by_claim(found, text):
    hits = [f for f in found if text in f.claim]
    assert hits, f"no finding mentions {text!r}: {[f.claim for f in found]}"
    return hits[0]


def world_records(baseline, oracle):
    out = []
    for q, g in (("street", "satellite"), ("street", "drone")):
        out += [rec("raw-pixels", q, g, {"R@1": baseline / 2}, task="world"),
                rec("color-histogram", q, g, {"R@1": baseline}, task="world"),
                rec("chance", q, g, {"R@1": 0.5}, task="world")]
    out.append(rec("oracle", "street", "satellite", {"R@1": oracle}, task="world"))
    return out


def test_world_calibration_holds_and_fails():
    good = findings.world(world_records(baseline=4.0, oracle=80.0), gallery_places=250)
    assert [f.holds for f in good] == [True, True, True]
    assert by_claim(good, "street→drone").value == 4.0  # the best of the two baselines
    bad = findings.world(world_records(baseline=30.0, oracle=20.0), gallery_places=250)
    assert [f.holds for f in bad] == [False, False, False]


def test_world_small_gallery_is_not_judged():
    found = findings.world(world_records(baseline=30.0, oracle=20.0), gallery_places=40)
    assert all(f.holds is None and "not applicable" in f.note for f in found)
    assert "not judged" in findings.markdown(found)


def test_world_build_observations():
    found = findings.world_build([{"task": "world", "model": "renderer",
                                   "metrics": {"images": 120, "images_per_s": 60.0, "total_seconds": 3.5}}])
    assert [f.value for f in found] == [120, 60.0, 3.5] and all(f.verdict == "observed" for f in found)


def phase1_records(trained_sd, trained_ss, baseline):
    out = []
    for (q, g), trained in ((("street", "drone"), trained_sd), (("street", "satellite"), trained_ss)):
        out += [rec("phase1", q, g, {"R@1": trained}), rec("phase1-random-init", q, g, {"R@1": 1.0}),
                rec("raw-pixels", q, g, {"R@1": baseline}, task="world"),
                rec("color-histogram", q, g, {"R@1": baseline / 2}, task="world")]
    return out


def test_phase1_targets_hold_and_fail():
    good = findings.phase1(phase1_records(60.0, 31.0, baseline=2.0), "synthetic-smoke")
    assert all(f.holds for f in good) and len(good) == 4
    assert by_claim(good, "street→drone R@1 against").value == pytest.approx(30.0)
    # street→drone clears 55 % but is only 4.8× the baseline; street→satellite misses both bars
    bad = findings.phase1(phase1_records(58.0, 5.0, baseline=12.0), "synthetic-smoke")
    assert [f.holds for f in bad] == [True, False, False, False]


def test_phase1_ignores_other_datasets_and_keeps_the_last_record():
    recs = phase1_records(60.0, 20.0, 2.0) + [rec("phase1", "street", "drone", {"R@1": 10.0})]
    recs.append(rec("phase1", "street", "drone", {"R@1": 99.0}, dataset="university1652"))
    assert by_claim(findings.phase1(recs, "synthetic-smoke"), "street→drone R@1 after").value == 10.0


def test_phase1_missing_model_is_not_judged():
    found = findings.phase1([], "synthetic-smoke")
    assert all(f.holds is None for f in found)
    assert "not measured" in findings.markdown(found)


def test_phase1_curve_rising_and_flat():
    hist = [{"minutes_total": 1.0, "street→drone R@1": 10.0}, {"minutes_total": 2.0},
            {"minutes_total": 3.0, "street→drone R@1": 20.0}, {"minutes_total": 5.0}]
    found = findings.phase1_curve(hist, {"street→drone": 30.0})
    assert [f.value for f in found[:-1]] == [10.0, 20.0, 30.0]  # the final model closes the curve at 5 min
    assert found[-1].value == pytest.approx(10.0) and found[-1].holds and "still rising" in found[-1].note
    flat = findings.phase1_curve(hist, {"street→drone": 20.5})  # 0.5 points after 3 min
    assert flat[-1].holds is False and "flat" in flat[-1].note


def distill_records(student_params, student_gflops, student_r1, teacher_r1=50.0):
    d = dict(task="distillation", dataset="synthetic-smoke")
    return [rec("teacher", "street", "drone", {"R@1": teacher_r1, "params": 30e6, "gflops": 5.0},
                config={"row": "B/teacher", "n_queries": 200}, **d),
            rec("student-a", "street", "drone", {"R@1": student_r1, "params": student_params, "gflops": student_gflops},
                config={"row": "B/student-a-plain", "n_queries": 200}, **d),
            rec("student-a-mp", "street", "drone", {"R@1": student_r1 - 20, "params": 1e6, "gflops": 0.1},
                config={"row": "B/student-a-mp", "n_queries": 200}, **d)]


def test_distillation_trade_off_holds_and_fails():
    good = findings.distillation(distill_records(5e6, 0.25, 48.0), "synthetic-smoke")
    judged = [f for f in good if f.target is not None]
    assert [f.holds for f in judged] == [True, True, True]
    assert by_claim(good, "best student").claim.endswith("(B/student-a-plain)")
    bad = findings.distillation(distill_records(20e6, 1.0, 40.0, teacher_r1=8.0), "synthetic-smoke")
    assert [f.holds for f in bad if f.target is not None] == [False, False, True, False]  # 32 points lost
    assert "trained teacher" in by_claim(bad, "high enough").note


def test_distillation_needs_teacher_and_student():
    assert findings.distillation(distill_records(5e6, 0.25, 48.0)[:1], "synthetic-smoke") == []
    assert findings.distillation(distill_records(5e6, 0.25, 48.0), "other") == []


def test_perturbation_effect_and_resolution():
    found = findings.perturbation(distill_records(5e6, 0.25, 48.0), "synthetic-smoke")
    assert len(found) == 1 and found[0].value == pytest.approx(-20.0) and found[0].note == ""
    close = distill_records(5e6, 0.25, 48.0)
    close[2]["metrics"]["R@1"] = 48.4  # within one point: noise
    assert findings.perturbation(close, "synthetic-smoke")[0].note == "no measurable effect"


def phase2_records(r1, lr1, region_top1):
    d = dict(task="vpr", dataset="synthetic-smoke", query_view="query-day", split="test")
    return [{**d, "model": "chance", "protocol": "vpr-25m", "metrics": {"R@1": 5.0}},
            {**d, "model": "cosplace-untrained", "protocol": "vpr-25m", "metrics": {"R@1": 8.0}},
            {**d, "model": "cosplace", "protocol": "vpr-25m", "metrics": {"R@1": r1}},
            {**d, "query_view": "query-night", "model": "cosplace", "protocol": "vpr-25m", "metrics": {"R@1": 99.0}},
            {**d, "model": "chance", "protocol": "dc-lr-25m", "metrics": {"LR@1": 10.0}},
            {**d, "model": "dc", "protocol": "dc-lr-25m", "metrics": {"LR@1": lr1}},
            {"task": "classification", "protocol": "closed-set", "dataset": "synthetic-smoke-u", "model": "hierarchical",
             "split": "train", "metrics": {"region_top1": region_top1, "region_chance": 10.0}}]


def test_phase2_targets_hold_and_fail():
    good = findings.phase2(phase2_records(60.0, 20.0, 40.0), "synthetic-smoke")
    assert [f.claim.split()[0] for f in good] == ["cosplace", "dc", "hierarchical"]  # no chance, no untrained
    assert all(f.holds for f in good)
    bad = findings.phase2(phase2_records(30.0, 12.0, 20.0), "synthetic-smoke", hierarchical_dataset="synthetic-smoke-u")
    assert [f.holds for f in bad] == [False, False, False]
    assert by_claim(bad, "LR@1").value == pytest.approx(1.2)
    assert findings.phase2(phase2_records(30.0, 12.0, 20.0), "synthetic-smoke", hierarchical_dataset="x")[-1].claim.startswith("dc")


def test_judge_and_rendering():
    f = findings.judge("x", float("nan"), 3.0)
    assert f.holds is None and f.verdict == "not judged"
    assert findings.judge("y", math.inf, 3.0).holds is True and "∞" in findings.judge("y", math.inf, 3.0).markdown()
    with pytest.raises(ValueError, match="comparison"):
        findings.judge("z", 1.0, 2.0, "<")
    t = findings.table([findings.judge("a", 2.0, 1.0, "<="), findings.Finding("b", 4.0)])
    assert list(t.verdict) == ["not met", "observed"]


def test_distillation_rows_limit_to_this_run():
    recs = distill_records(5e6, 0.25, 48.0)
    found = findings.distillation(recs, "synthetic-smoke", rows=["B/teacher", "B/student-a-mp"])
    assert by_claim(found, "best student").claim.endswith("(B/student-a-mp)")
    assert findings.perturbation(recs, "synthetic-smoke", rows=["B/student-a-mp"]) == []
