"""Benchmarks printed by ``drwb bench --json``: medians of repeated runs on this machine.

Speed targets live here, never in timed unit tests, because a shared 2-core machine is noisy: we report
the median and the spread (min, max) of several repeats and the reader judges against the target.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from models.preprocess import crop_to_fov
from workbench.fundus import fov_in_crop
from workbench.image_io import load_image
from workbench.quality import assess_quality
from workbench.synthetic import make_fundus

__all__ = ["BENCHMARKS", "run_benchmarks", "time_call"]

_FULL_SIZE = (2848, 4288)  # IDRiD's original resolution, the usual screening-camera size


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


def _full_size_jpeg(folder: Path) -> Path:
    path = folder / "synthetic_4288x2848.jpg"
    if not path.exists():
        sample = make_fundus(seed=7, size=_FULL_SIZE, dr_grade=3, dme_grade=2)
        Image.fromarray(sample.image).save(path, quality=95)
    return path


def bench_preprocess(image_path: Path, size: int = 512, repeats: int = 15) -> dict[str, float]:
    """Load (reduced JPEG decoding) + field-of-view crop + resize to ``size``; target <= 40 ms."""

    def run() -> None:
        image = load_image(image_path, min_side=size)
        crop_to_fov(image.rgb, size, image.original_size)

    def run_full_decode() -> None:
        image = load_image(image_path)
        crop_to_fov(image.rgb, size, image.original_size)

    result = time_call(run, repeats)
    result["full_decode_median_ms"] = time_call(run_full_decode, max(3, repeats // 3))["median_ms"]
    result["target_ms"] = 40.0
    return result


def bench_quality(image_path: Path, repeats: int = 15) -> dict[str, float]:
    """Quality verdict on a prepared 512-px crop ("a few milliseconds")."""
    image = load_image(image_path, min_side=512)
    crop, transform, fov = crop_to_fov(image.rgb, 512, image.original_size)
    inside = fov_in_crop(fov, transform)
    return time_call(lambda: assess_quality(crop, fov, inside), repeats)


BENCHMARKS: dict[str, Callable[[Path, int], dict[str, float]]] = {
    "preprocess_4288_to_512": lambda path, repeats: bench_preprocess(path, 512, repeats),
    "quality_verdict_512": lambda path, repeats: bench_quality(path, repeats),
}


def run_benchmarks(names: list[str] | None = None, image: Path | None = None, repeats: int = 15) -> dict:
    """Run the named benchmarks (all when None) on ``image`` (a synthetic 4288x2848 JPEG when None)."""
    unknown = sorted(set(names or []) - set(BENCHMARKS))
    if unknown:
        raise KeyError(f"unknown benchmarks {unknown}; valid names: {', '.join(BENCHMARKS)}")
    with tempfile.TemporaryDirectory(prefix="drwb-bench-") as tmp:
        path = Path(image) if image else _full_size_jpeg(Path(tmp))
        results = {"image": str(path) if image else "synthetic 4288x2848 JPEG", "repeats": repeats}
        for name in names or list(BENCHMARKS):
            results[name] = BENCHMARKS[name](path, repeats)
    return results
