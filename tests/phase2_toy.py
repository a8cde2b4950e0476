"""A seeded toy VPR world for the Phase 2 tests: cells 100 m apart, each with its own blocky
colour pattern, so a tiny network can learn to tell cells apart in a few steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import vpr_name

EAST0, NORTH0 = 500000.0, 4600000.0
SPACING = 100.0


def pattern_image(cell: int, rng: np.random.Generator, size: int = 32, noise: float = 40.0,
                  dark: bool = False) -> Image.Image:
    base = np.random.default_rng(1000 + cell).integers(0, 256, (4, 4, 3)).astype(np.float64)
    img = np.kron(base, np.ones((size // 4, size // 4, 1))) + rng.normal(0, noise, (size, size, 3))
    if dark:
        img = img * 0.5
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def build_toy_vpr(root: Path, n_cells: int = 6, train_per_cell: int = 10, size: int = 32,
                  seed: int = 0) -> Path:
    """train/{database,queries} (train images, nested folders as in the world export),
    test/database (2 per cell) and test/queries (a day and a night query per cell)."""
    rng = np.random.default_rng(seed)
    for c in range(n_cells):
        e0 = EAST0 + SPACING * c
        for j in range(train_per_cell):
            folder = "database" if j % 2 else "queries"
            name = vpr_name(e0 + rng.uniform(0, 9.9), NORTH0 + rng.uniform(0, 9.9), heading=rng.uniform(0, 29))
            _save(pattern_image(c, rng, size), root / "train" / folder / name)
        for j in range(2):
            _save(pattern_image(c, rng, size), root / "test" / "database" / vpr_name(e0 + 5 + j, NORTH0 + 5, heading=10.0))
        _save(pattern_image(c, rng, size), root / "test" / "queries" / vpr_name(e0 + 3, NORTH0 + 4))
        _save(pattern_image(c, rng, size, dark=True), root / "test" / "queries" / vpr_name(e0 + 2, NORTH0 + 6, note="night"))
    return root


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
