"""Optic-disc and fovea localizer by heatmap regression.

A small smp U-Net (``tf_efficientnet_lite0`` encoder, offline ImageNet init) maps the field-of-view crop
to two heatmaps, one Gaussian per landmark. ``decode_heatmaps`` turns them into sub-pixel centres (a
soft-argmax in a window around the peak) and a confidence (the peak's sigmoid height), so a missing or
occluded landmark reads as low confidence instead of a confident wrong point.

The fovea is then chosen with anatomy (``decode_landmarks``): with a ``LandmarkPrior`` in the card (where
the fovea lies relative to the disc, fitted on the training split's annotated centres), the peak is the
most probable point under heatmap x prior; without one, the highest peak in an annulus around the disc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from models._registry import register_model
from models.card import ModelCard
from models.preprocess import CROP_MARGIN
from models.pretrained import load_lite_into

__all__ = [
    "LANDMARKS",
    "LandmarkPrior",
    "decode_heatmaps",
    "decode_landmarks",
    "fovea_position",
    "fovea_search_mask",
    "localizer_card",
]

LANDMARKS: tuple[str, ...] = ("optic_disc", "fovea")
PRIOR_WIDENING = 2.0  # the prior's spread is doubled when choosing the peak: a clear peak anywhere
# plausible wins; only a faint or far-off one gives way (chosen before measuring, README "localization")


def fovea_position(
    fovea_xy: tuple[float, float], od_xy: tuple[float, float], centre_x: float, radius: float
) -> tuple[float, float]:
    """Where a fovea lies relative to the disc centre, in field radii: (temporal, downward). Temporal is
    towards the field's centre (``centre_x``), away from the side the disc is on, so both eyes compare."""
    temporal = 1.0 if centre_x >= od_xy[0] else -1.0
    return temporal * (fovea_xy[0] - od_xy[0]) / radius, (fovea_xy[1] - od_xy[1]) / radius


@dataclass(frozen=True)
class LandmarkPrior:
    """Where the fovea lies and how big the disc is, in field-of-view radii (R), from annotated images.

    Attributes:
        fovea_offset: mean (temporal, downward) position of the fovea relative to the disc centre, in R
            (temporal: towards the field's centre, away from the disc's side).
        fovea_spread: standard deviation of each, in R.
        disc_diameter: mean disc diameter in R; ``disc_range`` the smallest and largest seen.
        source: what it was fitted on (for the card).
    """

    fovea_offset: tuple[float, float]
    fovea_spread: tuple[float, float]
    disc_diameter: float
    disc_range: tuple[float, float]
    source: str = ""

    @classmethod
    def from_card(cls, card: ModelCard) -> LandmarkPrior | None:
        data = card.extra.get("landmark_prior")
        if not data:
            return None
        return cls(
            fovea_offset=tuple(data["fovea_offset_r"]),
            fovea_spread=tuple(data["fovea_spread_r"]),
            disc_diameter=float(data["disc_diameter_r"]),
            disc_range=tuple(data["disc_diameter_range_r"]),
            source=str(data.get("source", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fovea_offset_r": list(self.fovea_offset),
            "fovea_spread_r": list(self.fovea_spread),
            "disc_diameter_r": self.disc_diameter,
            "disc_diameter_range_r": list(self.disc_range),
            "source": self.source,
        }

    def fovea_deviation(
        self, fovea_xy: tuple[float, float], od_xy: tuple[float, float], centre_x: float, radius: float
    ) -> tuple[float, float]:
        """The fovea's offset from its expected place, per axis in spreads (0, 0: exactly expected).
        Any pixel frame; ``centre_x`` and ``radius`` are the field of view's in that frame."""
        dx, dy = fovea_position(fovea_xy, od_xy, centre_x, radius)
        return (
            (dx - self.fovea_offset[0]) / self.fovea_spread[0],
            (dy - self.fovea_offset[1]) / self.fovea_spread[1],
        )

    def log_map(self, od_xy: torch.Tensor, size: int, widening: float = PRIOR_WIDENING) -> torch.Tensor:
        """(B, 1, size, size) log prior density (up to a constant) of the fovea on a field-of-view crop,
        given each image's disc centre (B, 2) in crop pixels."""
        radius = size / (2 * (1 + CROP_MARGIN))
        centre = (size - 1) / 2
        temporal = torch.where(od_xy[:, 0] <= centre, 1.0, -1.0).view(-1, 1, 1, 1)
        mean_x = od_xy[:, 0].view(-1, 1, 1, 1) + temporal * self.fovea_offset[0] * radius
        mean_y = od_xy[:, 1].view(-1, 1, 1, 1) + self.fovea_offset[1] * radius
        coords = torch.arange(size, dtype=torch.float32, device=od_xy.device)
        zx = (coords.view(1, 1, 1, size) - mean_x) / (widening * self.fovea_spread[0] * radius)
        zy = (coords.view(1, 1, size, 1) - mean_y) / (widening * self.fovea_spread[1] * radius)
        return -0.5 * (zx**2 + zy**2)


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
        load_lite_into(model.encoder.model, card.encoder)
    return model


def decode_heatmaps(
    logits: torch.Tensor, window: int = 5, select: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap logits (B, K, H, W) -> centres (B, K, 2) as (x, y) in map pixels, and confidence (B, K).

    The centre is the probability-weighted mean inside a ``window``-radius box around the arg-max, which
    is sub-pixel yet immune to a second, weaker blob elsewhere. ``select`` (same shape), when given, is
    the score whose arg-max picks the peak (the heatmap's own probabilities still weight the centre and
    give the confidence).
    """
    batch, k, height, width = logits.shape
    probs = torch.sigmoid(logits.float())
    _, index = (probs if select is None else select).flatten(2).max(dim=2)
    peak = probs.flatten(2).gather(2, index[..., None])[..., 0]
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
    logits: torch.Tensor, anatomical_prior: bool = True, prior: LandmarkPrior | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (B, 2, H, W) optic-disc / fovea heatmaps of a square field-of-view crop.

    The disc is the easy one: its highest peak. The fovea, with ``anatomical_prior``: with a ``prior``, the
    peak that is most probable under heatmap x prior (a faint or far-off peak gives way to a plausible one,
    and a flat heatmap still yields a point where a fovea can be); without, the highest peak in the
    annulus around the disc (``fovea_search_mask``).
    """
    centres, peaks = decode_heatmaps(logits)
    if not anatomical_prior:
        return centres, peaks
    fovea_logits = logits[:, 1:2].float()
    if prior is not None:
        log_prob = torch.nn.functional.logsigmoid(fovea_logits)
        select = log_prob + prior.log_map(centres[:, 0], logits.shape[-1])
        fovea, fovea_peak = decode_heatmaps(fovea_logits, select=select)
    else:
        mask = fovea_search_mask(centres[:, 0], logits.shape[-1])
        fovea, fovea_peak = decode_heatmaps(fovea_logits.masked_fill(mask == 0, -1e4))
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
