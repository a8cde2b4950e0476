"""Vectorised renderers of the 2.5D synthetic world: satellite, drone, street, panorama.

The world is a heightmap, so every viewing ray stays in one vertical plane: for a given azimuth the
ray is a line through the heightmap. Along that line the running maximum of the terrain slope seen
from the camera tells, for every elevation at once, where the first hit is (a `searchsorted` in a
monotone array). That replaces per-pixel ray marching, and is what makes hundreds of images per
second possible on two CPU cores.

Every camera is rendered on a spherical (azimuth x elevation) grid first; a panorama *is* that grid,
and perspective images are resampled from it. Coordinates: x east, y north, z up (metres, local to a
region); azimuth in degrees clockwise from north; elevation in degrees above the horizon.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Cell kinds of the heightmap; their colours and heights come from world.py.
GROUND, ROAD, SIDEWALK, PLAZA, BUILDING, TREE = range(6)
CONDITIONS = ("day", "night", "fog")
EYE_HEIGHT = 1.7


@dataclass
class Scene:
    """One region as flat tensors; index `H*W` is an extra 'outside the map' cell (flat ground)."""

    res: float
    xmin: float
    ymax: float
    shape: tuple[int, int]
    height: torch.Tensor     # (HW+1,) top-surface height, m
    kind: torch.Tensor       # (HW+1,) int64 cell kind
    bid: torch.Tensor        # (HW+1,) int64 building index in this scene, -1 if none
    albedo: torch.Tensor     # (HW+1, 3) top-surface colour
    topshade: torch.Tensor   # (HW+1,) day shading of the top surface, cast shadows included
    angle: float             # rotation (rad) of the region's street grid; buildings align with it
    sun_az: float
    sun_el: float
    b_center: torch.Tensor   # (N, 2) building centre in the rotated grid frame
    b_half: torch.Tensor     # (N, 2) half extents in the grid frame
    b_height: torch.Tensor   # (N,)
    b_facade: torch.Tensor   # (N, 3) facade colour
    b_window: torch.Tensor   # (N, 4) window spacing m, width fraction, floor height m, height fraction
    glass: torch.Tensor      # (3,) window glass colour of the region


def scene_from_arrays(maps: dict[str, np.ndarray], res: float, xmin: float, ymax: float,
                      angle: float, sun_az: float, sun_el: float, buildings: dict[str, np.ndarray],
                      glass: np.ndarray, outside_albedo: np.ndarray) -> Scene:
    """Flatten numpy maps into a Scene and precompute shading (shadows depend on the sun only)."""
    h, w = maps["height"].shape
    shade = top_shading(maps["height"], res, sun_az, sun_el)

    def flat(a: np.ndarray, pad: float | np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        a = a.reshape(h * w, *a.shape[2:])
        pad_row = np.asarray(pad, dtype=a.dtype).reshape(1, *a.shape[1:])
        return torch.from_numpy(np.concatenate([a, pad_row])).to(dtype)

    sun_lit = 0.45 + 0.55 * math.sin(math.radians(sun_el))
    return Scene(
        res=res, xmin=xmin, ymax=ymax, shape=(h, w),
        height=flat(maps["height"].astype(np.float32), 0.0, torch.float32),
        kind=flat(maps["kind"].astype(np.int64), GROUND, torch.int64),
        bid=flat(maps["bid"].astype(np.int64), -1, torch.int64),
        albedo=flat(maps["albedo"].astype(np.float32), outside_albedo, torch.float32),
        topshade=flat(shade.astype(np.float32), sun_lit, torch.float32),
        angle=angle, sun_az=sun_az, sun_el=sun_el,
        b_center=torch.as_tensor(buildings["center"], dtype=torch.float32),
        b_half=torch.as_tensor(buildings["half"], dtype=torch.float32),
        b_height=torch.as_tensor(buildings["height"], dtype=torch.float32),
        b_facade=torch.as_tensor(buildings["facade"], dtype=torch.float32),
        b_window=torch.as_tensor(buildings["window"], dtype=torch.float32),
        glass=torch.as_tensor(glass, dtype=torch.float32),
    )


def top_shading(height: np.ndarray, res: float, sun_az: float, sun_el: float,
                max_dist: float = 60.0) -> np.ndarray:
    """Ambient + Lambert shading of top surfaces, times 0 where another surface blocks the sun.

    The cast-shadow test walks towards the sun in whole-cell steps and compares heights with the sun
    ray: shadow lengths on the satellite tile therefore encode building heights, one of the cues
    the world guarantees is shared between views.
    """
    az, el = math.radians(sun_az), math.radians(sun_el)
    sx, sy = math.sin(az), math.cos(az)
    gy, gx = np.gradient(height.astype(np.float32), res)       # rows go south: gy is -dz/dy
    nx, ny = -gx, gy  # the normal's z is 1 before normalising
    norm = np.sqrt(nx * nx + ny * ny + 1.0)
    slope = np.clip(np.where(height > 0.5, 1.0, 0.0) * (nx * sx * math.cos(el) + ny * sy * math.cos(el))
                    / norm, -0.3, 0.3)
    lambert = np.clip(math.sin(el) / norm + slope, 0.0, 1.0)
    tan_el = math.tan(el)
    lit = np.ones_like(height, dtype=bool)
    hmax = float(height.max())
    n_steps = int(min(max_dist, hmax / max(tan_el, 1e-3)) / res) + 1
    h, w = height.shape
    for s in range(1, n_steps + 1):
        dc, dr = int(round(s * sx)), int(round(-s * sy))
        if dc == 0 and dr == 0:
            continue
        shifted = np.zeros_like(height)
        rs, cs = slice(max(0, -dr), min(h, h - dr)), slice(max(0, -dc), min(w, w - dc))
        rd, cd = slice(max(0, dr), min(h, h + dr)), slice(max(0, dc), min(w, w + dc))
        shifted[rs, cs] = height[rd, cd]
        dist = res * math.hypot(dc, dr)
        lit &= shifted <= height + dist * tan_el + 0.05
    return 0.42 + 0.58 * lambert * lit


def _hash01(*ints: torch.Tensor) -> torch.Tensor:
    """A cheap deterministic integer hash to [0, 1): window lighting and facade grain."""
    acc = torch.zeros_like(ints[0], dtype=torch.int64)
    for k, v in zip((73856093, 19349663, 83492791, 2654435761), ints):
        acc = acc ^ (v.to(torch.int64) * k)
    acc = (acc ^ (acc >> 13)) * 1274126177
    acc = acc ^ (acc >> 16)
    return (acc & 0xFFFF).to(torch.float32) / 65536.0


def ray_distances(max_dist: float = 180.0, near: float = 0.3, fine: float = 0.25,
                  fine_until: float = 20.0, growth: float = 1.014) -> torch.Tensor:
    """Sample distances along a ray: 0.25 m steps near the camera, then geometric growth."""
    d = list(np.arange(near, fine_until, fine))
    while d[-1] < max_dist:
        d.append(d[-1] * growth)
    return torch.tensor(d, dtype=torch.float32)


def _lookup(scene: Scene, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h, w = scene.shape
    c = torch.floor((x - scene.xmin) / scene.res).to(torch.int64)
    r = torch.floor((scene.ymax - y) / scene.res).to(torch.int64)
    inside = (c >= 0) & (c < w) & (r >= 0) & (r < h)
    return torch.where(inside, r.clamp(0, h - 1) * w + c.clamp(0, w - 1), torch.full_like(r, h * w))


def sky_colour(el_deg: torch.Tensor, condition: str) -> torch.Tensor:
    e = (el_deg.clamp(0, 90) / 90.0).unsqueeze(-1) ** 0.6
    if condition == "night":
        lo, hi = torch.tensor([0.05, 0.06, 0.12]), torch.tensor([0.01, 0.01, 0.04])
    elif condition == "fog":
        lo, hi = torch.tensor([0.74, 0.75, 0.76]), torch.tensor([0.80, 0.81, 0.82])
    else:
        lo, hi = torch.tensor([0.78, 0.85, 0.93]), torch.tensor([0.30, 0.50, 0.85])
    return lo * (1 - e) + hi * e


def trace(scene: Scene, cams: torch.Tensor, az: torch.Tensor, pcol: torch.Tensor, pel: torch.Tensor,
          condition: str = "day", max_dist: float = 180.0) -> dict[str, torch.Tensor]:
    """First hits of B cameras' pixels; each pixel is (one of the camera's ray columns, elevation).

    cams (B, 3) positions; az (B, Na) column azimuths in degrees; pcol (B, P) the column of every
    pixel and pel (B, P) its elevation in degrees. Returns `rgb` (B, P, 3) in [0, 1], `bid` (B, P)
    building index (-1: none) and `depth` (B, P) horizontal metres.

    All columns of all cameras are searched at once: keys `ray + 1/2 + 0.4995 slope/(1+|slope|)`
    (x/(1+|x|) is monotone) are sorted across rays because each ray's running maximum is, so one `searchsorted` over the
    flat array finds every pixel's first hit. Only hits are shaded; sky is filled in one go.
    """
    d = ray_distances(max_dist)
    n_s = d.numel()
    b, na = az.shape
    npx = pcol.shape[1]
    azr = torch.deg2rad(az)
    dx, dy = torch.sin(azr), torch.cos(azr)                                   # (B, Na)
    cell = _lookup(scene, cams[:, 0, None, None] + dx[..., None] * d,
                   cams[:, 1, None, None] + dy[..., None] * d).reshape(-1)    # (B*Na*S,)
    hs = scene.height[cell]
    slope = torch.cummax((hs.reshape(b, na, n_s) - cams[:, 2, None, None]) / d, dim=2).values
    ray_id = torch.arange(b * na, dtype=torch.float64).reshape(b, na, 1)
    sd = slope.double()
    keys = (ray_id + (sd / (1 + sd.abs()) * 0.4995 + 0.5)).reshape(-1)
    tan_el = torch.tan(torch.deg2rad(pel.clamp(-89.5, 89.5)))                 # (B, P)
    ray = (pcol + torch.arange(b).reshape(b, 1) * na).reshape(-1)             # (B*P,)
    te = tan_el.double().reshape(-1)
    vals = ray.double() + (te / (1 + te.abs()) * 0.4995 + 0.5)
    k = torch.searchsorted(keys, vals) - ray * n_s
    rgb = sky_colour(pel.reshape(-1), condition)
    depth = torch.full((b * npx,), float(max_dist))
    bid = torch.full((b * npx,), -1, dtype=torch.int64)
    hit = torch.nonzero(k < n_s).squeeze(1)
    rh, kh = ray[hit], k[hit]
    bi = rh // na
    flat = rh * n_s + kh
    dk = d[kh]
    dprev = torch.where(kh > 0, d[(kh - 1).clamp(min=0)], torch.zeros_like(dk))
    hk = hs[flat]
    t = tan_el.reshape(-1)[hit]
    zc, cx, cy = cams[bi, 2], cams[bi, 0], cams[bi, 1]
    rdx, rdy = dx.reshape(-1)[rh], dy.reshape(-1)[rh]
    is_top = (zc + dk * t >= hk - t.abs() * (dk - dprev) - 1e-3) & (t < 0)
    dtop = torch.where(is_top, ((hk - zc) / t.clamp(max=-1e-6)).clamp(min=dprev, max=dk), dk)
    cell_hit = torch.where(is_top, _lookup(scene, cx + rdx * dtop, cy + rdy * dtop), cell[flat])
    hb = scene.bid[cell_hit]
    c, dep = _shade(scene, condition, is_top, cell_hit, hb, dk, dtop, t, zc, cx, cy, rdx, rdy)
    c = _atmosphere(c, dep, torch.rad2deg(torch.atan(t)), condition)
    rgb[hit], depth[hit], bid[hit] = c, dep, hb
    return {"rgb": rgb.reshape(b, npx, 3), "bid": bid.reshape(b, npx), "depth": depth.reshape(b, npx)}


def render_rays(scene: Scene, cams: torch.Tensor, az: torch.Tensor, el: torch.Tensor,
                condition: str = "day", max_dist: float = 180.0) -> dict[str, torch.Tensor]:
    """Every (azimuth, elevation) combination: a spherical grid, (B, Ne, Na[, 3]) outputs."""
    b, na = az.shape
    ne = el.shape[1]
    pcol = torch.arange(na).reshape(1, 1, na).expand(b, ne, na).reshape(b, -1)
    pel = el[:, :, None].expand(b, ne, na).reshape(b, -1)
    out = trace(scene, cams, az, pcol, pel, condition, max_dist)
    return {"rgb": out["rgb"].reshape(b, ne, na, 3), "bid": out["bid"].reshape(b, ne, na),
            "depth": out["depth"].reshape(b, ne, na)}


def _shade(scene: Scene, condition: str, is_top, cell, bid, dk, dtop, t, zc, cx, cy, dx, dy):
    """Colour of each first hit: lit top surfaces, facades with windows and floor bands, trees."""
    night = condition == "night"
    alb = scene.albedo[cell]
    top_light = torch.full_like(dk, 0.07) if night else scene.topshade[cell]
    # Walls of trees (no building id): albedo, darker towards the ground.
    wall_light = (0.45 + 0.04 * (zc + dk * t).clamp(0, 10)) * (0.12 if night else 1.0)
    rgb = alb * torch.where(is_top, top_light, wall_light)[:, None]
    depth = torch.where(is_top, dtop, dk)
    bw = torch.nonzero(~is_top & (bid >= 0)).squeeze(1)
    if bw.numel():
        fac, dep = _facades(scene, night, bid[bw], dk[bw], t[bw], zc[bw], cx[bw], cy[bw], dx[bw], dy[bw])
        rgb[bw] = fac
        depth[bw] = dep
    return rgb, depth


def _facades(scene: Scene, night: bool, bid, dk, t, zc, cx, cy, dx, dy):
    """Exact ray/box entry on the building's own rectangle gives crisp windows and floor bands."""
    ca, sa = math.cos(scene.angle), math.sin(scene.angle)
    centre, half = scene.b_center[bid], scene.b_half[bid]
    qx = cx * ca + cy * sa - centre[:, 0]
    qy = -cx * sa + cy * ca - centre[:, 1]
    ux = dx * ca + dy * sa
    uy = -dx * sa + dy * ca
    eps = 1e-6
    ux = torch.where(ux.abs() < eps, torch.full_like(ux, eps), ux)
    uy = torch.where(uy.abs() < eps, torch.full_like(uy, eps), uy)
    tx = torch.minimum((-half[:, 0] - qx) / ux, (half[:, 0] - qx) / ux)
    ty = torch.minimum((-half[:, 1] - qy) / uy, (half[:, 1] - qy) / uy)
    xface = tx > ty
    tent = torch.maximum(tx, ty)
    ok = (tent > 0) & (tent < dk + 1.0)
    tent = torch.where(ok, tent, dk)
    z = zc + tent * t
    u = torch.where(xface, qy + tent * uy, qx + tent * ux)
    # Face normal in the grid frame, rotated back to world for the sun term.
    nxl = torch.where(xface, -torch.sign(ux), torch.zeros_like(ux))
    nyl = torch.where(xface, torch.zeros_like(uy), -torch.sign(uy))
    nx, ny = nxl * ca - nyl * sa, nxl * sa + nyl * ca
    saz, sel = math.radians(scene.sun_az), math.radians(scene.sun_el)
    lam = (nx * math.sin(saz) + ny * math.cos(saz)).clamp(min=0) * math.cos(sel)
    light = 0.07 * torch.ones_like(lam) if night else 0.5 + 0.5 * lam
    win = scene.b_window[bid]
    spacing, wfrac, floor_h, hfrac = win.unbind(1)
    col = torch.floor(u / spacing)
    fu = u / spacing - col
    floor = torch.floor(z / floor_h)
    fz = z / floor_h - floor
    top = scene.b_height[bid]
    is_win = ((fu - 0.5).abs() < wfrac / 2) & ((fz - 0.55).abs() < hfrac / 2) & (z < top - 0.8) & (z > 0.4)
    band = (fz < 0.07) & (z > 1.0)
    grain = 0.94 + 0.12 * torch.frac(torch.sin(torch.floor(u * 4) * 12.9898 + torch.floor(z * 4) * 78.233) * 43758.5453).abs()
    rgb = scene.b_facade[bid] * (light * grain)[:, None]
    rgb = torch.where(band[:, None], rgb * 0.8, rgb)
    glass = scene.glass.expand_as(rgb) * (0.7 + 0.5 * lam)[:, None]
    if night:
        on = _hash01(col, floor, bid, xface.to(torch.int64)) < 0.45
        lit = torch.tensor([1.0, 0.82, 0.5]) * (0.75 + 0.25 * _hash01(col, floor, bid))[:, None]
        glass = torch.where(on[:, None], lit, scene.glass * 0.15)
    rgb = torch.where(is_win[:, None], glass, rgb)
    return rgb, tent


