"""Torch datasets over the prepared cache (``training.prepare``), one per task.

Every item draws its randomness from ``default_rng([seed, epoch, position])``: the same epoch yields the
same samples whatever the worker count, and a run resumed at an epoch boundary continues exactly.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.card import ModelCard
from models.constants import LESION_CODES
from models.preprocess import normalise
from training.augment import AugmentConfig, colour_jitter, random_affine, warp_sample
from training.prepare import CacheEntry

__all__ = ["GradingData", "LocalizationData", "SegmentationData", "gaussian_heatmaps"]


def _read_rgb(folder: Path, entry: CacheEntry) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(folder / entry.file), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class _CacheData(Dataset):
    def __init__(
        self,
        folder: Path,
        entries: list[CacheEntry],
        card: ModelCard,
        augment: AugmentConfig | None,
        seed: int = 0,
    ) -> None:
        self.folder, self.entries, self.card, self.augment, self.seed = (
            Path(folder),
            entries,
            card,
            augment,
            seed,
        )
        self.epoch = 0
        self._images: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _image(self, index: int) -> np.ndarray:
        # The whole cache (413 x 512 px) fits in ~320 MB; keeping it in memory avoids PNG decodes per epoch.
        if index not in self._images:
            self._images[index] = _read_rgb(self.folder, self.entries[index])
        return self._images[index]

    def _tensor(self, rgb: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.augment is not None:
            rgb = colour_jitter(rgb, rng, self.augment)
        return torch.from_numpy(normalise(rgb, self.card.mean, self.card.std))


class GradingData(_CacheData):
    """Items: (image (3, S, S), DR grade, DME grade); grades are -1 for an unlabelled image.

    With ``guides`` (``training.guides.load_guides``) or ``teacher`` (``load_teacher``) each item also
    carries, moved by the same augmentation as the image: the lesion guide (2, g, g) float in [0, 1] with
    a "has guide" flag, and the teacher's (8,) logits with a "has teacher" flag (zeros where missing).
    ``folders`` gives the cache folder of entries that live outside ``folder`` (unlabelled images).
    """

    def __init__(
        self,
        *args: object,
        guides: dict[str, np.ndarray] | None = None,
        teacher: dict[str, np.ndarray] | None = None,
        folders: dict[str, Path] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.guides, self.teacher, self.folders = guides, teacher, folders or {}

    def _image(self, index: int) -> np.ndarray:
        if index not in self._images:
            entry = self.entries[index]
            self._images[index] = _read_rgb(self.folders.get(entry.name, self.folder), entry)
        return self._images[index]

    def __getitem__(self, index: int) -> tuple:
        entry, rng = self.entries[index], self._rng(index)
        image = self._image(index)
        matrix = random_affine(rng, image.shape[0], self.card.input_size, self.augment)
        dr = -1 if entry.dr_grade is None else int(entry.dr_grade)
        dme = -1 if entry.dme_grade is None else int(entry.dme_grade)
        if self.guides is None and self.teacher is None:
            warped, _, _ = warp_sample(image, matrix, self.card.input_size)
            return self._tensor(warped, rng), dr, dme
        guide = self.guides.get(entry.name) if self.guides is not None else None
        side = image.shape[0]
        masks = None
        if guide is not None:  # the cell grid -> crop pixels, so that it moves with the image
            masks = np.stack(
                [
                    cv2.resize(g.astype(np.float32), (side, side), interpolation=cv2.INTER_NEAREST)
                    for g in guide
                ]
            )
        warped, moved, _ = warp_sample(image, matrix, self.card.input_size, masks=masks)
        cells = guide.shape[-1] if guide is not None else 1
        if moved is None:
            moved_guide = torch.zeros(2, cells, cells)
        else:
            moved_guide = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(moved)[None], cells)[0]
        logits = self.teacher.get(entry.name) if self.teacher is not None else None
        return (
            self._tensor(warped, rng),
            dr,
            dme,
            moved_guide.float(),
            guide is not None,
            torch.from_numpy(np.zeros(8, np.float32) if logits is None else logits.astype(np.float32)),
            logits is not None,
        )


def gaussian_heatmaps(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """(K, size, size) float32 Gaussians peaking at exactly 1 on the pixel nearest each (x, y).

    CenterNet's focal loss treats pixels equal to 1 as the positives, so the peak must sit on a pixel:
    a Gaussian centred between pixels would have no positive at all and teach "nothing anywhere".
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    nearest = np.clip(np.floor(np.asarray(points, float) + 0.5), 0, size - 1)
    maps = [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in nearest]
    return np.stack(maps).astype(np.float32)


