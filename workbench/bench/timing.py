"""The one timing rule every benchmark uses: medians (and the spread) of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["alternating_medians", "time_call"]


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


def alternating_medians(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median milliseconds of each of ``calls``, run in turn round after round (after ``warmup`` rounds),
    so that drift on a shared machine slows every side alike: compare them by the ratio of the medians."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(warmup + repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            if index >= warmup:
                samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}
