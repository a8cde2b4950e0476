"""`python -m geolib bench [--quick]`: every speed and memory claim of geolib, measured in one run.

Why a command and not unit tests: tests never time things (CONVENTIONS.md); a claim such as
"IVF answers 20× faster than exact search at 10⁶ items with recall@10 ≥ 0.95" is only true on a
given machine, so it is measured here and each row is kept as a metrics record
(`outputs/bench/metrics/bench.jsonl`, `task` `bench`, `profile` `bench`, docs/reference.md) with the
machine in its config.

Sections:
- `retrieval`: 512-d galleries of 10⁴, 10⁵ (and 10⁶ without `--quick`), 1,000 queries, on
  *structured* embeddings (many tight clusters, queries near their gallery items, as real image
  embeddings are) and *uniform* ones (random directions: the worst case for any approximate
  index). Per index: build time, QPS, recall@10 overlap with exact search, peak memory; numpy
  brute force is the reference and defines the exact top 10.
- `eval`: streaming (queries and gallery read from `.npy` files chunk by chunk) vs in-memory
  evaluation with the same ranks, time and peak memory.
- `train`: Phase 1 training throughput (images/s, forward+backward+step) per profile and model,
  the data-loading share with the profile's loader, and `channels_last` / `torch.compile`.
- `render`: images/s of the synthetic-world renderer per view.

Peak memory is the rise of resident memory (`geolib.evaluation.cost.PeakMemory`) during the case. glibc is
told to return every block ≥ 1 MB to the system on free, so one case's freed memory is not
silently reused by the next and every case's rise is its own.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..evaluation.cost import PeakMemory
from ..records import write_record

SOURCE, PROFILE = "bench", "bench"
SECTIONS = ("retrieval", "eval", "train", "render")
K = 10


@dataclass
class Plan:
    """One bench configuration; `--quick`, the full run and the tests' `--tiny` differ only here."""

    name: str
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    queries: int = 1000
    dim: int = 512
    kinds: tuple[str, ...] = ("structured", "uniform")
    uniform_slow_max: int = 100_000  # uniform galleries above this: flat and IVF-Flat only (time)
    hnsw_max: int = 100_000  # HNSW took 26 s (structured) / 64 s (uniform) to build at 10⁵ on 2 cores
    ivf_nprobes: tuple[int, ...] = (8, 32, 128)
    hnsw_ef: tuple[int, ...] = (64, 128)
    eval_queries: int = 20_000
    eval_gallery: int = 100_000
    eval_chunk: int = 4096
    eval_small_chunk: int | None = 1024  # a second streaming row: memory follows chunk_size
    train_profiles: tuple[str, ...] = ("smoke", "default", "full")
    train_steps: int = 3
    train_min_s: float = 3.0  # small models: time enough steps for a stable median
    compile_profiles: tuple[str, ...] = ("smoke",)  # a cold compile takes minutes on 2 cores
    render_presets: tuple[str, ...] = ("smoke", "default")
    render_shots: int = 64
    pq: dict[str, int] = field(default_factory=dict)  # overrides of the IVF-PQ defaults
    build_world: bool = True  # build the smoke world for the data-loading share when none exists


PLANS = {
    "full": Plan("full"),
    "quick": Plan("quick", sizes=(10_000, 100_000), ivf_nprobes=(8, 32), hnsw_ef=(64,), uniform_slow_max=10_000,
                  eval_small_chunk=None,
                  eval_queries=5_000, eval_gallery=20_000, train_profiles=("smoke", "default"),
                  train_steps=2, compile_profiles=(), render_presets=("smoke",), render_shots=32),
    "tiny": Plan("tiny", sizes=(2_000,), queries=50, dim=32, ivf_nprobes=(4,), hnsw_ef=(32,),
                 eval_queries=200, eval_gallery=1_000, eval_chunk=128, eval_small_chunk=None,
                 train_profiles=("smoke",),
                 train_steps=1, compile_profiles=(), render_presets=("smoke",), render_shots=4,
                 pq={"nbits": 4}, build_world=False, train_min_s=0.0),
}


