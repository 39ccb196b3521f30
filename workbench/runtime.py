"""Where forward passes run: PyTorch or ONNX Runtime, per model (``DRWB_RUNTIME``: auto, torch, onnx).

Only the forward-only paths can move: grading, lesion tiles and landmarks. Explanations stay in PyTorch
(they need gradients and hooks on the module).

``auto`` (the default) runs the graders (an ensemble as one graph: members, mirror view and
temperatures) in ONNX Runtime and every other network in PyTorch. Graders are where it pays: their
forward passes run 2-2.5x faster there (the ensemble 257 -> 104 ms) and every photograph of a batch
goes through them, while their sessions are small (448-px inputs). The segmenters stay in PyTorch:
their 512-px tiles and 640-px crops gain only 1.1-1.5x, and every network in ONNX Runtime pushed the
served app past its memory target; in PyTorch they run in bf16 where the CPU makes it pay
(``workbench.precision``, ``DRWB_PRECISION``). A grader built in memory (no weights file, so nothing to key an
export by) stays in PyTorch under ``auto``, and so does any grader whose export fails (a read-only
cache, say): ``auto`` is an optimisation and never stops a model from loading. ``onnx`` runs every
network there and raises when it cannot; ``torch`` runs none there.

Grading a folder (``workbench.reports.audit.grade_images``) runs one photograph per core at once
through ``OnnxForward.concurrent`` (``parallel_lanes``): 1.2-1.5x the images per second of one at a time.

A model is exported once per weights file and card, to ``$DRWB_CACHE/onnx`` (default
``~/.cache/drwb/onnx``), and reused by every later process (``export_key``); the export takes about two
seconds a model. Batch is dynamic; height and width are dynamic too, except for the graders
(``FIXED_SIZE_ARCHS``), which only ever see their card's input size: their graph is exported for that
size with constant "same" padding, which ONNX Runtime folds into the convolutions
(``models.static_padding`` says why: 24% of a grader's time on one thread went to the padding computed
at every call). Same outputs (equal to the last bit on the ensemble).

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.card import ModelCard
from models.static_padding import static_padding
from workbench.precision import Bf16Forward, with_precision

__all__ = [
    "RUNTIMES",
    "AUTO_ONNX_ARCHS",
    "FIXED_SIZE_ARCHS",
    "Forward",
    "OnnxForward",
    "configured_runtime",
    "export_key",
    "forward_for",
    "onnx_cache_dir",
    "parallel_lanes",
    "runtime_name",
]

RUNTIMES = ("auto", "torch", "onnx")
AUTO_ONNX_ARCHS = frozenset({"grader"})  # the card archs ``auto`` runs in ONNX Runtime (module docstring)
FIXED_SIZE_ARCHS = frozenset({"grader"})  # exported for their card's input size only (module docstring)
Forward = Callable[[torch.Tensor], torch.Tensor]
_EXPORT_LOCK = threading.Lock()
_EXPORT_VERSION = 2  # bump when the export itself changes (names, axes, opset, padding)
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
    from (a grader's temperature is a constant in its graph; an ensemble's members' cards too) and the
    exporter's version, so an edited card or a new torch never serves an old graph. A card without a
    sha256 (a model built in memory) is exported to memory only. Every session is checked against the
    module on one input before use; a cached file that fails to load or to agree (a damaged or foreign
    file under the right name) is exported again once, and a second failure raises.
    """

    def __init__(self, module: nn.Module, card: ModelCard, cache_dir: Path | None = None) -> None:
        self._run_lock = threading.Lock()
        self._lanes_lock = threading.Lock()
        self._lane_session = None  # one intra-op thread per run, for ``concurrent`` (built on first use)
        self._lane_users = 0  # callers inside ``lanes()``; the last one out frees the session
        self._lane_slots = threading.BoundedSemaphore(max(1, torch.get_num_threads()))  # runs in flight
        self._module, self._card = module, card
        self._expected: np.ndarray | None = None  # the module's output on the probe (``_check_agrees``)
        self.path: Path | None = None
        if not card.sha256:
            buffer = io.BytesIO()
            _export(module, card, buffer)
            self.session = _session(buffer.getvalue())
            self._check_agrees(self.session)
            return
        key = export_key(card, getattr(module, "member_cards", ()))
        self.path = (cache_dir or onnx_cache_dir()) / f"{card.arch}-{key}.onnx"
        with _EXPORT_LOCK:
            if not self.path.is_file():
                _export_file(module, card, self.path)
            try:
                self.session = _session(str(self.path))
                self._check_agrees(self.session)
            except Exception as error:  # noqa: BLE001 (a damaged cache file fails in many ways)
                log.warning("%s: exporting %s again (%s)", card.name, self.path.name, error)
                _export_file(module, card, self.path)
                self.session = _session(str(self.path))
                self._check_agrees(self.session)

    def _check_agrees(self, session, tolerance: float = 1e-3) -> None:
        """Raise unless ``session`` gives the module's outputs (within ``tolerance``) on one fixed input:
        the card's input size for a grader, at most 256 px for the others (any size runs; a full 2048-px
        crop would cost seconds). The module's output is computed once and kept."""
        card = self._card
        side = card.input_size if card.arch == "grader" else min(card.input_size, 256)
        probe = torch.linspace(-2.0, 2.0, 3 * side * side).reshape(1, 3, side, side)
        if self._expected is None:
            with torch.inference_mode():
                self._expected = self._module(probe).float().numpy()
        got = session.run(None, {"image": probe.numpy()})[0]
        expected = self._expected
        difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not difference <= tolerance:
            raise ValueError(
                f"the ONNX graph disagrees with the PyTorch model (largest difference {difference:.3g})"
            )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        # one run at a time: its intra-op threads already use every core, and each concurrent run grows
        # the session's memory arena by its own activations (4 concurrent ensemble runs: +200 MB)
        with self._run_lock:
            return torch.from_numpy(self.session.run(None, {"image": array})[0])

    @contextmanager
    def lanes(self) -> Iterator[None]:
        """Hold the session of ``concurrent`` while inside; the last caller out frees it (with two runs in
        flight it holds ~250 MB for the ensemble, which a served app grading one photograph at a time
        should not keep between audits)."""
        with self._lanes_lock:
            self._lane_users += 1
        try:
            yield
        finally:
            with self._lanes_lock:
                self._lane_users -= 1
                if self._lane_users == 0:
                    self._lane_session = None

    def concurrent(self, batch: torch.Tensor) -> torch.Tensor:
        """``self(batch)`` for one of several threads that run at once, one per core (``parallel_lanes``;
        call it inside ``lanes()``).

        Runs go through a second session with one intra-op thread each, at most one per core in flight:
        a batch of photographs split across the cores keeps every core busy, where a single run's
        intra-op threads leave them idle in the many small depthwise layers (ensemble, 2 cores: one
        2-thread run ~92 ms, one 1-thread run ~157 ms, two at once 12.4 images/s against 10.6). That
        session is built on first use from the graph file checked at load time, never exported here (an
        analysis may have hooks on the module meanwhile); when it cannot be built or does not agree with
        the module, runs fall back to ``self(batch)`` with a logged warning.
        """
        with self._lanes_lock:
            if self._lane_session is None:
                self._lane_session = self._lane_session_or_main()
            session = self._lane_session  # a release meanwhile leaves this run its session
        if session is self.session:
            return self(batch)
        array = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        with self._lane_slots:
            return torch.from_numpy(session.run(None, {"image": array})[0])

    def _lane_session_or_main(self):  # -> onnxruntime.InferenceSession
        if self.path is not None:  # a model built in memory has no file to build it from: no lanes
            try:
                session = _session(str(self.path), threads=1)
                self._check_agrees(session)
                return session
            except Exception as error:  # noqa: BLE001 (a file removed or replaced since load fails many ways)
                log.warning("%s: grading one photograph at a time (%s)", self._card.name, error)
        return self.session


