"""Where was this photo taken? Embed it with the saved model and search a saved gallery index.

`localize(photo, index)` is the Python side of the explorer's upload box: the photo goes through
the same decoding (`geolib.data.images`), resizing and model branch as the gallery did when notebook 02
built the index, and the answer is the top-k *places* (one row per place, its best-scoring gallery
image), with UTM coordinates and scores. Uploads are checked before decoding so that a user's odd
file (not an image, huge, grayscale, CMYK, RGBA) gets a sentence, not a traceback.
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.images import ImageError, load_image, open_image

if TYPE_CHECKING:
    from PIL import Image
    from torch import nn

    from .index import GalleryIndex

MAX_UPLOAD_BYTES = 25_000_000  # the pixel limit is the library's one `images.MAX_PIXELS`
MODE_NOTES = {"L": "grayscale image converted to RGB", "LA": "grayscale image with alpha converted to RGB",
              "CMYK": "CMYK image converted to RGB", "RGBA": "transparency flattened onto white",
              "P": "palette image converted to RGB", "I;16": "16-bit image scaled to 8 bits",
              "I": "32-bit image scaled to 8 bits", "1": "black-and-white image converted to RGB"}


@dataclass
class Place:
    """One answer: a gallery place, where it is, and how well the photo matched it."""

    rank: int
    place: Any
    score: float
    east: float | None
    north: float | None
    path: str  # the place's best-matching gallery image


def decode_upload(data: bytes, name: str = "upload") -> tuple["Image.Image", list[str]]:
    """Bytes of an uploaded file → RGB image and notes on what was converted; `ImageError` if unusable."""
    from PIL import UnidentifiedImageError

    if not data:
        raise ImageError(f"{name}: the file is empty; choose a JPEG or PNG photo")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"{name}: {len(data) / 1e6:.0f} MB is too large (limit {MAX_UPLOAD_BYTES / 1e6:.0f} MB); "
                         "downscale the photo first")
    try:
        with open_image(data, name) as probe:  # the size limit is checked from the header
            mode = probe.mode
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image that can be read; upload a JPEG or PNG photo") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: unreadable or truncated image ({err}); upload the file again") from None
    img = _decode_via_file(data, name)
    notes = [MODE_NOTES.get(mode, f"{mode} image converted to RGB")] if mode != "RGB" else []
    return img, notes


def _decode_via_file(data: bytes, name: str) -> "Image.Image":
    """`geolib.data.images.load_image` reads paths; the one decoder keeps EXIF and mode handling identical."""
    suffix = Path(name).suffix or ".img"
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            return load_image(tmp)
        except ImageError as err:
            raise ImageError(str(err).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)


def as_image(image_or_path: Any) -> "Image.Image":
    """A path, raw bytes or a PIL image → 8-bit RGB."""
    from PIL import Image

    if isinstance(image_or_path, Image.Image):
        return image_or_path.convert("RGB") if image_or_path.mode != "RGB" else image_or_path
    if isinstance(image_or_path, (bytes, bytearray, memoryview)):
        return decode_upload(bytes(image_or_path))[0]
    if isinstance(image_or_path, (str, os.PathLike)):
        check_photo_path(image_or_path)
    return load_image(image_or_path)


def check_photo_path(path: str | os.PathLike) -> Path:
    """Refuse a URL, a missing file or a folder with the sentence a user needs, before decoding.

    `load_image`'s own messages speak of dataset files ("check the dataset root"); a photo handed to
    `localize` is the user's own file, so it gets its own wording.
    """
    text = os.fspath(path)
    if isinstance(text, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise ImageError(f"{text}: URLs are not supported; download the photo first and pass the file's path")
    p = Path(text)
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image file; pass the path of one photo inside it")
    if not p.exists():
        where = "" if p.is_absolute() else f" (a relative path is resolved against the current folder {Path.cwd()})"
        raise ImageError(f"{p}: file not found{where}")
    return p


def load_index(index: "GalleryIndex | str | os.PathLike") -> "GalleryIndex":
    from .index import GalleryIndex

    return index if isinstance(index, GalleryIndex) else GalleryIndex.load(index)


@functools.lru_cache(maxsize=4)
def _model_from_checkpoint(checkpoint: str, mtime: float) -> "nn.Module":
    from ..training.crossview import load_trained_model

    return load_trained_model(checkpoint)[0]


def model_for(index: "GalleryIndex", model: "nn.Module | str | os.PathLike | None" = None) -> "nn.Module":
    """The model that built `index` (its saved checkpoint unless given), checked against the index."""
    from ..models import config_hash

    if model is None:
        model = (index.meta.get("extra") or {}).get("checkpoint")
        if not model:
            raise ValueError("the index does not name its checkpoint; pass model=… (a checkpoint path or model)")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).with_suffix(".json") if Path(model).suffix != ".json" else Path(model)
        if not path.exists():
            raise FileNotFoundError(f"{path}: checkpoint not found; run notebook 02 to train and save it")
        model = _model_from_checkpoint(str(path.with_suffix("")), path.stat().st_mtime)
    want = index.meta.get("config_hash")
    if want and hasattr(model, "config") and config_hash(model.config) != want:
        raise ValueError(f"the model (config {config_hash(model.config)}) did not build this index: it was "
                         f"built by model config {want}; rebuild the index or pass the matching checkpoint")
    return model


def embed_image(model: "nn.Module", img: "Image.Image", view: str = "street", image_size: int | None = None,
                device: str = "cpu", flip: bool = False) -> np.ndarray:
    """(1, D) L2-normalised embedding through the model's own preprocessing (`geolib.evaluation.embedding`),
    the gallery's; `image_size` resizes the same way to another size."""
    from ..evaluation.embedding import embed_images, preprocess_of

    return embed_images(model, [img], view=view, preprocess=preprocess_of(model).resized(image_size),
                        device=device, flip=flip)


def index_flip(index: "GalleryIndex") -> bool:
    """Whether the gallery was embedded with flip test-time augmentation: queries must match it."""
    return bool((index.meta.get("extra") or {}).get("flip", False))


def localize(image_or_path: Any, index: "GalleryIndex | str | os.PathLike",
             model: "nn.Module | str | os.PathLike | None" = None, k: int = 5, view: str = "street",
             image_size: int | None = None, device: str = "cpu") -> list[Place]:
    """Top-k distinct gallery places for a photo, best first, with UTM coordinates and scores.

    `index` is a `GalleryIndex` or its folder (notebook 02 saves `outputs/<profile>/index/phase1_*`);
    `model` defaults to the checkpoint the index names. Bad files raise `ImageError` with the reason.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index = load_index(index)
    net = model_for(index, model)
    emb = embed_image(net, as_image(image_or_path), view, image_size, device, index_flip(index))
    return top_places(index, emb, k)


def top_places(index: "GalleryIndex", emb: np.ndarray, k: int) -> list[Place]:
    """Best gallery image per place: a drone gallery holds many images of one place."""
    n = len(index)
    depth = min(n, max(k * 8, k))
    while True:
        hits = index.query(emb, depth)[0]
        places: dict[Any, Place] = {}
        for h in hits:
            key = h.place if h.place is not None else h.path
            if key not in places:
                east, north = (h.coords[0], h.coords[1]) if h.coords else (None, None)
                places[key] = Place(len(places) + 1, key, float(h.score), east, north, h.path)
        if len(places) >= k or depth >= n:
            return list(places.values())[:k]
        depth = min(n, depth * 4)