# ----------------------------------------------------------------------------- machine and rows

def machine() -> dict[str, Any]:
    import faiss
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "numpy": np.__version__,
            "device": device, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "load_1min_at_start": None if load is None else round(load, 2)}


class Recorder:
    """Writes each row as a record the moment it is measured, so an interrupted run keeps its rows."""

    def __init__(self, plan: Plan, write: bool = True) -> None:
        self.plan, self.write = plan, write
        self.machine = machine()
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, name: str, config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
        config = {"section": section, "case": name, "plan": self.plan.name, **config, "machine": self.machine,
                  "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
        metrics = {k: _round(v) for k, v in metrics.items()}
        rec = {"model": name, "config": config, "metrics": metrics}
        if self.write:
            rec = write_record(SOURCE, task="bench", protocol=f"bench-{section}", dataset=_dataset(section, config),
                               split=None, model=name, metrics=metrics, profile=PROFILE, seed=0, config=config)
        self.rows.append(rec)
        print(_row_line(rec), flush=True)
        return rec


def _dataset(section: str, config: dict[str, Any]) -> str:
    if section in ("retrieval", "eval"):
        return f"{config.get('embedding', 'structured')}-{config.get('gallery_size')}x{config.get('dim')}"
    if section == "render":
        return f"synthetic-{config.get('preset')}"
    if section == "summary":
        return "bench"
    return f"synthetic-{config.get('profile')}"


def _round(v: Any) -> Any:
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.4g}") if abs(v) < 1e5 else round(v, 1)
    return v


def _row_line(rec: dict[str, Any]) -> str:
    c, m = rec["config"], rec["metrics"]
    keys = ("qps", "recall@10_vs_exact", "speedup_vs_exact", "build_s", "seconds", "peak_mb", "images_per_s",
            "data_share")
    shown = "  ".join(f"{k}={m[k]}" for k in keys if k in m)
    where = c.get("gallery_size") or c.get("profile") or c.get("preset") or ""
    return f"[{c['section']:9s}] {rec['model']:28s} {c.get('embedding', ''):10s} {str(where):>8s}  {shown}"


