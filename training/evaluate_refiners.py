"""``drwb evaluate --task disc`` and ``--task fovea``: the landmark refiners as analyze uses them, against
what they refine (the segmenter's disc, the localizer's centres), on images they never trained on.

The disc refiner (``training.tasks.disc``), two measurements:

- **outline** (the segmentation validation split, scored at the original resolution as lesions are):
  the analysis profile's segmenter disc channel, then the refiner's window centred on the localizer's
  disc pasted over it; AUPR, best Dice, Jaccard at that threshold, for both, with a paired bootstrap
  interval of the per-image Jaccard difference;
- **centre** (the grading validation split's localization images, 4288-px frame): the localizer's disc
  centre against the centroid of the refined disc (the component holding the window's centre).

The fovea refiner (``training.tasks.fovea``): on the same localization images, the localizer's fovea
(chosen with the landmark prior) against the refined one where the refiner found it
(``workbench.landmarks.fovea.FOUND``).
Photographs are decoded as the quality profile decodes them (at least 2048 px on the short side).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from models.constants import LESION_CODES
from models.fov import FieldOfView
from models.registry import default_model, load_model
from workbench.fundus import prepare_fundus
from workbench.intervals import bootstrap_intervals
from workbench.io.idrid import IDRiD, load_mask
from workbench.io.image_io import load_image
from workbench.io.splits import split_names
from workbench.landmarks import choose_disc
from workbench.landmarks.disc import DiscRefiner, load_disc_refiner
from workbench.metrics import PixelCurve, scaled_distances
from workbench.predictors import GRADING_CROP, LocalizerPredictor, load_segmenter

__all__ = ["disc_outline", "evaluate_disc", "evaluate_fovea", "refined_centre"]

_OD = LESION_CODES.index("OD")
LOAD_SIDE = 2048  # decoded short side: an IDRiD photograph at full size, as the quality profile decodes it


def refined_centre(
    refiner: DiscRefiner, window: np.ndarray, od_xy: tuple[float, float], fov: FieldOfView, threshold: float
) -> tuple[float, float] | None:
    """Centroid (original pixels) of the refined disc component at the window's centre, or None."""
    mask = window >= threshold
    if not mask.any():
        return None
    half = (refiner.card.input_size - 1) / 2
    _, centroid, _ = choose_disc(mask, (half, half))
    inverse = np.linalg.inv(np.vstack([refiner.window_transform(od_xy, fov), [0, 0, 1]]))
    x, y = inverse[:2] @ np.array([centroid[0], centroid[1], 1.0])
    return float(x), float(y)


def _curve_figures(curve: PixelCurve) -> dict[str, float]:
    """AUPR, best Dice and its threshold, Jaccard at that threshold (the mask the apps show: they binarise
    at the card's best-Dice threshold) and at 0.5 (no threshold chosen on these images)."""
    dice, threshold = curve.best_dice()
    return {
        "aupr_OD": curve.aupr(),
        "dice_OD": dice,
        "threshold_OD": threshold,
        "jaccard_OD": curve.jaccard_at(threshold),
        "jaccard_OD_at_0.5": curve.jaccard_at(0.5),
    }


