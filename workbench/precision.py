"""Which PyTorch forward passes run in bfloat16 (``DRWB_PRECISION``: auto, fp32, bf16).

Only the lesion and landmark networks (``BF16_ARCHS``: the segmenters, the localizer and the disc
refiner) may run in bf16, always under ``torch.autocast`` on their fp32 weights, for inference only
(explanations and training stay fp32). Their dense convolutions are where bf16 pays on a CPU with bf16
units (Intel AMX or AVX512-BF16): on this project's 2-core Xeon with AMX a 544-px tile of the 2048-px
segmenter took 242 -> 127 ms, the 640-px segmenter 371 -> 182 ms, the localizer 107 -> 59 ms, the disc
refiner 136 -> 63 ms, and the quality profile's whole lesion stage 8.7 -> 4.6 s per photograph, with the
validated AUPR within 0.01 per lesion type (README "Speed and memory"; the cards' ``training.bf16_check``).
The graders stay fp32 in ONNX Runtime: in bf16 PyTorch the ensemble took 196 ms against ONNX Runtime's
141 ms (depthwise layers, small inputs).

On a CPU without bf16 units oneDNN emulates it, 10-100x *slower* on one of this project's machines, so
``auto`` (the default) uses bf16 only where the CPU reports bf16 units *and* a probe on the network
itself, once per process, finds bf16 at least ``MIN_SPEEDUP`` times faster than fp32 and agreeing with it
(mean sigmoid difference <= ``MAX_MEAN_DIFFERENCE``); anything else keeps fp32. ``bf16`` forces it for
``BF16_ARCHS`` wherever the probe agrees (it raises when not), ``fp32`` never uses it. What ran is in every
report (``workbench.runtime.runtime_name``: "pytorch 2.14.1 bf16").
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from models.card import ModelCard

__all__ = [
    "BF16_ARCHS",
    "PRECISIONS",
    "Bf16Forward",
    "bf16_units",
    "configured_precision",
    "precision_setting",
    "with_precision",
]

PRECISIONS = ("auto", "fp32", "bf16")
BF16_ARCHS = frozenset({"segmenter", "localizer", "disc"})
MIN_SPEEDUP = 1.2  # bf16 / fp32 time ratio below which ``auto`` keeps fp32 (a probe is noisy)
MAX_MEAN_DIFFERENCE = 0.02  # mean |sigmoid(bf16) - sigmoid(fp32)| over the probe's outputs
_DECISIONS: dict[tuple, bool] = {}  # probe results, per network, for this process
_DECISIONS_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def configured_precision(value: str | None = None) -> str:
    """``value``, else ``$DRWB_PRECISION``, else "auto"; anything else is refused by name."""
    name = (value or os.environ.get("DRWB_PRECISION") or "auto").strip().lower()
    if name not in PRECISIONS:
        raise ValueError(
            f"unknown precision {name!r} (DRWB_PRECISION); valid precisions: {', '.join(PRECISIONS)}"
        )
    return name


@contextmanager
def precision_setting(name: str | None) -> Iterator[None]:
    """The block runs with ``DRWB_PRECISION`` = ``name`` (checked; None leaves it as it is): how a
    command line flag reaches the predictors, which read the setting when they are built."""
    if name is None:
        yield
        return
    configured_precision(name)
    before = os.environ.get("DRWB_PRECISION")
    os.environ["DRWB_PRECISION"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DRWB_PRECISION", None)
        else:
            os.environ["DRWB_PRECISION"] = before


def bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16), as PyTorch reports it."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


class Bf16Forward:
    """``module``'s forward under bf16 autocast, float32 out: callable like the module."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(batch).float()


def with_precision(module: nn.Module, card: ModelCard, precision: str | None = None):
    """``module`` itself, or a ``Bf16Forward`` of it where the configured precision says so (module
    docstring). A card outside ``BF16_ARCHS`` always gets the module."""
    name = configured_precision(precision)
    if name == "fp32" or card.arch not in BF16_ARCHS:
        return module
    if name == "auto" and not bf16_units():
        return module
    key = (card.name, card.sha256, card.arch, card.input_size)
    with _DECISIONS_LOCK:
        if key not in _DECISIONS:
            _DECISIONS[key] = _probe(module, card, forced=name == "bf16")
        use = _DECISIONS[key]
    return Bf16Forward(module) if use else module


@torch.inference_mode()
def _probe(module: nn.Module, card: ModelCard, forced: bool) -> bool:
    """Time and compare fp32 and bf16 on one fixed input of at most 256 px (alternating, after one
    warm-up each); True when bf16 agrees and, unless ``forced``, is ``MIN_SPEEDUP`` times faster."""
    side = min(card.input_size, 256)
    probe = torch.linspace(-2.0, 2.0, 3 * side * side).reshape(1, 3, side, side)
    probe = probe.contiguous(memory_format=torch.channels_last)
    bf16 = Bf16Forward(module)
    reference, got = module(probe).float(), bf16(probe)
    difference = float((torch.sigmoid(reference) - torch.sigmoid(got)).abs().mean())
    if not difference <= MAX_MEAN_DIFFERENCE:
        message = f"{card.name}: bf16 disagrees with fp32 (mean sigmoid difference {difference:.3g})"
        if forced:
            raise ValueError(message + "; DRWB_PRECISION=bf16 cannot be honoured")
        log.warning("%s; running in fp32", message)
        return False
    if forced:
        return True
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(3):
        for label, forward in (("fp32", module), ("bf16", bf16)):
            start = time.perf_counter()
            forward(probe)
            times[label].append(time.perf_counter() - start)
    speedup = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    log.info("%s: bf16 %.2fx the speed of fp32 on this CPU", card.name, speedup)
    return speedup >= MIN_SPEEDUP
