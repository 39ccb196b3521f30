"""The fovea-refiner task: the fovea centre as a heatmap in a window around it (``models.refiners``).

Windows are cut from a 1024-px localization cache (``drwb prepare --parts localization --size 1024``,
built on first use). Every window is centred on the annotated fovea moved by up to ``JITTER_R`` field
radii (training: a new draw each time, with scale 0.9-1.1, rotation and flips; validation: one fixed
draw per image, so the answer is never simply the window's centre). The split is the grader's and the
localizer's (the 83 grading validation images are held out), so `drwb evaluate --task fovea` scores
images the refiner never saw.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from models.card import ModelCard
from models.localizer import decode_heatmaps
from models.preprocess import CROP_MARGIN
from models.refiners import fovea_card
from models.window import extract_window, window_matrix
from training.augment import AugmentConfig
from training.data import _CacheData, gaussian_heatmaps
from training.losses import centernet_focal_loss
from training.prepare import load_index
from training.tasks._base import TrainTask, register_task

__all__ = ["FoveaData", "FoveaTask"]

CACHE_SIZE = 1024  # the localization cache the windows are cut from
JITTER_R = 0.1  # window centres: the annotated fovea moved by up to this many field radii


class FoveaData(_CacheData):
    """Items: (window (3, S, S), heatmap (1, S, S), fovea (x, y) in window px, original-4288 px per
    window px)."""

    def __init__(self, *args: object, window_r: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.window_r = window_r

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        entry, image = self.entries[index], self._image(index)
        # validation draws its one offset from epoch 0 whatever the epoch: the same windows every time
        rng = self._rng(index) if self.augment is not None else np.random.default_rng([self.seed, 0, index])
        radius = image.shape[0] / (2 * (1 + CROP_MARGIN))
        size = self.card.input_size
        centre = np.asarray(entry.fovea_xy, float) + rng.uniform(-JITTER_R, JITTER_R, 2) * radius
        zoom = rng.uniform(*self.augment.scale_range) if self.augment is not None else 1.0
        matrix = np.vstack([window_matrix(tuple(centre), radius * zoom, self.window_r, size), [0, 0, 1]])
        if self.augment is not None:
            half = (size - 1) / 2
            turn = np.vstack([cv2.getRotationMatrix2D((half, half), rng.uniform(-20, 20), 1.0), [0, 0, 1]])
            if rng.random() < 0.5:
                turn = turn @ np.array([[-1, 0, size - 1], [0, 1, 0], [0, 0, 1]], np.float64)
            matrix = turn @ matrix
        window = extract_window(image, matrix[:2], size)
        point = matrix[:2] @ np.array([*entry.fovea_xy, 1.0])
        heat = gaussian_heatmaps(point[None], size, float(self.card.extra.get("sigma_px", 3.0)))
        # window px -> crop px -> original px -> px of a 4288-wide photograph (the challenge frame)
        scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
        challenge_px = 4288.0 / entry.original_size[1] / entry.matrix[0][0] / scale
        return (
            self._tensor(window, rng),
            torch.from_numpy(heat),
            torch.from_numpy(point.astype(np.float32)),
            challenge_px,
        )


@register_task("fovea")
class FoveaTask(TrainTask):
    def recipe(self) -> dict[str, Any]:
        across = self.card().extra["window_r"] * 2
        return {
            "windows": f"{across:.2f} field radii across, centred on the annotated fovea moved by up to "
            f"{JITTER_R} R; training: scale 0.9-1.1, rotation +-20 deg, flips; "
            f"{self.cfg.tiles_per_image} per photograph per epoch, cut from the {CACHE_SIZE}-px crop",
            "loss": "CenterNet focal loss on a Gaussian heatmap of the fovea",
        }

    def card(self) -> ModelCard:
        card = fovea_card(
            self.cfg.backbone,
            self.cfg.input_size or 256,
            name=self.cfg.model_name or "fovea",
            imagenet_init=not self.cfg.no_pretrained,
        )
        return card.with_updates(extra={**card.extra, "source_window_px": self._source_window_px(card)})

    def _source_window_px(self, card: ModelCard) -> float:
        """Median side of a training window in the photographs' own pixels (IDRiD's grading photographs
        are 1072 px wide here): inference on sharper photographs brings its window down to this detail
        first (``workbench.landmarks.fovea``), so the refiner never sees finer detail than it learnt from."""
        train_names, _ = self._grading_split()
        entries = [e for e in load_index(self._cache("localization", CACHE_SIZE)) if e.name in train_names]
        radius = CACHE_SIZE / (2 * (1 + CROP_MARGIN))
        sides = [2 * card.extra["window_r"] * radius / e.matrix[0][0] for e in entries]
        return round(float(np.median(sides)), 1) if sides else 0.0

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        folder = self._cache("localization", CACHE_SIZE)
        train_names, val_names = self._grading_split()  # the localizer's split
        entries = [e for e in load_index(folder) if e.fovea_xy is not None]
        window_r = card.extra["window_r"]

        def data(names: set[str], augment: AugmentConfig | None) -> FoveaData:
            chosen = self._limit([e for e in entries if e.name in names])
            return FoveaData(folder, chosen, card, augment, self.cfg.seed, window_r=window_r)

        return data(train_names, AugmentConfig(scale_range=(0.9, 1.1))), data(val_names, None)

    def epoch_indices(self, train: Dataset, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(np.tile(np.arange(len(train)), self.cfg.tiles_per_image))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, heat, _, _ = batch
        return centernet_focal_loss(model(images).float(), heat)

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        errors, peaks = [], []
        for images, _, points, challenge_px in batches:
            centres, peak = decode_heatmaps(model(images))
            errors.append((centres[:, 0] - points).norm(dim=-1) * challenge_px)
            peaks.append(peak[:, 0])
        err = torch.cat(errors).float().cpu().numpy()
        return {
            "fovea_mean_px": float(err.mean()),
            "fovea_median_px": float(np.median(err)),
            "peak_median": float(torch.cat(peaks).median()),
            "score": -float(err.mean()),
            "note": f"windows centred up to {JITTER_R} R from the annotated fovea (one fixed draw per image)",
        }
