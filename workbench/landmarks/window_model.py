"""What both landmark refiners do first: cut their window around a point and run their network on it."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from models.card import ModelCard
from models.fov import FieldOfView
from models.preprocess import normalise
from models.window import extract_window, window_matrix
from workbench.inference import model_lock
from workbench.io.image_io import LoadedImage
from workbench.runtime import forward_for, runtime_name

__all__ = ["WindowModel"]


class WindowModel:
    """A refiner network with its card: the window of ``extra.window_r`` field radii around a point,
    cut from the decoded photograph, through the network (``models.window`` geometry)."""

    def __init__(self, model: nn.Module, card: ModelCard, runtime: str | None = None) -> None:
        self.model, self.card = model.eval(), card
        self.forward = forward_for(self.model, card, runtime)
        self.runtime = runtime_name(self.forward)
        self.window_r = float(card.extra["window_r"])

    def window_transform(self, centre_xy: tuple[float, float], fov: FieldOfView) -> np.ndarray:
        """2x3 affine, original frame -> the input-size window around ``centre_xy`` (``fov`` in the
        original frame, as ``prepare_fundus`` gives it)."""
        return window_matrix(centre_xy, fov.radius, self.window_r, self.card.input_size)

    @torch.inference_mode()
    def window_logits(
        self, image: LoadedImage, centre_xy: tuple[float, float], fov: FieldOfView, cut: int | None = None
    ) -> torch.Tensor:
        """(1, 1, S, S) float logits for the window around ``centre_xy``; ``cut`` (default: the input
        size) is the side the window is cut at before it is resized to the input, edges aligned."""
        size = self.card.input_size
        cut = cut or size
        to_cut = np.vstack([window_matrix(centre_xy, fov.radius, self.window_r, cut), [0, 0, 1]])
        window = extract_window(image.rgb, (to_cut @ image.decoded_to_original)[:2], cut)
        if cut != size:
            window = cv2.resize(window, (size, size), interpolation=cv2.INTER_LINEAR)
        tensor = torch.from_numpy(normalise(window, self.card.mean, self.card.std))[None]
        with model_lock(self.model):
            return self.forward(tensor.contiguous(memory_format=torch.channels_last)).float()
