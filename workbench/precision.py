"""Which PyTorch forward passes run in bfloat16 (``DRWB_PRECISION``: auto, fp32, bf16).

Only the lesion and landmark networks (``BF16_ARCHS``: the segmenters, the localizer and the disc
refiner) may run in bf16, always under ``torch.autocast`` on their fp32 weights, for inference only
(explanations stay fp32; training has its own ``drwb train --precision``). Their dense convolutions are
where bf16 pays on a CPU with bf16 units (Intel AMX or AVX512-BF16): on this project's 2-core Xeon with
AMX (``drwb bench --only precision``) a 544-px tile of the 2048-px segmenter took 221 -> 118 ms, the
640-px segmenter 285 -> 155 ms, the localizer 55 -> 40 ms, the disc refiner 73 -> 43 ms, a whole
quality-profile analysis 10.9 -> 7.0 s, with every validated AUPR within 0.01 (README "Speed and memory";
the cards' ``training.bf16_check``). The graders stay fp32 in ONNX Runtime: in bf16 PyTorch the ensemble
took 196 ms against ONNX Runtime's 141 ms (depthwise layers, small inputs).

On a CPU without bf16 units oneDNN emulates bf16, 10-100x *slower* on one of this project's machines.
So ``auto`` (the default) uses bf16 exactly where PyTorch reports bf16 units, and only for a network
whose bf16 output agrees with fp32 on a fixed probe (mean sigmoid difference <= ``MAX_MEAN_DIFFERENCE``;
checked once per network and process); anything else, a probe that fails included, keeps fp32 with a
logged warning. The choice is made from the hardware and the numbers, never from a timing, so the same
machine always gives the same answers (a load-time timing probe flipped between runs on the landmark
networks, whose gain is smallest). ``bf16`` forces it for ``BF16_ARCHS`` wherever the probe agrees and
raises where not; ``fp32`` never uses it. What ran is in every report
(``workbench.runtime.runtime_name``: "pytorch 2.14.1 bf16").
"""

from __future__ import annotations

import logging
import os
import threading
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
MAX_MEAN_DIFFERENCE = 0.02  # mean |sigmoid(bf16) - sigmoid(fp32)| over the probe's outputs
# Whether each network's bf16 output agreed with fp32 on the probe, for this process: a cache, like the
# ONNX exports of workbench.runtime (module-level state beyond registries, STYLE 6: the check costs two
# forward passes and every predictor of a network would repeat it). Keyed by the weights' sha256; a card
# without one (a model built in memory) is checked every time.
_AGREES: dict[tuple, bool] = {}
_AGREES_LOCK = threading.Lock()
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
    docstring). A card outside ``BF16_ARCHS`` always gets the module.

    Raises:
        ValueError: ``precision`` (or ``$DRWB_PRECISION``) is not a valid name, or is "bf16" and bf16
            does not agree with fp32 on this network (or cannot run at all).
    """
    name = configured_precision(precision)
    if name == "fp32" or card.arch not in BF16_ARCHS:
        return module
    if name == "auto" and not bf16_units():
        return module
    try:
        agrees = _agrees(module, card)
    except Exception as error:  # noqa: BLE001 (a bf16 kernel can fail in many ways; auto must not stop a load)
        if name == "bf16":
            raise ValueError(f"{card.name}: bf16 cannot run here ({error}); DRWB_PRECISION=bf16") from error
        log.warning("%s: bf16 failed on its probe (%s); running in fp32", card.name, error)
        return module
    if agrees:
        return Bf16Forward(module)
    if name == "bf16":
        raise ValueError(
            f"{card.name}: bf16 disagrees with fp32 on this network; DRWB_PRECISION=bf16 cannot be honoured"
        )
    log.warning("%s: bf16 disagrees with fp32 on this network; running in fp32", card.name)
    return module


def _agrees(module: nn.Module, card: ModelCard) -> bool:
    """``_probe``'s answer, kept per weights file for the process."""
    if not card.sha256:
        return _probe(module, card)
    key = (card.sha256, card.arch, card.input_size)
    with _AGREES_LOCK:
        if key not in _AGREES:
            _AGREES[key] = _probe(module, card)
        return _AGREES[key]


@torch.inference_mode()
def _probe(module: nn.Module, card: ModelCard) -> bool:
    """Whether bf16 agrees with fp32 on one fixed input of at most 256 px (mean sigmoid difference of the
    outputs <= ``MAX_MEAN_DIFFERENCE``)."""
    side = min(card.input_size, 256)
    probe = torch.linspace(-2.0, 2.0, 3 * side * side).reshape(1, 3, side, side)
    probe = probe.contiguous(memory_format=torch.channels_last)
    reference, got = module(probe).float(), Bf16Forward(module)(probe)
    difference = float((torch.sigmoid(reference) - torch.sigmoid(got)).abs().mean())
    log.info("%s: bf16 against fp32 on the probe, mean sigmoid difference %.3g", card.name, difference)
    return difference <= MAX_MEAN_DIFFERENCE
