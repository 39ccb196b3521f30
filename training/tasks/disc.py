"""The disc-refiner task: the optic disc segmented in a window around its centre (``models.refiners``).

Windows are cut from the 2048-px segmentation cache. Training windows are centred on the annotated
disc's centroid moved by up to ``JITTER_R`` field radii (the localizer that centres them at inference is
off by ~0.01 R on average), scaled by 0.9-1.1, rotated and
flipped; validation windows sit on the annotated centre. Training photographs exclude the segmentation
validation split and every photograph whose grading copy is a held-out grading image, so the disc
centres `drwb evaluate --task disc` scores on the 83 grading validation images are unseen too.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from models.card import ModelCard
from models.constants import LESION_CODES
from models.preprocess import CROP_MARGIN
from models.refiners import disc_card
from models.window import extract_window, window_matrix
from training.augment import AugmentConfig
from training.data import _CacheData
from training.prepare import CacheEntry, load_index
from training.tasks._base import TrainTask, register_task
from workbench.io.idrid import IDRiD, seg_to_grading
from workbench.io.splits import split_names, split_train_val
from workbench.metrics import PixelCurve

__all__ = ["DiscData", "DiscTask", "disc_training_names"]

log = logging.getLogger(__name__)

CACHE_SIZE = 2048  # the segmentation cache the windows are cut from
JITTER_R = 0.08  # training windows' centre: the annotated disc's, moved by up to this many field radii
OD = LESION_CODES.index("OD")


def disc_training_names(data: str, names: list[str], val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val) segmentation photographs of the refiner: val is the segmenter's validation split;
    train leaves out, besides it, photographs whose grading copy is a held-out grading image."""
    val = set(split_names(names, val_fraction, seed).val)
    held_grading = set(split_train_val(IDRiD(data).grading("train"), val_fraction, seed).val)
    copies = seg_to_grading(data)
    if not copies:
        log.warning(
            "%s has no table of segmentation photographs that are also grading photographs (extras/): "
            "held-out grading photographs cannot be kept out of the disc refiner's training",
            data,
        )
    train = [n for n in names if n not in val and copies.get(n) not in held_grading]
    return sorted(train), sorted(val)


class DiscData(_CacheData):
    """Items: (window image (3, S, S), soft disc mask (1, S, S)) around each photograph's disc."""

    def __init__(self, *args: object, window_r: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.window_r = window_r
        self._discs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _disc(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(soft disc mask of the cached crop as uint8, its centroid)."""
        if index not in self._discs:
            with np.load(self.folder / f"{self.entries[index].name}.masks.npz", allow_pickle=False) as data:
                mask = np.ascontiguousarray(data["masks"][OD])  # uint8 area fractions x 255 (4 MB, not 17)
            ys, xs = np.nonzero(mask >= 128)
            if not len(xs):
                raise ValueError(f"{self.entries[index].name}: the optic-disc mask is empty")
            self._discs[index] = mask, np.array([xs.mean(), ys.mean()])
        return self._discs[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng, image = self._rng(index), self._image(index)
        mask, centre = self._disc(index)
        radius = image.shape[0] / (2 * (1 + CROP_MARGIN))
        size = self.card.input_size
        if self.augment is None:
            matrix = window_matrix(tuple(centre), radius, self.window_r, size)
        else:
            moved = centre + rng.uniform(-JITTER_R, JITTER_R, 2) * radius
            zoom = rng.uniform(*self.augment.scale_range)
            matrix = window_matrix(tuple(moved), radius * zoom, self.window_r, size)
            half = (size - 1) / 2
            turn = np.vstack([cv2.getRotationMatrix2D((half, half), rng.uniform(-20, 20), 1.0), [0, 0, 1]])
            if rng.random() < 0.5:
                turn = turn @ np.array([[-1, 0, size - 1], [0, 1, 0], [0, 0, 1]], np.float64)
            matrix = (turn @ np.vstack([matrix, [0, 0, 1]]))[:2]
        window = extract_window(image, matrix, size)
        target = extract_window(mask, matrix, size).astype(np.float32) / 255.0
        return self._tensor(window, rng), torch.from_numpy(target[None])


@register_task("disc")
class DiscTask(TrainTask):
    def recipe(self) -> dict[str, Any]:
        across = self.card().extra["window_r"] * 2
        return {
            "windows": f"{across:.2f} field radii across, centred on the annotated disc moved by up to "
            f"{JITTER_R} R, scale 0.9-1.1, rotation +-20 deg, flips; "
            f"{self.cfg.tiles_per_image} per photograph per epoch, cut from the {CACHE_SIZE}-px crop",
            "loss": "BCE + soft Dice on the soft disc mask",
        }

    def card(self) -> ModelCard:
        return disc_card(
            self.cfg.backbone,
            self.cfg.input_size or 448,
            name=self.cfg.model_name or "disc",
            imagenet_init=not self.cfg.no_pretrained,
        )

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        folder = self._cache("segmentation", CACHE_SIZE)
        entries = [e for e in load_index(folder) if "OD" in e.annotated]
        train_names, val_names = disc_training_names(
            self.cfg.data, [e.name for e in entries], self.cfg.val_fraction, self.cfg.split_seed
        )

        def pick(names: list[str]) -> list[CacheEntry]:
            return self._limit([e for e in entries if e.name in set(names)])

        window_r = card.extra["window_r"]
        augment = AugmentConfig(scale_range=(0.9, 1.1))
        return (
            DiscData(folder, pick(train_names), card, augment, self.cfg.seed, window_r=window_r),
            DiscData(folder, pick(val_names), card, None, self.cfg.seed, window_r=window_r),
        )

    def epoch_indices(self, train: Dataset, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(np.tile(np.arange(len(train)), self.cfg.tiles_per_image))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, masks = batch
        logits = model(images).float()
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * masks).sum() + 1) / ((prob + masks).sum() + 1)
        return F.binary_cross_entropy_with_logits(logits, masks) + dice

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        curve = PixelCurve()
        for images, masks in batches:
            prob = torch.sigmoid(model(images).float()).cpu().numpy()
            curve.add(prob, masks.cpu().numpy() >= 0.5)
        dice, threshold = curve.best_dice()
        return {
            "dice_OD": dice,
            "threshold_OD": threshold,
            "jaccard_OD": curve.jaccard_at(threshold),
            "aupr_OD": curve.aupr(),
            "score": curve.jaccard_at(threshold),  # as `drwb evaluate --task disc` scores (default_model)
            "note": "windows centred on the annotated disc, at the window's resolution",
        }
