"""Colour jitter: the table-and-matrix version matches the per-pixel float definition within two levels."""

from __future__ import annotations

import numpy as np

from training.augment import AugmentConfig, colour_jitter


def _reference(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """The definition, per pixel in float (what colour_jitter computed until 2026-12-01)."""
    x = image.astype(np.float64) / 255.0
    field = image.max(axis=2, keepdims=True) > 0
    x = x * rng.uniform(1 - config.brightness, 1 + config.brightness)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean
    x = np.clip(x, 0, 1) ** rng.uniform(1 - config.gamma, 1 + config.gamma)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(1 - config.saturation, 1 + config.saturation)
    return (np.clip(x, 0, 1) * 255 * field).astype(np.uint8)


def _fundus_like(side: int = 96) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:side, :side]
    image[(yy - side / 2) ** 2 + (xx - side / 2) ** 2 > (side / 2.2) ** 2] = 0  # the black frame
    image[5, 5] = (0, 0, 1)  # a nearly black pixel outside the disc is still inside the field
    return image


def test_colour_jitter_matches_its_definition_and_keeps_the_frame_black() -> None:
    image, config = _fundus_like(), AugmentConfig(brightness=0.3, contrast=0.3, gamma=0.3, saturation=0.4)
    for seed in range(8):
        fast = colour_jitter(image, np.random.default_rng(seed), config)
        slow = _reference(image, np.random.default_rng(seed), config)
        assert fast.dtype == np.uint8 and fast.shape == image.shape
        gap = np.abs(fast.astype(int) - slow.astype(int))
        assert gap.max() <= 2 and gap.mean() < 0.6, seed  # it rounds where the definition truncated
        assert not fast[image.max(axis=2) == 0].any()
    changed = colour_jitter(image, np.random.default_rng(0), config)
    assert np.abs(changed.astype(int) - image.astype(int)).mean() > 3  # it does jitter