def _release_freed_memory(threshold: int = 1 << 20) -> None:
    """Make freed blocks ≥ `threshold` go back to the OS at once (glibc), so RSS rises per case are honest.

    Training steps must not run under the 1 MB setting: every activation then comes from a fresh
    mmap, and a default-profile step took twice as long (155 against 311 images/s, measured).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD: fixed, which also stops its dynamic growth
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed_best(fn: Callable[[], Any], min_total: float = 1.0, max_runs: int = 3) -> tuple[float, Any]:
    """Best wall time of up to `max_runs` calls (stopping once `min_total` s is spent): the least
    disturbed by other processes on a shared machine."""
    times, out, spent = [], None, 0.0
    while len(times) < max_runs and (not times or spent < min_total):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return min(times), out


# ----------------------------------------------------------------------------- retrieval data

def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@dataclass
class Embeddings:
    gallery: np.ndarray
    queries: np.ndarray
    desc: dict[str, Any]
    gallery_labels: np.ndarray | None = None  # cluster of each item (structured only)
    query_labels: np.ndarray | None = None    # cluster of each query's source item


def make_embeddings(kind: str, n: int, n_queries: int, dim: int, seed: int = 0, cluster_size: int = 50,
                    spread: float = 0.5, query_noise: float = 0.25) -> Embeddings:
    """Synthetic gallery and queries, generated in float32 chunks so temporaries stay small.

    structured: n/cluster_size tight clusters (a place seen ~50 times, like a University-1652
    building's drone views); an item is its centre plus noise of norm ≈ `spread`, a query is a
    random gallery item plus noise of norm ≈ `query_noise`, all L2-normalised. Items of one
    cluster have cosine ≈ 0.8, a query and its source item ≈ 0.97.
    uniform: gallery and queries independent random directions (no structure at all).
    """
    rng = np.random.default_rng(seed)
    gallery = np.empty((n, dim), np.float32)
    if kind == "uniform":
        for i in range(0, n, 65536):
            gallery[i:i + 65536] = unit_rows(rng.standard_normal((min(65536, n - i), dim), dtype=np.float32))
        queries = unit_rows(rng.standard_normal((n_queries, dim), dtype=np.float32))
        return Embeddings(gallery, queries, {"embedding": "uniform"})
    if kind != "structured":
        raise ValueError(f"unknown embedding kind {kind!r}")
    n_clusters = max(1, n // cluster_size)
    centres = unit_rows(rng.standard_normal((n_clusters, dim), dtype=np.float32))
    owner = rng.integers(0, n_clusters, n)
    sigma = np.float32(spread / math.sqrt(dim))
    for i in range(0, n, 65536):
        m = min(65536, n - i)
        gallery[i:i + m] = unit_rows(centres[owner[i:i + m]] + sigma * rng.standard_normal((m, dim), dtype=np.float32))
    source = rng.choice(n, n_queries, replace=False)
    q_sigma = np.float32(query_noise / math.sqrt(dim))
    queries = unit_rows(gallery[source] + q_sigma * rng.standard_normal((n_queries, dim), dtype=np.float32))
    desc = {"embedding": "structured", "clusters": n_clusters, "cluster_size": cluster_size, "spread": spread,
            "query_noise": query_noise}
    return Embeddings(gallery, queries, desc, owner, owner[source])


def numpy_topk(queries: np.ndarray, gallery: np.ndarray, k: int = K, chunk: int = 65536) -> np.ndarray:
    """Exact top-k by inner product with numpy (BLAS matmul + argpartition), gallery in chunks."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for g0 in range(0, len(gallery), chunk):
        s = queries @ gallery[g0:g0 + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        best_i = np.concatenate([best_i, part + g0], 1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1)


def recall_overlap(found: np.ndarray, exact: np.ndarray, k: int = K) -> float:
    """Mean |approximate top-k ∩ exact top-k| / k."""
    hits = [len(np.intersect1d(f[:k], e[:k])) for f, e in zip(found, exact)]
    return float(np.mean(hits)) / k


# ----------------------------------------------------------------------------- retrieval cases

def index_cases(plan: Plan, n: int, embedding: str) -> Iterator[tuple[str, dict[str, Any], tuple[dict[str, int], ...]]]:
    """(kind, build params, search-param sweep) per index to measure at gallery size n.

    On uniform galleries above `uniform_slow_max`, IVF-PQ and HNSW are left out: their builds are
    the longest cases, and uniform data only confirms what 10⁵ already shows (no structure, low
    recall at any affordable setting).
    """
    slow = embedding != "uniform" or n <= plan.uniform_slow_max
    from ..retrieval.index import resolve_spec

    yield "flat", {}, ({},)
    ivf = resolve_spec("ivf-flat", n=n, dim=plan.dim).params
    yield "ivf-flat", {"nlist": ivf["nlist"]}, tuple({"nprobe": p} for p in plan.ivf_nprobes if p <= ivf["nlist"])
    if slow:
        pq = resolve_spec("ivf-pq", n=n, dim=plan.dim, **plan.pq).params
        yield "ivf-pq", {k: pq[k] for k in ("nlist", "m", "nbits")}, \
            tuple({"nprobe": p} for p in plan.ivf_nprobes[-2:] if p <= pq["nlist"])
    if slow and n <= plan.hnsw_max:
        h = resolve_spec("hnsw", n=n, dim=plan.dim).params
        yield "hnsw", {"m": h["m"], "ef_construction": h["ef_construction"]}, \
            tuple({"ef_search": e} for e in plan.hnsw_ef)


def bench_retrieval(rec: Recorder, plan: Plan) -> None:
    for kind in plan.kinds:
        for n in plan.sizes:
            data = make_embeddings(kind, n, plan.queries, plan.dim)
            gallery, queries = data.gallery, data.queries
            base = {"gallery_size": n, "queries": plan.queries, "dim": plan.dim, **data.desc}
            del data
            exact, exact_qps = _numpy_row(rec, gallery, queries, base)
            flat_qps = None
            for index_kind, build_params, sweep in index_cases(plan, n, kind):
                flat_qps = _index_rows(rec, gallery, queries, exact, base, index_kind, build_params, sweep,
                                       flat_qps) or flat_qps
            del gallery, queries
            _trim()


def _numpy_row(rec: Recorder, gallery: np.ndarray, queries: np.ndarray, base: dict) -> tuple[np.ndarray, float]:
    _trim()
    with PeakMemory() as mem:
        secs, exact = timed_best(lambda: numpy_topk(queries, gallery))
    qps = len(queries) / secs
    rec.add("retrieval", "numpy-bruteforce", {**base, "index": "numpy", "params": {"chunk": 65536}},
            {"qps": qps, "search_s": secs, "recall@10_vs_exact": 1.0, "peak_mb": mem.peak_mb})
    return exact, qps


def _index_rows(rec: Recorder, gallery: np.ndarray, queries: np.ndarray, exact: np.ndarray, base: dict,
                kind: str, build_params: dict, sweep: tuple[dict, ...], flat_qps: float | None) -> float | None:
    """Build once, then one row per search setting; returns the exact (flat) QPS when kind is flat."""
    from ..retrieval.index import apply_search_params, make_index

    _trim()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        index, spec, on_gpu = make_index(gallery, kind, build_params, gpu="auto")
        build_s = time.perf_counter() - t0
    build_mb = mem.peak_mb
    for search in sweep:
        apply_search_params(index, search, on_gpu)
        with PeakMemory() as smem:
            secs, (_, found) = timed_best(lambda idx=index: idx.search(queries, K))
        qps = len(queries) / secs
        if kind == "flat":
            flat_qps = qps
        params = {**spec.params, **search}
        name = kind + "".join(f" {k}={v}" for k, v in sorted(params.items()))
        metrics = {"qps": qps, "search_s": secs, "recall@10_vs_exact": recall_overlap(found, exact),
                   "speedup_vs_exact": qps / flat_qps if flat_qps else None, "build_s": build_s,
                   "peak_mb": build_mb + smem.peak_mb, "build_peak_mb": build_mb}
        rec.add("retrieval", name, {**base, "index": kind, "params": params, "gpu": on_gpu},
                {k: v for k, v in metrics.items() if v is not None})
    del index
    return flat_qps if kind == "flat" else None


# ----------------------------------------------------------------------------- evaluation

def bench_eval(rec: Recorder, plan: Plan) -> None:
    """Streaming vs in-memory ranks of `eval_queries` × `eval_gallery`; checks they are identical."""
    from ..evaluation.metrics import label_ranks, streaming_label_ranks

    nq, ng, dim = plan.eval_queries, plan.eval_gallery, plan.dim
    data = make_embeddings("structured", ng, nq, dim, seed=1)
    gallery, queries, desc = data.gallery, data.queries, data.desc
    q_labels, g_labels = data.query_labels, data.gallery_labels
    del data
    with tempfile.TemporaryDirectory(prefix="geolib-bench-") as tmp:
        qp, gp = Path(tmp) / "q.npy", Path(tmp) / "g.npy"
        np.save(qp, queries)
        np.save(gp, gallery)
        del gallery, queries
        _trim()
        base = {"queries": nq, "gallery_size": ng, "dim": dim, "chunk_size": plan.eval_chunk, **desc}
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            streamed = streaming_label_ranks(qp, q_labels, gp, g_labels, chunk_size=plan.eval_chunk)
            s_secs = time.perf_counter() - t0
        s_mb = mem.peak_mb
        _trim()
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            q, g = np.load(qp), np.load(gp)
            in_mem = label_ranks(q, q_labels, g, g_labels, chunk_size=plan.eval_chunk)
            m_secs = time.perf_counter() - t0
            del q, g
        m_mb = mem.peak_mb
        small = None
        if plan.eval_small_chunk:
            _trim()
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                ranks = streaming_label_ranks(qp, q_labels, gp, g_labels, chunk_size=plan.eval_small_chunk)
                small = (time.perf_counter() - t0, mem, ranks)
    same = _same_ranks(streamed, in_mem)
    for name, secs, mb in (("eval-streaming", s_secs, s_mb), ("eval-in-memory", m_secs, m_mb)):
        rec.add("eval", name, {**base, "mode": name.split("-", 1)[1]},
                {"seconds": secs, "queries_per_s": nq / secs, "peak_mb": mb, "ranks_identical": same})
    if small is not None:
        secs, mem, ranks = small
        rec.add("eval", f"eval-streaming chunk={plan.eval_small_chunk}",
                {**base, "chunk_size": plan.eval_small_chunk, "mode": "streaming"},
                {"seconds": secs, "queries_per_s": nq / secs, "peak_mb": mem.peak_mb,
                 "ranks_identical": _same_ranks(ranks, in_mem)})


def _same_ranks(a: Any, b: Any) -> bool:
    return bool(np.array_equal(a.first_rank, b.first_rank) and np.array_equal(a.ap, b.ap))


# ----------------------------------------------------------------------------- training

MAX_STEPS = 30
TRAIN_BATCH_CAP = {"full": 8}  # Swin-T at 224 px: a 32-place step takes ~half a minute on 2 cores


def bench_train(rec: Recorder, plan: Plan) -> None:
    """Phase 1 steps (3 views, InfoNCE, AdamW) per profile: eager, channels_last, torch.compile."""
    _release_freed_memory(32 << 20)  # glibc's own ceiling for its dynamic threshold, as training runs
    try:
        _bench_train(rec, plan)
    finally:
        _release_freed_memory()


def _bench_train(rec: Recorder, plan: Plan) -> None:
    for profile in plan.train_profiles:
        setup = _train_setup(profile)
        base = {k: setup[k] for k in ("profile", "model", "image_size", "batch_size", "profile_batch_size",
                                      "views", "num_workers", "params")}
        eager = _train_rate(setup, plan.train_steps, "eager", plan.train_min_s)
        data = _data_rate(setup, plan.train_steps, plan.build_world)
        share = data["data_s_per_step"] / (data["data_s_per_step"] + eager["step_s"]) if data else None
        metrics = {**eager, **(data or {}), **({"data_share": share} if share is not None else {})}
        rec.add("train", f"{setup['model']} eager", {**base, "variant": "eager",
                                                     "data_preset": (data or {}).get("preset")},
                {k: v for k, v in metrics.items() if k != "preset"})
        cl = _train_rate(setup, plan.train_steps, "channels_last", plan.train_min_s)
        rec.add("train", f"{setup['model']} channels_last", {**base, "variant": "channels_last"},
                {**cl, "speedup_vs_eager": cl["images_per_s"] / eager["images_per_s"]})
        if profile in plan.compile_profiles:
            comp = _train_rate(setup, plan.train_steps, "compile", plan.train_min_s)
            if "images_per_s" in comp:
                comp["speedup_vs_eager"] = comp["images_per_s"] / eager["images_per_s"]
            rec.add("train", f"{setup['model']} compile", {**base, "variant": "compile",
                                                           "error": comp.pop("error", None)}, comp)
        _trim()


def _train_setup(profile: str) -> dict[str, Any]:
    from ..models import create_model
    from ..profiles import resolve

    cfg = resolve(profile, "phase1")
    options = {k: v for k, v in cfg.get("model_options", {}).items() if k != "pretrained"}
    batch = min(cfg["batch_size"], TRAIN_BATCH_CAP.get(profile, cfg["batch_size"]))

    def build():
        import torch

        torch.manual_seed(0)
        return create_model(cfg["model"], img_size=cfg["image_size"], l2l=cfg["l2l"], fusion=cfg["fusion"],
                            pooling=cfg["pooling"], pretrained=False, **options)

    model = build()
    return {"profile": profile, "model": cfg["model"], "image_size": cfg["image_size"], "batch_size": batch,
            "profile_batch_size": cfg["batch_size"], "views": ["street", "drone", "satellite"],
            "num_workers": min(cfg["num_workers"], os.cpu_count() or 1), "loss": cfg["loss"],
            "preset": cfg["preset"], "build": build, "params": sum(p.numel() for p in model.parameters())}


def _train_rate(setup: dict[str, Any], steps: int, variant: str, min_s: float = 0.0) -> dict[str, Any]:
    """Images/s of full training steps on random tensors (compute only; data loading is separate)."""
    import torch

    from ..training.losses import make_pair_loss
    from ..training.loop import adamw
    from ..training.multiview import embed_batch, multiview_loss, view_pairs

    model, loss_fn = setup["build"]().train(), make_pair_loss(setup["loss"])
    views, b, size = setup["views"], setup["batch_size"], setup["image_size"]
    fmt = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)
    batch = {v: torch.randn(b, 3, size, size, generator=gen).contiguous(memory_format=fmt) for v in views}
    opt = adamw([*model.parameters(), *loss_fn.parameters()], 1e-4, 0.01, "cpu")  # as `fit` builds it
    forward = model
    if variant == "compile":
        try:
            import torch._inductor.config as inductor_config

            inductor_config.force_disable_caches = True  # time a cold compile, as a first run pays it
            forward = torch.compile(model)
        except Exception as err:  # noqa: BLE001 - recorded, not hidden
            return {"compile_ok": False, "error": f"{type(err).__name__}: {err}"[:300]}

    def step() -> None:
        emb = embed_batch(forward, model, batch)  # as `fit` does: views sharing a branch in one call
        loss = multiview_loss(emb, loss_fn, view_pairs(views))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        t0 = time.perf_counter()
        step()  # warm-up (and, compiled, the compilation)
        first = time.perf_counter() - t0
        if min_s > 0:  # a real measurement (not the tests' tiny plan): one more untimed step
            step()  # lazy one-time work (allocator, optimizer state, kernel selection) also lands here
        times: list[float] = []
        while len(times) < steps or (sum(times) < min_s and len(times) < MAX_STEPS):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001 - torch.compile on CPU can fail for toolchain reasons
        if variant != "compile":
            raise
        return {"compile_ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
    step_s = statistics.median(times)
    out = {"images_per_s": b * len(views) / step_s, "step_s": step_s}
    if variant == "compile":
        out.update(compile_ok=True, compile_s=first - step_s)
    return out


def _data_rate(setup: dict[str, Any], steps: int, build: bool) -> dict[str, Any] | None:
    """Seconds per batch of the profile's loader (decode + train transform) on world images."""
    import torch

    from ..data.datasets import default_transform, load_dataset
    from ..training.multiview import MultiViewPlaces, PlaceBatchSampler

    root = _world_root(setup["preset"], build)
    if root is None:
        return None
    ds = load_dataset("university1652", root / "university1652")
    places = MultiViewPlaces(ds.select(split="train"), setup["views"],
                             default_transform(setup["image_size"], train=True))
    batch = min(setup["batch_size"], len(places))
    sampler = PlaceBatchSampler(len(places), batch, seed=0)
    loader = torch.utils.data.DataLoader(places, batch_sampler=sampler, num_workers=setup["num_workers"])
    it, times = iter(loader), []
    for _ in range(min(steps + 1, len(sampler))):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    times = times[1:] or times  # the first batch pays worker start-up
    per_image = statistics.median(times) / (batch * len(setup["views"]))
    return {"data_s_per_step": per_image * setup["batch_size"] * len(setup["views"]),
            "data_images_per_s": 1.0 / per_image, "preset": root.name}


def _world_root(preset: str, build: bool) -> Path | None:
    """An exported world for the preset, else a smaller one that exists, else the smoke world built now."""
    from ..paths import outputs_root
    from ..world.generate import cache_key, preset_params
    from ..world.build import build_world

    order = {"large": ["large", "default", "smoke"], "default": ["default", "smoke"]}.get(preset, [preset])
    for p in order:
        root = outputs_root() / "data" / cache_key(preset_params(p), 0)
        if (root / ".complete").exists():
            return root
    if not build:
        return None
    try:
        return build_world("smoke", seed=0, progress=False, record=False)
    except Exception as err:  # noqa: BLE001 - the world module is shared; say what failed and go on
        print(f"  (no world export for the data-loading share: {type(err).__name__}: {err})", flush=True)
        return None


# ----------------------------------------------------------------------------- rendering

def bench_render(rec: Recorder, plan: Plan) -> None:
    """Renderer images/s per view, on the first region of each view (what one batch call costs)."""
    from ..world import export
    from ..world.generate import generate, preset_params

    for preset in plan.render_presets:
        t0 = time.perf_counter()
        world = generate(preset_params(preset), 0)
        gen_s = time.perf_counter() - t0
        shots = export.plan_university(world) + export.plan_cvusa(world)[0]
        for view in ("satellite", "drone", "street", "panorama"):
            chosen = [s for s in shots if s.view == view]
            chosen = [s for s in chosen if s.region == chosen[0].region][:plan.render_shots] if chosen else []
            if not chosen:
                continue
            export.render_batch(world, chosen[:1])  # warm-up
            secs, n = timed_best(lambda: sum(len(export.render_batch(world, run)[0])
                                             for run in export.batches(chosen)), min_total=0.5, max_runs=2)
            size = world.params.pano_size if view == "panorama" else (world.params.image_size,) * 2
            rec.add("render", f"render {view}", {"preset": preset, "view": view, "images": n,
                                                 "image_size": list(size), "generate_s": round(gen_s, 2)},
                    {"images_per_s": n / secs, "seconds": secs})


# ----------------------------------------------------------------------------- table

COLUMNS = (("qps", "QPS"), ("recall@10_vs_exact", "recall@10"), ("speedup_vs_exact", "× exact"),
           ("build_s", "build s"), ("seconds", "s"), ("peak_mb", "peak MB"), ("images_per_s", "images/s"),
           ("data_share", "data share"), ("speedup_vs_eager", "× eager"), ("ranks_identical", "same ranks"),
           ("cpu_s", "CPU s"))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The printed (and README) table: one line per record, empty cells where a figure does not apply."""
    used = [(k, h) for k, h in COLUMNS if any(k in r["metrics"] for r in rows)]
    head = ["section", "case", "data", "size"] + [h for _, h in used]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c, m = r["config"], r["metrics"]
        data = c.get("embedding") or c.get("profile") or c.get("preset") or ""
        size = c.get("gallery_size") or c.get("image_size") or ""
        if c["section"] == "eval":
            size = f"{c['queries']}×{c['gallery_size']}"
        if c["section"] == "train":
            size = f"{c['batch_size']}×3 @ {c['image_size']}px"
        cells = [c["section"], r["model"], str(data), str(size)] + [_cell(m.get(k)) for k, _ in used]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m geolib bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="galleries ≤ 10⁵ and fewer cases (≤ 5 minutes)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long configuration (what the tests run)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    ap.add_argument("--no-record", action="store_true", help="print the table only")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(sections) - set(SECTIONS))
    if bad:
        print(f"error: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "full"]
    _release_freed_memory()
    rec = Recorder(plan, write=not args.no_record)
    t0, cpu0 = time.perf_counter(), time.process_time()
    print(f"geolib bench ({plan.name}) on {rec.machine['cores']} cores, torch {rec.machine['torch']}, "
          f"faiss {rec.machine['faiss']}, load {rec.machine['load_1min_at_start']}", flush=True)
    runners = {"retrieval": bench_retrieval, "eval": bench_eval, "train": bench_train, "render": bench_render}
    for section in SECTIONS:
        if section in sections:
            runners[section](rec, plan)
    total = time.perf_counter() - t0
    rec.add("summary", f"bench {plan.name} total", {"sections": sections},
            {"seconds": total, "cpu_s": time.process_time() - cpu0,
             "load_1min_at_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None})
    print()
    print(markdown_table(rec.rows))
    print(f"\n{len(rec.rows)} rows in {total / 60:.1f} min"
          + ("" if args.no_record else f"; records in outputs/{PROFILE}/metrics/{SOURCE}.jsonl"))
    return 0
