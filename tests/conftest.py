"""Shared fixtures: small dataset trees in each real layout, built from generated images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One compute thread per worker (the notebooks' kernels inherit it): workers share the cores.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("GEOLIB_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: run with GEOLIB_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """On 2 shared, busy cores two torch threads spin against each other (measured: 5 tiny
    backward steps took 43 s with 2 threads, 0.2 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path_factory, monkeypatch):
    """No test writes into the repository's outputs/: each session gets its own root."""
    if "GEOLIB_OUTPUTS_KEEP" not in os.environ:
        root = tmp_path_factory.getbasetemp() / "outputs"
        monkeypatch.setenv("GEOLIB_OUTPUTS", str(root))


@pytest.fixture
def pipeline_outputs(tmp_path_factory, monkeypatch) -> Path:
    """The root the notebooks' smoke run shares, apart from the session's: unit tests also write
    smoke records, and theirs must not land among the pipeline's."""
    if "GEOLIB_OUTPUTS_KEEP" in os.environ:
        return Path(os.environ.get("GEOLIB_OUTPUTS") or "outputs")
    root = tmp_path_factory.getbasetemp() / "pipeline"
    monkeypatch.setenv("GEOLIB_OUTPUTS", str(root))
    return root


def make_image(path: Path, seed: int = 0, size: tuple[int, int] = (24, 20), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "CMYK":
        img = img.convert("CMYK")
    elif mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65535, (size[1], size[0]))).astype(np.uint16))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def png_header(width: int, height: int) -> bytes:
    """A valid-looking 1-bit PNG of any size without its pixels: what a size check reads, in 60 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
            + chunk(b"IEND", b""))


def bmp_header(width: int, height: int) -> bytes:
    """A BMP header of any size, no pixels: a format whose size only Pillow reads."""
    import struct

    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40, 0, 0, 54) + dib


def build_university(root: Path, broken: bool = True) -> Path:
    """Train 0001-0002, test queries 0003-0004, gallery 0003-0005 (0005 a distractor).

    With `broken`: an empty class folder, a truncated JPEG and a stray text file are added.
    """
    n = 0
    for view in ("satellite", "drone", "street"):
        for b in ("0001", "0002"):
            make_image(root / "train" / view / b / f"{view}_{b}.jpg", seed=(n := n + 1))
    make_image(root / "train" / "drone" / "0001" / "image-02.png", seed=99)  # png beside jpg
    make_image(root / "train" / "street" / "0002" / "gray.jpg", seed=98, mode="L")
    make_image(root / "train" / "street" / "0002" / "@@12.5@@odd@.jpg", seed=97)  # '@' fields missing
    for view in ("satellite", "drone", "street"):
        for b in ("0003", "0004"):
            make_image(root / "test" / f"query_{view}" / b / f"q_{b}.jpg", seed=(n := n + 1))
        for b in ("0003", "0004", "0005"):
            make_image(root / "test" / f"gallery_{view}" / b / f"g_{b}.jpg", seed=(n := n + 1))
    if broken:
        (root / "train" / "street" / "0001").mkdir(parents=True, exist_ok=True)
        for f in (root / "train" / "street" / "0001").iterdir():
            f.unlink()
        truncate(make_image(root / "train" / "drone" / "0002" / "cut.jpg", seed=77, size=(64, 64)))
        (root / "train" / "drone" / "0002" / "notes.txt").write_text("not an image")
    return root


def build_crossview_tree(root: Path, distractors: int = 2) -> Path:
    """Train places 1-8 and test places 11-14 in every view, 32 px; the drone and satellite
    galleries add `distractors` places that no query has."""
    for b in range(1, 9):
        for v in ("street", "drone", "satellite"):
            make_image(root / "train" / v / f"{b:04d}" / "a.jpg", seed=b * 3 + len(v), size=(32, 32))
    for b in range(11, 15):
        for v in ("street", "drone", "satellite"):
            make_image(root / "test" / f"query_{v}" / f"{b:04d}" / "q.jpg", seed=b * 5 + len(v), size=(32, 32))
    for b in range(11, 15 + distractors):
        for v in ("drone", "satellite"):
            make_image(root / "test" / f"gallery_{v}" / f"{b:04d}" / "g.jpg", seed=b * 11 + len(v), size=(32, 32))
    return root


@pytest.fixture
def university_root(tmp_path) -> Path:
    return build_university(tmp_path / "University-1652", broken=False)


@pytest.fixture
def broken_university_root(tmp_path) -> Path:
    return build_university(tmp_path / "University-1652", broken=True)


def vpr_name(east: float, north: float, heading: float | None = None, note: str = "") -> str:
    h = "" if heading is None else f"{heading:.1f}"
    return f"@{east:.2f}@{north:.2f}@33@T@41.90000@12.50000@pano{int(east)}@@{h}@@@@2024@{note}@.jpg"


@pytest.fixture
def vpr_root(tmp_path) -> Path:
    root = tmp_path / "sf_xs"
    for i in range(4):
        make_image(root / "test" / "database" / vpr_name(500000 + 10 * i, 4600000, heading=90.0 * i), seed=i)
    make_image(root / "test" / "queries_v1" / vpr_name(500001, 4600002), seed=10)
    make_image(root / "test" / "queries_v1" / vpr_name(500031, 4600001, note="night"), seed=11)
    return root
