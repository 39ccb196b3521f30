"""Bootstrap confidence intervals for any metric computed from per-image rows.

Percentile bootstrap: resample the images with replacement ``resamples`` times (seeded), recompute the
metric, and take the 2.5th and 97.5th percentiles. Resamples on which a metric is undefined (NaN or
None, e.g. an AUC when a resample has no referable case) are dropped; if fewer than half remain the
interval is reported as undefined (None).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_intervals", "wilson_interval"]


def _flatten(values: dict[str, object]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                flat[f"{key}[{i}]"] = np.nan if item is None else float(item)
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            flat[key] = float(value)
        elif value is None:
            flat[key] = np.nan
    return flat


def bootstrap_intervals(
    n: int,
    metric: Callable[[np.ndarray], dict[str, object]],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """``{name: [low, high]}`` for every scalar (and list element, as ``name[i]``) ``metric`` returns.

    Args:
        n: number of rows (images).
        metric: maps an index array (rows of one resample) to a dict of metrics.
        resamples: bootstrap replicates.
        seed: seeds the resampling, so the interval is reproducible.
        level: coverage of the interval.
    """
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(resamples):
        for key, value in _flatten(metric(rng.integers(0, n, n))).items():
            samples.setdefault(key, []).append(value)
    tail = (1 - level) / 2 * 100
    out: dict[str, list[float] | None] = {}
    for key, values in samples.items():
        array = np.asarray(values, float)
        array = array[np.isfinite(array)]
        if len(array) < resamples / 2:
            out[key] = None
        else:
            out[key] = [float(np.percentile(array, tail)), float(np.percentile(array, 100 - tail))]
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion: unlike the bootstrap, informative when every (or no)
    trial succeeds (78 of 78 gives [0.953, 1.0], a bootstrap the degenerate [1.0, 1.0])."""
    if n <= 0:
        raise ValueError("a proportion of no trials has no interval")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))