class LocalizationData(_CacheData):
    """Items: (image, heatmaps (2, S, S), points (2, 2) in input px, px of a 4288-wide original per input px).

    The last value turns an error in input pixels into the IDRiD challenge frame for validation.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        entry, rng = self.entries[index], self._rng(index)
        image = self._image(index)
        size = self.card.input_size
        matrix = random_affine(rng, image.shape[0], size, self.augment)
        points = np.array([entry.od_xy, entry.fovea_xy], dtype=float)
        warped, _, moved = warp_sample(image, matrix, size, points=points)
        heat = gaussian_heatmaps(moved, size, float(self.card.extra.get("sigma_px", 4.0)))
        original_per_input = (image.shape[0] / size) / entry.matrix[0][0]
        challenge_px = original_per_input * 4288.0 / entry.original_size[1]
        return (
            self._tensor(warped, rng),
            torch.from_numpy(heat),
            torch.from_numpy(moved.astype(np.float32)),
            challenge_px,
        )


class SegmentationData(_CacheData):
    """Items: (tile image, soft masks (5, t, t) in [0, 1], annotated flags (5,)).

    Training tiles are ``tile`` px windows of the cached crop at a random scale; half are centred on a
    random lesion pixel so rare microaneurysms are seen every epoch. Validation items are whole crops.
    """

    def __init__(
        self,
        *args: object,
        tile: int = 384,
        lesion_bias: float = 0.5,
        lesion_rates: dict[str, float] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tile, self.lesion_bias = tile, lesion_bias
        # per-lesion centring rates (rare lesions drawn more often than their pixel share); the rest of
        # the tiles are centred anywhere in the field of view
        self.lesion_rates = dict(lesion_rates or {})
        unknown = set(self.lesion_rates) - set(LESION_CODES)
        if unknown or sum(self.lesion_rates.values()) > 1 + 1e-9:
            raise ValueError(
                f"lesion_rates must map some of {', '.join(LESION_CODES)} to rates summing to <= 1, "
                f"got {self.lesion_rates}"
            )
        self._masks: dict[int, np.ndarray] = {}
        self._pixels: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _lesion_pixels(self, index: int, channel: int) -> tuple[np.ndarray, np.ndarray]:
        key = (index, channel)
        if key not in self._pixels:
            self._pixels[key] = np.nonzero(self._mask_stack(index)[channel] > 0)
        return self._pixels[key]

    def _centre(self, index: int, rng: np.random.Generator, side: int) -> tuple[np.ndarray, str | None]:
        """Tile centre (x, y) in crop px and the lesion code it was drawn for (None: anywhere)."""
        code = None
        if self.lesion_rates:
            draw, cumulative = rng.random(), 0.0
            for candidate, rate in self.lesion_rates.items():
                cumulative += rate
                if draw < cumulative:
                    code = candidate
                    break
            channels = [LESION_CODES.index(code)] if code else []
        else:
            channels = [0, 1, 2, 3] if rng.random() < self.lesion_bias else []
        ys = xs = np.zeros(0, int)
        if channels:
            found = [self._lesion_pixels(index, c) for c in channels]
            ys = np.concatenate([f[0] for f in found])
            xs = np.concatenate([f[1] for f in found])
        if len(xs) == 0:
            return rng.uniform(0.15 * side, 0.85 * side, 2), None
        pick = rng.integers(len(xs))
        jitter = rng.uniform(-self.tile / 4, self.tile / 4, 2)
        return np.array([xs[pick], ys[pick]], float) + jitter, code or "lesion"

    def _mask_stack(self, index: int) -> np.ndarray:
        if index not in self._masks:
            name = self.entries[index].name
            with np.load(self.folder / f"{name}.masks.npz", allow_pickle=False) as data:
                self._masks[index] = data["masks"].astype(np.float32) / 255.0
        return self._masks[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        entry, rng = self.entries[index], self._rng(index)
        image, masks = self._image(index), self._mask_stack(index)
        annotated = torch.tensor([code in entry.annotated for code in LESION_CODES])
        if self.augment is None:
            return self._tensor(image, rng), torch.from_numpy(masks), annotated
        centre, _ = self._centre(index, rng, image.shape[0])
        angle, zoom = rng.uniform(-180, 180), rng.uniform(0.85, 1.15)
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, zoom)
        matrix[:, 2] += (self.tile - 1) / 2 - centre
        if rng.random() < 0.5:
            matrix = np.array([[-1, 0, self.tile - 1], [0, 1, 0]]) @ np.vstack([matrix, [0, 0, 1]])
        warped, warped_masks, _ = warp_sample(image, matrix, self.tile, masks=masks)
        return self._tensor(warped, rng), torch.from_numpy(np.clip(warped_masks, 0, 1)), annotated