def disc_outline(dataset: IDRiD, split: str, name: str, seed: int, profile: str) -> dict[str, Any]:
    """The disc outline at the original resolution, refined and the profile's segmenter alone (paired).

    On "val" each is binarised at its own best-Dice threshold on these images (what ``--write-card``
    stores and the apps then use); on "test" at the thresholds the cards already hold (nothing tuned on
    test). Intervals resample images with those thresholds held fixed.
    """
    from workbench.analysis import PROFILES, inside_field
    from workbench.analysis.lesion_trust import segmenter_figures

    records = dataset.segmentation("test" if split == "test" else "train")
    if split == "val":
        val = set(split_names([r.name for r in records], 0.2, seed).val)
        records = [r for r in records if r.name in val]
    records = [r for r in records if r.mask_paths["OD"] is not None]
    chosen = PROFILES[profile]
    size = int(chosen["segment_size"]) if chosen["segment_size"] else None
    segmenter_name = str(chosen["segmenter"] or default_model("segmenter"))
    segmenter = load_segmenter(segmenter_name, input_size=size)
    localizer, refiner = LocalizerPredictor(*load_model(default_model("localizer"))), load_disc_refiner(name)
    per_image: dict[str, list[PixelCurve]] = {"segmenter": [], "refined": []}
    for record in tqdm(records, desc="disc outline", leave=False):
        image = load_image(record.image_path, min_side=segmenter.decode_side)
        prepared = prepare_fundus(image, GRADING_CROP)
        marks = localizer.predict_crops([prepared.crop], [prepared.transform])[0]
        maps = segmenter.predict(image)
        # as analyze: the refined window is pasted first, then nothing outside the field is disc
        coarse = inside_field(maps.probabilities[_OD : _OD + 1], maps.transform, prepared.fov)[0]
        refiner.refine(maps, image, marks.od_xy, prepared.fov)
        refined = inside_field(maps.probabilities[_OD : _OD + 1], maps.transform, prepared.fov)[0]
        truth = load_mask(record.mask_paths["OD"])
        for key, prob in (("segmenter", coarse), ("refined", refined)):
            per_image[key].append(PixelCurve())
            per_image[key][-1].add(maps.transform.warp_to_original(prob), truth)

    def pooled(key: str, rows: np.ndarray) -> PixelCurve:
        curve = PixelCurve()
        curve.positive = sum(per_image[key][i].positive for i in rows)
        curve.negative = sum(per_image[key][i].negative for i in rows)
        return curve

    every = np.arange(len(records))
    figures = {key: _curve_figures(pooled(key, every)) for key in per_image}
    if split == "test":  # the validation thresholds the cards hold
        held = {
            "segmenter": segmenter_figures(segmenter.card.training, profile).get("threshold_OD"),
            "refined": segmenter_figures(refiner.card.training, profile).get("threshold_OD"),
        }
        for key, threshold in held.items():
            if threshold is not None:
                curve = pooled(key, every)
                figures[key] |= {"threshold_OD": threshold, "jaccard_OD": curve.jaccard_at(threshold)}
    thresholds = {key: figures[key]["threshold_OD"] for key in figures}
    jaccard = {k: np.array([c.jaccard_at(thresholds[k]) for c in per_image[k]]) for k in per_image}
    difference = jaccard["refined"] - jaccard["segmenter"]

    def refined_figures(rows: np.ndarray) -> dict[str, float]:
        curve = pooled("refined", rows)
        return {
            "aupr_OD": curve.aupr(),
            "jaccard_OD": curve.jaccard_at(thresholds["refined"]),
            "jaccard_OD_at_0.5": curve.jaccard_at(0.5),
        }

    return {
        **figures["refined"],
        "ci95": bootstrap_intervals(len(records), refined_figures),
        "n": len(records),
        "segmenter_alone": {
            **figures["segmenter"],
            "model": segmenter_name,
            "crop_px": segmenter.input_size,
        },
        "paired_jaccard_difference": {
            "mean": float(difference.mean()),
            "ci95": bootstrap_intervals(len(difference), lambda i: {"d": float(difference[i].mean())})["d"],
            "images_better": int((difference > 0).sum()),
            "images_worse": int((difference < 0).sum()),
        },
    }


def _centre(dataset: IDRiD, split: str, name: str, seed: int, threshold: float) -> dict[str, Any]:
    from training.evaluate import localization_records

    records = localization_records(dataset, split, seed)
    localizer, refiner = LocalizerPredictor(*load_model(default_model("localizer"))), load_disc_refiner(name)
    detector, refined = [], []
    for record in tqdm(records, desc="disc centre", leave=False):
        image = load_image(record.image_path, min_side=LOAD_SIDE)
        prepared = prepare_fundus(image, GRADING_CROP)
        marks = localizer.predict_crops([prepared.crop], [prepared.transform])[0]
        window = refiner.predict(image, marks.od_xy, prepared.fov)
        centre = refined_centre(refiner, window, marks.od_xy, prepared.fov, threshold) or marks.od_xy
        width = np.array([image.original_size[1]])
        detector.append(scaled_distances([marks.od_xy], [record.od_xy], width)[0])
        refined.append(scaled_distances([centre], [record.od_xy], width)[0])
    return _paired_errors(np.array(detector), np.array(refined))


