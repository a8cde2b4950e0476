"""Loaders for every dataset layout of docs/data.md, returning one uniform description.

Real and synthetic data go through the same code: the synthetic world is exported in the real
layouts, so every default run exercises the loaders that real-data users depend on.

A loader walks the folder tree and the split files, and collects every problem it sees (with the
file, the problem and the fix) instead of stopping at the first one. `load_dataset` then raises a
single `DatasetError` listing all errors, before any training starts. Warnings (empty class
folders, stray files) are kept on the dataset: the real University-1652 has both.
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .images import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, is_image_file

FORMATS = ("university1652", "cvusa", "cvact", "vigor", "vpr", "folder")
U1652_VIEWS = ("satellite", "drone", "street", "google")


# --------------------------------------------------------------------------- description

@dataclass
class Problem:
    severity: str  # "error" or "warning"
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper():7s} {self.path}: {self.message}"


@dataclass
class ImageItem:
    path: Path
    view: str
    split: str
    role: str  # "train", "query" or "gallery"
    label: int | None = None
    utm_east: float | None = None
    utm_north: float | None = None
    utm_zone: str | None = None
    lat: float | None = None
    lon: float | None = None
    heading: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeoDataset:
    """What every loader returns: images with labels and geometry, queries vs gallery, pairs."""

    format: str
    root: Path
    items: list[ImageItem]
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (query index, gallery index)
    problems: list[Problem] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)  # "<view>/<class>" folders with no image
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def views(self) -> list[str]:
        return sorted({it.view for it in self.items})

    def select(self, view: str | None = None, split: str | None = None,
               role: str | None = None) -> list[ImageItem]:
        return [it for it in self.items
                if (view is None or it.view == view) and (split is None or it.split == split)
                and (role is None or it.role == role)]

    def summary(self) -> dict[str, Any]:
        """Views, classes and images per (split, role, view), and classes without images."""
        groups: dict[str, dict[str, Any]] = {}
        for it in self.items:
            key = f"{it.split}/{it.role}/{it.view}"
            g = groups.setdefault(key, {"images": 0, "classes": set()})
            g["images"] += 1
            if it.label is not None:
                g["classes"].add(it.label)
        table = {k: {"images": v["images"], "classes": len(v["classes"])} for k, v in sorted(groups.items())}
        return {"format": self.format, "root": str(self.root), "images": len(self.items),
                "views": self.views, "groups": table, "pairs": len(self.pairs),
                "classes_without_images": list(self.empty_classes),
                "errors": len(self.errors), "warnings": len(self.warnings)}

    def raise_on_errors(self) -> "GeoDataset":
        if self.errors:
            raise DatasetError(self)
        return self


class DatasetError(ValueError):
    """One error listing every problem of a dataset, so it is fixed in one pass."""

    def __init__(self, dataset: GeoDataset, limit: int = 50):
        errs = dataset.errors
        lines = [f"{dataset.format} dataset at {dataset.root} has {len(errs)} error(s):"]
        lines += [f"  {p}" for p in errs[:limit]]
        if len(errs) > limit:
            lines.append(f"  ... and {len(errs) - limit} more (python -m geolib check-data "
                         f"--format {dataset.format} {dataset.root} lists them all)")
        super().__init__("\n".join(lines))
        self.dataset = dataset


# --------------------------------------------------------------------------- quick file checks

def quick_image_check(path: Path) -> str | None:
    """A cheap check that catches non-images and truncated files without decoding pixels.

    A JPEG ends with the EOI marker and a PNG with its IEND chunk; a cut download has neither.
    The full decode is `check-data`'s job.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(max(0, size - 1024))
            tail = fh.read()
    except OSError as err:
        return f"cannot read the file ({err})"
    if size == 0:
        return "empty file; re-download or remove it"
    if head[:3] == b"\xff\xd8\xff":
        if b"\xff\xd9" not in tail:
            return "truncated JPEG (no end-of-image marker); re-download or remove it"
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in tail:
            return "truncated PNG (no IEND chunk); re-download or remove it"
    else:
        return f"not a JPEG or PNG although named {path.suffix}; convert or remove it"
    return None


def _check_files(ds: GeoDataset, check: str) -> None:
    if check == "none":
        return
    if check != "quick":
        raise ValueError(f"check must be 'none' or 'quick' (the full decode is check-data), not {check!r}")
    for it in ds.items:
        msg = quick_image_check(it.path)
        if msg:
            ds.problems.append(Problem("error", str(it.path), msg))


# --------------------------------------------------------------------------- University-1652

