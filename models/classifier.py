"""Multi-task DR / DME grader with one spatial attention map per disease.

Layout follows ``timm/models/convnext.py``: blocks first, then the module, then ``_create_grader``, then
small registered builders. The network is a timm backbone (``forward_features``) and a head
(``forward_head``) that pools the feature map twice, once per disease, each through its own learned
spatial attention (in the spirit of CANet's disease-specific attention). Those attention maps are the
grader's own explanation and are exposed by ``attention_maps``.

``forward`` returns one (B, 8) tensor: DR logits in columns 0-4, DME logits in columns 5-7. A single
tensor (rather than a tuple) lets Grad-CAM and captum select a target by column index.
"""

from __future__ import annotations

import timm
import torch
from timm.layers import LayerNorm2d
from torch import nn

from models._registry import register_model
from models.card import ModelCard
from models.constants import DME_NAMES, DR_GRADE_NAMES
from models.pretrained import LITE0_ENCODERS, load_lite0_into

__all__ = ["AttentionPool", "Grader", "NUM_DME", "NUM_DR", "grader_card"]

NUM_DR = len(DR_GRADE_NAMES)
NUM_DME = len(DME_NAMES)


class AttentionPool(nn.Module):
    """Softmax spatial attention pooling: (B, C, H, W) -> pooled (B, C) and attention (B, H, W).

    The score convolution starts at zero, so training begins from plain global average pooling and
    learns where to look; the attention sums to 1 over the map.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = features.shape
        weights = torch.softmax(self.score(features).flatten(1).float(), dim=1).to(features.dtype)
        attention = weights.view(batch, 1, height, width)
        pooled = (features * attention).sum(dim=(2, 3))
        return pooled, attention[:, 0]


class Grader(nn.Module):
    """timm backbone + DR head + DME head, each with its own attention pooling.

    Args:
        encoder: timm model name.
        num_dr, num_dme: classes per head.
        drop_rate: dropout before each linear head.
    """

    def __init__(
        self,
        encoder: str,
        num_dr: int = NUM_DR,
        num_dme: int = NUM_DME,
        drop_rate: float = 0.2,
        temperature: tuple[float, float] = (1.0, 1.0),
        layer_scale_init: float | None = None,
        neck_channels: int | None = None,
    ) -> None:
        super().__init__()
        # Temperature scaling of the DR and DME logits (fitted after training on out-of-fold logits,
        # stored in the card). Not persistent: weights files stay the same with or without it.
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32), persistent=False)
        # ConvNeXt's layer scale starts its blocks at 1e-6 (identity); trained from scratch on a few
        # hundred photographs they stay near it, so a from-scratch run may start them larger (training
        # only: loaded weights carry their own values)
        if layer_scale_init and not encoder.startswith(("convnext", "test_convnext")):
            raise ValueError(f"layer_scale_init is for ConvNeXt backbones, not {encoder}")
        kwargs = {"ls_init_value": layer_scale_init} if layer_scale_init else {}
        self.backbone = timm.create_model(encoder, pretrained=False, num_classes=0, global_pool="", **kwargs)
        channels = self.backbone.num_features
        # optional neck to ``neck_channels`` (layer norm, 1x1 conv, ReLU6): a distilled student's features
        # then live in its teacher's feature space and start from the teacher's own pools and heads. Layer
        # norm, not batch norm: batch statistics of 8 augmented photographs did not carry over to eval.
        self.neck: nn.Module = nn.Identity()
        if neck_channels:
            self.neck = nn.Sequential(
                LayerNorm2d(channels), nn.Conv2d(channels, neck_channels, kernel_size=1), nn.ReLU6()
            )
            channels = neck_channels
        self.dr_pool = AttentionPool(channels)
        self.dme_pool = AttentionPool(channels)
        self.dropout = nn.Dropout(drop_rate)
        self.dr_head = nn.Linear(channels, num_dr)
        self.dme_head = nn.Linear(channels, num_dme)
        self.num_dr = num_dr

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised RGB -> (B, C, h, w) feature map (through the neck, if any)."""
        return self.neck(self.backbone.forward_features(x))

    def forward_head(
        self, features: torch.Tensor, with_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> (B, num_dr + num_dme) logits; with ``with_attention`` also the DR and DME
        attention maps (B, h, w), for training losses that supervise them."""
        dr, dr_attention = self.dr_pool(features)
        dme, dme_attention = self.dme_pool(features)
        dr_logits = self.dr_head(self.dropout(dr)) / self.temperature[0]
        dme_logits = self.dme_head(self.dropout(dme)) / self.temperature[1]
        logits = torch.cat([dr_logits, dme_logits], dim=1)
        return (logits, dr_attention, dme_attention) if with_attention else logits

    def forward(
        self, x: torch.Tensor, with_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B, 8); ``with_attention`` adds the attention maps (one forward, as DDP needs)."""
        return self.forward_head(self.forward_features(x), with_attention)

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-disease attention, {"dr": (B, h, w), "dme": (B, h, w)}, each summing to 1 over the map."""
        features = self.forward_features(x)
        return {"dr": self.dr_pool(features)[1], "dme": self.dme_pool(features)[1]}

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[:, : self.num_dr], logits[:, self.num_dr :]


def _create_grader(card: ModelCard) -> Grader:
    temperature = card.extra.get("temperature") or {}
    model = Grader(
        card.encoder,
        num_dr=card.num_classes,
        drop_rate=float(card.extra.get("drop_rate", 0.2)),
        temperature=(float(temperature.get("dr", 1.0)), float(temperature.get("dme", 1.0))),
        layer_scale_init=card.extra.get("layer_scale_init"),
        neck_channels=card.extra.get("neck_channels"),
    )
    if card.extra.get("imagenet_init", False):
        if card.encoder not in LITE0_ENCODERS:
            raise ValueError(f"ImageNet init is only available offline for {', '.join(LITE0_ENCODERS)}")
        load_lite0_into(model.backbone)
    return model


_TARGET_LAYERS = {
    "tf_efficientnet_lite0": "backbone.bn2",
    "convnext_atto": "backbone.stages.3",
    "convnext_femto": "backbone.stages.3",
    "test_convnext": "backbone.stages.3",
}


def grader_card(encoder: str, input_size: int = 384, name: str = "grader", **extra: object) -> ModelCard:
    """A card for a grader on ``encoder`` with its normalisation and Grad-CAM layer filled in."""
    lite = encoder.startswith("tf_efficientnet_lite")
    return ModelCard(
        name=name,
        arch="grader",
        encoder=encoder,
        num_classes=NUM_DR,
        input_size=input_size,
        mean=(0.5, 0.5, 0.5) if lite else (0.485, 0.456, 0.406),
        std=(0.5, 0.5, 0.5) if lite else (0.229, 0.224, 0.225),
        label_names=DR_GRADE_NAMES + DME_NAMES,
        target_layer=_TARGET_LAYERS.get(encoder, "backbone"),
        task="DR grade (5 classes, columns 0-4) and DME risk (3 classes, columns 5-7), multi-task",
        extra=dict(extra),
    )


@register_model("grader")
def grader(card: ModelCard) -> Grader:
    """Production grader: any timm backbone named in the card."""
    return _create_grader(card)


@register_model("test_tiny_cls")
def test_tiny_cls(card: ModelCard) -> Grader:
    """Tiny random-weight grader for tests (timm's ``test_convnext``, ~0.2 M parameters)."""
    return _create_grader(
        card.with_updates(encoder="test_convnext", extra={**card.extra, "imagenet_init": False})
    )
