"""Building the synthetic world's export: generate, render, write the layouts, run the baselines.

generate.py generates the geometry and the cameras; export.py writes the real datasets' layouts;
baselines.py scores them. This module is the one that calls all three (and `python -m geolib
world`), so none of them needs to import another lazily to close a circle.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import baselines, export
from .export import place_utm
from ..paths import outputs_root
from ..records import read_records, write_record
from .generate import (FACADE_HUE_SHIFT, GENERATOR_VERSION, PRESETS, UTM_LETTER, UTM_ZONE, World,
                    WorldParams, cache_key, generate, preset_params)


def _rounded(obj: Any, nd: int = 4) -> Any:
    """Round floats so world.json is byte-stable and readable."""
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, (np.floating, np.integer)):
        return _rounded(obj.item(), nd)
    if isinstance(obj, np.ndarray):
        return _rounded(obj.tolist(), nd)
    if isinstance(obj, dict):
        return {str(k): _rounded(v, nd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, nd) for v in obj]
    return obj


def world_metadata(world: World, preset: str, key: str, shots: list) -> dict[str, Any]:
    """world.json: generator, parameters, regions, places and the camera pose of every image."""
    p = world.params
    regions = [{"index": r.index, "split": r.split, "origin_utm": list(r.origin_utm),
                "style": {k: v for k, v in r.style.items() if not k.startswith("_")},
                "grid_offset": [r.style["_ox"], r.style["_oy"]],
                "buildings": int(len(r.buildings["height"]))} for r in world.regions]
    places = []
    for pl in world.places:
        r = world.regions[pl.region]
        e, n, lat, lon = place_utm(world, pl)
        b = pl.building
        places.append({"label": pl.label, "region": pl.region, "role": pl.role, "building": b,
                       "x": pl.x, "y": pl.y, "utm_east": e, "utm_north": n, "lat": lat, "lon": lon,
                       "height": pl.height, "floors": pl.floors,
                       "footprint_half": r.buildings["half"][b], "footprint_angle": r.style["angle"],
                       "roof_hsv": r.buildings["roof"][b], "facade_rgb": r.buildings["facade"][b]})
    images = [{"path": s.paths[0], "also": s.paths[1:], "view": s.view, "condition": s.condition,
               "region": s.region, "label": s.label, "pose": s.pose} for s in shots]
    meta = {
        "generator": {"name": "geolocal synthetic world", "version": GENERATOR_VERSION},
        "preset": preset, "seed": world.seed, "key": key, "params": asdict(p),
        "crs": {"datum": "WGS84", "utm_zone": UTM_ZONE, "utm_letter": UTM_LETTER,
                "local": "x east, y north in metres from the region origin_utm"},
        "conventions": {
            "azimuth": "degrees clockwise from north", "pitch": "degrees above the horizon",
            "facade_hue_shift": FACADE_HUE_SHIFT,
            "panorama": {"size": list(p.pano_size), "el_range": list(p.pano_el_range),
                         "column_azimuth": "180 + 360 * j / W", "north_column": p.pano_size[1] // 2},
            "satellite": "north-up; pixel (S/2, S/2) is the pose centre",
        },
        "regions": regions, "places": places, "images": images,
    }
    return _rounded(meta)


def _is_export(root: Path) -> bool:
    return (root / ".complete").exists() or (root / "world.json").exists()


def build_world(preset: str = "default", seed: int = 0, out: str | Path | None = None,
                force: bool = False, profile: str | None = None, progress: bool = True,
                record: bool = True, release: bool = False) -> Path:
    """Generate, render and export the world once; later calls with the same key reuse it.

    Returns the export root holding `university1652/`, `cvusa/`, `vpr/` and `world.json`. Metrics
    records (images/s, baselines, oracle) go to `outputs/<profile>/metrics/world.jsonl`; the profile
    defaults to the preset's (large -> full). With `release`, `<root>/release/` also gets the
    release-exact trees of `geolib.data.release.write_release` (hard links: seconds, no rendering).
    """
    params = preset_params(preset)
    key = cache_key(params, seed)
    root = Path(out) if out is not None else outputs_root() / "data" / key
    profile = profile or {"large": "full"}.get(preset, preset)
    marker = root / ".complete"
    if not force and marker.exists() and marker.read_text().strip() == key:
        if record:
            _record(root, profile, preset, seed, key, cached=True)
        if release:
            _release(root)
        return root
    if root.exists() and any(root.iterdir()) and not _is_export(root):
        raise FileExistsError(f"{root} exists and is not a world export; choose another --out")
    tmp = root.parent / f".{root.name}.building"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _build_into(tmp, params, preset, seed, key, progress)
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    if record:
        _record(root, profile, preset, seed, key, cached=False)
    if release:
        _release(root)
    return root


def _release(root: Path) -> None:
    from ..data.release import write_release

    write_release(root)


def _build_into(root: Path, params: WorldParams, preset: str, seed: int, key: str, progress: bool) -> None:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    world = generate(params, seed)
    t_gen = time.perf_counter() - t0
    uni = export.plan_university(world)
    cvusa, rows = export.plan_cvusa(world)
    vpr = export.plan_vpr(world)
    shots = uni + cvusa + vpr
    oracle_views = ("street", "satellite")
    keep = lambda s: s.view in oracle_views and any("/test/" in p for p in s.paths)  # noqa: E731
    with tqdm(total=len(shots), desc=f"world {preset}: render", unit="img", disable=not progress) as bar:
        stats = export.render_and_write(world, shots, root, keep, bar.update)
    export.write_university_side_files(world, root)
    export.write_cvusa_splits(root, rows)
    meta = json.dumps(world_metadata(world, preset, key, shots), indent=1, sort_keys=True) + "\n"
    for sub in ("", export.UNIVERSITY, export.CVUSA, export.VPR):
        (root / sub / "world.json").write_text(meta, encoding="utf-8")
    results = baselines.run_all(root / export.UNIVERSITY, stats["masks"])
    (root / "baselines.json").write_text(json.dumps(_rounded(results), indent=1, sort_keys=True) + "\n")
    total = time.perf_counter() - t0
    build = {"images": stats["images"], "render_seconds": stats["render_seconds"],
             "generate_seconds": t_gen, "total_seconds": total,
             "images_per_s": stats["images"] / max(stats["render_seconds"], 1e-9),
             "images_per_s_end_to_end": stats["images"] / total}
    (root / "build_stats.json").write_text(json.dumps(_rounded(build, 3), indent=1, sort_keys=True) + "\n")
    (root / ".complete").write_text(key + "\n")


def _record(root: Path, profile: str, preset: str, seed: int, key: str, cached: bool) -> None:
    """Metrics records of this export; written once per (profile, key) so reruns do not pile up."""
    if any(r.get("config", {}).get("key") == key for r in read_records(profile, "world")):
        return
    dataset = f"synthetic-{preset}"
    config = {"key": key, "preset": preset, "root": str(root), "cached": cached}
    build = json.loads((root / "build_stats.json").read_text())
    write_record("world", task="world", protocol=None, dataset=dataset, split=None,
                 model="renderer", metrics=build, profile=profile, seed=seed, config=config)
    for res in json.loads((root / "baselines.json").read_text())["results"]:
        write_record("world", task="world", protocol=res["protocol"], dataset=dataset, split="test",
                     query_view=res["query_view"], gallery_view=res["gallery_view"], model=res["model"],
                     metrics=res["metrics"], profile=profile, seed=seed,
                     config={**config, **res.get("config", {})})


def cli(argv: list[str]) -> int:
    """`python -m geolib world --preset smoke|default|large --out DIR [--seed N] [--force] [--release]`."""
    ap = argparse.ArgumentParser(prog="python -m geolib world", description=cli.__doc__)
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--out", default=None, help="export root (default: outputs/data/<key>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if the cached export matches")
    ap.add_argument("--profile", default=None, help="profile whose metrics get the records")
    ap.add_argument("--release", action="store_true",
                    help="also write release-exact dataset trees under <export>/release/")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    t0 = time.perf_counter()
    root = build_world(args.preset, args.seed, args.out, args.force, args.profile, release=args.release)
    stats = json.loads((root / "build_stats.json").read_text())
    print(f"world {args.preset} (seed {args.seed}) at {root}: {stats['images']} images, "
          f"{stats['images_per_s']:.0f} images/s rendering, {time.perf_counter() - t0:.1f} s this call")
    return 0


main = cli


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