def _paired_errors(detector_px: np.ndarray, refined_px: np.ndarray) -> dict[str, Any]:
    """Mean / median of both, the paired mean difference, bootstrap intervals of all three."""
    difference = refined_px - detector_px
    return {
        "n": len(difference),
        "detector_mean_px": float(detector_px.mean()),
        "refined_mean_px": float(refined_px.mean()),
        "detector_median_px": float(np.median(detector_px)),
        "refined_median_px": float(np.median(refined_px)),
        "ci95": bootstrap_intervals(
            len(difference),
            lambda i: {
                "detector_mean_px": float(detector_px[i].mean()),
                "refined_mean_px": float(refined_px[i].mean()),
                "refined_minus_detector_px": float(difference[i].mean()),
            },
        ),
        "refined_minus_detector_px": float(difference.mean()),
    }


def evaluate_disc(
    dataset: IDRiD, split: str, name: str, seed: int, profile: str = "quality"
) -> dict[str, Any]:
    """Outline and centre figures of the disc refiner ``name`` on ``split`` ("val" or "test"; it trained
    on the rest of the training images)."""
    if split == "train":
        raise ValueError("the disc refiner trained on --split train: evaluate it on val or test")
    outline = disc_outline(dataset, split, name, seed, profile)
    return {
        **outline,
        "score": outline["jaccard_OD"],  # what default_model ranks disc refiners by
        "profile": profile,
        # the centroid of the disc binarised at the outline's best-Dice threshold, as analyze binarises it
        "centre": _centre(dataset, split, name, seed, outline["threshold_OD"]),
        "pipeline": "localizer disc centre -> refiner window pasted over the profile's segmenter disc "
        "channel (workbench.landmarks.disc), as in analyze",
    }


def evaluate_fovea(dataset: IDRiD, split: str, name: str, seed: int) -> dict[str, Any]:
    """Fovea errors (4288-px frame) of the localizer alone and with the refiner ``name``, paired."""
    from training.evaluate import localization_records
    from workbench.landmarks.fovea import load_fovea_refiner

    if split == "train":
        raise ValueError("the fovea refiner trained on --split train: evaluate it on val or test")
    records = localization_records(dataset, split, seed)
    localizer, refiner = LocalizerPredictor(*load_model(default_model("localizer"))), load_fovea_refiner(name)
    detector, refined, found = [], [], []
    for record in tqdm(records, desc="fovea", leave=False):
        image = load_image(record.image_path, min_side=LOAD_SIDE)
        prepared = prepare_fundus(image, GRADING_CROP)
        marks = localizer.predict_crops([prepared.crop], [prepared.transform])[0]
        better = refiner.refine(image, marks.fovea_xy, prepared.fov)
        found.append(better is not None)
        width = np.array([image.original_size[1]])
        detector.append(scaled_distances([marks.fovea_xy], [record.fovea_xy], width)[0])
        refined.append(scaled_distances([better or marks.fovea_xy], [record.fovea_xy], width)[0])
    errors = _paired_errors(np.array(detector), np.array(refined))
    hit = np.array(found, bool)
    return {
        **errors,
        "score": -errors["refined_mean_px"],  # what default_model ranks fovea refiners by
        "found": int(hit.sum()),
        # where the refiner found no fovea the localizer's stands: how far off those were
        "not_found_detector_mean_px": float(np.array(detector)[~hit].mean()) if (~hit).any() else None,
        "pipeline": "localizer fovea (landmark prior) -> refiner window around it "
        "(workbench.landmarks.fovea), the localizer's fovea kept where the refiner's peak is below FOUND",
    }
