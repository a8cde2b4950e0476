"""Decoding images the way real datasets need it.

Real archives hold grayscale, palette, RGBA, CMYK, 16-bit and EXIF-rotated files next to ordinary
JPEGs. Every one of them is converted to 8-bit RGB here, in one place, so a loader or a DataLoader
worker never meets an odd mode. Truncated files raise `ImageError` naming the file and the fix.

One size limit, `MAX_PIXELS`, guards every entry point (dataset paths, `check-data`, uploads to
`localize`). It is read from the PNG/JPEG header before anything is decoded, so a 15,000² panorama
costs a few bytes of I/O, not 700 MB of RAM; Pillow's own decompression-bomb error and warning
(other formats) become the same `ImageError`.
"""
from __future__ import annotations

import io
import os
import re
import struct
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The per-channel statistics every ImageNet-pretrained backbone and teacher was trained with: one
# pair for the whole library, so a transform and the model it feeds cannot drift apart.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# 80 MP (a 10,300 × 7,750 photo): far above any dataset image and what the model sees (a few hundred
# pixels a side), and below Pillow's DecompressionBombWarning threshold (89.5 MP), so Pillow never
# warns about an image this library accepts.
MAX_PIXELS = 80_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not
# warnings.catch_warnings swaps process-wide state: two threads inside it at once can leave the
# filter behind, so the rare guarded open (a format whose header we do not parse) is serialised.
_WARNINGS_LOCK = threading.Lock()

ImageSource = str | os.PathLike | bytes


class ImageError(ValueError):
    """An image that cannot be used, with the file and what to do about it."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def header_size(source: ImageSource) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding pixels; None for other formats.

    Raises OSError as `open` does (missing file, folder, no permission).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _header_size(io.BytesIO(bytes(source)))
    with open(source, "rb") as fh:
        return _header_size(fh)


def _header_size(fh: BinaryIO) -> tuple[int, int] | None:
    head = fh.read(24)
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) == 24:
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if head[:3] == b"\xff\xd8\xff":
        fh.seek(2)
        return _jpeg_size(fh)
    return None


def _jpeg_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Walk the JPEG segments (skipping EXIF/ICC by their lengths) to the frame header."""
    while True:
        if fh.read(1) != b"\xff":
            return None  # not at a marker: leave a damaged file to Pillow's decoder
        b = fh.read(1)
        while b == b"\xff":  # fill bytes
            b = fh.read(1)
        if not b:
            return None
        marker = b[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue  # markers without a length
        if marker in (0xD9, 0xDA):
            return None  # end of image or scan data before any frame header
        seg = fh.read(2)
        if len(seg) < 2:
            return None
        (length,) = struct.unpack(">H", seg)
        if marker in _JPEG_SOF:
            data = fh.read(5)
            if len(data) < 5:
                return None
            h, w = struct.unpack(">HH", data[1:5])
            return (int(w), int(h)) if w and h else None
        fh.seek(length - 2, os.SEEK_CUR)


def check_size(size: tuple[int, int], name: str | os.PathLike) -> None:
    """Raise `ImageError` when `size` is over `MAX_PIXELS`."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}×{h} pixels is too large (limit {MAX_PIXELS:,} pixels); "
                         "downscale the image")


@contextmanager
def open_image(source: ImageSource, name: str | os.PathLike | None = None) -> Iterator[Image.Image]:
    """`Image.open` under `MAX_PIXELS`: the header size is checked first, nothing is decoded yet.

    Oversized images raise `ImageError`; other failures (missing file, not an image) propagate as
    Pillow raises them, for the caller to phrase for its context (a dataset file, an upload).
    """
    name = name if name is not None else ("upload" if isinstance(source, (bytes, bytearray, memoryview)) else source)
    size = header_size(source)
    if size is not None:
        check_size(size, name)
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        if size is not None:  # under MAX_PIXELS, hence under Pillow's warning threshold
            img = Image.open(fp)
        else:
            with _WARNINGS_LOCK, warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        m = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(m.group(1)):,} pixels" if m else "the image"
        raise ImageError(f"{name}: {pixels} is too large (limit {MAX_PIXELS:,} pixels); "
                         "downscale the image") from None
    with img:
        check_size(img.size, name)
        yield img


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


def _decode(path: Path) -> tuple[Image.Image, str, int]:
    """RGB image, the file's own mode and its EXIF orientation (1 = upright)."""
    try:
        with open_image(path) as img:
            mode, orientation = img.mode, int(img.getexif().get(0x0112, 1) or 1)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img), mode, orientation
    except ImageError:
        raise
    except FileNotFoundError as err:
        raise ImageError(f"{path}: file not found; check the dataset root") from err
    except IsADirectoryError as err:
        raise ImageError(f"{path}: is a folder, not an image file; pass an image file") from err
    except PermissionError as err:
        raise ImageError(f"{path}: permission denied; make the file readable") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{path}: not an image PIL can read; remove or replace the file") from err
    except (OSError, SyntaxError, ValueError, struct.error) as err:
        raise ImageError(f"{path}: unreadable or truncated image ({err}); re-download or remove it") from err


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` as 8-bit RGB, EXIF orientation applied; raise `ImageError` on a bad file."""
    return _decode(Path(path))[0]


def inspect_image(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """Fully decode `path`. Returns (error, note): error when unusable, note when it needed converting."""
    try:
        _, mode, orientation = _decode(Path(path))
    except ImageError as err:
        return str(err), None
    notes = []
    if mode != "RGB":
        notes.append(f"mode {mode} converted to RGB")
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied")
    return None, "; ".join(notes) or None
