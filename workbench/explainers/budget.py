"""A memory budget for explanations: how many inputs one forward (or forward + backward) may batch.

Attribution methods evaluate the model on many perturbed or interpolated copies of one image; batching
them is what makes them fast, and what made one Integrated Gradients call take 5 GB. The budget
(``DRWB_EXPLAIN_MEMORY_MB``, default 512 MB, read at call time) caps the activation memory of one
batch. A process that has imported torch (CUDA build), timm, captum and grad-cam and loaded the three
models already holds ~1.2 GB, and an analysis adds ~0.2 GB (measured), so this default keeps the whole
process under 2 GB. Deletion / insertion scoring batches by the same budget.

The activation memory of one sample is measured, not guessed: one forward of a single input at the
card's size with hooks on every leaf module (cached per model and input size). A backward pass keeps
(about) every leaf output for the gradient and adds the gradient of the layer being processed: the sum
of all outputs, times 2. A forward without autograd frees most outputs once the next layer has read
them, but padding copies and convolution workspaces add up: a third of the sum (measured on lite0).
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["DEFAULT_BUDGET_MB", "batch_for_budget", "budget_bytes", "peak_rss_mb", "sample_activation_bytes"]

DEFAULT_BUDGET_MB = 512
_cache: dict[tuple[int, int], tuple[int, int]] = {}


def budget_bytes() -> int:
    """The configured budget in bytes (``DRWB_EXPLAIN_MEMORY_MB``)."""
    return int(float(os.environ.get("DRWB_EXPLAIN_MEMORY_MB", DEFAULT_BUDGET_MB)) * 1024**2)


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


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux keeps that across ``exec``, so a child started from a large
    parent (a test runner, a server) reports the parent's size.
    """
    try:
        for line in open("/proc/self/status").read().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
