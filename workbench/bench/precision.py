"""fp32 against bf16 (``drwb bench --only precision``): each lesion and landmark network's forward pass,
then whole analyses in both profiles with ``DRWB_PRECISION`` fp32 and auto (the default).

As in ``workbench.bench.runtimes``, the two sides alternate on the same input, so a busy machine slows
both alike; the ratios of the medians are the figures to read. The forward passes are also compared
(mean absolute difference of the sigmoid outputs); the validated figures of both precisions are in the
cards (``training.bf16_check``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from models.registry import default_model, load_model
from workbench.bench.timing import alternating_medians
from workbench.precision import Bf16Forward, bf16_units, precision_setting

__all__ = ["bench_precision", "compare_precisions"]

# network -> input side it runs at in analyze (one tile of the quality profile's 2048-px crop, the fast
# profile's 640-px crop, the landmark networks' own sizes)
_NETWORKS = {"segmenter_lite0_hr": 544, "segmenter_lite0": 640, "localizer": None, "disc": None}


def compare_precisions(name: str, size: int | None, repeats: int) -> dict[str, Any]:
    """Median ms of one shipped network's forward in fp32 and under bf16 autocast, alternating."""
    model, card = load_model(name)
    side = size or card.input_size
    batch = torch.rand(1, 3, side, side).contiguous(memory_format=torch.channels_last)
    bf16 = Bf16Forward(model)
    with torch.inference_mode():
        difference = float((torch.sigmoid(model(batch)) - torch.sigmoid(bf16(batch))).abs().mean())
        medians = alternating_medians({"fp32": lambda: model(batch), "bf16": lambda: bf16(batch)}, repeats)
    fp32_ms, bf16_ms = medians["fp32"], medians["bf16"]
    return {
        "input_px": side,
        "fp32_median_ms": fp32_ms,
        "bf16_median_ms": bf16_ms,
        "bf16_over_fp32": bf16_ms / fp32_ms,
        "mean_abs_sigmoid_difference": difference,
    }


def _analyses(image_path: Path, repeats: int, profile: str) -> dict[str, Any]:
    from workbench.analysis import Workbench

    benches = {}
    for precision in ("fp32", "auto"):
        with precision_setting(precision):
            benches[precision] = Workbench(profile=profile)
    calls = {k: partial(w.analyze, image_path, explain=["attention"], force=True) for k, w in benches.items()}
    medians = alternating_medians(calls, max(3, repeats // 3), warmup=1)
    out: dict[str, Any] = {f"{k}_median_ms": v for k, v in medians.items()}
    out["auto_over_fp32"] = out["auto_median_ms"] / out["fp32_median_ms"]
    out["auto_runtimes"] = benches["auto"].analyze(image_path, explain=[], force=True).runtimes
    return out


def bench_precision(image_path: Path, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "bf16_units": bf16_units(), "forward": {}}
    for key, size in _NETWORKS.items():
        name = key if size else default_model(key)
        out["forward"][name] = compare_precisions(name, size, repeats)
    for profile in ("quality", "fast"):
        out[f"analyze_4288_{profile}"] = _analyses(image_path, repeats, profile)
    return out
