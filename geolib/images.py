"""Decoding images the way real datasets need it.

Real archives hold grayscale, palette, RGBA, CMYK, 16-bit and EXIF-rotated files next to ordinary
JPEGs. Every one of them is converted to 8-bit RGB here, in one place, so a loader or a DataLoader
worker never meets an odd mode. Truncated files raise `ImageError` naming the file and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_PIXELS = 100_000_000  # a decompression bomb guard well above any dataset image


class ImageError(ValueError):
    """An image that cannot be used, with the file and what to do about it."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0)) if img.mode != "F" else 255.0 / max(hi, 1e-12)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` as 8-bit RGB, EXIF orientation applied; raise `ImageError` on a bad file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{path}: {img.width}x{img.height} pixels is too large "
                                 f"(limit {MAX_PIXELS:,}); downscale the image")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError as err:
        raise ImageError(f"{path}: file not found; check the dataset root") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{path}: not an image PIL can read; remove or replace the file") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: unreadable or truncated image ({err}); re-download or remove it") from err


def inspect_image(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """Fully decode `path`. Returns (error, note): error when unusable, note when it needed converting."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode, exif = img.mode, img.getexif()
    except Exception:  # noqa: BLE001 - every failure is reported the same way below
        mode, exif = None, {}
    try:
        load_image(path)
    except ImageError as err:
        return str(err), None
    notes = []
    if mode and mode != "RGB":
        notes.append(f"mode {mode} converted to RGB")
    if exif and exif.get(0x0112, 1) not in (1, None):
        notes.append(f"EXIF orientation {exif.get(0x0112)} applied")
    return None, "; ".join(notes) or None
