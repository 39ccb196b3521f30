"""Where training runs: the device named on the command line, exact fp32 for figures, batches moved."""

from __future__ import annotations

import torch

__all__ = ["exact_device", "pick_device", "to_device"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


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
