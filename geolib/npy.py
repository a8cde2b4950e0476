"""Row access to 2-D `.npy` files without loading them: a reader, a chunked writer, a coercion.

`NpyRows` reads row ranges of a `.npy` file with plain file reads (no memory map, so the resident
memory is only the chunk being read): the streaming evaluation (`geolib.evaluation.metrics.streaming_*`)
uses it to keep queries and gallery on disk, cache entries included. Its own module because the
evaluation must not depend on the cache.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np



class NpyRows:
    """Array-like rows of a C-order 2-D `.npy` file, read on demand with file reads.

    Supports `len`, `shape`, `ndim`, `dtype`, `x[i]`, `x[a:b]` and `x[index_array]` (one read of
    the spanned range), which is all the chunked evaluation and index building need.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{self.path}: need a C-order 2-D array, got shape {shape} (fortran={fortran})")
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.ndim = 2
        self._row_bytes = self.shape[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"NpyRows({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {key} out of range for {self.shape[0]} rows")
            return self._read(i, i + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            rows = self._read(start, max(start, stop)) if step > 0 else self._read(0, 0)
            return rows if step == 1 else rows[::step]
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if len(idx) == 0:
            return np.zeros((0, self.shape[1]), self.dtype)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if lo < 0 or hi > self.shape[0]:
            raise IndexError(f"rows {lo}..{hi - 1} out of range for {self.shape[0]} rows")
        return self._read(lo, hi)[idx - lo]

    def _read(self, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * self.shape[1]
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self._row_bytes)
            out = np.fromfile(fh, dtype=self.dtype, count=count)
        if out.size != count:
            raise ValueError(f"{self.path} is truncated: rows {start}..{stop} not all present")
        return out.reshape(stop - start, self.shape[1])


def open_rows(source: str | os.PathLike | np.ndarray | NpyRows) -> np.ndarray | NpyRows:
    """A path to a `.npy` becomes an `NpyRows` reader; arrays, memmaps and readers pass through."""
    if isinstance(source, (str, os.PathLike)):
        return NpyRows(source)
    return source