def _image_files(folder: Path, ds: GeoDataset) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            ds.problems.append(Problem("warning", str(p), "unexpected sub-folder inside a class folder; ignored"))
        elif is_image_file(p):
            files.append(p)
        elif not p.name.startswith("."):
            ds.problems.append(Problem("warning", str(p), "stray non-image file; ignored"))
    return files


def _read_locations(root: Path, ds: GeoDataset) -> dict[int, dict[str, Any]]:
    """`locations.csv` (label,utm_east,utm_north,utm_zone,lat,lon[,region]) beside train/ and test/.

    Only the synthetic world's own export carries it (the public release has no coordinates); it is
    read whenever present so the default pipeline keeps its GPS sampling and regions. Real data
    gets the same through the side files `load_university1652` reads when pointed at them.
    """
    path = root / "locations.csv"
    if not path.exists():
        return {}
    out: dict[int, dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh), 2):
            try:
                out[int(row["label"])] = {
                    "utm_east": float(row["utm_east"]), "utm_north": float(row["utm_north"]),
                    "utm_zone": row.get("utm_zone") or None,
                    "lat": float(row["lat"]) if row.get("lat") else None,
                    "lon": float(row["lon"]) if row.get("lon") else None,
                    "region": row.get("region") or None}
            except (KeyError, ValueError) as err:
                ds.problems.append(Problem("error", f"{path}:{n}", f"row does not parse ({err}); expected "
                                           "label,utm_east,utm_north,utm_zone,lat,lon"))
    return out


COORDINATE_COLUMNS = ("building", "utm_east", "utm_north", "utm_zone", "lat", "lon")
REGION_COLUMNS = ("building", "region")
_UTM_LETTERS = "CDEFGHJKLMNPQRSTUVWX"


