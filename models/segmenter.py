"""UNet++ lesion segmenter: five sigmoid channels (MA, HE, EX, SE, OD), built with smp.

smp's split of encoder / decoder / segmentation head is kept (``segmentation_models_pytorch.base``). The
encoder is timm's ``tf_efficientnet_lite0`` through smp's ``tu-`` universal wrapper, initialised from the
offline ImageNet weights. Decoder widths are reduced from smp's defaults (256..16) to (128..8): on a
2-core CPU the UNet++ nested decoder dominates the cost, and the lesions are small, not semantically rich.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from models._registry import register_model
from models.card import ModelCard
from models.constants import LESION_CODES
from models.pretrained import load_lite_into

__all__ = ["segmenter_card"]

_DECODER = (128, 64, 32, 16, 8)


def _create_segmenter(card: ModelCard, decoder: tuple[int, ...]) -> nn.Module:
    model = smp.UnetPlusPlus(
        encoder_name=f"tu-{card.encoder}",
        encoder_weights=None,
        encoder_depth=len(decoder),
        decoder_channels=decoder,
        classes=card.num_classes,
        activation=None,
    )
    if card.extra.get("imagenet_init", False):
        load_lite_into(model.encoder.model, card.encoder)
    return model


def segmenter_card(
    encoder: str = "tf_efficientnet_lite0", input_size: int = 1024, name: str = "segmenter", **extra: object
) -> ModelCard:
    """Card of a lesion segmenter; ``input_size`` is the FOV crop side, inference runs on tiles."""
    return ModelCard(
        name=name,
        arch="segmenter",
        encoder=encoder,
        num_classes=len(LESION_CODES),
        input_size=input_size,
        label_names=LESION_CODES,
        # Deepest encoder stage (stride 32): where segmentation Grad-CAM is meaningful; the decoder output
        # is full resolution and would only echo the prediction.
        target_layer="encoder.model.blocks.6",
        task="per-pixel sigmoid probabilities of MA, HE, EX, SE, OD",
        extra={"tile": 512, "overlap": 64, **extra},
    )


@register_model("segmenter")
def segmenter(card: ModelCard) -> nn.Module:
    """Production UNet++."""
    return _create_segmenter(card, tuple(card.extra.get("decoder_channels", _DECODER)))


@register_model("test_tiny_seg")
def test_tiny_seg(card: ModelCard) -> nn.Module:
    """Tiny random UNet++ for tests: lite0 encoder, 3 levels, narrow decoder, no ImageNet init."""
    return _create_segmenter(card.with_updates(extra={**card.extra, "imagenet_init": False}), (16, 8, 8))
