"""The fovea found again around the localizer's fovea (``models.refiners``).

``FoveaRefiner.refine`` cuts the refiner's window (centred on the localizer's fovea, its side in field
radii) from the decoded photograph and decodes the heatmap's peak. A peak below ``FOUND`` means the
fovea is not in the window (the localizer's was far off): the localizer's fovea then stands, and the
anatomy check (``workbench.landmarks``) judges it as before.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.card import ModelCard
from models.fov import FieldOfView
from models.localizer import decode_heatmaps
from models.preprocess import normalise
from models.registry import load_model
from models.window import extract_window, window_matrix
from workbench.inference import model_lock
from workbench.io.image_io import LoadedImage
from workbench.runtime import forward_for

__all__ = ["FOUND", "FoveaRefiner", "load_fovea_refiner"]

FOUND = 0.1  # heatmap peak below which the refiner found no fovea in its window (the localizer's stands)
SHARPER = 1.25  # a window this much sharper than the training ones is brought down to their detail


class FoveaRefiner:
    """The fovea centre in a window around a coarse fovea, in original pixels, with its peak height."""

    def __init__(self, model: nn.Module, card: ModelCard, runtime: str | None = None) -> None:
        self.model, self.card = model.eval(), card
        self.forward = forward_for(self.model, card, runtime)
        self.window_r = float(card.extra["window_r"])

    def cut_size(self, image: LoadedImage, fov: FieldOfView) -> int:
        """Side at which the window is cut before it is resized to the input: the input size, or, for a
        photograph sharper than the training ones, the training windows' own side in photograph pixels
        (card ``extra.source_window_px``), so that the refiner sees the detail it learnt from."""
        detail = float(self.card.extra.get("source_window_px") or 0)
        side = 2 * self.window_r * fov.radius / image.decode_factor  # the window in decoded pixels
        if detail and side > SHARPER * detail:
            return max(8, min(self.card.input_size, int(round(detail))))
        return self.card.input_size

    @torch.inference_mode()
    def predict(
        self, image: LoadedImage, fovea_xy: tuple[float, float], fov: FieldOfView
    ) -> tuple[tuple[float, float], float]:
        """(refined fovea in original pixels, heatmap peak in [0, 1]) for a window around ``fovea_xy``."""
        size = self.card.input_size
        cut = self.cut_size(image, fov)
        to_cut = np.vstack([window_matrix(fovea_xy, fov.radius, self.window_r, cut), [0, 0, 1]])
        window = extract_window(image.rgb, (to_cut @ image.decoded_to_original)[:2], cut)
        if cut != size:  # edges aligned: the same square of the photograph at the input size
            window = cv2.resize(window, (size, size), interpolation=cv2.INTER_LINEAR)
        to_window = np.vstack([window_matrix(fovea_xy, fov.radius, self.window_r, size), [0, 0, 1]])
        tensor = torch.from_numpy(normalise(window, self.card.mean, self.card.std))[None]
        with model_lock(self.model):
            logits = self.forward(tensor.contiguous(memory_format=torch.channels_last))
        centre, peak = decode_heatmaps(logits.float())
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
