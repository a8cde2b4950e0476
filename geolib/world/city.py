"""A second, test-only city of the synthetic world, standing in for Tokyo-XS (notebook 06).

Why: the course project trains on SF-XS and tests the same model on Tokyo-XS, another city that
looks different and was never trained on. The world's own Tokyo-XS copy (`geolib.data.release`) is
the world's test area again; this is a city of its own style: a dense downtown of narrow streets,
taller buildings, more street trees, warmer glass and a lower sun, drawn from its own seeds and
placed 60 km away from the world's regions, so neither its places nor its look were seen in training.

It is written beside an export, as a VPR root that holds only `test/`: `database/` (day) and one
query folder per condition (`queries`, `queries_night`, `queries_fog`), the export's names, so every
VPR loader and `geoclass.evaluate_vpr` read it unchanged. The export itself is not touched (its
key, images and `world.json` stay as they were); the city is built on first use, in seconds, under
a temporary name and renamed, and reused while its stamp (world key and `CITY_VERSION`) matches.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import build_once
from . import export
from .generate import (REGION_SPACING, UTM_ORIGIN, World, WorldParams, _prepare, cache_key, generate_region,
                       preset_params, region_style)

CITY_VERSION = "1"
CITY_FOLDER = "city2"
CITY_REGIONS = None  # None: as many regions as the export's VPR test split
_SEED_OFFSET = 1000  # the city's regions draw from seeds the world's regions never use


def city_style(rng: np.random.Generator) -> dict[str, Any]:
    """The world's region style, then the city's own look drawn from the same generator: a dense grid
    of narrow streets, 5-14 floors, many street trees, paved plazas, warm glass, a low sun."""
    st = region_style(rng)
    lo = int(rng.integers(5, 8))
    st.update({
        "spacing": [float(rng.uniform(40, 52)), float(rng.uniform(40, 52))],
        "road_width": float(rng.uniform(5.5, 7.5)),
        "floors": [lo, int(rng.integers(lo + 4, lo + 8))],
        "roof_hue": float(rng.uniform(190, 260)), "roof_hue_spread": float(rng.uniform(25, 45)),
        "roof_sat": float(rng.uniform(0.1, 0.25)), "roof_val": float(rng.uniform(0.6, 0.85)),
        "street_trees": float(rng.uniform(0.6, 0.9)),
        "paved_fraction": float(rng.uniform(0.5, 0.8)),
        "park_fraction": float(rng.uniform(0.02, 0.08)),
        "glass": [float(v) for v in (0.45, 0.35, 0.2)],
        "sun_el": float(rng.uniform(20, 32)),
    })
    return st


def city_world(world_root: str | Path, regions: int | None = CITY_REGIONS) -> tuple[World, dict[str, Any]]:
    """The city's regions as a `World` (same parameters and seed as the export at `world_root`) and
    the export's `world.json`."""
    meta_path = Path(world_root) / "world.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{world_root}: no world.json; give the folder geolib.world.build.build_world returns")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    seed = int(meta["seed"])
    params = preset_params(meta["preset"])
    if cache_key(params, seed) != meta["key"]:  # built with its own parameters: take them from world.json
        params = WorldParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()})
    out = []
    for k in range(regions if regions is not None else params.vpr_regions[2]):
        region = generate_region(_SEED_OFFSET + k, seed, params, "test", style=city_style)
        # its own place on the map, 60 km west of the world's regions
        region = replace(region, index=k, origin_utm=(UTM_ORIGIN[0] - 60_000.0 + k * REGION_SPACING,
                                                      UTM_ORIGIN[1] - 30_000.0))
        _prepare(region, params)
        out.append(region)
    return World(params=params, seed=seed, regions=out, places=[]), meta


def build_city(world_root: str | Path, out: str | Path | None = None, regions: int | None = CITY_REGIONS,
               progress: bool = False) -> Path:
    """The second city's VPR root (`<world_root>/city2/` unless `out`), built once and reused.

    Holds `test/database/` and `test/queries{,_night,_fog}/`, rendered like the export's test split
    (same cameras, conditions and image size); returns the root to give `geoclass.evaluate_vpr`.
    """
    world_root = Path(world_root)
    out = Path(out) if out is not None else world_root / CITY_FOLDER
    world, meta = city_world(world_root, regions)
    regions = len(world.regions)
    stamp = f"{meta['key']} city-{CITY_VERSION} regions-{regions}"
    shots = [s for ri in range(len(world.regions)) for s in export.plan_vpr_region(world, ri, "test")]

    def build(tmp: Path) -> None:
        export.render_and_write(world, shots, tmp)
        (tmp / "city.json").write_text(json.dumps({
            "what": "second test-only city of the synthetic world (its own style and seeds)",
            "world_key": meta["key"], "version": CITY_VERSION, "regions": regions,
            "styles": [{k: v for k, v in r.style.items() if not k.startswith("_")} for r in world.regions]},
            indent=1, sort_keys=True, default=float) + "\n", encoding="utf-8")

    if not build_once(out, stamp, build, "a city written by build_city"):
        return out
    if progress:
        print(f"second city: {len(shots)} images at {out}")
    return out
