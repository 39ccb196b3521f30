"""The one timing rule every benchmark uses: medians (and the spread) of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["time_call"]


def time_call(fn: Callable[[], object], repeats: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median, min and max wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "n": repeats,
    }
