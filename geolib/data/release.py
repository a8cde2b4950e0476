"""Release-exact copies of a world export: the public datasets' layouts and nothing more.

Why: the world's own export carries extras no public release has (`world.json` everywhere,
University-1652's `locations.csv`, a VPR train split divided into database/queries). Code that
leans on them works on the world and crashes on the real data. The trees written here hold
exactly what each release holds, so the real-data paths (no coordinates, plain train trees,
test-only datasets, CVACT's .mat, VIGOR's label files) run on every machine.

Nothing is rendered: images are hard links into the export (a copy where linking fails), so a
release costs seconds. The few files a release needs that the export does not have (CVACT's
`ACT_data.mat`, VIGOR's label files and its PNG tiles, the side files) are derived from the
export's `world.json` and `locations.csv`.

`<out>/` holds `university1652/`, `sf-xs/`, `tokyo-xs/`, `sf-xl/`, `cvusa/`, `cvact/`, `vigor/`
and `sidefiles/` (University-1652 building -> coordinates and -> region, which a user writes
for the real data and passes to `load_university1652(coordinates=, regions=)`).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..paths import build_once
from .datasets import parse_vpr_name
from .images import is_image_file

RELEASE_VERSION = "2"
TREES = ("university1652", "sf-xs", "tokyo-xs", "sf-xl", "cvusa", "cvact", "vigor", "sidefiles")
COORDINATES_FILE = "university1652_coordinates.csv"
REGIONS_FILE = "university1652_regions.csv"
VIGOR_TRAIN_CITIES = ("NewYork", "Seattle")
VIGOR_TEST_CITIES = ("Chicago", "SanFrancisco")
# CosPlace's division for SF-XS's train split (one group, one heading per class, <= 10 per class)
SFXS_M, SFXS_ALPHA, SFXS_N, SFXS_L, SFXS_PER_CLASS = 10.0, 30.0, 5, 2, 10


# --------------------------------------------------------------------------- entry point

def release_paths(out: Path) -> dict[str, Path]:
    return {name: out / name for name in TREES}


def write_release(world_root: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write (or reuse) the release trees of a world export; returns {tree name: folder}.

    `world_root` is the folder `geolib.world.build.build_world` returns; the trees go to
    `<world_root>/release/` unless `out` is given. The trees are built in a temporary sibling
    and renamed into place, so a half-written release is never reused; a complete one for the
    same world (same key) is returned as is.
    """
    world_root = Path(world_root)
    meta_path = world_root / "world.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{world_root}: no world.json; give the folder geolib.world.build.build_world "
                                "returns (it holds university1652/, cvusa/, vpr/ and world.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    stamp = f"{meta['key']} release-{RELEASE_VERSION}"
    out = Path(out) if out is not None else world_root / "release"
    build_once(out, stamp, lambda tmp: _build(world_root, meta, tmp), "a release written by write_release")
    return release_paths(out)


def _build(world_root: Path, meta: dict[str, Any], out: Path) -> None:
    write_university1652(world_root / "university1652", out / "university1652")
    write_side_files(world_root / "university1652" / "locations.csv", out / "sidefiles")
    vpr = world_root / "vpr"
    write_sf_xs(vpr, out / "sf-xs")
    _link_folder(vpr / "test" / "database", out / "tokyo-xs" / "test" / "database")
    _link_folder(vpr / "test" / "queries_night", out / "tokyo-xs" / "test" / "queries")
    write_sf_xl(vpr, out / "sf-xl")
    write_cvusa(world_root / "cvusa", out / "cvusa")
    pairs = cvusa_pairs(world_root, meta)
    write_cvact(world_root / "cvusa", pairs, out / "cvact")
    write_vigor(world_root / "cvusa", pairs, meta, out / "vigor")


# --------------------------------------------------------------------------- linking

def link(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (the release costs no space), copying where links are refused
    (another file system, or one without hard links)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p)) if folder.is_dir() else []


def _link_folder(src: Path, dst: Path) -> None:
    files = _images(src)
    if not files:
        raise FileNotFoundError(f"{src}: no images; the world export is incomplete (rebuild it with "
                                "build_world(force=True))")
    for f in files:
        link(f, dst / f.name)


# --------------------------------------------------------------------------- University-1652

