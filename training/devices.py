"""Where training runs: the device named on the command line, exact fp32 for figures, batches moved."""

from __future__ import annotations

import torch

__all__ = ["exact_device", "pick_device", "to_device", "trains_in_bf16"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """Whether training steps run under bf16 autocast: ``precision`` "auto" on CUDA only, "bf16" anywhere,
    "fp32" nowhere. On the CPU "auto" stays fp32 because bf16 there is a property of the machine: on this
    project's AMX Xeon a training step took 0.57x the fp32 time for the 2048-px segmenter (512-px tiles,
    batch 4) and 0.81x for the lite0 grader (448 px, batch 8), while on an EPYC without bf16 units its
    forward pass alone was 10-100x slower (README "Training"). The in-training validation (and so the
    OOF predictions of a ``--folds`` run) runs at the same precision; `drwb evaluate --write-card` is fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def exact_device(name: str) -> torch.device:
    """The device for figures that must match a CPU run: fp32 without TF32 shortcuts on CUDA."""
    device = pick_device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def to_device(batch: tuple, device: torch.device) -> tuple:
    """Tensors of a batch onto ``device``; 4-D images in channels_last on CUDA (faster convolutions)."""
    if device.type == "cpu":
        return batch
    out = []
    for item in batch:
        if torch.is_tensor(item):
            item = item.to(device, non_blocking=True)
            if item.ndim == 4 and item.shape[1] == 3:
                item = item.contiguous(memory_format=torch.channels_last)
        out.append(item)
    return tuple(out)
