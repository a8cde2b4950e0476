"""Writing the synthetic world in the real datasets' own layouts (docs/data.md).

The point of exporting instead of handing arrays to the notebooks: the default CPU run then
exercises exactly the loaders, validators and metrics that real University-1652, CVUSA and
CosPlace-format VPR data go through.

The world (world.py) decides *what* is seen; this module decides *which shots* each layout needs,
renders them in batches grouped by region, view and condition, and writes every JPEG to each path
the layout wants it under (a test image can be both a query and a gallery item).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from . import render as R
from ..coords import utm_to_latlon
from ..data.datasets import ImageItem
from .generate import (UTM_LETTER, UTM_ZONE, Place, World, camera_light, drone_cameras, road_points,
                    street_cameras, vpr_database_points)

BATCH = 64
UNIVERSITY, CVUSA, VPR = "university1652", "cvusa", "vpr"


@dataclass
class Shot:
    """One image to render and where it goes."""

    region: int
    view: str                        # satellite | drone | street | panorama | aerial | vpr
    pose: dict[str, float]
    condition: str
    paths: list[str]
    label: int | None = None         # place label (University-1652) or pair / image id
    target: int | None = None        # building index whose pixel mask the oracle needs
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- planning

def plan_university(world: World) -> list[Shot]:
    """Satellite, drone and street shots of every place, under train/ or test/ query+gallery."""
    p = world.params
    shots: list[Shot] = []
    for place in world.places:
        rng = np.random.default_rng([world.seed, place.label, 5])
        lab = f"{place.label:04d}"

        def dest(view: str, name: str) -> list[str]:
            if place.role == "train":
                return [f"{UNIVERSITY}/train/{view}/{lab}/{name}"]
            out = [f"{UNIVERSITY}/test/gallery_{view}/{lab}/{name}"]
            if place.role == "query":
                out.append(f"{UNIVERSITY}/test/query_{view}/{lab}/{name}")
            return out

        sat = {"x": place.x, "y": place.y, "metres": p.satellite_metres}
        shots.append(Shot(place.region, "satellite", sat, "day", dest("satellite", f"{lab}.jpg"),
                          place.label, place.building))
        region = world.regions[place.region]
        for k, cam in enumerate(drone_cameras(region, place, p, rng), start=1):
            shots.append(Shot(place.region, "drone", cam, "day", dest("drone", f"image-{k:02d}.jpg"),
                              place.label, place.building))
        for k, cam in enumerate(place.street, start=1):
            shots.append(Shot(place.region, "street", cam, "day", dest("street", f"street-{k:02d}.jpg"),
                              place.label, place.building))
    return shots


def plan_cvusa(world: World) -> tuple[list[Shot], dict[str, list[str]]]:
    """Panorama + aerial pairs at road points; train regions -> train CSV, test regions -> val."""
    p = world.params
    shots: list[Shot] = []
    rows: dict[str, list[str]] = {"train": [], "val": []}
    pair = 0
    for region in world.regions[:p.regions]:  # extra train regions serve the University export only
        rng = np.random.default_rng([world.seed, region.index, 6])
        for x, y, _ in road_points(region, p.cvusa_pairs, p, rng):
            pair += 1
            pid = f"{pair:07d}"
            aerial, pano = f"bingmap/19/{pid}.jpg", f"streetview/panos/{pid}.jpg"
            shots.append(Shot(region.index, "aerial", {"x": x, "y": y, "metres": p.cvusa_tile_metres},
                              "day", [f"{CVUSA}/{aerial}"], pair))
            shots.append(Shot(region.index, "panorama", {"x": x, "y": y, "z": R.EYE_HEIGHT}, "day",
                              [f"{CVUSA}/{pano}"], pair))
            split = "train" if region.split == "train" else "val"
            rows[split].append(f"{aerial},{pano},streetview/annotations/{pid}.png")
    return shots, rows


def vpr_name(world: World, region_index: int, x: float, y: float, pano_id: str,
             heading: float | None, note: str) -> str:
    """CosPlace-format file name: `@east@north@zone@letter@lat@lon@pano@tile@heading@...@.jpg`."""
    region = world.regions[region_index]
    east, north = region.origin_utm[0] + x, region.origin_utm[1] + y
    lat, lon = utm_to_latlon(east, north, UTM_ZONE)
    head = "" if heading is None else f"{heading % 360:.0f}"
    return (f"@{east:.2f}@{north:.2f}@{UTM_ZONE}@{UTM_LETTER}@{lat:.6f}@{lon:.6f}@{pano_id}@@{head}"
            f"@0@0@{R.EYE_HEIGHT}@@{note}@.jpg")


def vpr_regions(world: World) -> dict[str, list[int]]:
    n_train, n_val, n_test = world.params.vpr_regions
    train = [r.index for r in world.regions if r.split == "train"][:n_train]
    test_like = [r.index for r in world.regions if r.split == "test"]
    return {"train": train, "val": test_like[:n_val], "test": test_like[n_val:n_val + n_test]}


def plan_vpr(world: World) -> list[Shot]:
    """A day database along every street; day, night and fog queries taken elsewhere on them."""
    return [shot for split, indices in vpr_regions(world).items() for ri in indices
            for shot in plan_vpr_region(world, ri, f"{VPR}/{split}")]


def plan_vpr_region(world: World, ri: int, folder: str) -> list[Shot]:
    """One region's VPR shots under `folder/` (`database/`, `queries/`, `queries_night/`, `queries_fog/`):
    a day database along every street, then day, night and fog queries elsewhere on them."""
    p = world.params
    shots: list[Shot] = []
    region = world.regions[ri]
    rng = np.random.default_rng([world.seed, ri, 7])
    for k, (x, y, direction) in enumerate(vpr_database_points(region, p)):
        for turn in (0.0, 180.0):
            head = (direction + turn) % 360
            # drive on the right: 2 m to the right of the heading
            cx = x + 2.0 * math.cos(math.radians(head))
            cy = y - 2.0 * math.sin(math.radians(head))
            name = vpr_name(world, ri, cx, cy, f"r{ri:02d}d{k:05d}", head, "day")
            shots.append(Shot(ri, "vpr", {"x": cx, "y": cy, "z": R.EYE_HEIGHT, "heading": head,
                                          "pitch": 0.0, "fov": p.street_fov,
                                          "light": camera_light(rng, p)}, "day",
                              [f"{folder}/database/{name}"]))
    for cond, sub in (("day", "queries"), ("night", "queries_night"), ("fog", "queries_fog")):
        for k, (x, y, direction) in enumerate(road_points(region, p.vpr_queries, p, rng)):
            head = (direction + rng.choice([0.0, 180.0]) + rng.uniform(-25, 25)) % 360
            pitch = float(rng.uniform(-3, 6))
            name = vpr_name(world, ri, x, y, f"r{ri:02d}{cond[0]}{k:05d}", None, cond)
            shots.append(Shot(ri, "vpr", {"x": x, "y": y, "z": R.EYE_HEIGHT, "heading": head,
                                          "pitch": pitch, "fov": p.street_fov,
                                          "light": camera_light(rng, p)}, cond,
                              [f"{folder}/{sub}/{name}"]))
    return shots


# ----------------------------------------------------------------------------- rendering

def render_batch(world: World, shots: list[Shot]) -> tuple[np.ndarray, np.ndarray]:
    """Render shots that share region, view and condition; returns uint8 images and building ids."""
    p = world.params
    scene = world.regions[shots[0].region].scene
    view, cond = shots[0].view, shots[0].condition
    if view in ("satellite", "aerial"):
        centres = torch.tensor([[s.pose["x"], s.pose["y"]] for s in shots], dtype=torch.float32)
        out = R.render_satellite(scene, centres, p.image_size, shots[0].pose["metres"], cond)
    elif view == "panorama":
        cams = torch.tensor([[s.pose["x"], s.pose["y"], s.pose["z"]] for s in shots], dtype=torch.float32)
        out = R.render_panorama(scene, cams, *p.pano_size, p.pano_el_range, cond)
    else:
        cams = torch.tensor([[s.pose["x"], s.pose["y"], s.pose["z"]] for s in shots], dtype=torch.float32)
        head = torch.tensor([s.pose["heading"] for s in shots], dtype=torch.float32)
        pitch = torch.tensor([s.pose["pitch"] for s in shots], dtype=torch.float32)
        out = R.render_perspective(scene, cams, head, pitch, shots[0].pose["fov"], p.image_size, cond)
    rgb = out["rgb"]
    light = torch.tensor([s.pose.get("light", [1.0, 1.0, 1.0]) for s in shots], dtype=torch.float32)
    rgb = rgb * light.reshape(-1, *([1] * (rgb.ndim - 2)), 3)
    return R.to_uint8(rgb), out["bid"].numpy()


def _group(s: Shot) -> tuple:
    return (s.region, s.view, s.condition, s.pose.get("fov") or 0.0, s.pose.get("metres") or 0.0)


def batches(shots: list[Shot]) -> Iterator[list[Shot]]:
    """Batches of shots with the same region, view, condition and field of view.

    Shots are grouped first (a stable sort), because a renderer call costs about the same for one
    camera as for dozens.
    """
    run: list[Shot] = []
    for s in sorted(shots, key=_group):
        key = (s.region, s.view, s.condition, s.pose.get("fov"), s.pose.get("metres"))
        if run and (len(run) >= BATCH or key != (run[0].region, run[0].view, run[0].condition,
                                                   run[0].pose.get("fov"), run[0].pose.get("metres"))):
            yield run
            run = []
        run.append(s)
    if run:
        yield run


def jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def render_and_write(world: World, shots: list[Shot], root: Path,
                     keep_mask: Callable[[Shot], bool] = lambda s: False,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Render all shots, write them, keep the target masks the oracle asks for; time the renderer."""
    import time

    masks: dict[str, np.ndarray] = {}
    render_s, n = 0.0, 0
    for run in batches(shots):
        t0 = time.perf_counter()
        imgs, bids = render_batch(world, run)
        render_s += time.perf_counter() - t0
        for shot, img, bid in zip(run, imgs, bids):
            data = jpeg_bytes(img, world.params.jpeg_quality)
            for rel in shot.paths:
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            if keep_mask(shot):
                for rel in shot.paths:
                    masks[rel] = (bid == shot.target, np.asarray(shot.pose.get("light", [1.0, 1.0, 1.0])))
        n += len(run)
        if progress:
            progress(len(run))
    return {"images": n, "render_seconds": render_s, "masks": masks}


