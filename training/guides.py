"""Training signals computed once, before training: lesion guides for attention and teacher logits.

Lesion guides (``drwb prepare-guides``) teach the grader's attention heads where lesions are. For every
grading image (and every segmentation-only image, used as an unlabelled input) the file holds, on a
``GUIDE_SIDE`` x ``GUIDE_SIDE`` grid over the 512-px field-of-view crop of the training cache:

    channel 0 "dr"   cells holding any lesion: MA, HE, EX, SE from ground truth where IDRiD has masks
                     (the 54 segmentation images, 42 of them also grading images); HE and EX from the
                     shipped segmenter elsewhere (pseudo-labels; its MA and SE are too unreliable to teach)
    channel 1 "dme"  cells holding hard exudates within ``MACULA_RADIUS`` of the fovea (IDRiD's fovea
                     centres; absent for images without one)

Teacher logits (``drwb prepare-teacher``) are the (N, 8) logits of each fold model of a ``--folds`` run
on every image, plain and mirrored averaged: a student scored on fold k learns only from teacher k, which
never saw fold k. Both files are ``.npz`` of plain arrays (no pickles), keyed by image name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from models.constants import LESION_CODES
from models.registry import load_model
from training.data import GradingData
from training.distill import load_run_model
from training.prepare import load_index, prepare
from workbench.io.idrid import IDRiD, load_mask, seg_to_grading

__all__ = [
    "GUIDE_SIDE",
    "MACULA_RADIUS",
    "build_guides",
    "build_teacher",
    "load_guides",
    "load_teacher",
    "seg_to_grading",
]

log = logging.getLogger(__name__)

GUIDE_SIDE = 64  # cells across the 512-px crop (8 px each): finer than any grader's feature map
MACULA_RADIUS = 0.28  # of the crop side: about two disc diameters in a 45-degree field
PSEUDO_CODES = ("HE", "EX")  # the shipped segmenter's lesion types reliable enough to teach with


def _to_grid(mask: np.ndarray) -> np.ndarray:
    """(512, 512) bool -> (GUIDE_SIDE, GUIDE_SIDE) bool: a cell is on when any of its pixels is."""
    cell = mask.shape[0] // GUIDE_SIDE
    return mask.reshape(GUIDE_SIDE, cell, GUIDE_SIDE, cell).any(axis=(1, 3))


def _warp(mask: np.ndarray, matrix: np.ndarray, side: int) -> np.ndarray:
    """A bool mask in some frame -> bool in the crop frame (``matrix``: 2x3, that frame -> crop)."""
    moved = cv2.warpAffine(mask.astype(np.float32), matrix[:2].astype(np.float64), (side, side))
    return moved > 0.25


def _macula(fovea_xy: np.ndarray | None, side: int) -> np.ndarray | None:
    """Bool disc of radius ``MACULA_RADIUS`` x side around the fovea (crop px), or None without one."""
    if fovea_xy is None:
        return None
    ys, xs = np.mgrid[0:side, 0:side]
    fx, fy = fovea_xy
    return (xs - fx) ** 2 + (ys - fy) ** 2 <= (MACULA_RADIUS * side) ** 2


def _guide(lesions: dict[str, np.ndarray], macula: np.ndarray | None, side: int) -> np.ndarray:
    dr = np.zeros((side, side), bool)
    for mask in lesions.values():
        dr |= mask
    dme = lesions.get("EX", np.zeros((side, side), bool)) & (macula if macula is not None else False)
    return np.stack([_to_grid(dr), _to_grid(dme)])


def _ground_truth(record, original_size: tuple[int, int], matrix: np.ndarray, side: int) -> dict:
    """GT lesion masks of a segmentation record, brought to an image of ``original_size`` then the crop."""
    out = {}
    for code in LESION_CODES[:4]:
        path = record.mask_paths.get(code)
        if path is None:
            continue
        mask = load_mask(Path(path)).astype(np.float32)
        height, width = original_size
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA) > 0
        out[code] = _warp(mask, matrix, side)
    return out


def build_guides(data: Path, cache: Path, out: Path, workers: int = 2) -> Path:
    """Write the lesion-guide file (see the module docstring); returns its path."""
    from workbench.analysis.lesion_trust import lesion_thresholds, segmenter_figures
    from workbench.io.image_io import load_image
    from workbench.predictors import SegmenterPredictor

    dataset = IDRiD(data)
    grading = prepare(data, cache, "grading", "train", 512, workers)
    seg512 = prepare(data, cache, "segmentation", "train", 512, workers)
    fovea = (
        {r.name: r.fovea_xy for r in dataset.localization("train")}
        if dataset.has_split("localization", "train")
        else {}
    )
    seg_records = {r.name: r for r in dataset.segmentation("train")}
    seg_of_grading = {g: s for s, g in seg_to_grading(data).items()}
    model, card = load_model("segmenter_lite0")
    # fp32 on every machine: the guides are training inputs, and the thresholds below are fp32 figures
    segmenter = SegmenterPredictor(model, card, precision="fp32")
    thresholds = lesion_thresholds(segmenter_figures(card.training))
    names, guides, sources = [], [], []
    for entry in load_index(grading):
        matrix = np.vstack([np.asarray(entry.matrix, float), [0, 0, 1]])
        side = cv2.imread(str(grading / entry.file), cv2.IMREAD_GRAYSCALE).shape[0]
        fovea_crop = None
        if fovea.get(entry.name) is not None:
            fovea_crop = (matrix @ np.array([*fovea[entry.name], 1.0]))[:2]
        macula = _macula(fovea_crop, side)
        if entry.name in seg_of_grading:
            lesions = _ground_truth(
                seg_records[seg_of_grading[entry.name]], entry.original_size, matrix, side
            )
            source = "ground truth"
        else:
            maps = segmenter.predict(load_image(Path(entry.source)))
            to_crop = matrix @ np.linalg.inv(np.vstack([np.asarray(maps.transform.matrix, float), [0, 0, 1]]))
            lesions = {
                code: _warp(maps.probabilities[LESION_CODES.index(code)] >= thresholds[code], to_crop, side)
                for code in PSEUDO_CODES
            }
            source = "segmenter_lite0 pseudo-labels (HE, EX)"
        names.append(entry.name)
        guides.append(_guide(lesions, macula, side))
        sources.append(source)
        log.info("guide %s (%s)", entry.name, source)
    for entry in load_index(seg512):
        if entry.name in seg_of_grading.values():
            continue  # already there under its grading name
        with np.load(seg512 / f"{entry.name}.masks.npz", allow_pickle=False) as arrays:
            masks = arrays["masks"]
        lesions = {
            code: masks[i] >= 128 for i, code in enumerate(LESION_CODES[:4]) if code in entry.annotated
        }
        names.append(entry.name)
        guides.append(_guide(lesions, None, masks.shape[-1]))
        sources.append("ground truth (segmentation-only image, no fovea)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, names=np.array(names), guides=np.stack(guides), sources=np.array(sources))
    return out


def load_guides(path: Path) -> dict[str, np.ndarray]:
    """{image name: (2, GUIDE_SIDE, GUIDE_SIDE) bool} from a ``build_guides`` file."""
    with np.load(path, allow_pickle=False) as arrays:
        return {str(n): g.astype(bool) for n, g in zip(arrays["names"], arrays["guides"], strict=True)}


@torch.inference_mode()
def build_teacher(run: Path, cache: Path, data: Path, out: Path, folds: int = 5, workers: int = 2) -> Path:
    """Logits of every fold model of the ``--folds`` run folder ``run`` on every training image.

    Writes ``names`` (N,), ``logits`` (folds, N, 8): mean of the plain and mirrored image.
    """
    grading = prepare(data, cache, "grading", "train", 512, workers)
    seg512 = prepare(data, cache, "segmentation", "train", 512, workers)
    seg_in_grading = set(seg_to_grading(data))
    datasets = [(grading, load_index(grading))]
    datasets.append((seg512, [e for e in load_index(seg512) if e.name not in seg_in_grading]))
    names = [e.name for _, entries in datasets for e in entries]
    logits = []
    for fold in range(folds):
        model, card = load_run_model(Path(run) / f"fold{fold}")
        rows = []
        for cache_folder, entries in datasets:
            items = GradingData(cache_folder, entries, card, None)
            for i in range(len(items)):
                image = items[i][0][None]
                rows.append(((model(image) + model(image.flip(-1))) / 2).float()[0].numpy())
        logits.append(np.stack(rows))
        log.info("teacher fold %d: %d images", fold, len(rows))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, names=np.array(names), logits=np.stack(logits), source=np.array(str(run)))
    return out


def load_teacher(path: Path, fold: int) -> dict[str, np.ndarray]:
    """{image name: (8,) logits} of fold ``fold``'s teacher (``fold`` < 0: the mean of all teachers)."""
    with np.load(path, allow_pickle=False) as arrays:
        logits = arrays["logits"]
        chosen = logits.mean(axis=0) if fold < 0 else logits[fold]
        return {str(n): row for n, row in zip(arrays["names"], chosen, strict=True)}
