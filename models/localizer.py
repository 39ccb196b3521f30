"""Optic-disc and fovea localizer by heatmap regression.

A small smp U-Net (``tf_efficientnet_lite0`` encoder, offline ImageNet init) maps the 256-px field-of-view
crop to two heatmaps, one Gaussian per landmark. ``decode_heatmaps`` turns them into sub-pixel centres (a
soft-argmax in a window around the peak) and a confidence (the peak's sigmoid height), so a missing or
occluded landmark reads as low confidence instead of a confident wrong point.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from models._registry import register_model
from models.card import ModelCard
from models.pretrained import load_lite0_into

__all__ = ["LANDMARKS", "decode_heatmaps", "decode_landmarks", "fovea_search_mask", "localizer_card"]

LANDMARKS: tuple[str, ...] = ("optic_disc", "fovea")


def _create_localizer(card: ModelCard, decoder: tuple[int, ...]) -> nn.Module:
    model = smp.Unet(
        encoder_name=f"tu-{card.encoder}",
        encoder_weights=None,
        encoder_depth=len(decoder),
        decoder_channels=decoder,
        classes=len(LANDMARKS),
        activation=None,
    )
    # CenterNet's prior: start every pixel at probability 0.1, so the focal loss does not begin huge.
    nn.init.constant_(model.segmentation_head[0].bias, -2.19)
    if card.extra.get("imagenet_init", False):
        load_lite0_into(model.encoder.model)
    return model


def decode_heatmaps(logits: torch.Tensor, window: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap logits (B, K, H, W) -> centres (B, K, 2) as (x, y) in map pixels, and confidence (B, K).

    The centre is the probability-weighted mean inside a ``window``-radius box around the arg-max, which
    is sub-pixel yet immune to a second, weaker blob elsewhere.
    """
    batch, k, height, width = logits.shape
    probs = torch.sigmoid(logits.float())
    flat = probs.flatten(2)
    peak, index = flat.max(dim=2)
    py, px = index // width, index % width
    ys = torch.arange(height, dtype=torch.float32, device=logits.device).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32, device=logits.device).view(1, 1, 1, width)
    box = ((ys - py[..., None, None]).abs() <= window) & ((xs - px[..., None, None]).abs() <= window)
    weights = probs * box
    total = weights.sum(dim=(2, 3)).clamp_min(1e-8)
    cx = (weights * xs).sum(dim=(2, 3)) / total
    cy = (weights * ys).sum(dim=(2, 3)) / total
    return torch.stack([cx, cy], dim=-1), peak


def fovea_search_mask(
    od_xy: torch.Tensor, size: int, inner: float = 0.22, outer: float = 0.55
) -> torch.Tensor:
    """(B, 1, size, size) annulus around each optic disc where the fovea may lie.

    Anatomy: the fovea sits about 2.5 disc diameters (4.5 mm) from the disc centre, and a 45-degree
    field of view is about 12 mm across, so on a field-of-view crop the distance is roughly 0.3-0.45 of
    the side; [0.22, 0.55] leaves room for other fields of view and framings.
    """
    coords = torch.arange(size, dtype=torch.float32, device=od_xy.device)
    dx = coords.view(1, 1, 1, size) - od_xy[:, 0].view(-1, 1, 1, 1)
    dy = coords.view(1, 1, size, 1) - od_xy[:, 1].view(-1, 1, 1, 1)
    distance = torch.sqrt(dx**2 + dy**2) / size
    return ((distance >= inner) & (distance <= outer)).float()


def decode_landmarks(
    logits: torch.Tensor, anatomical_prior: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (B, 2, H, W) optic-disc / fovea heatmaps; with the prior, the fovea is searched only in the
    annulus around the detected disc, which removes far-off false peaks (the disc is the easy one)."""
    centres, peaks = decode_heatmaps(logits)
    if not anatomical_prior:
        return centres, peaks
    mask = fovea_search_mask(centres[:, 0], logits.shape[-1])
    masked = logits[:, 1:2].float().masked_fill(mask == 0, -1e4)
    fovea, fovea_peak = decode_heatmaps(masked)
    return torch.cat([centres[:, :1], fovea], dim=1), torch.cat([peaks[:, :1], fovea_peak], dim=1)


def localizer_card(
    encoder: str = "tf_efficientnet_lite0", input_size: int = 256, name: str = "localizer", **extra: object
) -> ModelCard:
    return ModelCard(
        name=name,
        arch="localizer",
        encoder=encoder,
        num_classes=len(LANDMARKS),
        input_size=input_size,
        label_names=LANDMARKS,
        target_layer="decoder",
        task="Gaussian heatmaps of the optic-disc and fovea centres",
        extra={"sigma_px": 4.0, **extra},
    )


@register_model("localizer")
def localizer(card: ModelCard) -> nn.Module:
    return _create_localizer(card, tuple(card.extra.get("decoder_channels", (64, 32, 16, 16))))


@register_model("test_tiny_loc")
def test_tiny_loc(card: ModelCard) -> nn.Module:
    return _create_localizer(card.with_updates(extra={**card.extra, "imagenet_init": False}), (16, 8, 8))