# ----------------------------------------------------------------------------- side files

def write_university_side_files(world: World, root: Path) -> None:
    """`locations.csv`: one row per place, so loaders can give coordinates to labels."""
    path = root / UNIVERSITY / "locations.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "utm_east", "utm_north", "utm_zone", "lat", "lon", "region"])
        for place in world.places:
            e, n, lat, lon = place_utm(world, place)
            w.writerow([place.label, f"{e:.2f}", f"{n:.2f}", f"{UTM_ZONE}{UTM_LETTER}", f"{lat:.6f}",
                        f"{lon:.6f}", place.region])


def write_cvusa_splits(root: Path, rows: dict[str, list[str]]) -> None:
    split_dir = root / CVUSA / "splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train-19zl.csv"), ("val", "val-19zl.csv")):
        (split_dir / name).write_text("".join(r + "\n" for r in rows[split]), encoding="utf-8")


def place_utm(world: World, place: Place) -> tuple[float, float, float, float]:
    region = world.regions[place.region]
    e, n = region.origin_utm[0] + place.x, region.origin_utm[1] + place.y
    lat, lon = utm_to_latlon(e, n, UTM_ZONE)
    return e, n, lat, lon


# ----------------------------------------------------------------------------- photos no split holds

def plan_fresh_street(world: World, labels: list[int], draw: int = 1) -> list[Shot]:
    """One new street camera per place: the export's rules (eye height, 15-35 m, clear line of sight,
    per-camera white balance) with another random draw, named `<label>-street-new-<draw>.jpg`."""
    by_label = {p.label: p for p in world.places}
    missing = [lab for lab in labels if lab not in by_label]
    if missing:
        raise ValueError(f"places {missing[:5]} are not in this world (labels 1..{len(world.places)})")
    shots = []
    for lab in labels:
        place = by_label[lab]
        rng = np.random.default_rng([world.seed, lab, 11, draw])  # the export's draws use streams 4 and 5
        cams = street_cameras(world.regions[place.region], place.building, world.params, rng)
        if cams:
            shots.append(Shot(place.region, "street", cams[0], "day", [f"{lab:04d}-street-new-{draw}.jpg"],
                              lab, place.building))
    return shots


def fresh_street_photos(world: World, labels: list[int], out: str | Path, draw: int = 1) -> list[ImageItem]:
    """Render `plan_fresh_street` into `out`: photos that no gallery or query folder holds, so a
    localization demo cannot be answered by finding the photo itself."""
    out = Path(out)
    shots = plan_fresh_street(world, labels, draw)
    tmp = out / f".partial-{os.getpid()}"
    render_and_write(world, shots, tmp)
    for s in shots:  # each photo appears whole or not at all
        os.replace(tmp / s.paths[0], out / s.paths[0])
    tmp.rmdir()
    places = {p.label: p for p in world.places}
    items = []
    for s in shots:
        e, n, lat, lon = place_utm(world, places[s.label])
        items.append(ImageItem(out / s.paths[0], "street", "test", "query", s.label, e, n,
                               f"{UTM_ZONE}{UTM_LETTER}", lat, lon, s.pose["heading"], {"draw": draw}))
    return items
