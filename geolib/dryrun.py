"""Dry runs: the published code path, capped so that a CPU finishes it in minutes.

`./run_all.sh --profile full --dry-run …` sets `GEOLIB_DRY_RUN=1` for every notebook. The models,
input sizes, teachers and data checks stay exactly those of the profile; what shrinks is how much
work each step does: every training loop stops after `STEPS` optimiser steps with small batches,
and every evaluation embeds at most `ITEMS` images per set. A dry run's numbers mean nothing; it
answers one question: does this command get through on this data?
"""
from __future__ import annotations

import os
from typing import Sequence, TypeVar

ENV = "GEOLIB_DRY_RUN"
STEPS = 1          # optimiser steps per training run (one step runs every part of it)
EPOCHS = 1         # epochs per training run
BATCH = 2          # batch size (places or images) per step
ITEMS = 8          # images per evaluated set (queries, gallery, database)
PLACES = 4         # training places (labels) kept, with all their images

T = TypeVar("T")


def active() -> bool:
    return os.environ.get(ENV, "") not in ("", "0", "false", "False")


def steps(n: int | None) -> int | None:
    """Optimiser steps per epoch (None: no cap outside a dry run)."""
    return min(n, STEPS) if (active() and n is not None) else (STEPS if active() else n)


def epochs(n: int) -> int:
    return min(n, EPOCHS) if active() else n


def batch(n: int) -> int:
    return min(n, BATCH) if active() else n


def items(seq: Sequence[T], n: int = ITEMS) -> list[T]:
    """The first `n` items, or all of them outside a dry run.

    Items that carry labels are capped by label: the `n // 4` smallest labels keep up to 4 items each, so a query
    set and a gallery capped alike still share their places and recall stays computable.
    """
    seq = list(seq)
    if not active() or len(seq) <= n:
        return seq
    labels = [getattr(it, "label", None) for it in seq]
    if any(lab is None for lab in labels):
        return seq[:n]
    wanted = label_cap(labels, n) or set()
    per_label = max(1, n // max(1, len(wanted)))
    kept, count = [], dict.fromkeys(wanted, 0)
    for it, lab in zip(seq, labels):
        if lab in count and count[lab] < per_label:
            kept.append(it)
            count[lab] += 1
    return kept


def places(seq: Sequence[T], n: int = PLACES) -> list[T]:
    """Every item of the `n` smallest labels (a training set that still has each view of a place)."""
    seq = list(seq)
    if not active():
        return seq
    keep = set(sorted({getattr(it, "label", None) for it in seq} - {None})[:n])
    return [it for it in seq if getattr(it, "label", None) in keep]


def label_cap(labels: Sequence[int], n: int = ITEMS) -> set[int] | None:
    """The labels a dry run keeps (the `n // 4` smallest), or None outside a dry run."""
    if not active():
        return None
    return set(sorted(set(labels))[: max(1, n // 4)])
