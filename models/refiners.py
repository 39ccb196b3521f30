"""Landmark refiners: the optic disc and the fovea found again in a window around the coarse detection.

The lesion segmenters see the disc at 2.7-5 original pixels per input pixel across the whole field of
view, and their disc outline is coarse (Jaccard 0.77 at best, README "Models"); the localizer sees the
whole field at 384 px (one heatmap pixel is ~9 original pixels). A refiner is a small smp U-Net
(``tf_efficientnet_lite0`` encoder, offline ImageNet init, one output channel) that sees only a square
window (``models.window``) centred on the coarse detection, ``2 x window_r`` field radii (R) across:

- **disc** (``disc_card``): the disc's sigmoid mask, in a window of 0.7 R (the disc, ~0.31 R wide, in
  its middle) at 448 px, ~2.7 original px per input px;
- **fovea** (``fovea_card``): a Gaussian heatmap of the fovea centre (CenterNet focal loss, as the
  localizer), in a window of 0.5 R at 256 px, ~3.4 original px per input px. A faint peak means "not
  in this window": the localizer's fovea then stands.

``models.window`` is the one geometry training (``training.tasks.disc``, ``training.tasks.fovea``) and
inference (``workbench.landmarks.disc``, ``workbench.landmarks.fovea``) share.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from models._registry import register_model
from models.card import ModelCard
from models.pretrained import load_lite_into

__all__ = ["DISC_WINDOW_R", "FOVEA_WINDOW_R", "disc_card", "fovea_card"]

DISC_WINDOW_R = 0.35  # half-side of the disc window in field radii: ~2.3 disc diameters across; a disc
# (radius ~0.16 R) stays inside for a centre off by ~0.19 R (the localizer's mean error is ~0.01 R;
# training moves the centre by up to 0.08 R per axis)
FOVEA_WINDOW_R = 0.25  # half-side of the fovea window (~430 px of a 4288-px photograph): room for a
# coarse fovea off by 0.1 R (the localizer's worst validation errors are ~0.09 R)
_DISC_DECODER = (128, 64, 32, 16, 16)
_FOVEA_DECODER = (64, 32, 16, 16)


def _card(
    arch: str,
    encoder: str,
    input_size: int,
    name: str,
    label: str,
    task: str,
    target_layer: str,
    **extra: object,
) -> ModelCard:
    return ModelCard(
        name=name,
        arch=arch,
        encoder=encoder,
        num_classes=1,
        input_size=input_size,
        label_names=(label,),
        target_layer=target_layer,
        task=task,
        extra=extra,
    )


def disc_card(
    encoder: str = "tf_efficientnet_lite0",
    input_size: int = 448,
    name: str = "disc",
    window_r: float = DISC_WINDOW_R,
    **extra: object,
) -> ModelCard:
    """Card of a disc refiner; ``input_size`` is the window's side in pixels."""
    task = "per-pixel sigmoid probability of the optic disc in a window centred on the detected disc"
    # deepest encoder stage: where Grad-CAM of a segmentation is meaningful (as the lesion segmenter)
    layer = "encoder.model.blocks.6"
    return _card("disc", encoder, input_size, name, "OD", task, layer, window_r=window_r, **extra)


def fovea_card(
    encoder: str = "tf_efficientnet_lite0",
    input_size: int = 256,
    name: str = "fovea",
    window_r: float = FOVEA_WINDOW_R,
    **extra: object,
) -> ModelCard:
    """Card of a fovea refiner; ``input_size`` is the window's side in pixels."""
    task = "Gaussian heatmap of the fovea centre in a window centred on the detected fovea"
    # its 4-level decoder reads the encoder up to stride 16: the decoder is the layer to explain (localizer)
    return _card(
        "fovea", encoder, input_size, name, "fovea", task, "decoder", window_r=window_r, sigma_px=3.0, **extra
    )


def _create(card: ModelCard, decoder: tuple[int, ...], heatmap: bool) -> nn.Module:
    model = smp.Unet(
        encoder_name=f"tu-{card.encoder}",
        encoder_weights=None,
        encoder_depth=len(decoder),
        decoder_channels=decoder,
        classes=1,
        activation=None,
    )
    if heatmap:  # CenterNet's start: every pixel at probability 0.1, so the focal loss does not begin huge
        nn.init.constant_(model.segmentation_head[0].bias, -2.19)
    if card.extra.get("imagenet_init", False):
        load_lite_into(model.encoder.model, card.encoder)
    return model


def _tiny(card: ModelCard) -> ModelCard:
    return card.with_updates(extra={**card.extra, "imagenet_init": False})


@register_model("disc")
def disc(card: ModelCard) -> nn.Module:
    """Production disc refiner (U-Net, lite0 encoder)."""
    return _create(card, _DISC_DECODER, heatmap=False)


@register_model("fovea")
def fovea(card: ModelCard) -> nn.Module:
    """Production fovea refiner (U-Net, lite0 encoder)."""
    return _create(card, _FOVEA_DECODER, heatmap=True)


@register_model("test_tiny_disc")
def test_tiny_disc(card: ModelCard) -> nn.Module:
    """Tiny random disc refiner for tests: 3 levels, narrow decoder, no ImageNet init."""
    return _create(_tiny(card), (16, 8, 8), heatmap=False)


@register_model("test_tiny_fovea")
def test_tiny_fovea(card: ModelCard) -> nn.Module:
    """Tiny random fovea refiner for tests."""
    return _create(_tiny(card), (16, 8, 8), heatmap=True)
