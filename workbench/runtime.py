"""Where forward passes run: PyTorch or ONNX Runtime, per model (``DRWB_RUNTIME``: auto, torch, onnx).

Only the forward-only paths can move: grading, lesion tiles and landmarks. Explanations stay in PyTorch
(they need gradients and hooks on the module).

``auto`` (the default) runs the graders (an ensemble as one graph: members, mirror view and
temperatures) in ONNX Runtime and every other network in PyTorch. Graders are where it pays: their
forward passes run about 3x faster there and every photograph of a batch goes through them, while their
sessions are small (448-px inputs). The segmenters stay in PyTorch: their 512-px tiles and 640-px crops
gain only 1.1-1.4x, and every network in ONNX Runtime pushed the served app past its memory target. A
grader built in memory (no weights file, so nothing to key an export by) stays in PyTorch under
``auto``, and so does any grader whose export fails (a read-only cache, say): ``auto`` is an optimisation
and never stops a model from loading. ``onnx`` runs every network there and raises when it cannot;
``torch`` runs none there.

A model is exported once per weights file and card with dynamic batch, height and width, to
``$DRWB_CACHE/onnx`` (default ``~/.cache/drwb/onnx``), and reused by every later process
(``export_key``); the export takes about two seconds a model.

Measured with ``drwb bench --only runtimes`` (README "Speed and memory"): the networks run 1.1-3.6x faster
in ONNX Runtime on this project's 2-core CPU with logits within 3e-4, a whole quality-profile analysis 16%
faster (time outside the networks dominates). Every network there (``onnx``) is opt-in: the served app under
eight analysts peaked at 2.87 GB with it against 2.42 GB without (target 2.5 GB).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.card import ModelCard

__all__ = [
    "RUNTIMES",
    "AUTO_ONNX_ARCHS",
    "Forward",
    "OnnxForward",
    "configured_runtime",
    "export_key",
    "forward_for",
    "onnx_cache_dir",
]

RUNTIMES = ("auto", "torch", "onnx")
AUTO_ONNX_ARCHS = frozenset({"grader"})  # the card archs ``auto`` runs in ONNX Runtime (module docstring)
Forward = Callable[[torch.Tensor], torch.Tensor]
_EXPORT_LOCK = threading.Lock()
_EXPORT_VERSION = 1  # bump when the export itself changes (names, axes, opset)
log = logging.getLogger(__name__)


def configured_runtime(value: str | None = None) -> str:
    """``value``, else ``$DRWB_RUNTIME``, else "auto"; anything else is refused by name."""
    name = (value or os.environ.get("DRWB_RUNTIME") or "auto").strip().lower()
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r} (DRWB_RUNTIME); valid runtimes: {', '.join(RUNTIMES)}")
    return name


def onnx_cache_dir() -> Path:
    """Where exported models are kept: ``$DRWB_CACHE/onnx``, default ``~/.cache/drwb/onnx``."""
    root = os.environ.get("DRWB_CACHE") or Path.home() / ".cache" / "drwb"
    return Path(root) / "onnx"


class OnnxForward:
    """A model's inference forward in ONNX Runtime, callable like the module (tensor in, tensor out).

    The exported file is named by ``export_key``: the weights, every card field the network is built
    from (a grader's temperature is a constant in its graph) and the exporter's version, so an edited
    card or a new torch never serves an old graph. A card without a sha256 (a model built in memory) is
    exported to memory only.
    """

    def __init__(self, module: nn.Module, card: ModelCard, cache_dir: Path | None = None) -> None:
        import onnxruntime as ort  # only when asked for: the default runtime needs none of it

        self._run_lock = threading.Lock()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if not card.sha256:
            buffer = io.BytesIO()
            _export(module, card.input_size, buffer)
            self.path = None
            self.session = ort.InferenceSession(buffer.getvalue(), options, providers=providers)
            return
        self.path = (cache_dir or onnx_cache_dir()) / f"{card.arch}-{export_key(card)}.onnx"
        with _EXPORT_LOCK:
            if not self.path.is_file():
                _export_file(module, card.input_size, self.path)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        # one run at a time: its intra-op threads already use every core, and each concurrent run grows
        # the session's memory arena by its own activations (4 concurrent ensemble runs: +200 MB)
        with self._run_lock:
            return torch.from_numpy(self.session.run(None, {"image": array})[0])


def export_key(card: ModelCard) -> str:
    """16 hex digits naming one export: weights, the card without its training record, torch's version."""
    described = {k: v for k, v in json.loads(card.to_json()).items() if k != "training"}
    text = json.dumps([described, torch.__version__, _EXPORT_VERSION], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _export(module: nn.Module, size: int, target: str | io.BytesIO) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's note on the grader's optional attention outputs (a Python branch, constant for
        # inference) and the exporter's own deprecation notes: nothing a user can act on
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, size, size),),
            target,
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": {0: "batch"}},
        )


def _export_file(module: nn.Module, size: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    try:
        _export(module, size, str(partial))
        partial.replace(path)  # atomic: another process never reads half a file
    finally:
        partial.unlink(missing_ok=True)


def forward_for(module: nn.Module, card: ModelCard, runtime: str | None = None) -> Forward:
    """The inference forward of ``module`` in the configured runtime (``configured_runtime``; for "auto"
    see the module docstring)."""
    name = configured_runtime(runtime)
    if name == "onnx":
        return OnnxForward(module, card)
    if name == "torch" or card.arch not in AUTO_ONNX_ARCHS or not card.sha256:
        return module
    try:
        return OnnxForward(module, card)
    except Exception as error:  # noqa: BLE001 (any exporter or runtime failure: fall back, say why)
        log.warning(
            "%s (%s) runs in PyTorch: ONNX Runtime was not available (%s)", card.name, card.arch, error
        )
        return module
