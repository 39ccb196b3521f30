"""Multi-task DR / DME grader with one spatial attention map per disease.

Layout follows ``timm/models/convnext.py``: blocks first, then the module, then ``_create_grader``, then
small registered builders. The network is a timm backbone (``forward_features``) and a head
(``forward_head``) that pools the feature map twice, once per disease, each through its own learned
spatial attention (in the spirit of CANet's disease-specific attention). Those attention maps are the
grader's own explanation and are exposed by ``attention_maps``.

``forward`` returns one (B, 8) tensor: DR logits in columns 0-4, DME logits in columns 5-7. A single
tensor (rather than a tuple) lets Grad-CAM and captum select a target by column index.

A grader may also attend at a finer stride (``FineAttention``, card ``extra.fine_attention``): its maps
are then 4x finer than the final feature map (56 cells across at 448 px instead of 14), and they are the
weights that pool what the heads read, so a finer map is still the network's own evidence.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from models._registry import register_model
from models.card import ModelCard
from models.constants import DME_NAMES, DR_GRADE_NAMES
from models.pretrained import load_lite_into

__all__ = ["AttentionPool", "FineAttention", "Grader", "NUM_DME", "NUM_DR", "grader_card"]

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


class FineAttention(nn.Module):
    """One attention map per disease at an earlier stage's stride (8 for lite0: 56 cells at 448 px).

    Each map is a softmax over the fine grid of (a small network's score of the fine features) + (the
    coarse pool's score, nearest-upsampled). It pools twice, and both feed the heads:
    - the final feature map, each coarse cell weighted by the attention summed over its fine cells;
    - a projection of the fine features, weighted cell by cell (``fine_logits`` reads it).
    The score network's last layer and ``dr_head`` / ``dme_head`` start at zero, so a grader given this
    module computes exactly what it computed without it, and training moves from there.

    Args:
        in_channels: channels of the fine feature map.
        num_dr, num_dme: classes per head.
        width: channels of the fine projection.
    """

    def __init__(self, in_channels: int, num_dr: int, num_dme: int, width: int = 64) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1), nn.ReLU(), nn.Conv2d(32, 2, kernel_size=1)
        )
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)
        self.project = nn.Sequential(nn.Conv2d(in_channels, width, kernel_size=1), nn.ReLU6())
        self.dr_head = nn.Linear(width, num_dr)
        self.dme_head = nn.Linear(width, num_dme)
        for head in (self.dr_head, self.dme_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(
        self, fine: torch.Tensor, coarse_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fine features (B, Cf, H, W), coarse scores (B, 2, h, w) -> attention (B, 2, H, W), its mass
        per coarse cell (B, 2, h, w) and the fine features pooled per disease (B, 2, width)."""
        batch, _, height, width = fine.shape
        up = F.interpolate(coarse_scores.float(), size=(height, width), mode="nearest")
        scores = self.score(fine).float() + up
        attention = torch.softmax(scores.flatten(2), dim=2).view(batch, 2, height, width)
        # mass per coarse cell: block sums where the grids nest (448 px: 4x4 fine cells per coarse cell);
        # elsewhere an area average, renormalised so that it is still a distribution
        rows, cols = coarse_scores.shape[-2:]
        scale = height // rows
        if (height, width) == (rows * scale, cols * scale):
            cells = F.avg_pool2d(attention, scale) * (scale * scale)
        else:
            cells = F.adaptive_avg_pool2d(attention, (rows, cols))
            cells = cells / cells.flatten(2).sum(dim=2)[..., None, None]
        projected = self.project(fine)
        pooled = torch.einsum("bkhw,bchw->bkc", attention.to(projected.dtype), projected)
        return attention.to(fine.dtype), cells.to(fine.dtype), pooled


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
        fine_stride: int | None = None,
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
        # optional attention at a finer stride (``FineAttention``): the backbone stage whose output
        # reduces the input ``fine_stride`` times feeds it
        self.fine: FineAttention | None = None
        self.fine_index = -1
        if fine_stride:
            stages = [
                i for i, info in enumerate(self.backbone.feature_info) if info["reduction"] == fine_stride
            ]
            if not stages:
                raise ValueError(f"{encoder} has no stage at stride {fine_stride} for fine attention")
            self.fine_index = stages[-1]
            in_channels = self.backbone.feature_info[self.fine_index]["num_chs"]
            self.fine = FineAttention(in_channels, num_dr, num_dme)

    def backbone_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, S, S) -> the final feature map (through the neck) and, with fine attention, the fine
        stage's map (else None), from one pass through the backbone."""
        if self.fine is None:
            return self.forward_features(x), None
        final, (fine,) = self.backbone.forward_intermediates(x, indices=[self.fine_index])
        return self.neck(final), fine

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised RGB -> (B, C, h, w) feature map (through the neck, if any)."""
        return self.neck(self.backbone.forward_features(x))

    def _pool(
        self, features: torch.Tensor, fine: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Pooled DR and DME features, their attention maps, and the fine heads' logits (or None)."""
        if self.fine is not None and fine is None:
            raise ValueError("this grader attends at a finer stride: pass its fine map (backbone_features)")
        if self.fine is None:
            dr, dr_attention = self.dr_pool(features)
            dme, dme_attention = self.dme_pool(features)
            return dr, dme, dr_attention, dme_attention, None
        coarse = torch.cat([self.dr_pool.score(features), self.dme_pool.score(features)], dim=1)
        attention, cells, pooled = self.fine(fine, coarse)
        dr = (features * cells[:, :1]).sum(dim=(2, 3))
        dme = (features * cells[:, 1:]).sum(dim=(2, 3))
        fine_logits = torch.cat(
            [self.fine.dr_head(self.dropout(pooled[:, 0])), self.fine.dme_head(self.dropout(pooled[:, 1]))],
            dim=1,
        )
        return dr, dme, attention[:, 0], attention[:, 1], fine_logits

    def forward_head(
        self, features: torch.Tensor, with_attention: bool = False, fine: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, h, w) (and the fine stage's map, for a grader with fine attention) -> (B, num_dr +
        num_dme) logits; with ``with_attention`` also the DR and DME attention maps, for training losses
        that supervise them."""
        dr, dme, dr_attention, dme_attention, fine_logits = self._pool(features, fine)
        logits = torch.cat([self.dr_head(self.dropout(dr)), self.dme_head(self.dropout(dme))], dim=1)
        if fine_logits is not None:
            logits = logits + fine_logits.to(logits.dtype)
        logits = torch.cat(
            [logits[:, : self.num_dr] / self.temperature[0], logits[:, self.num_dr :] / self.temperature[1]],
            dim=1,
        )
        return (logits, dr_attention, dme_attention) if with_attention else logits

    def forward(
        self, x: torch.Tensor, with_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B, 8); ``with_attention`` adds the attention maps (one forward, as DDP needs)."""
        features, fine = self.backbone_features(x)
        return self.forward_head(features, with_attention, fine=fine)

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-disease attention, {"dr": (B, h, w), "dme": (B, h, w)}, each summing to 1 over the map
        (the fine grid for a grader with fine attention)."""
        _, _, dr, dme, _ = self._pool(*self.backbone_features(x))
        return {"dr": dr, "dme": dme}

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
        fine_stride=(card.extra.get("fine_attention") or {}).get("stride"),
    )
    if card.extra.get("imagenet_init", False):
        load_lite_into(model.backbone, card.encoder)  # raises for an encoder without offline weights
    return model


_TARGET_LAYERS = {
    "tf_efficientnet_lite0": "backbone.bn2",
    "tf_efficientnet_lite1": "backbone.bn2",
    "tf_efficientnet_lite2": "backbone.bn2",
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
