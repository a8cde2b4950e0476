"""One result type for every evaluation, and one `record()` that writes it.

Cross-view directions, CosPlace retrieval, D&C localisation, the hierarchical classifier, SAFA and
the new-photo benchmark all answer with a `Result`: named metrics, the protocol they follow, and
what each query got (ranks, top-k indices, correct flags) as arrays, so a notebook can draw or
re-score any of them the same way and `record()` can write any of them with the same keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .records import write_record

# protocol → record task, for results that do not say theirs
TASK_OF_PROTOCOL = {"vpr-25m": "vpr", "dc-lr-25m": "vpr", "university1652-official": "crossview",
                    "cvusa": "crossview", "vigor-hit": "crossview", "localize-new-street-photo": "crossview",
                    "closed-set": "classification", "open-set": "classification"}


@dataclass
class Result:
    """Metrics of one evaluation (one direction, one condition, one protocol) and its per-query data.

    `per_query` holds numpy arrays with one row per query (`ranks`, `predictions`, `correct`, ...);
    `info` holds the counts and curves a table shows beside the metrics (`n_queries`,
    `gallery_size`, `curve`). `preprocess` is the embedding's `Preprocess.to_dict()`, quoted by
    `record()` so a table mixing model families says what each row did to its images.
    """

    metrics: dict[str, float]
    protocol: str | None = None
    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    dataset: str | None = None
    split: str | None = None
    query_view: str | None = None
    gallery_view: str | None = None
    condition: str | None = None
    task: str | None = None
    preprocess: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, metric: str) -> float:
        """`result["R@1"]`: the older dict results (SAFA) were read this way."""
        return self.metrics[metric]

    def __contains__(self, metric: str) -> bool:
        return metric in self.metrics

    @property
    def views(self) -> tuple[str | None, str | None]:
        return (self.query_view, self.gallery_view)

    @property
    def n_queries(self) -> int:
        if "n_queries" in self.info:
            return int(self.info["n_queries"])
        first = next(iter(self.per_query.values()), None)
        return 0 if first is None else len(first)


def per_query_field(name: str, doc: str = "") -> property:
    """An attribute of a `Result` subclass that lives in `per_query[name]` (older field names stay)."""
    def get(self: Result) -> np.ndarray:
        return self.per_query[name]

    def put(self: Result, value: Any) -> None:
        self.per_query[name] = value

    return property(get, put, doc=doc or f"per_query[{name!r}]")


def record(result: Result, *, source: str, model: str, profile: str, seed: int | None,
           config: Mapping[str, Any] | None = None, dataset: str | None = None, split: str | None = None,
           views: Sequence[str | None] | None = None, notes: Mapping[str, Any] | None = None,
           task: str | None = None, protocol: str | None = None, metrics: Mapping[str, Any] | None = None,
           preprocess: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Append `result` to `outputs/<profile>/metrics/<source>.jsonl` with every key a record carries
    (`geolib.records.REQUIRED`), and return the record.

    Arguments given here win over the result's own fields (a caller that knows the dataset name
    better); `metrics` replaces the result's (extra columns such as `queries_per_s` are merged by
    the caller). The embedding's preprocessing goes in `config["preprocess"]` unless the config
    already names one. `notes` land in `config` too.
    """
    protocol = protocol if protocol is not None else result.protocol
    q_view, g_view = tuple(views) if views is not None else result.views
    task = task or result.task or TASK_OF_PROTOCOL.get(str(protocol))
    if task is None:
        raise ValueError(f"record(): no task for protocol {protocol!r}; pass task=… (one of the record tasks)")
    dataset = dataset if dataset is not None else result.dataset
    if dataset is None:
        raise ValueError("record(): the result names no dataset; pass dataset=…")
    cfg = dict(config or {})
    spec = preprocess if preprocess is not None else result.preprocess
    if spec is not None and "preprocess" not in cfg:
        cfg["preprocess"] = dict(spec)
    if notes:
        cfg.update(notes)
    return write_record(source, task=task, protocol=protocol, dataset=dataset,
                        split=split if split is not None else result.split, query_view=q_view, gallery_view=g_view,
                        model=model, metrics=dict(metrics if metrics is not None else result.metrics),
                        profile=profile, seed=seed, config=cfg, **extra)