def _atmosphere(rgb: torch.Tensor, depth: torch.Tensor, el: torch.Tensor, condition: str) -> torch.Tensor:
    scale = {"fog": 32.0, "night": 250.0}.get(condition, 1500.0)
    keep = torch.exp(-depth / scale)[:, None]
    return rgb * keep + sky_colour(el, condition) * (1 - keep)


# ---------------------------------------------------------------- cameras built on render_rays

def camera_rays(heading: torch.Tensor, pitch: torch.Tensor, fov: float, size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuth and elevation (deg) of every pixel of square pinhole cameras (zero roll)."""
    f = math.tan(math.radians(fov) / 2)
    g = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    xc = (g * f)[None, :].expand(size, size)                  # right
    yc = (-g * f)[:, None].expand(size, size)                 # up (row 0 at the top)
    h, p = torch.deg2rad(heading)[:, None, None], torch.deg2rad(pitch)[:, None, None]
    fwd = (torch.sin(h) * torch.cos(p), torch.cos(h) * torch.cos(p), torch.sin(p))
    right = (torch.cos(h), -torch.sin(h), torch.zeros_like(h))
    up = (-torch.sin(h) * torch.sin(p), -torch.cos(h) * torch.sin(p), torch.cos(p))
    vx = fwd[0] + xc * right[0] + yc * up[0]
    vy = fwd[1] + xc * right[1] + yc * up[1]
    vz = fwd[2] + xc * right[2] + yc * up[2]
    az = torch.rad2deg(torch.atan2(vx, vy))
    el = torch.rad2deg(torch.atan2(vz, torch.sqrt(vx * vx + vy * vy)))
    return az, el


def render_perspective(scene: Scene, cams: torch.Tensor, heading: torch.Tensor, pitch: torch.Tensor,
                       fov: float, size: int, condition: str = "day", col_density: float = 1.2
                       ) -> dict[str, torch.Tensor]:
    """Pinhole views: each pixel traces its exact elevation along the nearest of a fan of columns."""
    az, el = camera_rays(heading, pitch, fov, size)
    b = cams.shape[0]
    rel = torch.remainder(az - heading[:, None, None] + 180.0, 360.0) - 180.0
    amin, amax = rel.amin(dim=(1, 2)), rel.amax(dim=(1, 2))
    span = float((amax - amin).max())
    na = int(min(4 * size, max(size, col_density * size * span / fov)))
    frac = torch.linspace(0, 1, na)[None, :]
    col_az = heading[:, None] + amin[:, None] + (amax - amin)[:, None] * frac
    pos = (rel - amin[:, None, None]) / (amax - amin).clamp(min=1e-6)[:, None, None] * (na - 1)
    pcol = pos.round().long().clamp(0, na - 1).reshape(b, -1)
    out = trace(scene, cams, col_az, pcol, el.reshape(b, -1), condition)
    return {"rgb": out["rgb"].reshape(b, size, size, 3), "bid": out["bid"].reshape(b, size, size),
            "depth": out["depth"].reshape(b, size, size)}


def panorama_azimuths(width: int, oversample: int = 1) -> torch.Tensor:
    """Column azimuths: column j looks at 180 + 360 j / W degrees, so north is column W/2.

    That is the convention of the SAFA polar transform (docs/reference.md): its column j samples the
    aerial tile towards the same bearing, so the two line up column for column.
    """
    n = width * oversample
    k = torch.arange(n, dtype=torch.float32) - (oversample - 1) / 2
    return 180.0 + 360.0 * k / n


def render_panorama(scene: Scene, cams: torch.Tensor, height: int, width: int,
                    el_range: tuple[float, float] = (-90.0, 45.0), condition: str = "day",
                    oversample: int = 1) -> dict[str, torch.Tensor]:
    """Equirectangular panoramas: row 0 at el_range[1], the bottom row at el_range[0]."""
    b = cams.shape[0]
    az = panorama_azimuths(width, oversample)[None].expand(b, -1)
    nrow = height * oversample
    el = el_range[1] - (el_range[1] - el_range[0]) * (torch.arange(nrow, dtype=torch.float32) + 0.5) / nrow
    out = render_rays(scene, cams, az, el[None].expand(b, -1), condition)
    rgb = out["rgb"]
    if oversample > 1:
        rgb = F.avg_pool2d(rgb.permute(0, 3, 1, 2), oversample).permute(0, 2, 3, 1)
    bid = out["bid"][:, oversample // 2::oversample, oversample // 2::oversample]
    return {"rgb": rgb, "bid": bid}


def render_satellite(scene: Scene, centres: torch.Tensor, size: int, metres: float,
                     condition: str = "day") -> dict[str, torch.Tensor]:
    """North-up orthographic tiles; pixel (S/2, S/2) is exactly the centre point.

    Pixel (r, c) sits at (x + (c - S/2) p, y - (r - S/2) p) with p = metres / size, the same
    index convention as `polar_transform`, so a tile's polar image is centred where its panorama
    was taken.
    """
    p = metres / size
    g = (torch.arange(size, dtype=torch.float32) - size / 2) * p
    x = centres[:, 0, None, None] + g[None, None, :]
    y = centres[:, 1, None, None] - g[None, :, None]
    x, y = torch.broadcast_tensors(x, y)
    sub = (torch.tensor([-0.25, 0.25]) * p)
    acc = torch.zeros(*x.shape, 3)
    for ox in sub:                                       # 2x2 supersampling against aliasing
        for oy in sub:
            cell = _lookup(scene, x + ox, y + oy)
            light = torch.full(cell.shape, 0.09) if condition == "night" else scene.topshade[cell]
            acc += scene.albedo[cell] * light[..., None] / 4
    cell = _lookup(scene, x, y)
    if condition == "fog":
        acc = acc * 0.55 + 0.45 * torch.tensor([0.76, 0.77, 0.78])
    return {"rgb": acc, "bid": scene.bid[cell]}


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
