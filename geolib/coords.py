"""UTM ↔ WGS84 latitude/longitude, through pyproj (PROJ) rather than hand-written series.

Used where coordinates cross between the two: the synthetic world's exports and release trees
(UTM zone 33), and loaders whose metadata gives latitude and longitude but whose protocol
(`vpr-25m`) measures metres. A data-level module, so loaders need not import the world.
"""
from __future__ import annotations

import functools

WGS84 = 4326


def _check_zone(zone: int) -> int:
    if not 1 <= int(zone) <= 60 or int(zone) != zone:
        raise ValueError(f"UTM zone must be an integer 1..60, got {zone!r}")
    return int(zone)


@functools.lru_cache(maxsize=None)
def _transformer(zone: int, northern: bool, to_utm: bool):
    """One cached PROJ pipeline per (zone, hemisphere, direction): building one costs milliseconds."""
    from pyproj import Transformer

    utm = (32600 if northern else 32700) + zone  # EPSG: WGS 84 / UTM zone N or S
    src, dst = (WGS84, utm) if to_utm else (utm, WGS84)
    return Transformer.from_crs(src, dst, always_xy=True)


def latlon_to_utm(lat: float, lon: float, zone: int) -> tuple[float, float]:
    """(east, north) in metres; south of the equator with the 10,000 km false northing."""
    east, north = _transformer(_check_zone(zone), lat >= 0, True).transform(lon, lat)
    return float(east), float(north)


def utm_to_latlon(east: float, north: float, zone: int, northern: bool = True) -> tuple[float, float]:
    """(lat, lon) in degrees of a point given in UTM metres of `zone`."""
    lon, lat = _transformer(_check_zone(zone), bool(northern), False).transform(east, north)
    return float(lat), float(lon)
