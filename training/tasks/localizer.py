"""The localizer task: disc and fovea heatmaps, decoded with the landmark prior fitted for the run."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from models.card import ModelCard
from models.localizer import LandmarkPrior, decode_landmarks, localizer_card
from training.augment import AugmentConfig
from training.data import LocalizationData
from training.landmark_prior import fit_landmark_prior
from training.losses import centernet_focal_loss
from training.prepare import load_index
from training.tasks._base import TrainTask, register_task
from workbench.metrics import localization_metrics

__all__ = ["LocalizerTask"]


@register_task("localizer")
class LocalizerTask(TrainTask):
    def card(self) -> ModelCard:
        return localizer_card(
            self.cfg.backbone,
            self.cfg.input_size or 256,
            name=self.cfg.model_name or "localizer",
            imagenet_init=not self.cfg.no_pretrained,
            landmark_prior=self._prior.to_dict(),
        )

    @cached_property
    def _prior(self) -> LandmarkPrior:
        """Fitted on this run's training images' annotations only (training.landmark_prior)."""
        train_names, _ = self._grading_split()
        return fit_landmark_prior(self.cfg.data, train_names, self.cfg.val_fraction, self.cfg.split_seed)

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        folder = self._cache("localization", 512)
        train_names, val_names = self._grading_split()  # same 413 images as grading: same split
        entries = load_index(folder)
        train = self._limit([e for e in entries if e.name in train_names])
        val = self._limit([e for e in entries if e.name in val_names])
        return (
            LocalizationData(folder, train, card, AugmentConfig(scale_range=(0.9, 1.1)), self.cfg.seed),
            LocalizationData(folder, val, card, None, self.cfg.seed),
        )

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, heat, _, _ = batch
        return centernet_focal_loss(model(images).float(), heat)

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        errors = []
        use_prior = bool(self.card().extra.get("anatomical_prior", True))
        for images, _, points, challenge_px in batches:
            # the same decoder as inference and `drwb evaluate` (the landmark prior for the fovea)
            centres, _ = decode_landmarks(model(images), use_prior, self._prior)
            # input px -> px of a 4288-wide original, per image (IDRiD challenge frame)
            errors.append((centres - points).norm(dim=-1) * challenge_px[:, None])
        err = torch.cat(errors).float().cpu().numpy()
        return localization_metrics(err[:, 0], err[:, 1])
