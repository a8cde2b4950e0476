"""geolib.results: one Result type, one record() that writes every key a record carries."""
from __future__ import annotations

import json

import numpy as np
import pytest

from geolib import records
from geolib.evaluation.embedding import Preprocess
from geolib.results import Result, record


def test_record_round_trip_carries_every_key_and_the_preprocess():
    spec = Preprocess(32).to_dict()
    res = Result({"R@1": np.float32(50.0)}, "university1652-official", {"first_rank": np.array([0, 3])},
                 dataset="toy", split="test", query_view="street", gallery_view="drone", preprocess=spec)
    rec = record(res, source="unit-results", model="phase1", profile="smoke", seed=3, config={"epochs": 1})
    line = json.loads(records.metrics_path("unit-results", "smoke").read_text().splitlines()[-1])
    assert set(records.REQUIRED) <= set(line)
    assert (line["task"], line["protocol"], line["dataset"], line["split"]) == \
        ("crossview", "university1652-official", "toy", "test")
    assert (line["query_view"], line["gallery_view"], line["seed"], line["profile"]) == ("street", "drone", 3, "smoke")
    assert line["config"] == {"epochs": 1, "preprocess": spec} and line["metrics"] == {"R@1": 50.0}
    assert rec["config"]["preprocess"]["resize"] == "antialias"


def test_record_arguments_win_and_missing_fields_are_refused():
    res = Result({"LR@1": 10.0}, "dc-lr-25m")
    rec = record(res, source="unit-results", model="dc", dataset="d", split="val", views=("night", None),
                 profile="smoke", seed=None, notes={"root": "r"})
    assert (rec["task"], rec["query_view"], rec["gallery_view"], rec["split"]) == ("vpr", "night", None, "val")
    assert rec["config"] == {"root": "r"} and "preprocess" not in rec["config"]
    with pytest.raises(ValueError, match="dataset"):
        record(res, source="unit-results", model="dc", profile="smoke", seed=0)
    with pytest.raises(ValueError, match="task"):
        record(Result({"a": 1.0}, "made-up"), source="unit-results", model="m", dataset="d", profile="smoke", seed=0)


def test_family_results_are_results_with_their_old_fields():
    from geolib.training.hierarchical import ClassificationResult
    from geolib.training.cosplace import Retrieval, retrieve
    from geolib.training.dc import Localization

    rng = np.random.default_rng(0)
    db = rng.normal(size=(6, 4)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    utm = np.c_[np.arange(6) * 100.0, np.zeros(6)]
    r = retrieve(db[:3], utm[:3], db, utm, ks=(1, 5))
    assert isinstance(r, Retrieval) and isinstance(r, Result) and r.protocol == "vpr-25m"
    assert r.predictions[:, 0].tolist() == [0, 1, 2] and r.correct[:, 0].all() and r["R@1"] == 100.0
    loc = Localization({"LR@1": 1.0}, np.zeros((2, 3)), np.zeros((2, 3, 2)), np.zeros((2, 3), bool))
    assert loc.protocol == "dc-lr-25m" and loc.n_queries == 2
    c = ClassificationResult({"region_top1": 1.0}, np.array([1]), np.array([2]), np.eye(2))
    c.region_pred = np.array([5])
    assert c.per_query["region_pred"].tolist() == [5] and c.confusion.shape == (2, 2)
