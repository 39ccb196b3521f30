"""Optic-disc refiner: the disc segmented again in a window centred on the localizer's disc.

The lesion segmenters see the disc at 2.7-5 original pixels per input pixel across the whole field of
view, and their disc outline is coarse (Jaccard 0.77 at best, README "Models"). The refiner is a small
smp U-Net (``tf_efficientnet_lite0`` encoder, offline ImageNet init, one sigmoid channel) that sees only
a square window around the disc: ``2 x window_r`` field-of-view radii (R) across, the disc (about 0.31 R
wide) in its middle, resampled to ``input_size``. Units of R make the window independent of the camera's
resolution, as the landmark prior is.

``window_matrix`` is the one geometry both training (``training.tasks.disc``) and inference
(``workbench.disc``) use: the affine from a frame in which the centre and R are known to the window.
"""

from __future__ import annotations

import cv2
import numpy as np
import segmentation_models_pytorch as smp
from torch import nn

from models._registry import register_model
from models.card import ModelCard
from models.pretrained import load_lite0_into

__all__ = ["DISC_WINDOW_R", "disc_card", "extract_window", "window_matrix"]

DISC_WINDOW_R = 0.35  # half-side of the window in field radii: ~2.3 disc diameters across, room for a
# centre off by 0.15 R (the localizer's mean error is ~0.01 R); at 448 px, ~2.7 original px per input px
_DECODER = (128, 64, 32, 16, 16)


def window_matrix(centre_xy: tuple[float, float], radius: float, window_r: float, size: int) -> np.ndarray:
    """2x3 affine from a frame (where the disc centre ``centre_xy`` and the field radius ``radius`` are
    in that frame's pixels) to a ``size`` x ``size`` window of half-side ``window_r`` x ``radius``,
    centred on ``centre_xy`` (pixel centres at integers, as ``models.preprocess``)."""
    if radius <= 0 or window_r <= 0 or size <= 0:
        raise ValueError(f"a window needs positive radius, window_r and size: {radius}, {window_r}, {size}")
    scale = size / (2 * window_r * radius)
    half = (size - 1) / 2
    return np.array(
        [[scale, 0.0, half - scale * centre_xy[0]], [0.0, scale, half - scale * centre_xy[1]]], np.float64
    )


def disc_card(
    encoder: str = "tf_efficientnet_lite0",
    input_size: int = 448,
    name: str = "disc",
    window_r: float = DISC_WINDOW_R,
    **extra: object,
) -> ModelCard:
    """Card of a disc refiner; ``input_size`` is the window's side in pixels."""
    return ModelCard(
        name=name,
        arch="disc",
        encoder=encoder,
        num_classes=1,
        input_size=input_size,
        label_names=("OD",),
        target_layer="encoder.model.blocks.6",
        task="per-pixel sigmoid probability of the optic disc in a window centred on the detected disc",
        extra={"window_r": window_r, **extra},
    )


def _create_disc(card: ModelCard, decoder: tuple[int, ...]) -> nn.Module:
    model = smp.Unet(
        encoder_name=f"tu-{card.encoder}",
        encoder_weights=None,
        encoder_depth=len(decoder),
        decoder_channels=decoder,
        classes=1,
        activation=None,
    )
    if card.extra.get("imagenet_init", False):
        load_lite0_into(model.encoder.model)
    return model


@register_model("disc")
def disc(card: ModelCard) -> nn.Module:
    """Production disc refiner (U-Net, lite0 encoder)."""
    return _create_disc(card, _DECODER)


@register_model("test_tiny_disc")
def test_tiny_disc(card: ModelCard) -> nn.Module:
    """Tiny random disc refiner for tests: 3 levels, narrow decoder, no ImageNet init."""
    return _create_disc(card.with_updates(extra={**card.extra, "imagenet_init": False}), (16, 8, 8))


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
