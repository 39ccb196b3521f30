"""The optic disc re-segmented around the localizer's disc (``models.refiners``), pasted into the lesion maps.

``DiscRefiner.refine`` cuts the window the refiner was trained on (centred on the detected disc, its
side in field-of-view radii) from the decoded photograph, segments the disc there, and replaces (in
place) the segmenter's disc channel inside that window; outside it the segmenter's channel stays, so a
disc the localizer missed by more than the window is still there to be found. The analysis then
binarises the disc with the refiner's own best-Dice threshold and shows the refiner's validated figures
(its card's ``training.evaluation``, ``Workbench._measured``), not the segmenter's.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from models.constants import LESION_CODES
from models.fov import FieldOfView
from models.registry import load_model
from workbench.io.image_io import LoadedImage
from workbench.landmarks.window_model import WindowModel
from workbench.predictors import LesionMaps

__all__ = ["DiscRefiner", "load_disc_refiner"]

_OD = LESION_CODES.index("OD")


class DiscRefiner(WindowModel):
    """The disc probability in a window around a disc centre, and that window pasted into lesion maps."""

    def predict(self, image: LoadedImage, od_xy: tuple[float, float], fov: FieldOfView) -> np.ndarray:
        """(S, S) disc probabilities in the window ``window_transform`` gives."""
        return torch.sigmoid(self.window_logits(image, od_xy, fov))[0, 0].numpy()

    def refine(
        self, maps: LesionMaps, image: LoadedImage, od_xy: tuple[float, float], fov: FieldOfView
    ) -> bool:
        """Replace, in place, the disc channel of ``maps`` inside the window by the refiner's (in place:
        a quality-profile map is 84 MB and analyze holds no other reference to it); False when the
        window lies outside the maps' crop (nothing replaced)."""
        window = self.predict(image, od_xy, fov)
        # lesion-map crop px -> original -> window; only the crop's box under the window is resampled
        crop_to_window = np.vstack([self.window_transform(od_xy, fov), [0, 0, 1]]) @ np.vstack(
            [maps.transform.inverse, [0, 0, 1]]
        )
        size, side = self.card.input_size, maps.probabilities.shape[-1]
        corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], float)
        in_crop = corners @ np.linalg.inv(crop_to_window)[:2].T
        x0, y0 = (int(np.clip(np.floor(in_crop[:, i].min()), 0, side)) for i in (0, 1))
        x1, y1 = (int(np.clip(np.ceil(in_crop[:, i].max()) + 1, 0, side)) for i in (0, 1))
        if x1 <= x0 or y1 <= y0:
            return False
        box_to_window = crop_to_window[:2].copy()
        box_to_window[:, 2] += box_to_window[:, :2] @ np.array([x0, y0], np.float64)

        def onto_box(array: np.ndarray) -> np.ndarray:
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            return cv2.warpAffine(array, box_to_window, (x1 - x0, y1 - y0), flags=flags, borderValue=0)

        covered = onto_box(np.ones_like(window)) > 0.999
        channel = maps.probabilities[_OD, y0:y1, x0:x1]
        channel[covered] = onto_box(window)[covered]
        return True


def load_disc_refiner(name: str, weights_dir: Path | None = None) -> DiscRefiner:
    """A shipped disc refiner by card stem."""
    return DiscRefiner(*load_model(name, weights_dir))