def utm_zone_of(lat: float, lon: float) -> tuple[int, str]:
    """Standard UTM zone number and latitude band of a WGS84 point (the Norway/Svalbard
    exceptions are not applied: no University-1652 building lies there)."""
    if not -80.0 <= lat <= 84.0 or not -180.0 <= lon <= 180.0:
        raise ValueError(f"lat {lat}, lon {lon} is outside UTM's range (lat -80..84, lon -180..180)")
    zone = min(60, int((lon + 180.0) // 6) + 1)
    return zone, _UTM_LETTERS[min(len(_UTM_LETTERS) - 1, int((lat + 80.0) // 8))]


def _side_rows(path: Path, columns: Sequence[str], required: Sequence[Sequence[str]], what: str,
               ds: GeoDataset) -> list[tuple[int, dict[str, str]]] | None:
    """Rows (with their line numbers) of a side CSV, or None after reporting why it cannot be read.

    The header must hold every column of at least one of the `required` alternatives.
    """
    example = ",".join(columns)
    if not path.is_file():
        ds.problems.append(Problem("error", str(path), f"{what} file not found; give the path of a CSV "
                                   f"with the header {example}"))
        return None
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        if not any(all(c in header for c in alt) for alt in required):
            missing = " or ".join(",".join(c for c in alt if c not in header) for alt in required)
            ds.problems.append(Problem("error", f"{path}:1", f"{what} file lacks column(s) {missing} "
                                       f"(header is {','.join(header) or 'empty'}); its first line must "
                                       f"be {example}"))
            return None
        return [(n, {(k or "").strip(): (v or "").strip() for k, v in row.items()})
                for n, row in enumerate(reader, 2) if any((v or "").strip() for v in row.values())]


def _side_building(path: Path, n: int, raw: str, known: set[int], seen: set[int],
                   ds: GeoDataset) -> int | None:
    """The building id of a side-file row, or None after reporting a bad, duplicate or unknown one."""
    where = f"{path}:{n}"
    if not raw.isdigit():
        ds.problems.append(Problem("error", where, f"building {raw!r} is not a building id (digits such as "
                                   "0001, the class folder name); fix or remove the row"))
        return None
    label = int(raw)
    if label in seen:
        ds.problems.append(Problem("error", where, f"building {raw} is listed twice; keep one row"))
        return None
    seen.add(label)
    if label not in known:
        ds.problems.append(Problem("error", where, f"building {raw} has no class folder under train/ or "
                                   "test/; remove the row, or check that the file belongs to this dataset"))
        return None
    return label


def _side_float(path: Path, n: int, row: dict[str, str], column: str, ds: GeoDataset) -> float | None:
    raw = row.get(column, "")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        ds.problems.append(Problem("error", f"{path}:{n}", f"{column} {raw!r} is not a number; fix the "
                                   "value or remove the row"))
        return None
    return value


def read_coordinates(path: Path, known: set[int], ds: GeoDataset) -> dict[int, dict[str, Any]]:
    """A user's building -> coordinates side file (University-1652 ships none).

    Header `building,utm_east,utm_north,utm_zone,lat,lon`; `building` is the class folder name
    (0001). Either the UTM triple or lat/lon may be left empty: UTM is then computed from lat/lon
    (standard zones), so coordinates looked up on a map are enough. Problems go to `ds`.
    """
    rows = _side_rows(path, COORDINATE_COLUMNS, (("building", "utm_east", "utm_north", "utm_zone"),
                                                 ("building", "lat", "lon")), "coordinates", ds)
    if rows is None:
        return {}
    out: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()
    for n, row in rows:
        label = _side_building(path, n, row.get("building", ""), known, seen, ds)
        if label is None:
            continue
        has_utm = bool(row.get("utm_east") or row.get("utm_north"))
        has_latlon = bool(row.get("lat") or row.get("lon"))
        if not has_utm and not has_latlon:
            ds.problems.append(Problem("error", f"{path}:{n}", "row has neither utm_east/utm_north nor "
                                       "lat/lon; give one of them or remove the row"))
            continue
        loc: dict[str, Any] = {"utm_east": None, "utm_north": None, "utm_zone": None, "lat": None, "lon": None}
        ok = True
        for col in (("utm_east", "utm_north") if has_utm else ()) + (("lat", "lon") if has_latlon else ()):
            loc[col] = _side_float(path, n, row, col, ds)
            ok &= loc[col] is not None
        if not ok:
            continue
        if has_utm:
            loc["utm_zone"] = row.get("utm_zone") or None
            if not loc["utm_zone"]:
                ds.problems.append(Problem("error", f"{path}:{n}", "utm_zone is empty; give the zone with its "
                                           "latitude band (e.g. 33T), or leave the UTM columns empty "
                                           "and give lat/lon"))
                continue
        else:
            try:
                zone, letter = utm_zone_of(loc["lat"], loc["lon"])
            except ValueError as err:
                ds.problems.append(Problem("error", f"{path}:{n}", f"{err}; fix lat/lon"))
                continue
            from ..coords import latlon_to_utm

            loc["utm_east"], loc["utm_north"] = latlon_to_utm(loc["lat"], loc["lon"], zone)
            loc["utm_zone"] = f"{zone}{letter}"
        out[label] = loc
    return out


def read_regions(path: Path, known: set[int], ds: GeoDataset) -> dict[int, str]:
    """A user's building -> region side file (`building,region`; University-1652's university).

    The region is any non-empty name; it goes to `meta["region"]` for the region classifier.
    """
    rows = _side_rows(path, REGION_COLUMNS, (REGION_COLUMNS,), "regions", ds)
    if rows is None:
        return {}
    out: dict[int, str] = {}
    seen: set[int] = set()
    for n, row in rows:
        label = _side_building(path, n, row.get("building", ""), known, seen, ds)
        if label is None:
            continue
        if not row.get("region"):
            ds.problems.append(Problem("error", f"{path}:{n}", "region is empty; give the building's region "
                                       "(university) name or remove the row"))
            continue
        out[label] = row["region"]
    return out


def _u1652_buildings(root: Path) -> set[int]:
    """Every building id with a class folder under train/ or test/ (whatever splits are loaded)."""
    out: set[int] = set()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        for sub in (root / split).iterdir():
            if sub.is_dir() and _u1652_role_view(split, sub.name)[1] is not None:
                out.update(int(c.name) for c in sub.iterdir() if c.is_dir() and c.name.isdigit())
    return out


def _report_uncovered(ds: GeoDataset, path: Path, covered: dict[int, Any], what: str) -> None:
    labels = sorted({it.label for it in ds.items if it.label is not None} - set(covered))
    if labels:
        shown = ", ".join(f"{b:04d}" for b in labels[:8]) + (" ..." if len(labels) > 8 else "")
        ds.problems.append(Problem("warning", str(path), f"{len(labels)} building(s) have no {what} "
                                   f"({shown}); their images get none"))


def _add_class_folders(ds: GeoDataset, view_dir: Path, view: str, split: str, role: str,
                       locations: dict[int, dict[str, Any]]) -> None:
    for cls in sorted(view_dir.iterdir()):
        if not cls.is_dir():
            if not cls.name.startswith("."):
                ds.problems.append(Problem("warning", str(cls), "stray file beside the class folders; ignored"))
            continue
        if not cls.name.isdigit():
            ds.problems.append(Problem("error", str(cls), "class folder name does not parse as a building id "
                                       "(expected digits such as 0001); rename or remove it"))
            continue
        label = int(cls.name)
        files = _image_files(cls, ds)
        if not files:
            ds.empty_classes.append(f"{view_dir.name}/{cls.name}")
            ds.problems.append(Problem("warning", str(cls), "empty class folder"))
        loc = locations.get(label, {})
        for f in files:
            ds.items.append(ImageItem(f, view, split, role, label,
                                      utm_east=loc.get("utm_east"), utm_north=loc.get("utm_north"),
                                      utm_zone=loc.get("utm_zone"), lat=loc.get("lat"), lon=loc.get("lon"),
                                      meta={"region": loc["region"]} if loc.get("region") else {}))


def load_university1652(root: Path, splits: Sequence[str] = ("train", "test"),
                        coordinates: str | os.PathLike | None = None,
                        regions: str | os.PathLike | None = None) -> GeoDataset:
    """`train/<view>/<id>/…` and `test/{query,gallery}_<view>/<id>/…`; label = int(<id>).

    The release has no coordinates and no universities. `coordinates` (building -> UTM/lat/lon,
    see `read_coordinates`) and `regions` (building -> region, see `read_regions`) are side files
    the user writes; they are read only when given, and override a `locations.csv` in ROOT (which
    only the synthetic world's own export has). Without any, items have no UTM and no region.
    """
    ds = GeoDataset("university1652", root, [], options={"splits": list(splits),
                                                         "coordinates": coordinates and str(coordinates),
                                                         "regions": regions and str(regions)})
    present = [s for s in splits if (root / s).is_dir()]
    if not present:
        ds.problems.append(Problem("error", str(root), "no train/ or test/ folder: point ROOT at the "
                                   "University-1652 folder that holds train/ and test/"))
        return ds
    locations = _read_locations(root, ds)
    side_coords: dict[int, dict[str, Any]] | None = None
    side_regions: dict[int, str] | None = None
    if coordinates is not None or regions is not None:
        known = _u1652_buildings(root)
        if coordinates is not None:
            side_coords = read_coordinates(Path(coordinates).expanduser(), known, ds)
        if regions is not None:
            side_regions = read_regions(Path(regions).expanduser(), known, ds)
        for label in set(side_coords or {}) | set(side_regions or {}) | set(locations):
            loc = dict(locations.get(label, {}))
            if side_coords is not None:
                loc.update({"utm_east": None, "utm_north": None, "utm_zone": None, "lat": None, "lon": None},
                           **side_coords.get(label, {}))
            if side_regions is not None:
                loc["region"] = side_regions.get(label)
            locations[label] = loc
    for split in present:
        for sub in sorted((root / split).iterdir()):
            if not sub.is_dir():
                continue
            role, view = _u1652_role_view(split, sub.name)
            if view is None:
                ds.problems.append(Problem("warning", str(sub), "not a University-1652 view folder; ignored"))
                continue
            _add_class_folders(ds, sub, view, split, role, locations)
    if side_coords is not None:
        _report_uncovered(ds, Path(coordinates), side_coords, "coordinates")
    if side_regions is not None:
        _report_uncovered(ds, Path(regions), side_regions, "region")
    _check_query_classes(ds)
    return ds


def _u1652_role_view(split: str, name: str) -> tuple[str, str | None]:
    if split == "train":
        return "train", name if name in U1652_VIEWS else None
    m = re.fullmatch(r"(query|gallery)_(\w+)", name)
    if m and m.group(2) in U1652_VIEWS:
        return m.group(1), m.group(2)
    return "", None


def _check_query_classes(ds: GeoDataset) -> None:
    gallery = {it.label for it in ds.items if it.role == "gallery"}
    if not gallery:
        return
    seen: set[tuple[str, int]] = set()
    for it in ds.items:
        if it.role == "query" and it.label not in gallery and (it.view, it.label) not in seen:
            seen.add((it.view, it.label))
            ds.problems.append(Problem("warning", str(it.path.parent),
                                       "query class with no gallery item: it counts as a miss"))


# --------------------------------------------------------------------------- CVUSA

CVUSA_SPLIT_FILES = {"train": "splits/train-19zl.csv", "val": "splits/val-19zl.csv"}


def load_cvusa(root: Path, splits: Sequence[str] = ("train", "val")) -> GeoDataset:
    """Split CSVs of `bingmap/19/<id>.jpg,streetview/panos/<id>.jpg,<annotation>` rows."""
    ds = GeoDataset("cvusa", root, [], options={"splits": list(splits)})
    for split in splits:
        if split not in CVUSA_SPLIT_FILES:
            raise ValueError(f"CVUSA split {split!r} unknown; choose from {sorted(CVUSA_SPLIT_FILES)}")
        csv_path = root / CVUSA_SPLIT_FILES[split]
        if not csv_path.exists():
            ds.problems.append(Problem("error", str(csv_path), "missing split file; CVUSA needs "
                                       "splits/train-19zl.csv and splits/val-19zl.csv under ROOT"))
            continue
        with open(csv_path, newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.reader(fh), 1):
                if not row or not "".join(row).strip():
                    continue
                _add_pair(ds, csv_path, n, row, split, label=len(ds.pairs))
    return ds


def _add_pair(ds: GeoDataset, csv_path: Path, n: int, row: list[str], split: str, label: int) -> None:
    if len(row) < 2:
        ds.problems.append(Problem("error", f"{csv_path}:{n}", "row does not parse: expected "
                                   "<satellite path>,<panorama path>[,<annotation>]"))
        return
    sat, pano = root_join(ds.root, row[0]), root_join(ds.root, row[1])
    missing = [p for p in (sat, pano) if not p.exists()]
    for p in missing:
        ds.problems.append(Problem("error", str(p), f"listed in {csv_path.name} line {n} but missing"))
    if missing:
        return
    g = len(ds.items)
    ds.items.append(ImageItem(sat, "satellite", split, "gallery", label))
    ds.items.append(ImageItem(pano, "panorama", split, "query", label))
    ds.pairs.append((g + 1, g))


def root_join(root: Path, rel: str) -> Path:
    return root / rel.strip().lstrip("/")


# --------------------------------------------------------------------------- CVACT

CVACT_SPLIT_KEYS = {"train": ("trainSet", "trainInd"), "val": ("valSet", "valInd")}


def _mat_indices(mat: dict[str, Any], split: str) -> np.ndarray:
    outer, inner = CVACT_SPLIT_KEYS[split]
    value = mat[outer]
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.dtype.names:
        value = value[inner]
        while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
            value = value.item()
    elif isinstance(value, dict):
        value = value[inner]
    return np.asarray(value, dtype=np.int64).ravel() - 1  # MATLAB indices are 1-based


def load_cvact(root: Path, splits: Sequence[str] = ("train", "val"), zone: str = "55H") -> GeoDataset:
    """`ACT_data.mat` (panoIds, utm, trainSet.trainInd, valSet.valInd) with `ANU_data_small/` images."""
    from scipy.io import loadmat

    ds = GeoDataset("cvact", root, [], options={"splits": list(splits), "zone": zone})
    mat_path = root / "ACT_data.mat"
    if not mat_path.exists():
        ds.problems.append(Problem("error", str(mat_path), "missing split file ACT_data.mat; put it in ROOT "
                                   "beside ANU_data_small/"))
        return ds
    try:
        mat = loadmat(mat_path)
        ids = [str(np.asarray(x).ravel()[0]) if np.asarray(x).size else "" for x in np.asarray(mat["panoIds"]).ravel()]
        utm = np.asarray(mat["utm"], dtype=np.float64).reshape(len(ids), -1)
    except (KeyError, ValueError, OSError) as err:
        ds.problems.append(Problem("error", str(mat_path), f"does not parse ({err}); expected panoIds, utm, "
                                   "trainSet.trainInd, valSet.valInd"))
        return ds
    for split in splits:
        if split not in CVACT_SPLIT_KEYS:
            raise ValueError(f"CVACT split {split!r} unknown; choose from {sorted(CVACT_SPLIT_KEYS)}")
        try:
            idx = _mat_indices(mat, split)
        except (KeyError, ValueError, IndexError) as err:
            ds.problems.append(Problem("error", str(mat_path), f"no {split} index set ({err})"))
            continue
        for i in idx:
            _add_cvact_pair(ds, ids[i], utm[i], split, label=int(i))
    return ds


def _add_cvact_pair(ds: GeoDataset, pano_id: str, utm: np.ndarray, split: str, label: int) -> None:
    base = ds.root / "ANU_data_small"
    pano = base / "streetview" / f"{pano_id}_grdView.jpg"
    sat = base / "satview_polish" / f"{pano_id}_satView_polish.jpg"
    missing = [p for p in (sat, pano) if not p.exists()]
    for p in missing:
        ds.problems.append(Problem("error", str(p), "listed in ACT_data.mat but missing"))
    if missing:
        return
    geo = dict(utm_east=float(utm[0]), utm_north=float(utm[1]), utm_zone=ds.options["zone"])
    g = len(ds.items)
    ds.items.append(ImageItem(sat, "satellite", split, "gallery", label, **geo))
    ds.items.append(ImageItem(pano, "panorama", split, "query", label, **geo))
    ds.pairs.append((g + 1, g))


# --------------------------------------------------------------------------- VIGOR

VIGOR_CITIES = {"cross": {"train": ("NewYork", "Seattle"), "test": ("Chicago", "SanFrancisco")},
                "same": {"train": ("NewYork", "Seattle", "Chicago", "SanFrancisco"),
                         "test": ("NewYork", "Seattle", "Chicago", "SanFrancisco")}}


def _latlon_from_name(name: str, pattern: str) -> tuple[float | None, float | None]:
    m = re.search(pattern, name)
    return (float(m.group(1)), float(m.group(2))) if m else (None, None)


def load_vigor(root: Path, split: str | Sequence[str] = "test", mode: str = "cross",
               cities: Sequence[str] | None = None) -> GeoDataset:
    """VIGOR as released: `<city>/{panorama,satellite}/` with `splits/<city>/` label files.

    Each panorama lists one positive and three semi-positive satellite tiles; the positive is the
    pair, the semi-positives go in `meta["semi_positives"]` for the hit-rate protocol. `split` may
    name both splits (`("train", "test")`), for a run that trains and evaluates; labels stay unique.
    """
    splits = [split] if isinstance(split, str) else list(split)
    if mode not in VIGOR_CITIES or not splits or any(s not in ("train", "test") for s in splits):
        raise ValueError("VIGOR needs mode 'cross' or 'same' and split 'train' or 'test'")
    ds = GeoDataset("vigor", root, [], options={"split": split if isinstance(split, str) else splits, "mode": mode})
    label_dir = next((root / d for d in ("splits__corrected", "splits") if (root / d).is_dir()), root / "splits")
    for one in splits:
        for city in cities or VIGOR_CITIES[mode][one]:
            sat_index = _vigor_satellites(ds, label_dir, city, one)
            if sat_index is None:
                continue
            name = "pano_label_balanced.txt" if mode == "cross" else f"same_area_balanced_{one}.txt"
            _vigor_panoramas(ds, label_dir / city / name, city, one, sat_index)
    return ds


def _vigor_satellites(ds: GeoDataset, label_dir: Path, city: str, split: str) -> dict[str, int] | None:
    lst = label_dir / city / "satellite_list.txt"
    if not lst.exists():
        ds.problems.append(Problem("error", str(lst), "missing split file; VIGOR needs splits/<city>/satellite_list.txt"))
        return None
    index: dict[str, int] = {}
    for name in lst.read_text().split():
        path = ds.root / city / "satellite" / name
        if not path.exists():
            ds.problems.append(Problem("error", str(path), f"listed in {lst.name} but missing"))
            continue
        lat, lon = _latlon_from_name(name, r"satellite_(-?[\d.]+)_(-?[\d.]+)\.\w+$")
        index[name] = len(ds.items)
        ds.items.append(ImageItem(path, "satellite", split, "gallery", index[name], lat=lat, lon=lon,
                                  meta={"city": city}))
    return index


def _vigor_panoramas(ds: GeoDataset, label_file: Path, city: str, split: str, sat_index: dict[str, int]) -> None:
    if not label_file.exists():
        ds.problems.append(Problem("error", str(label_file), "missing split file"))
        return
    for n, line in enumerate(label_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or any(s not in sat_index for s in parts[1::3][:4]):
            ds.problems.append(Problem("error", f"{label_file}:{n}", "row does not parse or names a satellite "
                                       "tile missing from satellite_list.txt"))
            continue
        pano = ds.root / city / "panorama" / parts[0]
        if not pano.exists():
            ds.problems.append(Problem("error", str(pano), f"listed in {label_file.name} but missing"))
            continue
        sats = [sat_index[s] for s in parts[1::3][:4]]
        lat, lon = _latlon_from_name(parts[0], r",(-?[\d.]+),(-?[\d.]+),")
        ds.pairs.append((len(ds.items), sats[0]))
        ds.items.append(ImageItem(pano, "panorama", split, "query", sats[0], lat=lat, lon=lon,
                                  meta={"city": city, "semi_positives": sats[1:]}))


# --------------------------------------------------------------------------- VPR (CosPlace format)

VPR_FIELDS = ("utm_east", "utm_north", "utm_zone", "utm_letter", "lat", "lon", "pano_id", "tile",
              "heading", "pitch", "roll", "height", "timestamp", "note")
VPR_FLOATS = {"utm_east", "utm_north", "lat", "lon", "heading", "pitch", "roll", "height"}


def parse_vpr_name(name: str) -> dict[str, Any]:
    """Fields of a CosPlace-style `@`-separated file name (docs/data.md); empty fields are None.

    Only the file name is split, never the whole path: folders may contain `@` too. Raises
    ValueError when UTM east/north are missing or a numeric field is not a number.
    """
    parts = Path(name).name.split("@")
    values = parts[1:1 + len(VPR_FIELDS)]
    out: dict[str, Any] = {}
    for key, raw in zip(VPR_FIELDS, values + [""] * (len(VPR_FIELDS) - len(values))):
        raw = raw.strip()
        if not raw:
            out[key] = None
        elif key in VPR_FLOATS:
            try:
                out[key] = float(raw)
            except ValueError:
                raise ValueError(f"field {key} is {raw!r}, not a number") from None
        else:
            out[key] = raw
    out["n_fields"] = max(0, len(parts) - 2)  # the prefix before the first @ and the suffix are not fields
    if out["utm_east"] is None or out["utm_north"] is None:
        raise ValueError("no UTM east/north in fields 1 and 2")
    return out


def load_vpr(root: Path, split: str = "test", query_folder: str | None = "queries",
             database_folder: str = "database") -> GeoDataset:
    """`<split>/<database_folder>/` and `<split>/<query_folder>/` of @-named images.

    The query folder is a parameter: releases call it `queries`, `queries_v1`, or split it by
    condition (`queries_night`). A training split as released (SF-XS, SF-XL) is a plain tree of
    @-named images at any depth with no database/queries division; `split="train"` without a
    `<database_folder>/` reads such a tree whole, as the database (`options["layout"] = "plain"`).
    `database_folder="."` with `query_folder=None` reads any split whole, whatever its sub-folders.
    """
    ds = GeoDataset("vpr", root, [], options={"split": split, "query_folder": query_folder,
                                                 "database_folder": database_folder, "layout": "split"})
    split_dir = root / split
    if split == "train" and split_dir.is_dir() and not (split_dir / database_folder).is_dir():
        ds.options.update(layout="plain", database_folder=".", query_folder=None)
        for f in sorted(p for p in split_dir.rglob("*") if p.is_file()):
            _add_vpr_item(ds, f, split, "gallery", str(f.parent.relative_to(split_dir)))
        if not ds.items:
            ds.problems.append(Problem("error", str(split_dir), "no @-named images in the train tree; point "
                                       "ROOT at the folder that holds train/"))
        return ds
    folders = [(database_folder, "gallery")] + ([(query_folder, "query")] if query_folder else [])
    for folder, role in folders:
        path = split_dir / folder
        if not path.is_dir():
            found = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
            ds.problems.append(Problem("error", str(path), f"missing folder; {split_dir} holds "
                                       f"{found or 'nothing'} (set query_folder/database_folder)"))
            continue
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            _add_vpr_item(ds, f, split, role, folder)
    return ds


def _add_vpr_item(ds: GeoDataset, f: Path, split: str, role: str, folder: str) -> None:
    if not is_image_file(f):
        if not f.name.startswith("."):
            ds.problems.append(Problem("warning", str(f), "stray non-image file; ignored"))
        return
    try:
        fields = parse_vpr_name(f.name)
    except ValueError as err:
        ds.problems.append(Problem("error", str(f), f"file name does not parse ({err}); expected "
                                   "@east@north@zone@letter@lat@lon@pano@tile@heading@pitch@roll@height@time@note@.jpg"))
        return
    if fields["n_fields"] < len(VPR_FIELDS):
        ds.problems.append(Problem("warning", str(f), f"has {fields['n_fields']} of {len(VPR_FIELDS)} @ fields; "
                                   "the missing ones are read as empty"))
    zone = f"{fields['utm_zone'] or ''}{fields['utm_letter'] or ''}" or None
    ds.items.append(ImageItem(f, "database" if role == "gallery" else "query", split, role, None,
                              utm_east=fields["utm_east"], utm_north=fields["utm_north"], utm_zone=zone,
                              lat=fields["lat"], lon=fields["lon"], heading=fields["heading"],
                              meta={"folder": folder, **{k: fields[k] for k in ("pano_id", "timestamp", "note")}}))


# --------------------------------------------------------------------------- plain folder

def load_folder(root: Path) -> GeoDataset:
    """Any tree of jpg/jpeg/png files: a gallery with no labels, for a user's own photos."""
    ds = GeoDataset("folder", root, [])
    if not root.is_dir():
        ds.problems.append(Problem("error", str(root), "not a folder"))
        return ds
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if is_image_file(f):
            ds.items.append(ImageItem(f, "image", "test", "gallery"))
        elif not f.name.startswith("."):
            ds.problems.append(Problem("warning", str(f), "not a jpg/jpeg/png file; ignored"))
    if not ds.items:
        ds.problems.append(Problem("error", str(root), f"no {'/'.join(IMAGE_SUFFIXES)} images found"))
    return ds


# --------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., GeoDataset]] = {
    "university1652": load_university1652, "cvusa": load_cvusa, "cvact": load_cvact,
    "vigor": load_vigor, "vpr": load_vpr, "folder": load_folder,
}


def load_dataset(fmt: str, root: str | os.PathLike, *, check: str = "quick", strict: bool = True,
                 **options: Any) -> GeoDataset:
    """Load any supported layout. With `strict`, raise one `DatasetError` listing every error.

    `options` go to the format's loader (e.g. `split`, `query_folder`; University-1652's
    `coordinates=` and `regions=` side files; None means not given, for every format).

    `check="quick"` also catches non-images and truncated files from their first and last bytes,
    so a cut download fails here, not inside a DataLoader worker an hour into training.
    """
    if fmt not in LOADERS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    side = [k for k in ("coordinates", "regions") if options.get(k) is not None]
    if side and fmt != "university1652":
        raise ValueError(f"{' and '.join(side)} side files apply to university1652 only; {fmt} carries "
                         "its own geometry (drop the option)")
    options = {k: v for k, v in options.items() if not (k in ("coordinates", "regions") and v is None)}
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset root does not exist; give the folder that holds the "
                                f"{fmt} data")
    ds = LOADERS[fmt](root.resolve(), **options)
    _check_files(ds, check)
    return ds.raise_on_errors() if strict else ds


# --------------------------------------------------------------------------- torch side

class GrayWorld:
    """Scale each colour channel so that its image mean is `target`.

    A camera's white balance and exposure multiply each channel by a constant; gray-world
    normalisation cancels such gains, so views taken by differently set cameras agree on hue.
    """

    def __init__(self, target: float = 0.45):
        self.target = target

    def __call__(self, x):
        means = x.mean(dim=(-2, -1), keepdim=True).clamp(min=1e-3)
        return (x * (self.target / means)).clamp(0, 1)


class CameraGain:
    """Random per-channel gains like a camera's white balance, tint and exposure.

    Unlike ColorJitter it never changes a surface's saturation or turns its hue by itself: it
    only does what a differently set camera would, so a model learns to discount exactly that.
    """

    def __init__(self, white_balance: float = 0.15, tint: float = 0.06, exposure: float = 0.25):
        self.white_balance, self.tint, self.exposure = white_balance, tint, exposure

    def __call__(self, x):
        import torch

        w, t, e = (torch.rand(3) * 2 - 1) * torch.tensor([self.white_balance, self.tint, self.exposure])
        gains = (1 + e) * torch.stack([1 + w, 1 + t, 1 - w])
        return (x * gains.view(3, 1, 1)).clamp(0, 1)


def default_transform(size: int | tuple[int, int], train: bool = False,
                      mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD, gray_world: bool = False,
                      colour: str = "jitter"):
    """Resize + normalise (torchvision.transforms.v2); training adds mild crop jitter and colour
    jitter (`colour="jitter"`, ColorJitter), camera gains (`"gain"`, CameraGain) or none."""
    import torch
    from torchvision.transforms import v2

    size = (size, size) if isinstance(size, int) else tuple(size)
    ops: list[Any] = [v2.ToImage()]
    if train:
        if colour not in ("jitter", "gain", "none"):
            raise ValueError(f"colour augmentation must be jitter, gain or none, not {colour!r}")
        ops += [v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)]
        ops += [v2.ColorJitter(0.2, 0.2, 0.1, 0.0)] if colour == "jitter" else []
    else:
        ops += [v2.Resize(size, antialias=True)]
    ops += [v2.ToDtype(torch.float32, scale=True)]
    if train and colour == "gain":
        ops.append(CameraGain())
    if gray_world:
        ops.append(GrayWorld())
    ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


def labels_of(items: Iterable[ImageItem]) -> np.ndarray:
    return np.array([-1 if it.label is None else it.label for it in items], dtype=np.int64)


def utm_of(items: Iterable[ImageItem]) -> np.ndarray:
    return np.array([[np.nan if it.utm_east is None else it.utm_east,
                      np.nan if it.utm_north is None else it.utm_north] for it in items], dtype=np.float64)


def by_label(items: Iterable[ImageItem]) -> dict[int, list[ImageItem]]:
    out: dict[int, list[ImageItem]] = defaultdict(list)
    for it in items:
        out[it.label].append(it)
    return dict(out)
