"""What a run needs from its data, checked in its first cells, before any embedding or training.

Each configuration asks something of the data: GPS-neighbour batches need building coordinates,
the hierarchical classifier needs a region for every building, training needs a train split,
SAFA needs pairs, CosPlace's heading classes need headings. The public releases do not always
carry these (University-1652 has no coordinates and no universities). A missing need gets one of
two answers, decided here and nowhere else:

- a documented fallback, printed and recorded in the run's config (`Needs.fallbacks`);
- or a `NeedMissing` naming the need, the file that would satisfy it, and the override; a
  notebook part that cannot run is skipped with that message (`Needs.skipped`) and the rest runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..data.datasets import ImageItem


class NeedMissing(RuntimeError):
    """The data lacks what this configuration needs; the message names the need, the file and the fix."""


@dataclass
class Needs:
    """What was checked, what fell back and what was skipped: printed, and kept in the records' config."""

    fallbacks: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ok: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print

    def fallback(self, key: str, message: str) -> None:
        self.fallbacks[key] = message
        self.log(f"fallback: {message}")

    def skip(self, part: str, message: str) -> None:
        self.skipped[part] = message
        self.log(f"skipped {part}: {message}")

    def met(self, message: str) -> None:
        self.ok.append(message)
        self.log(f"ok: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"fallbacks": dict(self.fallbacks), "skipped": dict(self.skipped)}


def has_coordinates(items: Sequence[ImageItem]) -> bool:
    import math

    return bool(items) and all(it.utm_east is not None and it.utm_north is not None
                               and not math.isnan(float(it.utm_east)) and not math.isnan(float(it.utm_north))
                               for it in items)


def has_regions(items: Sequence[ImageItem]) -> bool:
    return bool(items) and all(it.meta.get("region") not in (None, "") for it in items)


def train_split(items: Sequence[ImageItem], what: str, root: Any) -> None:
    """Training needs a train split; a test-only root (Tokyo-XS) is evaluated with a model trained elsewhere."""
    if not any(it.split == "train" for it in items):
        raise NeedMissing(f"{what} needs a train split, and {root} has none: evaluate a model trained on "
                          "another root instead (-p vpr_test_roots for place recognition), or point the root at "
                          "a dataset with train/")


def phase1(cfg: dict[str, Any], items: Sequence[ImageItem], needs: Needs) -> dict[str, Any]:
    """Phase 1's needs: a train split, and coordinates when batches are GPS neighbours.

    Without coordinates (the University-1652 release has none) GPS-neighbour sampling falls back to
    random place batches, the University-1652 baseline's own sampling; `-p u1652_coordinates FILE`
    (a building -> utm_east, utm_north CSV) restores it.
    """
    train = [it for it in items if it.split == "train"]
    if not train:
        raise NeedMissing("Phase 1 training needs University-1652's train/ split; the root has only "
                          f"{sorted({it.split for it in items})}: point -p u1652_root at the folder holding train/ and test/")
    needs.met(f"train split: {len({it.label for it in train})} places")
    if cfg.get("sampling") == "gps":
        if has_coordinates(train):
            needs.met("coordinates for GPS-neighbour batches")
        else:
            cfg["sampling"] = "random"
            needs.fallback("sampling", "GPS-neighbour batches need building coordinates, which this data does not "
                                       "have; training samples random place batches instead. Give a building -> "
                                       "utm_east, utm_north CSV with -p u1652_coordinates FILE to restore them, or "
                                       "set -p sampling random to silence this")
    return cfg


def hierarchical(items: Sequence[ImageItem], needs: Needs) -> bool:
    """The hierarchical classifier needs a region (university) for every building; skipped without."""
    street = [it for it in items if it.view == "street"]
    if not street:
        needs.skip("hierarchical", "it classifies street images, and the University-1652 root has none")
        return False
    if not has_regions(street):
        needs.skip("hierarchical", "it classifies buildings into regions (universities), and University-1652 "
                                   "does not say which university a building belongs to. Give a building -> region "
                                   "CSV with -p u1652_regions FILE (columns: building, region)")
        return False
    needs.met(f"regions for the hierarchical classifier: {len({it.meta['region'] for it in street})}")
    return True


def pairs(items: Sequence[ImageItem], what: str, needs: Needs) -> bool:
    """SAFA and the pair-based students need panorama/satellite pairs in train and evaluation splits."""
    views = {it.view for it in items}
    if not {"panorama", "satellite"} <= views and not {"street", "satellite"} <= views:
        needs.skip(what, f"it needs ground/satellite pairs, and the pairs root holds views {sorted(views)}")
        return False
    needs.met(f"pairs for {what}: {len({it.label for it in items})}")
    return True


def headings(items: Sequence[ImageItem], alpha: float, needs: Needs) -> float:
    """CosPlace's heading classes need headings; images without one fall back to one bin (alpha 360)."""
    if alpha >= 360:
        return alpha
    missing = sum(it.heading is None for it in items)
    if missing == len(items):
        needs.fallback("alpha", f"CosPlace's {alpha:g}° heading classes need headings, and no train image name "
                                "carries one (field 9 of the @ name); classes ignore heading (alpha 360). "
                                "Set -p alpha 360 to silence this")
        return 360.0
    if missing:
        needs.met(f"headings: {len(items) - missing} of {len(items)} train images ({missing} without are dropped "
                  "from heading classes)")
    return alpha


def min_images_per_class(items: Sequence[ImageItem], cfg: dict[str, Any], needs: Needs) -> int:
    """CosPlace keeps classes with at least `min_images_per_class` images; when no class has that
    many (a small or sparse train split), fall back to keeping every class, printed and recorded."""
    from .cosplace import divide_items

    wanted = int(cfg["min_images_per_class"])
    try:
        summary = divide_items(items, M=cfg["M"], alpha=cfg["alpha"], N=cfg["N"], L=cfg["L"],
                               min_images_per_class=wanted).summary()
        reason = None if summary["classes"] else f"none of the {summary['dropped_classes']} classes has " \
                                                  f"{wanted} images"
    except ValueError as err:
        reason = str(err).split(";")[0]
    if reason is None:
        return wanted
    needs.fallback("min_images_per_class",
                   f"{reason} (min_images_per_class {wanted}); every class is kept (min_images_per_class 1). "
                   "A train split laid out for CosPlace has enough images per class; set -p min_images_per_class N "
                   "to choose")
    return 1
