"""Timing of device work for the benchmark scripts (never used inside a timed unit test)."""
from __future__ import annotations

import time
from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], device: torch.device, reps: int = 10, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` runs: CUDA events around each
    run on a GPU (so asynchronous kernels are counted), ``time.perf_counter`` elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
