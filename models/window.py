"""Square windows around a point, sized in field-of-view radii: the geometry of the landmark refiners.

The disc and fovea refiners (``models.refiners``) each see a window centred on a coarse
detection, ``2 x window_r`` field radii (R) across, resampled to their input size. Units of R make a
window independent of the camera's resolution, as the landmark prior is. ``window_matrix`` is the affine
from any frame (where the centre and R are known) to the window; ``extract_window`` resamples an image or
a mask through it. Training (from the cached crops) and inference (from the decoded photograph) both
cut their windows with these two functions.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["extract_window", "window_matrix"]


def window_matrix(centre_xy: tuple[float, float], radius: float, window_r: float, size: int) -> np.ndarray:
    """2x3 affine from a frame (where the window's centre ``centre_xy`` and the field radius ``radius`` are
    in that frame's pixels) to a ``size`` x ``size`` window of half-side ``window_r`` x ``radius``,
    centred on ``centre_xy`` (pixel centres at integers, as ``models.preprocess``)."""
    if radius <= 0 or window_r <= 0 or size <= 0:
        raise ValueError(f"a window needs positive radius, window_r and size: {radius}, {window_r}, {size}")
    scale = size / (2 * window_r * radius)
    half = (size - 1) / 2
    return np.array(
        [[scale, 0.0, half - scale * centre_xy[0]], [0.0, scale, half - scale * centre_xy[1]]], np.float64
    )


def extract_window(array: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` window ``matrix`` maps ``array`` (H, W[, C]) onto, anti-aliased.

    Only the source box under the window (plus the blur's reach) is blurred and warped, so a 12-MP
    photograph costs no more than a small one. A downscale by f is prefiltered with a Gaussian of sigma
    (f - 1) / 2 (skimage's ``rescale`` rule); outside the source is 0.
    """
    matrix = np.asarray(matrix, np.float64)
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    sigma = max(0.0, (1 / scale - 1) / 2)
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
    source = corners @ inverse[:, :2].T + inverse[:, 2]
    reach = int(np.ceil(3 * sigma)) + 2
    height, width = array.shape[:2]
    x0, y0 = (int(max(0, np.floor(source[:, i].min()) - reach)) for i in (0, 1))
    x1 = int(min(width, np.ceil(source[:, 0].max()) + reach + 1))
    y1 = int(min(height, np.ceil(source[:, 1].max()) + reach + 1))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, *array.shape[2:]), array.dtype)
    box = array[y0:y1, x0:x1]
    if sigma > 0.3:
        box = cv2.GaussianBlur(box, (0, 0), sigma)
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    return cv2.warpAffine(box, shifted, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