def parallel_lanes(forward: Forward) -> int:
    """How many photographs to run through ``forward`` at once to fill the cores: one per torch thread
    when it is an ``OnnxForward`` from a graph file (``OnnxForward.concurrent``), else 1 (a PyTorch
    module's intra-op threads are process-wide, so concurrent runs would only share them)."""
    if isinstance(forward, OnnxForward) and forward.path is not None:
        return max(1, torch.get_num_threads())
    return 1


def export_key(card: ModelCard, members: Sequence[ModelCard] = ()) -> str:
    """16 hex digits naming one export: weights, the card without its training record (and an ensemble's
    members' cards likewise: their temperatures are constants in its graph), torch's version."""

    def described(c: ModelCard) -> dict:
        return {k: v for k, v in json.loads(c.to_json()).items() if k != "training"}

    text = json.dumps(
        [described(card), [described(m) for m in members], torch.__version__, _EXPORT_VERSION], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _session(model: str | bytes, threads: int = 0):  # -> onnxruntime.InferenceSession
    """A CPU session with ``threads`` intra-op threads (0: as many as torch uses)."""
    import onnxruntime as ort  # only when a model runs there (``torch`` needs none of it)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _export(module: nn.Module, card: ModelCard, target: str | io.BytesIO) -> None:
    size = card.input_size
    axes = {0: "batch", 2: "height", 3: "width"}
    if card.arch in FIXED_SIZE_ARCHS:
        module, axes = static_padding(module, size), {0: "batch"}
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


def _export_file(module: nn.Module, card: ModelCard, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    try:
        _export(module, card, str(partial))
        partial.replace(path)  # atomic: another process never reads half a file
    finally:
        partial.unlink(missing_ok=True)


def runtime_name(forward: Forward) -> str:
    """What runs ``forward`` (from ``forward_for``), with its version, for the record of an analysis:
    "onnxruntime 1.32.0", "pytorch 2.14.1" or, in bf16 (``workbench.precision``), "pytorch 2.14.1 bf16"."""
    if isinstance(forward, OnnxForward):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return f"pytorch {torch.__version__}" + (" bf16" if isinstance(forward, Bf16Forward) else "")


def forward_for(
    module: nn.Module, card: ModelCard, runtime: str | None = None, precision: str | None = None
) -> Forward:
    """The inference forward of ``module`` in the configured runtime (``configured_runtime``; for "auto"
    see the module docstring); one left in PyTorch runs at the configured precision
    (``precision``, default ``$DRWB_PRECISION``; ``workbench.precision``: bf16 for the lesion and
    landmark networks on a CPU with bf16 units)."""
    name = configured_runtime(runtime)
    if name == "onnx":
        return OnnxForward(module, card)
    if name == "torch" or card.arch not in AUTO_ONNX_ARCHS or not card.sha256:
        return with_precision(module, card, precision)
    try:
        return OnnxForward(module, card)
    except Exception as error:  # noqa: BLE001 (any exporter or runtime failure: fall back, say why)
        log.warning(
            "%s (%s) runs in PyTorch: its ONNX graph could not be exported or loaded (%s)",
            card.name,
            card.arch,
            error,
        )
        return module
