"""PyTorch against ONNX Runtime (``drwb bench --only runtimes``): each network's forward pass, then the
whole analysis in both profiles and the grading throughput, in each runtime (``workbench.runtime``:
torch, auto, onnx).

Forward passes alternate between the runtimes on the same input, so a busy machine slows both alike;
the ratio of the medians is the figure to read. Outputs are compared too (largest absolute difference of
the logits), because a faster runtime that changes results would not be the same product.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.registry import default_model, load_model
from workbench.bench.timing import alternating_medians
from workbench.runtime import OnnxForward

__all__ = ["bench_runtimes", "compare_forwards"]

# network -> input side it runs at in analyze (the segmenters: one tile of the quality profile, the fast
# profile's single 640-px crop); "grader" is the best single network, "grader_quality" the quality
# profile's grader (an ensemble, exported as one graph)
_NETWORKS = {
    "grader": None,
    "grader_quality": None,
    "localizer": None,
    "segmenter_lite0_hr": 512,
    "segmenter_lite0": 640,
}


@contextmanager
def _runtime(name: str) -> Iterator[None]:
    before = os.environ.get("DRWB_RUNTIME")
    os.environ["DRWB_RUNTIME"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DRWB_RUNTIME", None)
        else:
            os.environ["DRWB_RUNTIME"] = before


def compare_forwards(name: str, size: int | None, repeats: int) -> dict[str, Any]:
    """Median ms of the PyTorch and the ONNX Runtime forward of one shipped network, alternating."""
    model, card = load_model(name)
    side = size or card.input_size
    batch = torch.rand(1, 3, side, side).contiguous(memory_format=torch.channels_last)
    onnx = OnnxForward(model, card)
    with torch.inference_mode():
        reference = model(batch).float().numpy()
    difference = float(np.abs(onnx(batch).numpy() - reference).max())
    with torch.inference_mode():
        medians = alternating_medians({"torch": lambda: model(batch), "onnx": lambda: onnx(batch)}, repeats)
    torch_ms, onnx_ms = medians["torch"], medians["onnx"]
    return {
        "input_px": side,
        "torch_median_ms": torch_ms,
        "onnx_median_ms": onnx_ms,
        "onnx_over_torch": onnx_ms / torch_ms,
        "max_abs_logit_difference": difference,
    }


def bench_runtimes(image_path: Path, repeats: int) -> dict[str, Any]:
    from workbench.bench.models import bench_analyze, bench_throughput

    out: dict[str, Any] = {"threads": torch.get_num_threads(), "forward": {}}
    for key, size in _NETWORKS.items():
        if key == "grader_quality":
            name = default_model("grader")
        else:
            name = default_model(key, ensembles=False) if key in ("grader", "localizer") else key
        out["forward"][name] = compare_forwards(name, size, repeats)
    for runtime in ("torch", "auto", "onnx"):  # auto: the default (graders in ONNX Runtime)
        with _runtime(runtime):
            out[runtime] = {
                "analyze_4288": bench_analyze(image_path, repeats),
                "analyze_4288_fast": bench_analyze(image_path, repeats, "fast"),
                "grading_throughput": bench_throughput(image_path, repeats),
            }
    for key in ("analyze_4288", "analyze_4288_fast"):
        for runtime in ("auto", "onnx"):
            out[f"{key}_{runtime}_over_torch"] = (
                out[runtime][key]["median_ms"] / out["torch"][key]["median_ms"]
            )
    return out
