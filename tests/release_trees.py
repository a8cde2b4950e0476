"""Tiny dataset trees in the public releases' exact layouts, made without the synthetic world.

Why: the release trees derived from the world (geolib.data.release) inherit its naming; these are
written from the layouts alone, so a loader or pipeline step that only works on the world's
naming fails on them. Each tree is a few buildings or a few dozen images of 16x16 noise (16x64
panoramas), carries no side files, and builds in milliseconds, so a dry run of the whole pipeline
can use them. VPR names parse, and every query has a database image within 25 m.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

TILE = (16, 16)       # width, height
PANO = (64, 16)
SF_ORIGIN = (551_000.0, 4_182_000.0)   # UTM 10S, San Francisco
TOKYO_ORIGIN = (381_000.0, 3_950_000.0)  # UTM 54S, Tokyo


def _image(path: Path, seed: int, size: tuple[int, int] = TILE) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG", quality=90)
    return path


def _latlon(east: float, north: float, origin: tuple[float, float], lat0: float, lon0: float) -> tuple[float, float]:
    """Close enough for names (the loaders use UTM; lat/lon only ride along)."""
    lat = lat0 + (north - origin[1]) / 111_320.0
    return lat, lon0 + (east - origin[0]) / (111_320.0 * math.cos(math.radians(lat0)))


def vpr_name(east: float, north: float, heading: float | None, pano: str, note: str = "",
             zone: str = "10", letter: str = "S", origin: tuple[float, float] = SF_ORIGIN,
             lat0: float = 37.78, lon0: float = -122.42) -> str:
    """`@east@north@zone@letter@lat@lon@pano@tile@heading@pitch@roll@height@timestamp@note@.jpg`."""
    lat, lon = _latlon(east, north, origin, lat0, lon0)
    head = "" if heading is None else f"{heading:.0f}"
    return f"@{east:.2f}@{north:.2f}@{zone}@{letter}@{lat:.6f}@{lon:.6f}@{pano}@@{head}@@@@2021@{note}@.jpg"


# --------------------------------------------------------------------------- University-1652

def make_u1652(root: Path) -> Path:
    """train/{satellite,drone,street,google}/<id>/ for buildings 0001-0004 (0004's street and
    google folders empty, as in the release), test/{query,gallery}_{satellite,drone,street}/ for
    0005-0007 plus 0008, a distractor only the galleries hold."""
    n = 0
    for b in range(1, 5):
        lab = f"{b:04d}"
        _image(root / "train" / "satellite" / lab / f"{lab}.jpg", n := n + 1)
        for k in range(1, 4):
            _image(root / "train" / "drone" / lab / f"image-{k:02d}.jpeg", n := n + 1)
        (root / "train" / "street" / lab).mkdir(parents=True, exist_ok=True)
        (root / "train" / "google" / lab).mkdir(parents=True, exist_ok=True)
        if b < 4:
            for k in range(2):
                _image(root / "train" / "street" / lab / f"{k}.jpg", n := n + 1)
            _image(root / "train" / "google" / lab / "0.jpg", n := n + 1)
    for b in range(5, 9):
        lab = f"{b:04d}"
        roles = ("gallery",) if b == 8 else ("query", "gallery")
        for role in roles:
            _image(root / "test" / f"{role}_satellite" / lab / f"{lab}.jpg", n := n + 1)
            for k in range(1, 3):
                _image(root / "test" / f"{role}_drone" / lab / f"image-{k:02d}.jpeg", n := n + 1)
            _image(root / "test" / f"{role}_street" / lab / "0.jpg", n := n + 1)
    return root


# --------------------------------------------------------------------------- VPR

def _vpr_eval_split(root: Path, split: str, query_folder: str, seed: int, note: str = "",
                    origin: tuple[float, float] = SF_ORIGIN, **geo: object) -> None:
    """6 database images 10 m apart along a street (two headings), 3 queries within 5 m of them."""
    for k in range(6):
        e, n = origin[0] + 10.0 * k, origin[1] + 7.0 * (k % 2)
        _image(root / split / "database" / vpr_name(e, n, 90.0 if k % 2 else 270.0, f"db{seed}{k:03d}",
                                                     origin=origin, **geo), seed + k)
    for q in range(3):
        e, n = origin[0] + 20.0 * q + 3.0, origin[1] + 2.0
        _image(root / split / query_folder / vpr_name(e, n, None, f"q{seed}{q:03d}", note, origin=origin, **geo),
               seed + 50 + q)


def make_sf_xs(root: Path) -> Path:
    """train/ as a plain tree (two nested folders, no database/queries): 4 classes x 5 images of
    one CosPlace group (M=10 m, alpha=30 deg, N=5, L=2), one heading per class; val/ and test/
    with database/ and queries/."""
    k = 0
    for c, (de, dn) in enumerate(((0.0, 0.0), (50.0, 0.0), (0.0, 50.0), (50.0, 50.0))):
        for i in range(5):
            e, n = SF_ORIGIN[0] + de + 1.0 + 1.5 * i, SF_ORIGIN[1] + dn + 2.0 + i
            folder = root / "train" / ("37.78" if c < 2 else "37.79") / f"c{c}"
            _image(folder / vpr_name(e, n, 10.0 + 3 * i, f"tr{k:04d}"), 1000 + k)
            k += 1
    _vpr_eval_split(root, "val", "queries", 2000)
    _vpr_eval_split(root, "test", "queries", 3000)
    return root


def make_tokyo_xs(root: Path) -> Path:
    """test/ only (a test-only dataset), with database/ and night queries/ in zone 54S."""
    _vpr_eval_split(root, "test", "queries", 4000, note="night", origin=TOKYO_ORIGIN, zone="54",
                    letter="S", lat0=35.69, lon0=139.69)
    return root


def make_sf_xl_test(root: Path) -> Path:
    """SF-XL's test set: test/database/ and test/queries_v1/."""
    _vpr_eval_split(root, "test", "queries_v1", 5000)
    return root