def write_university1652(src: Path, dst: Path, google_every: int = 2) -> None:
    """train/{satellite,drone,street,google}/<id>/ and test/{query,gallery}_<view>/<id>/.

    The real train/google folders hold web images of each building, which the world has no
    counterpart for; they are filled with hard links of every `google_every`-th street image of
    the building (the first, third, ...), named `google-NN.jpg`, so the folder exists, is read as
    its own view, and its images show the building from the ground as web photos mostly do.
    Distractors stay in the test galleries, as the export has them. No locations.csv, no world.json.
    """
    for split_dir in (src / "train", src / "test"):
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir}: missing; the world export is incomplete")
        for view_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for cls in sorted(p for p in view_dir.iterdir() if p.is_dir()):
                for f in _images(cls):
                    link(f, dst / split_dir.name / view_dir.name / cls.name / f.name)
    street = src / "train" / "street"
    for cls in sorted(p for p in street.iterdir() if p.is_dir()):
        for k, f in enumerate(_images(cls)[::google_every], start=1):
            link(f, dst / "train" / "google" / cls.name / f"google-{k:02d}{f.suffix}")


def write_side_files(locations: Path, dst: Path) -> dict[str, Path]:
    """`university1652_coordinates.csv` and `university1652_regions.csv` from the export's
    locations.csv, in the side-file format a user writes for the real data (values verbatim)."""
    if not locations.is_file():
        raise FileNotFoundError(f"{locations}: missing; the world export is incomplete")
    with open(locations, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    dst.mkdir(parents=True, exist_ok=True)
    coords, regions = dst / COORDINATES_FILE, dst / REGIONS_FILE
    with open(coords, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["building", "utm_east", "utm_north", "utm_zone", "lat", "lon"])
        for r in rows:
            w.writerow([f"{int(r['label']):04d}", r["utm_east"], r["utm_north"], r["utm_zone"], r["lat"], r["lon"]])
    with open(regions, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["building", "region"])
        for r in rows:
            w.writerow([f"{int(r['label']):04d}", r["region"]])
    return {"coordinates": coords, "regions": regions}


# --------------------------------------------------------------------------- VPR

def sf_xs_train_selection(names: Iterable[str], M: float = SFXS_M, alpha: float = SFXS_ALPHA,
                          N: int = SFXS_N, L: int = SFXS_L, per_class: int = SFXS_PER_CLASS) -> list[str]:
    """The SF-XS-like train subset of @-named images: one CosPlace group, one heading per class.

    Images without a heading cannot be put in a class and are left out. The group kept is the one
    with the most images (ties: the smallest group id); in each map cell of that group only the
    heading class with the most images stays (ties: the smallest heading), and at most `per_class`
    images of it (first by name).
    """
    named = [(n, parse_vpr_name(n)) for n in sorted(names)]
    named = [(n, f) for n, f in named if f["heading"] is not None]
    if not named:
        return []
    east = np.array([f["utm_east"] for _, f in named])
    north = np.array([f["utm_north"] for _, f in named])
    heading = np.array([f["heading"] for _, f in named])
    classes, groups = _class_and_group(east, north, heading, M, alpha, N, L)
    group_keys = [tuple(g) for g in groups.tolist()]
    counts: dict[tuple, int] = defaultdict(int)
    for g in group_keys:
        counts[g] += 1
    best = min(counts, key=lambda g: (-counts[g], g))
    per_cell: dict[tuple, dict[float, list[str]]] = defaultdict(lambda: defaultdict(list))
    for (name, _), c, g in zip(named, classes.tolist(), group_keys):
        if g == best:
            per_cell[(c[0], c[1])][c[2]].append(name)
    keep: list[str] = []
    for cell in sorted(per_cell):
        by_heading = per_cell[cell]
        h = min(by_heading, key=lambda k: (-len(by_heading[k]), k))
        keep += by_heading[h][:per_class]
    return sorted(keep)


def _class_and_group(east: np.ndarray, north: np.ndarray, heading: np.ndarray, M: float, alpha: float,
                     N: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    """`geolib.training.cosplace.class_and_group` (tested equal), here because importing the training
    module (timm, torchvision) costs longer than writing a whole release."""
    step = np.array([M, M, alpha])
    classes = np.floor_divide(np.stack([east, north, np.mod(heading, 360.0)], axis=1), step) * step
    return classes, np.floor_divide(np.mod(classes, step * np.array([N, N, L])), step).astype(np.int64)


def write_sf_xs(vpr: Path, dst: Path) -> None:
    """train/ (a plain tree, `sf_xs_train_selection` of the world's train database), val/ and
    test/ with database/ and queries/ (the world's day queries)."""
    train = _images(vpr / "train" / "database")
    chosen = set(sf_xs_train_selection(f.name for f in train))
    if not chosen:
        raise ValueError(f"{vpr / 'train' / 'database'}: no image with a heading; cannot form SF-XS train")
    for f in train:
        if f.name in chosen:
            link(f, dst / "train" / f.name)
    for split in ("val", "test"):
        _link_folder(vpr / split / "database", dst / split / "database")
        _link_folder(vpr / split / "queries", dst / split / "queries")


def write_sf_xl(vpr: Path, dst: Path) -> None:
    """SF-XL's `processed/` folder: train/ a plain tree of every train database image (SF-XL keeps
    every heading; CosPlace and D&C divide it themselves), val/ with database/ and queries/, and the
    test set with its `queries_v1/` (the world's day queries)."""
    for f in _images(vpr / "train" / "database"):
        link(f, dst / "train" / f.name)
    _link_folder(vpr / "val" / "database", dst / "val" / "database")
    _link_folder(vpr / "val" / "queries", dst / "val" / "queries")
    _link_folder(vpr / "test" / "database", dst / "test" / "database")
    _link_folder(vpr / "test" / "queries", dst / "test" / "queries_v1")


# --------------------------------------------------------------------------- CVUSA, CVACT, VIGOR

def write_cvusa(src: Path, dst: Path) -> None:
    """splits/{train,val}-19zl.csv, bingmap/19/ and streetview/panos/ (no world.json)."""
    for rel in ("splits/train-19zl.csv", "splits/val-19zl.csv"):
        if not (src / rel).is_file():
            raise FileNotFoundError(f"{src / rel}: missing; the world export is incomplete")
        link(src / rel, dst / rel)
    _link_folder(src / "bingmap" / "19", dst / "bingmap" / "19")
    _link_folder(src / "streetview" / "panos", dst / "streetview" / "panos")


def cvusa_pairs(world_root: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The export's CVUSA pairs in split-file order: id, split, region and UTM of the pair.

    Positions come from world.json (each image's pose x, y in metres from its region's UTM
    origin); the panorama is taken at its tile's centre, so one position serves both.
    """
    poses = {im["path"]: im for im in meta["images"]}
    origins = {r["index"]: r["origin_utm"] for r in meta["regions"]}
    pairs = []
    for split, rel in (("train", "splits/train-19zl.csv"), ("val", "splits/val-19zl.csv")):
        with open(world_root / "cvusa" / rel, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if not row:
                    continue
                aerial = poses.get(f"cvusa/{row[0].strip()}")
                if aerial is None:
                    raise ValueError(f"{world_root / 'world.json'}: no pose for cvusa/{row[0]}; the export "
                                     "is inconsistent (rebuild it with build_world(force=True))")
                ox, oy = origins[aerial["region"]]
                pairs.append({"id": Path(row[0]).stem, "split": split, "region": aerial["region"],
                              "aerial": row[0].strip(), "pano": row[1].strip(),
                              "x": aerial["pose"]["x"], "y": aerial["pose"]["y"],
                              "east": ox + aerial["pose"]["x"], "north": oy + aerial["pose"]["y"]})
    return pairs


def write_cvact(cvusa: Path, pairs: list[dict[str, Any]], dst: Path) -> None:
    """`ACT_data.mat` (panoIds, utm, trainSet.trainInd, valSet.valInd, 1-based column vectors as
    MATLAB writes them) and ANU_data_small/{streetview,satview_polish}/ images of the CVUSA pairs.

    The UTM is the world's (zone 33T), not CVACT's 55H: load with `zone="33T"`.
    """
    from scipy.io import savemat

    base = dst / "ANU_data_small"
    for p in pairs:
        link(cvusa / p["pano"], base / "streetview" / f"{p['id']}_grdView.jpg")
        link(cvusa / p["aerial"], base / "satview_polish" / f"{p['id']}_satView_polish.jpg")
    index = {s: np.array([[i + 1] for i, p in enumerate(pairs) if p["split"] == s], dtype=np.float64)
             for s in ("train", "val")}
    dst.mkdir(parents=True, exist_ok=True)
    savemat(dst / "ACT_data.mat", {
        "panoIds": np.array([p["id"] for p in pairs], dtype=object).reshape(-1, 1),
        "utm": np.array([[p["east"], p["north"]] for p in pairs], dtype=np.float64),
        "trainSet": {"trainInd": index["train"]}, "valSet": {"valInd": index["val"]}})


def vigor_cities(pairs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[int, str]:
    """Region -> city: train regions alternate NewYork/Seattle, test regions Chicago/SanFrancisco,
    so VIGOR's cross-area split (train cities vs test cities) follows the world's region split."""
    split = {r["index"]: r["split"] for r in meta["regions"]}
    out: dict[int, str] = {}
    counters = {"train": 0, "test": 0}
    for region in sorted({p["region"] for p in pairs}):
        kind = "train" if split[region] == "train" else "test"
        names = VIGOR_TRAIN_CITIES if kind == "train" else VIGOR_TEST_CITIES
        out[region] = names[counters[kind] % len(names)]
        counters[kind] += 1
    return out


def write_vigor(cvusa: Path, pairs: list[dict[str, Any]], meta: dict[str, Any], dst: Path) -> None:
    """`<city>/{panorama,satellite}/` and `splits/<city>/` label files from the CVUSA pairs.

    Tiles are PNG files `satellite_<lat>_<lon>.png` (decoded from the export's JPEG), panoramas
    `<id>,<lat>,<lon>,.jpg`. Each panorama's row names its own tile (the positive; offset 0 0, as
    the world takes panoramas at tile centres) and the three nearest other tiles of its city as
    semi-positives, each followed by the panorama's pixel offset from that tile's centre: row
    (south positive), then column (east positive), in tile pixels. Unlike VIGOR's, these
    semi-positive tiles need not cover the panorama. Same-area halves: even rows train, odd test.
    """
    from PIL import Image

    from ..coords import utm_to_latlon

    zone = int(meta["crs"]["utm_zone"])
    metres_per_px = float(meta["params"]["cvusa_tile_metres"]) / float(meta["params"]["image_size"])
    city_of = vigor_cities(pairs, meta)
    by_city: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for p in pairs:
        lat, lon = utm_to_latlon(p["east"], p["north"], zone)
        tile = f"satellite_{lat:.7f}_{lon:.7f}.png"
        if tile in seen:  # two pairs on the same spot: the tile name would clash
            continue
        seen.add(tile)
        by_city[city_of[p["region"]]].append({**p, "tile": tile, "pano_name": f"{p['id']},{lat:.7f},{lon:.7f},.jpg"})
    for city in VIGOR_TRAIN_CITIES + VIGOR_TEST_CITIES:
        rows = by_city.get(city, [])
        (dst / city / "panorama").mkdir(parents=True, exist_ok=True)
        (dst / city / "satellite").mkdir(parents=True, exist_ok=True)
        splits = dst / "splits" / city
        splits.mkdir(parents=True, exist_ok=True)
        for r in rows:
            with Image.open(cvusa / r["aerial"]) as im:
                im.convert("RGB").save(dst / city / "satellite" / r["tile"], format="PNG")
            link(cvusa / r["pano"], dst / city / "panorama" / r["pano_name"])
        xy = np.array([[r["east"], r["north"]] for r in rows], dtype=np.float64).reshape(-1, 2)
        lines = []
        for i, r in enumerate(rows):
            d = np.hypot(*(xy - xy[i]).T)
            d[i] = -1.0  # the positive first, then the nearest others
            order = np.argsort(d, kind="stable")[:4]
            cells = []
            for j in order:
                row_px = -(r["north"] - rows[j]["north"]) / metres_per_px
                col_px = (r["east"] - rows[j]["east"]) / metres_per_px
                cells.append(f"{rows[j]['tile']} {_num(row_px)} {_num(col_px)}")
            lines.append(" ".join([r["pano_name"]] + cells))
        _write_lines(splits / "satellite_list.txt", [r["tile"] for r in rows])
        _write_lines(splits / "pano_label_balanced.txt", lines)
        _write_lines(splits / "same_area_balanced_train.txt", lines[0::2])
        _write_lines(splits / "same_area_balanced_test.txt", lines[1::2])


def _num(v: float) -> str:
    v = 0.0 if abs(v) < 5e-5 else v
    return f"{v:.4f}"


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
