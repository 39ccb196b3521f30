"""The segmenter task: lesion-centred tiles, focal BCE + soft Dice, AUPR per lesion type."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from models.card import ModelCard
from models.constants import LESION_CODES
from models.segmenter import segmenter_card
from training.augment import AugmentConfig
from training.data import SegmentationData
from training.prepare import load_index
from training.tasks._base import TrainTask, register_task
from workbench.io.splits import split_names
from workbench.metrics import PixelCurve, segmentation_metrics

__all__ = ["SegmenterTask", "parse_rates"]


def parse_rates(text: str) -> dict[str, float]:
    """ "MA:0.3,SE:0.2" -> {"MA": 0.3, "SE": 0.2} (empty text: {})."""
    rates = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        code, _, value = part.partition(":")
        if code not in LESION_CODES or not value:
            raise ValueError(
                f"lesion rate {part!r}: expected CODE:RATE with CODE one of {', '.join(LESION_CODES)}"
            )
        rates[code] = float(value)
    return rates


@register_task("segmenter")
class SegmenterTask(TrainTask):
    def recipe(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "tiles": f"{cfg.tile} px windows of the {cfg.input_size or 1024}-px field-of-view crop, "
            f"{cfg.tiles_per_image} per image per epoch, centred on lesions at rates "
            f"{cfg.lesion_rates or 'union of lesions half of the time'}, elsewhere at random",
            "loss": (f"focal (gamma {cfg.focal_gamma}) " if cfg.focal_gamma else "")
            + "BCE + soft Dice per lesion type, on annotated types only",
        }

    def card(self) -> ModelCard:
        return segmenter_card(
            self.cfg.backbone,
            self.cfg.input_size or 1024,
            name=self.cfg.model_name or "segmenter",
            imagenet_init=not self.cfg.no_pretrained,
        )

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        folder = self._cache("segmentation", card.input_size)
        entries = load_index(folder)
        split = split_names([e.name for e in entries], self.cfg.val_fraction, self.cfg.split_seed)
        train = self._limit([e for e in entries if e.name in set(split.train)])
        val = self._limit([e for e in entries if e.name in set(split.val)])
        tile, rates = self.cfg.tile, parse_rates(self.cfg.lesion_rates)
        return (
            SegmentationData(
                folder, train, card, AugmentConfig(), self.cfg.seed, tile=tile, lesion_rates=rates
            ),
            SegmentationData(folder, val, card, None, self.cfg.seed, tile=tile),
        )

    def epoch_indices(self, train: Dataset, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(np.tile(np.arange(len(train)), self.cfg.tiles_per_image))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, masks, annotated = batch
        logits = model(images).float()
        valid = annotated[:, :, None, None].float()
        bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
        prob = torch.sigmoid(logits)
        if self.cfg.focal_gamma > 0:
            # focal weighting (Lin et al. 2017): easy background pixels, the vast majority, count little
            p_true = prob * masks + (1 - prob) * (1 - masks)
            bce = bce * (1 - p_true).pow(self.cfg.focal_gamma)
        bce = (bce * valid).sum() / valid.expand_as(bce).sum().clamp_min(1)
        inter = (prob * masks * valid).sum(dim=(0, 2, 3))
        union = ((prob + masks) * valid).sum(dim=(0, 2, 3))
        dice = 1 - (2 * inter + 1) / (union + 1)
        return bce + dice.mean()

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        from workbench.inference import predict_tiles

        curves = {code: PixelCurve() for code in LESION_CODES}
        for images, masks, annotated in batches:
            for image, mask, flags in zip(images, masks, annotated, strict=True):
                prob = predict_tiles(model, image, self.cfg.tile, 64)
                for c, code in enumerate(LESION_CODES):
                    if flags[c]:
                        # soft masks hold area fractions: half a pixel or more is lesion (area-preserving)
                        curves[code].add(prob[c], mask[c].cpu().numpy() >= 0.5)
        # Best-Dice thresholds travel in the card; the workbench binarises lesion maps with them.
        return segmentation_metrics(curves)
