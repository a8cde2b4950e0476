"""What a model costs: parameters, GFLOPs, CPU latency and peak memory, measured not estimated.

FLOPs come from `torch.utils.flop_counter` (a multiply-add counts as 2 FLOPs, as that counter
does); latency is the median over timed runs after warm-up; peak memory is the largest rise of
the process's resident memory while the model runs, sampled in a background thread.
"""
from __future__ import annotations

import statistics
import threading
import time
from typing import Any, Callable

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_gflops(model: nn.Module, example: torch.Tensor, **forward_kwargs: Any) -> float:
    """GFLOPs of one forward pass on `example` (per batch as given).

    Runs with autograd on: the counter's module tracker fails under `no_grad` on modules that
    take a parameter as input (attention pooling's learned query). Only the forward is counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(example, **forward_kwargs)
    return counter.get_total_flops() / 1e9


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakMemory:
    """Largest rise of resident memory (MB) inside the `with` block, sampled every `interval` s."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        self._base = _rss_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb() - self._base)
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb() - self._base)


@torch.no_grad()
def latency_ms(fn: Callable[[], Any], runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def model_cost(model: nn.Module, input_size: int | tuple[int, int], batch_size: int = 1, runs: int = 10,
               device: str = "cpu", **forward_kwargs: Any) -> dict[str, float]:
    """`params`, `gflops` (per image), `ms_per_image` (median), `images_per_s`, `peak_mb`."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    model = model.to(device).eval()
    x = torch.randn(batch_size, 3, h, w, device=device)
    gflops = count_gflops(model, x, **forward_kwargs) / batch_size
    with PeakMemory() as mem:
        ms = latency_ms(lambda: model(x, **forward_kwargs), runs=runs)
    return {"params": count_params(model), "gflops": round(gflops, 4), "ms_per_image": ms / batch_size,
            "images_per_s": 1000.0 * batch_size / ms, "peak_mb": round(mem.peak_mb, 1)}
