"""Model inference helpers shared by the analysis layer, evaluation and training validation.

``model_lock(module)`` is the one lock of a shared model: every forward pass of a server's models and
every explanation holds it, because explainers set hooks on the module (Grad-CAM's activation hooks, the
hook that starts its graph at the target layer) that would otherwise also fire on, and corrupt, another
session's forward pass.

``predict_tiles`` runs a segmenter over a whole field-of-view crop by overlapping tiles blended with a
raised-cosine window, so tile borders leave no seams and memory stays bounded at any resolution.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["blend_window", "model_lock", "predict_tiles", "tile_starts"]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(module: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``module`` (one per module object, created on first use)."""
    with _LOCKS_GUARD:
        if module not in _LOCKS:
            _LOCKS[module] = threading.RLock()
        return _LOCKS[module]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``length`` with tiles of ``tile`` px overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_window(tile: int) -> np.ndarray:
    """(tile, tile) raised-cosine weights, > 0 everywhere so every pixel is covered."""
    ramp = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(tile) + 0.5) / tile)
    return np.outer(ramp, ramp).astype(np.float32) + 1e-3


@torch.no_grad()
def predict_tiles(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    overlap: int,
    batch: int = 1,
) -> np.ndarray:
    """Sigmoid probabilities (C, H, W) for a normalised (3, H, W) image, by blended overlapping tiles.

    One tile per forward by default: on a CPU batching tiles gains nothing and multiplies the peak memory
    of the UNet++ decoder (a server with all models loaded must stay under 2 GB).
    """
    _, height, width = image.shape
    tile = min(tile, height, width)
    window = blend_window(tile)
    positions = [
        (y, x) for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)
    ]
    total = None
    weight = np.zeros((height, width), np.float32)
    for i in range(0, len(positions), batch):
        chunk = positions[i : i + batch]
        tiles = torch.stack([image[:, y : y + tile, x : x + tile] for y, x in chunk])
        probs = torch.sigmoid(model(tiles).float()).cpu().numpy()
        if total is None:
            total = np.zeros((probs.shape[1], height, width), np.float32)
        for (y, x), prob in zip(chunk, probs, strict=True):
            total[:, y : y + tile, x : x + tile] += prob * window
            weight[y : y + tile, x : x + tile] += window
    total /= weight  # in place: at 2048 px a second (5, H, W) array is 84 MB more at the peak
    return total
