"""Notebook 04's helpers: chance references, query sets per condition, the comparison table."""
import numpy as np
import pytest

from conftest import make_image, vpr_name
from geolib import phase2


def test_chance_recall_hand_made_and_brute_force():
    db = np.array([[0.0, 0.0], [25.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    q = np.array([[0.0, 0.0], [1000.0, 0.0]])  # 2 positives (25 m inclusive); no positive
    assert phase2.chance_recall(q, db) == pytest.approx(100 * (2 / 4 + 0) / 2)
    rng = np.random.default_rng(0)
    db, q = rng.uniform(0, 300, (50, 2)), rng.uniform(0, 300, (20, 2))
    brute = np.mean([np.mean([np.hypot(*(a - b)) <= 25 for b in db]) for a in q]) * 100
    assert phase2.chance_recall(q, db) == pytest.approx(brute)
    assert phase2.chance_lr(q, db) == pytest.approx(brute)


def test_query_sets_skip_missing_folders(tmp_path):
    root = tmp_path / "vpr"
    make_image(root / "test" / "database" / vpr_name(500000, 4600000, heading=0), seed=1)
    make_image(root / "test" / "queries" / vpr_name(500001, 4600000), seed=2)
    make_image(root / "test" / "queries_night" / vpr_name(500002, 4600000, note="night"), seed=3)
    db, queries = phase2.query_sets(root, "test", phase2.DEFAULT_QUERY_FOLDERS)
    assert len(db) == 1 and sorted(queries) == ["day", "night"] and len(queries["night"]) == 1
    with pytest.raises(FileNotFoundError, match="none of the query folders"):
        phase2.query_sets(root, "test", {"day": "queries_v1"})


def test_comparison_table_keeps_last_and_reads_both_protocols():
    recs = [
        {"task": "vpr", "dataset": "d", "protocol": "vpr-25m", "model": "cosplace", "query_view": "query-day",
         "metrics": {"R@1": 10.0, "R@5": 20.0}},
        {"task": "vpr", "dataset": "d", "protocol": "vpr-25m", "model": "cosplace", "query_view": "query-day",
         "metrics": {"R@1": 30.0, "R@5": 40.0, "memory_mb": 1.5}},
        {"task": "vpr", "dataset": "d", "protocol": "dc-lr-25m", "model": "dc-aamc", "query_view": "query-day",
         "metrics": {"LR@1": 5.0, "LR@5": 9.0}},
        {"task": "vpr", "dataset": "other", "protocol": "vpr-25m", "model": "x", "query_view": "query-day",
         "metrics": {"R@1": 1.0}},
    ]
    t = phase2.comparison_table(recs, "d")
    assert t["model"].tolist() == ["cosplace", "dc-aamc"]
    assert t["@1"].tolist() == [30.0, 5.0] and t["database needed"].tolist() == [True, False]
    assert phase2.query_view("night") == "query-night"
