"""A saved FAISS index of a gallery, with the JSON metadata that makes its answers meaningful.

On disk, a directory with `index.faiss` (faiss's own format, no pickle) and `index.json`: per item
the image path, place label and coordinates, plus the model name and config hash that produced the
embeddings, the count, the width and the index file's SHA-256. Loading checks all of them against
the index, so a gallery re-embedded by another model, or an index and metadata from two different
runs, fail loudly instead of returning plausible wrong places.

Embeddings are compared by inner product (cosine for L2-normalised ones).

Index choice (`kind`), because exact search stops being interactive somewhere past 10⁵ items on a
CPU and a million-image gallery (SF-XL) no longer fits comfortably in float32:

| kind | faiss | parameters (defaults) | when |
|---|---|---|---|
| `flat` | `IndexFlatIP` | — | exact; every gallery up to ~5·10⁴ |
| `ivf-flat` | `IVF<nlist>,Flat` | `nlist` (≈4√N, power of 2), `nprobe` (nlist/64, ≥ 8) | 5·10⁴ … 2·10⁶: exact scores inside the probed lists |
| `ivf-pq` | `IVF<nlist>,PQ<m>x<nbits>` | `nlist`, `nprobe`, `m` (dim/8), `nbits` (8) | > 2·10⁶ or tight memory: m·nbits/8 bytes per item, lower recall |
| `hnsw` | `IndexHNSWFlat` | `m` (32), `ef_construction` (40), `ef_search` (128) | fastest queries; slowest to build, full float32 copy |
| `auto` | one of the above by gallery size (`resolve_spec`) | | |

`auto` picks IVF rather than HNSW for large galleries because on a 2-core machine HNSW takes tens of
minutes to build at 10⁶ × 512 while IVF-Flat takes a minute or two; `python -m geolib bench` measures
both. IVF and PQ are trained on a seeded random sample (`train_size`, default 20·nlist, at least
8,192 for PQ codebooks, which see at most 32 points per centroid and 10 k-means iterations),
never on the whole gallery: k-means cost grows with sample × nlist, and faiss's PQ defaults
(256 points, 25 iterations, 64 slices) took over a minute even at 10⁴ items on 2 cores. Items are added in
chunks, so a memory-mapped or float16 gallery is never copied whole. IVF-PQ skips faiss's
polysemous training (it only serves Hamming pre-filtering, which geolib does not use, and took
minutes). The kind and its parameters are saved in the
JSON metadata and `nprobe` / `ef_search` are set again on load. With `faiss-gpu` installed and a GPU
visible, flat and IVF indexes are moved to the GPU for search (`gpu="auto"`); HNSW has no GPU
version in faiss and stays on the CPU. Saving always writes the CPU form.

`factory` (a faiss index-factory string) is still accepted for other layouts.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..paths import atomic_path, atomic_write_json, outputs_root

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1

KIND_PARAMS: dict[str, tuple[str, ...]] = {
    "flat": (),
    "ivf-flat": ("nlist", "nprobe"),
    "ivf-pq": ("nlist", "nprobe", "m", "nbits"),
    "hnsw": ("m", "ef_construction", "ef_search"),
}
KINDS = (*KIND_PARAMS, "auto")
GPU_KINDS = ("flat", "ivf-flat", "ivf-pq")  # faiss has no GPU HNSW
AUTO_FLAT_MAX = 50_000       # exact search of 1,000 queries stays well under a second below this
AUTO_IVF_FLAT_MAX = 2_000_000  # beyond: float32 copies (8 GB at 512-d) no longer fit a laptop
_FAISS_PARAM = {"nprobe": "nprobe", "ef_search": "efSearch"}
TRAIN_PER_LIST = 20       # k-means sample per IVF list
PQ_POINTS_PER_CODE = 32   # PQ codebook sample per centroid (faiss: 256)
PQ_ITERATIONS = 10        # k-means iterations per PQ slice (faiss: 25)
MIN_POINTS = 5            # faiss warns below 39 points per centroid; ours are chosen on purpose


@dataclass(frozen=True)
class IndexSpec:
    """A resolved index choice: the kind and every parameter, so the JSON metadata can rebuild it."""

    kind: str
    params: dict[str, int] = field(default_factory=dict)

    @property
    def factory(self) -> str:
        p = self.params
        return {"flat": "Flat", "ivf-flat": f"IVF{p.get('nlist')},Flat",
                "ivf-pq": f"IVF{p.get('nlist')},PQ{p.get('m')}x{p.get('nbits')}np",
                "hnsw": f"HNSW{p.get('m')},Flat"}[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}


def auto_kind(n: int) -> str:
    """Exact below 5·10⁴ items, IVF-Flat to 2·10⁶, IVF-PQ beyond (memory, not speed, decides)."""
    if n <= AUTO_FLAT_MAX:
        return "flat"
    return "ivf-flat" if n <= AUTO_IVF_FLAT_MAX else "ivf-pq"


def default_nlist(n: int) -> int:
    """≈4√N rounded to a power of two (faiss's guideline), capped so every list trains on ≥39 points."""
    target = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    cap = 2 ** int(math.log2(max(n // 39, 1)))
    return int(max(1, min(target, cap)))


def resolve_spec(kind: str = "auto", n: int | None = None, dim: int | None = None,
                 **params: int) -> IndexSpec:
    """Fill in defaults and validate names, so a typo ("nprobes") fails before a long build."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        if n is None:
            raise ValueError("index kind 'auto' needs the gallery size n")
        kind = auto_kind(n)
        params = {k: v for k, v in params.items() if k in KIND_PARAMS[kind]}
    unknown = sorted(set(params) - set(KIND_PARAMS[kind]))
    if unknown:
        allowed = ", ".join(KIND_PARAMS[kind]) or "none"
        raise ValueError(f"index kind {kind!r} has no parameter {', '.join(unknown)} (allowed: {allowed})")
    p = {k: int(v) for k, v in params.items() if v is not None}
    if kind in ("ivf-flat", "ivf-pq"):
        if "nlist" not in p and n is None:
            raise ValueError(f"{kind}: give nlist or the gallery size n")
        p.setdefault("nlist", default_nlist(n or 0))
        p.setdefault("nprobe", max(8, p["nlist"] // 64))
        p["nprobe"] = min(p["nprobe"], p["nlist"])
        if n is not None and p["nlist"] > n:
            raise ValueError(f"{kind}: nlist {p['nlist']} exceeds the {n} gallery items")
    if kind == "ivf-pq":
        if "m" not in p and dim is None:
            raise ValueError("ivf-pq: give m or the dimension dim")
        p.setdefault("m", _pq_m(dim or 0))
        p.setdefault("nbits", 8)
        if dim is not None and dim % p["m"]:
            raise ValueError(f"ivf-pq: m={p['m']} must divide the dimension {dim}")
    if kind == "hnsw":
        p.setdefault("m", 32)
        p.setdefault("ef_construction", 40)
        p.setdefault("ef_search", 128)
    return IndexSpec(kind, dict(sorted(p.items())))


def _pq_m(dim: int) -> int:
    """Largest divisor of dim not above dim/8: about one byte per 8 dimensions."""
    for m in range(max(dim // 8, 1), 0, -1):
        if dim % m == 0:
            return m
    return 1


def gpu_available(faiss_module=None) -> bool:
    """True only with a faiss-gpu build and at least one visible GPU (a CPU wheel has neither)."""
    faiss = faiss_module or _faiss()
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return False
    return int(faiss.get_num_gpus()) > 0


def wants_gpu(kind: str, gpu: bool | str = "auto", faiss_module=None) -> bool:
    """Whether an index of `kind` goes to the GPU: `auto` when faiss-gpu sees a GPU, never for HNSW."""
    if gpu not in (True, False, "auto"):
        raise ValueError(f"gpu must be True, False or 'auto', got {gpu!r}")
    if gpu is False:
        return False
    supported, available = kind in GPU_KINDS, gpu_available(faiss_module)
    if gpu is True and not (supported and available):
        why = f"faiss has no GPU {kind} index" if not supported else "no faiss-gpu build or no visible GPU"
        raise ValueError(f"gpu=True but {why}")
    return supported and available


def make_index(embeddings: np.ndarray, kind: str = "auto", params: Mapping[str, int] | None = None, *,
               train_size: int | None = None, seed: int = 0, gpu: bool | str = "auto",
               chunk_size: int = 65536) -> tuple[Any, IndexSpec, bool]:
    """Build a faiss index of (N, D) embeddings (array or memmap, any float dtype).

    Returns the index, the resolved spec and whether the index lives on the GPU.
    """
    n, dim = _shape2(embeddings)
    spec = resolve_spec(kind, n=n, dim=dim, **dict(params or {}))
    faiss = _faiss()
    index = _empty_index(spec, dim)
    on_gpu = wants_gpu(spec.kind, gpu, faiss)
    if on_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        index.train(_train_sample(embeddings, spec, train_size, seed))
    for i in range(0, n, chunk_size):
        index.add(_f32(embeddings[i:i + chunk_size]))
    apply_search_params(index, spec.params, on_gpu)
    return index, spec, on_gpu


def apply_search_params(index, params: Mapping[str, int], on_gpu: bool = False) -> None:
    """Set the query-time knobs (nprobe, efSearch); the build-time ones live in the index itself."""
    faiss = _faiss()
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    for key, name in _FAISS_PARAM.items():
        if key in params and (key != "ef_search" or hasattr(index, "hnsw")) and \
                (key != "nprobe" or _is_ivf(index)):
            space.set_index_parameter(index, name, int(params[key]))


def _is_ivf(index) -> bool:
    try:
        return _faiss().extract_index_ivf(index) is not None
    except (RuntimeError, AttributeError):
        return False


def _empty_index(spec: IndexSpec, dim: int):
    faiss = _faiss()
    if spec.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.params["ef_construction"]
        return index
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    # the sample sizes are chosen above; faiss would warn below 39 points per centroid
    faiss.extract_index_ivf(index).cp.min_points_per_centroid = MIN_POINTS
    if spec.kind == "ivf-pq":
        pq = faiss.downcast_index(index).pq
        pq.cp.max_points_per_centroid, pq.cp.niter = PQ_POINTS_PER_CODE, PQ_ITERATIONS
        pq.cp.min_points_per_centroid = MIN_POINTS
    return index


def _train_sample(embeddings: np.ndarray, spec: IndexSpec, train_size: int | None, seed: int) -> np.ndarray:
    """A seeded sample (sorted, so a memmap is read front to back) large enough for k-means."""
    n = len(embeddings)
    if train_size is None:
        train_size = TRAIN_PER_LIST * spec.params.get("nlist", 1)
        if spec.kind == "ivf-pq":
            train_size = max(train_size, PQ_POINTS_PER_CODE * 2 ** spec.params["nbits"])
    size = min(n, int(train_size))
    if size < spec.params.get("nlist", 1):
        raise ValueError(f"{spec.kind}: {size} training points for nlist {spec.params.get('nlist')}")
    if size == n:
        return _f32(embeddings[:])
    idx = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return _f32(embeddings[idx])


def _shape2(embeddings: np.ndarray) -> tuple[int, int]:
    shape = tuple(getattr(embeddings, "shape", ()))
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"need non-empty (N, D) embeddings, got shape {shape}")
    return int(shape[0]), int(shape[1])


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _faiss():
    import faiss

    return faiss


@dataclass
class Hit:
    rank: int
    gallery_index: int
    score: float
    path: str
    place: Any
    coords: list[float] | None


class GalleryIndex:
    """Gallery embeddings in a faiss index plus, per item, path, place and coordinates."""

    def __init__(self, index, meta: dict[str, Any], on_gpu: bool = False) -> None:
        self.index = index
        self.meta = meta
        self.on_gpu = on_gpu
        self._max_norm_cache: float | None = None  # `_max_norm`, computed on the first exact search
        _check(index, meta, source="index")

    @classmethod
    def from_items(cls, embeddings: np.ndarray, items: Sequence[Any], model: str | None = None,
                   config_hash: str | None = None, extra: Mapping[str, Any] | None = None) -> "GalleryIndex":
        """An index of dataset items (`ImageItem`s): their paths, place labels and UTM coordinates,
        the coordinates only when every item has them."""
        coords = [[it.utm_east, it.utm_north] for it in items]
        known = all(e is not None and n is not None for e, n in coords)
        return cls.build(embeddings, [it.path for it in items], places=[it.label for it in items],
                         coords=coords if known else None, model=model, config_hash=config_hash, extra=extra)

    @classmethod
    def build(cls, embeddings: np.ndarray, paths: Sequence[str | Path],
              places: Sequence[Any] | None = None, coords: np.ndarray | Sequence | None = None,
              model: str | None = None, config_hash: str | None = None,
              factory: str = "Flat", extra: Mapping[str, Any] | None = None, *,
              kind: str | None = None, params: Mapping[str, int] | None = None,
              train_size: int | None = None, seed: int = 0, gpu: bool | str = "auto") -> "GalleryIndex":
        """Index `embeddings` (N, D) with one path (and optionally place, coordinates) each.

        `kind` (`flat`, `ivf-flat`, `ivf-pq`, `hnsw`, `auto`) with `params` chooses the index by
        name (see the module docstring); without it, `factory` is a raw faiss factory string.
        """
        n = len(embeddings)
        if getattr(embeddings, "ndim", 0) != 2 or n != len(paths):
            raise ValueError(f"need (N, D) embeddings and N paths; got {np.shape(embeddings)} and {len(paths)} paths")
        if kind is not None:
            index, spec, on_gpu = make_index(embeddings, kind, params, train_size=train_size, seed=seed, gpu=gpu)
            factory, choice = spec.factory, {**spec.to_json(), "requested": kind, "train_size": train_size,
                                             "seed": seed}
        else:
            index, on_gpu, choice = _factory_index(embeddings, factory), False, None
        meta = {
            "format": FORMAT_VERSION, "factory": factory, "metric": "inner_product",
            "count": int(index.ntotal), "dim": int(index.d), "model": model, "config_hash": config_hash,
            "index": choice,
            "paths": [str(p) for p in paths],
            "places": _json_list(places, len(paths), "places"),
            "coords": _json_coords(coords, len(paths)),
            "extra": dict(extra or {}),
        }
        return cls(index, meta, on_gpu)

    @property
    def spec(self) -> IndexSpec | None:
        choice = self.meta.get("index")
        return IndexSpec(choice["kind"], dict(choice["params"])) if choice else None

    def set_search_params(self, **params: int) -> None:
        """Change nprobe / ef_search after building or loading; `save` keeps the new values."""
        spec = self.spec
        if spec is None:
            raise ValueError("this index was built from a factory string; set faiss parameters directly")
        bad = sorted(set(params) - set(_FAISS_PARAM) | (set(params) - set(KIND_PARAMS[spec.kind])))
        if bad:
            raise ValueError(f"{spec.kind}: {', '.join(bad)} cannot be changed at query time")
        apply_search_params(self.index, params, self.on_gpu)
        self.meta["index"]["params"].update({k: int(v) for k, v in params.items()})

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def save(self, directory: str | Path) -> Path:
        """Write `index.faiss` then `index.json` (each atomically); the JSON carries the index's hash.

        A checkpoint path in `extra["checkpoint"]` under the same outputs root as `directory` is
        written relative to `directory`, so a copied or moved `outputs/` still finds its model.
        """
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cpu_index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        with atomic_path(directory / INDEX_FILE) as tmp:
            faiss.write_index(cpu_index, str(tmp))
            self.meta["sha256"] = _sha256(tmp)
        meta = self.meta
        extra = meta.get("extra") or {}
        if extra.get("checkpoint"):
            meta = {**meta, "extra": {**extra, "checkpoint": checkpoint_for_disk(extra["checkpoint"], directory)}}
        atomic_write_json(directory / META_FILE, meta, sort_keys=False, indent=None)
        return directory

    @classmethod
    def load(cls, directory: str | Path, expect_config_hash: str | None = None,
             gpu: bool | str = "auto") -> "GalleryIndex":
        """Read an index back; raise ValueError naming the mismatch if metadata and index disagree.

        The saved nprobe / ef_search are set again, and the index moves to the GPU as in `build`.
        A relative checkpoint path is resolved against `directory`.
        """
        import faiss

        directory = Path(directory)
        index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
        for p in (index_path, meta_path):
            if not p.exists():
                raise FileNotFoundError(missing_index_message(directory, p))
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        digest = _sha256(index_path)
        if meta.get("sha256") != digest:
            raise ValueError(f"{index_path} does not match {meta_path} (SHA-256 differs): "
                             "they come from different runs; rebuild the index")
        if expect_config_hash is not None and meta.get("config_hash") != expect_config_hash:
            raise ValueError(f"{directory} was built by model config {meta.get('config_hash')}, "
                             f"not {expect_config_hash}; rebuild the index for this model")
        index = faiss.read_index(str(index_path))
        _check(index, meta, source=str(directory))
        extra = meta.get("extra") or {}
        if extra.get("checkpoint"):
            extra["checkpoint"] = checkpoint_from_disk(extra["checkpoint"], directory)
        choice, on_gpu = meta.get("index"), False
        if choice:
            on_gpu = wants_gpu(choice["kind"], gpu, faiss)
            index = faiss.index_cpu_to_all_gpus(index) if on_gpu else index
            apply_search_params(index, choice["params"], on_gpu)
        return cls(index, meta, on_gpu)

    @property
    def exact(self) -> bool:
        """A flat index: every item scored, so answers must equal `geolib.evaluation.metrics.topk_search`."""
        spec = self.spec
        return (spec.kind == "flat") if spec is not None else self.meta.get("factory") == "Flat"

    def search(self, query_emb: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(scores, gallery indices), each (Q, k); missing neighbours are -1 (fewer than k items).

        Exact (flat) indexes answer as `geolib.evaluation.metrics.topk_search` does, equal scores by gallery
        index (`_exact_rerank`). IVF, PQ and HNSW indexes return faiss's own approximate answer:
        items outside the probed lists or graph walk are missed, PQ scores are approximations, and
        items tied at the k-th score are faiss's choice; that is what makes them fast.
        """
        q = np.ascontiguousarray(query_emb, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise ValueError(f"queries must be (Q, {self.index.d}), got {q.shape}")
        if self.exact and len(q) and k > 0:
            return self._exact_rerank(q, k)
        return self.index.search(q, k)

    def _exact_rerank(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's float32 top-k, widened until it holds every item within the product's error
        bound of the k-th score (`metrics.shortlist`), then ordered by `metrics.pair_scores`
        and gallery index.

        faiss rounds a pair differently in a batch than alone, so two identical gallery images
        could swap; the widening makes the shortlist provably contain the exact top k.
        """
        from ..evaluation.metrics import exact_topk_of_candidates, row_norms, score_band, shortlist

        kk = min(k, len(self))
        band = score_band(row_norms(q), self._max_norm(), q.shape[1])
        rows, items = shortlist(lambda depth: self.index.search(q, depth), len(self), kk, band)
        vectors = np.asarray(self.index.reconstruct_batch(np.unique(items)), np.float32)
        scores, index = exact_topk_of_candidates(q, rows, items, vectors, kk)
        if kk < k:  # fewer items than asked: faiss's padding
            pad = k - kk
            scores = np.hstack([scores, np.full((len(q), pad), -np.finfo(np.float32).max, np.float32)])
            index = np.hstack([index, np.full((len(q), pad), -1, np.int64)])
        return scores, index

    def _max_norm(self) -> float:
        """Largest gallery vector norm, for the error bound; read once, chunk by chunk."""
        from ..evaluation.metrics import row_norms

        if self._max_norm_cache is None:
            best = 0.0
            for a in range(0, len(self), 65536):
                x = self.index.reconstruct_n(a, min(65536, len(self) - a))
                best = max(best, float(row_norms(x).max(initial=0.0)))
            self._max_norm_cache = best
        return self._max_norm_cache

    def query(self, query_emb: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-k places per query, each with its path, coordinates and score."""
        scores, idx = self.search(query_emb, k)
        return [[self._hit(rank, int(i), float(s)) for rank, (i, s) in enumerate(zip(row_i, row_s)) if i >= 0]
                for row_i, row_s in zip(idx, scores)]

    def _hit(self, rank: int, i: int, score: float) -> Hit:
        m = self.meta
        return Hit(rank=rank, gallery_index=i, score=score, path=m["paths"][i],
                   place=m["places"][i] if m["places"] is not None else None,
                   coords=m["coords"][i] if m["coords"] is not None else None)


def missing_index_message(directory: Path, missing: Path) -> str:
    """Which notebook builds the index, and where a relative folder was looked for."""
    name = directory.name
    if "street" in name:
        builder = "notebook 05 builds the street index (phase1_street); run it"
    elif "drone" in name or "satellite" in name:
        builder = "notebook 02 builds the drone and satellite indexes (phase1_drone, phase1_satellite); run it"
    else:
        builder = ("build it first: notebook 02 saves phase1_drone and phase1_satellite, notebook 05 "
                   "phase1_street")
    where = "" if directory.is_absolute() else \
        f"; the relative path {directory} is resolved against the current folder {Path.cwd()}"
    what = "no gallery index in this folder" if not directory.is_dir() or not any(directory.iterdir()) \
        else f"{missing.name} is missing"
    return f"{directory}: {what}; {builder}{where}"


def checkpoint_for_disk(checkpoint: str | Path, directory: Path) -> str:
    """`checkpoint` relative to the index folder when both are under `outputs_root()`, else as given."""
    ckpt = Path(checkpoint)
    if not ckpt.is_absolute():
        return str(checkpoint)
    root, here, target = outputs_root().resolve(), directory.resolve(), ckpt.resolve()
    if _under(here, root) and _under(target, root):
        return Path(os.path.relpath(target, here)).as_posix()
    return str(checkpoint)


def checkpoint_from_disk(checkpoint: str, directory: Path) -> str:
    """An absolute checkpoint path: a relative one is relative to the index folder (`save`)."""
    if Path(checkpoint).is_absolute():
        return checkpoint
    beside = os.path.normpath(directory.resolve() / checkpoint)
    if not Path(beside).with_suffix(".json").exists() and Path(checkpoint).with_suffix(".json").exists():
        return str(Path(checkpoint).resolve())  # written by hand relative to the working folder
    return beside


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _factory_index(embeddings: np.ndarray, factory: str):
    import faiss

    emb = _f32(embeddings)
    index = faiss.index_factory(emb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(emb)
    index.add(emb)
    return index


def _check(index, meta: Mapping[str, Any], source: str) -> None:
    problems = []
    if meta.get("count") != index.ntotal:
        problems.append(f"metadata count {meta.get('count')} ≠ index size {index.ntotal}")
    if meta.get("dim") != index.d:
        problems.append(f"metadata dim {meta.get('dim')} ≠ index dim {index.d}")
    for key in ("paths", "places", "coords"):
        values = meta.get(key)
        if (key == "paths" or values is not None) and len(values or []) != index.ntotal:
            problems.append(f"{len(values or [])} {key} for {index.ntotal} items")
    if problems:
        raise ValueError(f"{source}: metadata does not match the index: " + "; ".join(problems))


def _json_list(values: Sequence[Any] | None, n: int, what: str) -> list[Any] | None:
    if values is None:
        return None
    out = [v.item() if hasattr(v, "item") else v for v in values]
    if len(out) != n:
        raise ValueError(f"{len(out)} {what} for {n} embeddings")
    return out


def _json_coords(coords: np.ndarray | Sequence | None, n: int) -> list[list[float]] | None:
    if coords is None:
        return None
    arr = np.asarray(coords, dtype=np.float64)
    if arr.ndim != 2 or len(arr) != n:
        raise ValueError(f"coords must be (N, 2+) for {n} embeddings, got {arr.shape}")
    return arr.tolist()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
