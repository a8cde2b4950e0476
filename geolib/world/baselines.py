"""Non-learned baselines and the oracle check of the synthetic world.

Why: a world that a colour histogram can match teaches nothing, and a world where no cue survives
the change of view cannot be learned. The baselines bound the first from above (they must stay
near chance), the oracle bounds the second from below: it uses the cue the world guarantees is
shared (a facade's colour is its roof's colour with the hue turned by FACADE_HUE_SHIFT, saturation
kept) and must match street views to satellite tiles well.

All run on a University-1652-layout root (test split), so they work on real data too (the oracle
needs target masks, which only the synthetic world has).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.metrics import label_chance_recall, retrieval_metrics
from .generate import FACADE_HUE_SHIFT

PROTOCOL = "university1652-official"
DIRECTIONS = (("street", "satellite"), ("drone", "satellite"), ("street", "drone"))


def list_split(root: Path, folder: str) -> tuple[list[Path], np.ndarray]:
    """Image paths and integer labels of `test/<folder>/<label>/*`, in sorted order."""
    paths, labels = [], []
    for d in sorted((root / "test" / folder).iterdir()):
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    paths.append(f)
                    labels.append(int(d.name))
    return paths, np.asarray(labels, dtype=np.int64)


def _load(paths: list[Path], size: int | None = None) -> list[np.ndarray]:
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size:
                im = im.resize((size, size), Image.BOX)
            out.append(np.asarray(im))
    return out


def _l2(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def raw_pixels(images: list[np.ndarray]) -> np.ndarray:
    """Images already downsampled to 16 x 16, flattened; cosine similarity."""
    return _l2(np.stack([im.reshape(-1) for im in images]).astype(np.float32) / 255.0)


def colour_histogram(images: list[np.ndarray], bins: int = 8) -> np.ndarray:
    """Joint RGB histogram, square-rooted (Hellinger), so cosine is the Bhattacharyya coefficient."""
    feats = []
    for im in images:
        q = (im.reshape(-1, 3).astype(np.int64) * bins) // 256
        idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
        feats.append(np.bincount(idx, minlength=bins ** 3) / len(idx))
    return _l2(np.sqrt(np.stack(feats)))


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) in [0, 1] -> hue degrees, saturation, value."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(c > 0, c, 1)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.stack([np.where(c > 0, h * 60.0, 0.0), np.where(mx > 0, c / np.maximum(mx, 1e-6), 0), mx], -1)


def colour_cue(image: np.ndarray, mask: np.ndarray, hue_shift: float = 0.0) -> np.ndarray:
    """Robust (hue, saturation) of the masked surface as a point (s cos h, s sin h).

    Windows, frames and shadows are grey, dark or another hue; the painted surface is the peak of
    the saturation-weighted hue histogram. Hue and saturation survive any grey lighting.
    """
    hsv = rgb_to_hsv(image.astype(np.float32) / 255.0)[mask]
    hsv = hsv[(hsv[:, 2] > 0.08) & (hsv[:, 1] > 0.05)]
    if len(hsv) == 0:
        return np.zeros(2, np.float32)
    w = hsv[:, 1] * hsv[:, 2]
    hist = np.bincount((hsv[:, 0] // 3).astype(np.int64) % 120, weights=w, minlength=120)
    smooth = hist + np.roll(hist, 1) + np.roll(hist, -1)
    peak = (np.argmax(smooth) + 0.5) * 3.0
    near = np.abs((hsv[:, 0] - peak + 180) % 360 - 180) < 12
    h = np.radians(hsv[near, 0])
    ang = np.arctan2((np.sin(h) * w[near]).sum(), (np.cos(h) * w[near]).sum()) - np.radians(hue_shift)
    sat = float(np.median(hsv[near, 1]))
    return np.array([sat * np.cos(ang), sat * np.sin(ang)], np.float32)


def _cue(image: np.ndarray, mask: np.ndarray, light: np.ndarray, hue_shift: float = 0.0) -> np.ndarray:
    """The colour cue after undoing the camera's recorded white balance and exposure."""
    balanced = np.clip(image.astype(np.float32) / np.asarray(light, np.float32), 0, 255)
    return colour_cue(balanced, mask, hue_shift)


def distance_embeddings(q: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner products that rank like negative squared distances: <[2q, -1], [g, |g|^2]>."""
    q2 = np.concatenate([2 * q, -np.ones((len(q), 1), np.float32)], 1)
    g2 = np.concatenate([g, (g * g).sum(1, keepdims=True)], 1)
    return q2.astype(np.float32), g2.astype(np.float32)


def run_all(root: Path, masks: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """Baselines in the three directions, chance levels, and (with masks) the oracle.

    `masks` maps an image path (as `university1652/test/...`) to its target mask and camera light.
    """
    root = Path(root)
    results: list[dict[str, Any]] = []
    cache: dict[str, tuple[list[Path], np.ndarray, list[np.ndarray], list[np.ndarray]]] = {}
    for folder in {f"{k}_{v}" for q, g in DIRECTIONS for k, v in (("query", q), ("gallery", g))}:
        paths, labels = list_split(root, folder)
        cache[folder] = (paths, labels, _load(paths), _load(paths, 16))
    for qv, gv in DIRECTIONS:
        qp, ql, qfull, qsmall = cache[f"query_{qv}"]
        gp, gl, gfull, gsmall = cache[f"gallery_{gv}"]
        base = {"protocol": PROTOCOL, "query_view": qv, "gallery_view": gv,
                "config": {"queries": len(ql), "gallery": len(gl), "gallery_places": int(len(set(gl)))}}
        results.append({**base, "model": "chance", "metrics": {"R@1": label_chance_recall(ql, gl)}})
        results.append({**base, "model": "raw-pixels", "config": {**base["config"], "size": 16},
                        "metrics": retrieval_metrics(raw_pixels(qsmall), ql, raw_pixels(gsmall), gl)})
        results.append({**base, "model": "color-histogram", "config": {**base["config"], "bins": "8x8x8 RGB, sqrt"},
                        "metrics": retrieval_metrics(colour_histogram(qfull), ql, colour_histogram(gfull), gl)})
    if masks:
        results.append(oracle(root, cache, masks))
    return {"results": results}


def oracle(root: Path, cache: dict, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Street -> satellite by the world's shared cue: the facade colour turned back to a roof colour."""
    qp, ql, qfull, _ = cache["query_street"]
    gp, gl, gfull, _ = cache["gallery_satellite"]
    rel = lambda p: "university1652/" + p.relative_to(root).as_posix()  # noqa: E731
    q = np.stack([_cue(im, *masks[rel(p)], FACADE_HUE_SHIFT) for p, im in zip(qp, qfull)])
    g = np.stack([_cue(im, *masks[rel(p)]) for p, im in zip(gp, gfull)])
    qe, ge = distance_embeddings(q, g)
    return {"protocol": PROTOCOL, "query_view": "street", "gallery_view": "satellite", "model": "oracle",
            "config": {"cue": f"facade hue - {FACADE_HUE_SHIFT:g} deg and saturation vs roof",
                       "queries": len(ql), "gallery": len(gl), "gallery_places": int(len(set(gl)))},
            "metrics": retrieval_metrics(qe, ql, ge, gl)}
