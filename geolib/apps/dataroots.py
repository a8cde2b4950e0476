"""Where each notebook's data comes from: the one place for the data-root rules.

Roots are named by dataset kind, and every notebook that reads a kind takes the same parameter:
`u1652_root` (University-1652), `pairs_root` + `pairs_format` (CVUSA, CVACT, VIGOR), `vpr_root`
(place recognition with a train split) and `vpr_test_roots` (test-only sets such as Tokyo-XS,
evaluated with the model trained on `vpr_root`). A kind left at None comes from the built-in
synthetic world. Side files that a release lacks (building coordinates, building regions) are read
only when given, for real data and the world alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

PAIRS_FORMATS = ("cvusa", "cvact", "vigor")


@dataclass
class DataRoot:
    """One dataset a notebook reads: its format, folder, record name and optional side files."""

    format: str
    root: Path
    dataset: str                      # the `dataset` of its metrics records
    synthetic: bool
    coordinates: Path | None = None   # building -> UTM (University-1652)
    regions: Path | None = None       # building -> region (University-1652)
    world: Path | None = None         # the synthetic world's export root, when synthetic
    options: dict[str, Any] = field(default_factory=dict)

    def _side(self) -> dict[str, Path]:
        return {k: v for k, v in (("coordinates", self.coordinates), ("regions", self.regions)) if v is not None}

    def load(self, **kwargs: Any):
        from ..data.datasets import load_dataset

        return load_dataset(self.format, self.root, **{**self.options, **self._side(), **kwargs})

    def check(self, decode: bool = False, max_problems: int = 20, **kwargs: Any):
        """`check-data` on this root (side files included), its report printed; raises on errors."""
        from ..data.validate import check_data, format_report

        checked = check_data(self.format, self.root, decode=decode, **{**self.options, **self._side(), **kwargs})
        print(format_report(checked, max_problems=max_problems))
        return checked.raise_on_errors()

    def describe(self) -> str:
        side = ", ".join(f"{k} {v}" for k, v in (("coordinates", self.coordinates), ("regions", self.regions)) if v)
        return f"{self.dataset}: {self.format} at {self.root}" + (f" ({side})" if side else "")


def _folder(value: str | Path, name: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"-p {name} {value}: no such folder; give the dataset's root folder")
    return path


def _file(value: str | Path | None, name: str) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"-p {name} {value}: no such file; give a CSV (see docs/data.md)")
    return path


def world(profile: str, preset: str, seed: int) -> Path:
    from ..world.build import build_world

    return build_world(preset, seed=seed, profile=profile)


def release(world_root: Path) -> dict[str, Path]:
    """The world's release-exact copies (University-1652, SF-XS, Tokyo-XS, SF-XL, CVUSA, CVACT, VIGOR)."""
    from ..data.release import write_release

    return write_release(world_root)


def u1652(profile: str, preset: str, seed: int, u1652_root: str | Path | None = None,
          u1652_coordinates: str | Path | None = None, u1652_regions: str | Path | None = None) -> DataRoot:
    """University-1652: the given root, or the synthetic world's."""
    if u1652_root:
        return DataRoot("university1652", _folder(u1652_root, "u1652_root"), "university1652", False,
                        _file(u1652_coordinates, "u1652_coordinates"), _file(u1652_regions, "u1652_regions"))
    root = world(profile, preset, seed)
    return DataRoot("university1652", root / "university1652", f"synthetic-{preset}", True,
                    _file(u1652_coordinates, "u1652_coordinates"), _file(u1652_regions, "u1652_regions"),
                    world=root)


def pairs(profile: str, preset: str, seed: int, pairs_root: str | Path | None = None,
          pairs_format: str | None = None) -> DataRoot:
    """CVUSA / CVACT / VIGOR pairs: the given root in its format, or the world's CVUSA-layout pairs."""
    fmt = pairs_format or "cvusa"
    if fmt not in PAIRS_FORMATS:
        raise ValueError(f"-p pairs_format {fmt}: choose one of {', '.join(PAIRS_FORMATS)}")
    options = {"split": ("train", "test")} if fmt == "vigor" else {}  # VIGOR: train and evaluate in one run
    if pairs_root:
        return DataRoot(fmt, _folder(pairs_root, "pairs_root"), fmt, False, options=options)
    if pairs_format and pairs_format != "cvusa":
        root = world(profile, preset, seed)
        return DataRoot(fmt, release(root)[fmt], f"synthetic-{preset}-{fmt}", True, world=root, options=options)
    root = world(profile, preset, seed)
    return DataRoot("cvusa", root / "cvusa", f"synthetic-{preset}", True, world=root)


def vpr(profile: str, preset: str, seed: int, vpr_root: str | Path | None = None) -> DataRoot:
    """Place recognition with a train split (SF-XS, SF-XL): the given root, or the world's export."""
    if vpr_root:
        root = _folder(vpr_root, "vpr_root")
        return DataRoot("vpr", root, root.name.lower(), False)
    root = world(profile, preset, seed)
    return DataRoot("vpr", root / "vpr", f"synthetic-{preset}", True, world=root)


def vpr_tests(profile: str, preset: str, seed: int, vpr_test_roots: Mapping[str, str | Path] | None = None,
              synthetic: bool = True) -> dict[str, DataRoot]:
    """Test-only sets evaluated with the model trained on `vpr_root`: the given ones, else (when
    `vpr_root` is the world's too) the world's release-exact Tokyo-XS stand-in: the world's test area
    laid out as Tokyo-XS is released, `test/` only, with its night queries."""
    if vpr_test_roots is not None:
        if not isinstance(vpr_test_roots, Mapping):
            raise TypeError('-p vpr_test_roots takes a mapping, e.g. \'{"tokyo-xs": "/data/tokyo_xs"}\'')
        return {name: DataRoot("vpr", _folder(path, f"vpr_test_roots[{name!r}]"), name, False)
                for name, path in vpr_test_roots.items()}
    if not synthetic:  # a real vpr_root is never mixed with the world's stand-ins
        return {}
    root = world(profile, preset, seed)
    rel = release(root)
    return {f"synthetic-{preset}-tokyo-xs": DataRoot("vpr", rel["tokyo-xs"], f"synthetic-{preset}-tokyo-xs", True,
                                                     world=root)}


# ------------------------------------------------------------------------- place-recognition folders

def vpr_splits(root: Path) -> list[str]:
    """The evaluation splits a place-recognition root has (`<split>/database/`), in train/val/test order."""
    order = {"train": 0, "val": 1, "test": 2}
    found = [p.name for p in Path(root).iterdir() if p.is_dir() and (p / "database").is_dir()] \
        if Path(root).is_dir() else []
    return sorted(found, key=lambda s: (order.get(s, 3), s))