# --------------------------------------------------------------------------- ground-to-aerial pairs

def make_cvusa(root: Path) -> Path:
    """6 pairs: splits/train-19zl.csv (4 rows) and val-19zl.csv (2), bingmap/19/, streetview/panos/."""
    rows = []
    for i in range(1, 7):
        pid = f"{i:07d}"
        _image(root / "bingmap" / "19" / f"{pid}.jpg", 6000 + i)
        _image(root / "streetview" / "panos" / f"{pid}.jpg", 6100 + i, PANO)
        rows.append(f"bingmap/19/{pid}.jpg,streetview/panos/{pid}.jpg,streetview/annotations/{pid}.png\n")
    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "train-19zl.csv").write_text("".join(rows[:4]))
    (root / "splits" / "val-19zl.csv").write_text("".join(rows[4:]))
    return root


def make_cvact(root: Path) -> Path:
    """6 pairs: ACT_data.mat (panoIds, utm, trainSet.trainInd 1-4, valSet.valInd 5-6, 1-based)
    and ANU_data_small/{streetview,satview_polish}/ images."""
    from scipy.io import savemat

    ids = [f"__pano{i}Xq-{i}" for i in range(6)]
    for i, pid in enumerate(ids):
        _image(root / "ANU_data_small" / "streetview" / f"{pid}_grdView.jpg", 7000 + i, PANO)
        _image(root / "ANU_data_small" / "satview_polish" / f"{pid}_satView_polish.jpg", 7100 + i)
    savemat(root / "ACT_data.mat", {
        "panoIds": np.array(ids, dtype=object).reshape(-1, 1),
        "utm": np.array([[692_000.0 + 30 * i, 6_092_000.0 + 20 * i] for i in range(6)]),
        "trainSet": {"trainInd": np.array([[1.0], [2.0], [3.0], [4.0]])},
        "valSet": {"valInd": np.array([[5.0], [6.0]])}})
    return root


VIGOR_CITIES = {"NewYork": (40.71, -74.01), "Seattle": (47.61, -122.33),
                "Chicago": (41.88, -87.63), "SanFrancisco": (37.77, -122.42)}


def make_vigor(root: Path) -> Path:
    """Per city 5 PNG tiles `satellite_<lat>_<lon>.png` and 4 panoramas `<id>,<lat>,<lon>,.jpg`;
    splits/<city>/ with satellite_list.txt, pano_label_balanced.txt (positive + 3 semi-positives,
    each with a pixel offset) and same_area_balanced_{train,test}.txt (2 panoramas each)."""
    seed = 8000
    for city, (lat0, lon0) in VIGOR_CITIES.items():
        tiles = [(lat0 + 0.0003 * t, lon0 + 0.0004 * t) for t in range(5)]
        names = [f"satellite_{lat:.7f}_{lon:.7f}.png" for lat, lon in tiles]
        for name in names:
            _image(root / city / "satellite" / name, seed := seed + 1)
        lines = []
        for p in range(4):
            lat, lon = tiles[p][0] + 0.00005, tiles[p][1] - 0.00005
            pano = f"pano{city[:2]}{p},{lat:.7f},{lon:.7f},.jpg"
            _image(root / city / "panorama" / pano, seed := seed + 1, PANO)
            others = [j for j in range(5) if j != p][:3]
            cells = [f"{names[p]} -3.5 2.5"] + [f"{names[j]} {-3.5 + 40 * (j - p):.1f} {2.5 - 30 * (j - p):.1f}"
                                                 for j in others]
            lines.append(" ".join([pano] + cells) + "\n")
        split_dir = root / "splits" / city
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / "satellite_list.txt").write_text("".join(n + "\n" for n in names))
        (split_dir / "pano_label_balanced.txt").write_text("".join(lines))
        (split_dir / "same_area_balanced_train.txt").write_text("".join(lines[:2]))
        (split_dir / "same_area_balanced_test.txt").write_text("".join(lines[2:]))
    return root


MAKERS = {"university1652": make_u1652, "sf-xs": make_sf_xs, "tokyo-xs": make_tokyo_xs,
          "sf-xl": make_sf_xl_test, "cvusa": make_cvusa, "cvact": make_cvact, "vigor": make_vigor}


def make_all(root: Path) -> dict[str, Path]:
    """Every tiny tree under `root/<name>` (names as geolib.data.release.TREES, without side files)."""
    return {name: make(Path(root) / name) for name, make in MAKERS.items()}
