"""Field-of-view (FOV) detection: the bright, roughly circular fundus region on a dark background.

Fundus cameras record a circular field inside a black frame, and many (IDRiD's Kowa VX-10 included)
cut the top and bottom of the circle. We therefore estimate the circle from the widest extent of the
bright region rather than from its bounding box height. Detection runs on a thumbnail (<= 256 px) so that
it costs about a millisecond whatever the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["FieldOfView", "detect_fov", "fov_mask"]

_THUMB_SIDE = 256
# A fundus background is near black; the field is at least this much brighter (0-255 luminance).
_MIN_THRESHOLD = 12.0


@dataclass(frozen=True)
class FieldOfView:
    """A circular field of view in the pixel frame of the image it was detected on.

    Attributes:
        cx, cy: circle centre in pixels (x to the right, y down; pixel centres at integers).
        radius: circle radius in pixels.
        area_fraction: fraction of the image covered by the detected bright region.
        fill_ratio: bright-region area / area of the circle clipped to the image; near 1 for a fundus,
            low for a ragged region, used by the quality check.
        corners_dark: True when all four image corners lie outside the bright region, as they do
            for every fundus photograph; an ordinary photo has bright corners.
    """

    cx: float
    cy: float
    radius: float
    area_fraction: float
    fill_ratio: float
    corners_dark: bool

    def scaled(self, factor: float) -> FieldOfView:
        """The same circle in a frame ``factor`` times larger (pixel-centre convention)."""
        return FieldOfView(
            cx=(self.cx + 0.5) * factor - 0.5,
            cy=(self.cy + 0.5) * factor - 0.5,
            radius=self.radius * factor,
            area_fraction=self.area_fraction,
            fill_ratio=self.fill_ratio,
            corners_dark=self.corners_dark,
        )


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def detect_fov(rgb: np.ndarray) -> FieldOfView:
    """Detect the circular field of view of an RGB uint8 fundus image (H, W, 3).

    The threshold is the larger of a fixed floor and a fraction of the Otsu level, so that a dim fundus
    is still found and a noisy black frame is not. Only the largest connected bright component counts.
    When nothing bright is found the whole image is returned with ``area_fraction`` 0, and the quality
    check reports "no fundus field".
    """
    height, width = rgb.shape[:2]
    factor = max(height, width) / _THUMB_SIDE
    if factor > 1:
        thumb = cv2.resize(rgb, (round(width / factor), round(height / factor)), interpolation=cv2.INTER_AREA)
    else:
        factor, thumb = 1.0, rgb
    factor_x = width / thumb.shape[1]
    factor_y = height / thumb.shape[0]
    gray = cv2.GaussianBlur(_luminance(thumb), (5, 5), 0)
    otsu, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(_MIN_THRESHOLD, 0.35 * otsu)
    bright = (gray > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if count <= 1:
        return FieldOfView((width - 1) / 2, (height - 1) / 2, max(width, height) / 2, 0.0, 0.0, False)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[largest])
    region = labels == largest
    th, tw = region.shape
    corners_dark = not (region[0, 0] or region[0, tw - 1] or region[th - 1, 0] or region[th - 1, tw - 1])
    # Circle from the widest extent; the cut top/bottom of the field does not shrink it.
    radius_t = max(w, h) / 2
    cx_t = x + w / 2 - 0.5
    cy_t = y + h / 2 - 0.5
    yy, xx = np.mgrid[0:th, 0:tw]
    circle = (xx - cx_t) ** 2 + (yy - cy_t) ** 2 <= radius_t**2
    fill_ratio = float(area / max(1, circle.sum()))
    return FieldOfView(
        cx=(cx_t + 0.5) * factor_x - 0.5,
        cy=(cy_t + 0.5) * factor_y - 0.5,
        radius=radius_t * (factor_x + factor_y) / 2,
        area_fraction=float(area / (th * tw)),
        fill_ratio=min(1.0, fill_ratio),
        corners_dark=corners_dark,
    )


def fov_mask(shape: tuple[int, int], fov: FieldOfView) -> np.ndarray:
    """Boolean (H, W) mask of the FOV circle for an image of ``shape`` = (H, W)."""
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    return (xx - fov.cx) ** 2 + (yy - fov.cy) ** 2 <= fov.radius**2
