"""Optional contrast enhancements, as pure functions (input never modified, new array returned).

- ``ben_graham``: subtract a large Gaussian blur (the local average colour) and re-centre on grey. From Ben
  Graham's winning Kaggle DR 2015 solution; it removes illumination differences between cameras.
- ``clahe_luminance``: contrast-limited adaptive histogram equalisation on the L channel of CIELAB only,
  so hues (red haemorrhage vs yellow exudate) are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

__all__ = ["ENHANCEMENTS", "ben_graham", "clahe_luminance"]


def ben_graham(rgb: np.ndarray, sigma_fraction: float = 1 / 30, weight: float = 4.0) -> np.ndarray:
    """Local-average subtraction: ``weight * (img - blur(img)) + 128``, clipped to uint8.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        sigma_fraction: blur sigma as a fraction of the image width (Graham used radius/30).
        weight: gain on the high-pass signal.
    """
    sigma = max(1.0, rgb.shape[1] * sigma_fraction)
    blur = cv2.GaussianBlur(rgb, (0, 0), sigma)
    out = cv2.addWeighted(rgb, weight, blur, -weight, 128)
    out[rgb.max(axis=2) == 0] = 0  # keep the black frame black
    return out


def clahe_luminance(rgb: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on CIELAB lightness; (H, W, 3) uint8 RGB in and out."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lightness = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(lab[..., 0])
    merged = np.dstack([lightness, lab[..., 1], lab[..., 2]])
    return cv2.cvtColor(merged, cv2.COLOR_LAB2RGB)


ENHANCEMENTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda rgb: rgb.copy(),
    "ben_graham": ben_graham,
    "clahe": clahe_luminance,
}
