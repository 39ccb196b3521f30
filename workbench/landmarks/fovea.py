"""The fovea found again around the localizer's fovea (``models.refiners``).

``FoveaRefiner.refine`` cuts the refiner's window (centred on the localizer's fovea, its side in field
radii) from the decoded photograph and decodes the heatmap's peak. A peak below ``FOUND`` means the
fovea is not in the window (the localizer's was far off): the localizer's fovea then stands, and the
anatomy check (``workbench.landmarks``) judges it as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.fov import FieldOfView
from models.localizer import decode_heatmaps
from models.registry import load_model
from workbench.io.image_io import LoadedImage
from workbench.landmarks.window_model import WindowModel

__all__ = ["FOUND", "FoveaRefiner", "load_fovea_refiner"]

FOUND = 0.1  # heatmap peak below which the refiner found no fovea in its window (the localizer's stands)
SHARPER = 1.25  # a window this much sharper than the training ones is brought down to their detail


class FoveaRefiner(WindowModel):
    """The fovea centre in a window around a coarse fovea, in original pixels, with its peak height."""

    def cut_size(self, image: LoadedImage, fov: FieldOfView) -> int:
        """Side at which the window is cut before it is resized to the input: the input size, or, for a
        photograph sharper than the training ones, the training windows' own side in photograph pixels
        (card ``extra.source_window_px``), so that the refiner sees the detail it learnt from."""
        detail = float(self.card.extra.get("source_window_px") or 0)
        side = 2 * self.window_r * fov.radius / image.decode_factor  # the window in decoded pixels
        if detail and side > SHARPER * detail:
            return max(8, min(self.card.input_size, int(round(detail))))
        return self.card.input_size

    def predict(
        self, image: LoadedImage, fovea_xy: tuple[float, float], fov: FieldOfView
    ) -> tuple[tuple[float, float], float]:
        """(refined fovea in original pixels, heatmap peak in [0, 1]) for a window around ``fovea_xy``."""
        logits = self.window_logits(image, fovea_xy, fov, self.cut_size(image, fov))
        centre, peak = decode_heatmaps(logits)
        to_window = np.vstack([self.window_transform(fovea_xy, fov), [0, 0, 1]])
        x, y = np.linalg.inv(to_window)[:2] @ np.array([*centre[0, 0].tolist(), 1.0])
        return (float(x), float(y)), float(peak[0, 0])

    def refine(
        self, image: LoadedImage, fovea_xy: tuple[float, float], fov: FieldOfView
    ) -> tuple[float, float] | None:
        """The refined fovea, or None when the refiner found none in its window (peak < ``FOUND``)."""
        xy, peak = self.predict(image, fovea_xy, fov)
        return xy if peak >= FOUND else None


def load_fovea_refiner(name: str, weights_dir: Path | None = None) -> FoveaRefiner:
    """A shipped fovea refiner by card stem."""
    return FoveaRefiner(*load_model(name, weights_dir))
