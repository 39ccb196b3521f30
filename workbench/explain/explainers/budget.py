"""A memory budget for explanations: how many inputs one forward (or forward + backward) may batch.

Attribution methods evaluate the model on many perturbed or interpolated copies of one image; batching
them is what makes them fast, and what made one Integrated Gradients call take 5 GB. The budget
(``DRWB_EXPLAIN_MEMORY_MB``, default 512 MB, read at call time) caps the activation memory of one
batch. It also shrinks to the process's headroom: what stays below the process ceiling
(``DRWB_PROCESS_MEMORY_MB``, default 2048 MB) once the current resident memory and a reserve for the
method's own arrays are counted, and never below 64 MB. A process that has imported torch (CUDA build),
timm, captum and grad-cam, loaded the three models and analysed a photograph holds ~1.1 GB here
(measured), so the default budget applies; on a machine whose libraries take more, the batches get
smaller instead of the process going over. Deletion / insertion scoring batches by the same budget.

The activation memory of one sample is measured, not guessed: one forward of a single input at the
card's size with hooks on every leaf module (cached per model and input size). A backward pass keeps
(about) every leaf output for the gradient and adds the gradient of the layer being processed: the sum
of all outputs, times 2. A forward without autograd frees most outputs once the next layer has read
them, but padding copies and convolution workspaces add up: a third of the sum (measured on lite0).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "DEFAULT_BUDGET_MB",
    "DEFAULT_CEILING_MB",
    "batch_for_budget",
    "budget_bytes",
    "current_rss_mb",
    "peak_rss_mb",
    "release_freed_memory",
    "sample_activation_bytes",
    "status_mb",
]

DEFAULT_BUDGET_MB = 512
DEFAULT_CEILING_MB = 2048
RESERVE_MB = 384  # the method's inputs, outputs and scratch beside one batch's activations
MIN_BUDGET_MB = 64
_cache: dict[tuple[int, int], tuple[int, int]] = {}


def budget_bytes() -> int:
    """The budget in bytes: ``DRWB_EXPLAIN_MEMORY_MB``, or less where the process ceiling
    (``DRWB_PROCESS_MEMORY_MB``) leaves less headroom above the current resident memory."""
    configured = float(os.environ.get("DRWB_EXPLAIN_MEMORY_MB", DEFAULT_BUDGET_MB))
    ceiling = float(os.environ.get("DRWB_PROCESS_MEMORY_MB", DEFAULT_CEILING_MB))
    headroom = ceiling - current_rss_mb() - RESERVE_MB
    return int(max(MIN_BUDGET_MB, min(configured, headroom)) * 1024**2)


def sample_activation_bytes(module: nn.Module, size: int) -> tuple[int, int]:
    """(sum, largest) bytes of the leaf-module outputs in one forward of one (1, 3, size, size) input."""
    key = (id(module), size)
    if key not in _cache:
        total, largest = 0, 0

        def count(_m: nn.Module, _i: object, output: object) -> None:
            nonlocal total, largest
            if torch.is_tensor(output):
                nbytes = output.numel() * output.element_size()
                total, largest = total + nbytes, max(largest, nbytes)

        leaves = [m for m in module.modules() if not list(m.children())]
        handles = [m.register_forward_hook(count) for m in leaves]
        try:
            with torch.inference_mode():
                module(torch.zeros(1, 3, size, size))
        finally:
            for handle in handles:
                handle.remove()
        _cache[key] = (max(total, 1), max(largest, 1))
    return _cache[key]


def batch_for_budget(module: nn.Module, size: int, backward: bool, cap: int = 64) -> int:
    """How many inputs one batch may hold within the budget (at least 1, at most ``cap``)."""
    total, largest = sample_activation_bytes(module, size)
    per_sample = 2 * total if backward else max(total // 3, 4 * largest)
    return int(max(1, min(cap, budget_bytes() // per_sample)))


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``...) in MB; None where unreadable."""
    try:
        for line in open(f"/proc/{pid}/status").read().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    """This process's resident memory now in MB (``VmRSS``; 0 where /proc is missing)."""
    return status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux keeps that across ``exec``, so a child started from a large
    parent (a test runner, a server) reports the parent's size.
    """
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_freed_memory() -> bool:
    """Hand the heap memory freed by the last explanation back to the system (glibc ``malloc_trim``).

    glibc keeps freed blocks for reuse: after Integrated Gradients a process stayed ~350 MB larger than
    before it (measured), and since the budget is the headroom above the *current* resident memory, the
    next method got the 64 MB floor on top of memory nobody used. Called after each explanation and each
    scoring; a few ms. False where there is no glibc (the call is then a no-op).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once; None on other platforms and libcs."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other libcs
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
