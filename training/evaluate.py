"""``drwb evaluate``: metrics of a shipped model on any IDRiD-layout folder, as the challenge defined them.

Splits: ``val`` is the deterministic validation split of the training images (``workbench.io.splits``),
``train`` the rest of the training images, ``test`` the official testing set. Segmentation is scored at
the original resolution (probabilities warped back onto the full-size ground-truth masks); localization
errors are reported in a 4288-px-wide frame. Images are read with the same loader and crops as the apps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from models.constants import LESION_CODES
from models.preprocess import crop_to_fov
from models.registry import default_model, load_model
from workbench.analysis import PROFILES, inside_field
from workbench.analysis.lesion_maps import one_type_per_pixel
from workbench.analysis.lesion_trust import lesion_thresholds, reliable_types, segmenter_figures
from workbench.fundus import prepare_fundus
from workbench.intervals import bootstrap_intervals, wilson_interval
from workbench.io.idrid import IDRiD, load_mask
from workbench.io.image_io import load_image
from workbench.io.splits import split_names, split_train_val
from workbench.landmarks import place_landmarks
from workbench.landmarks.laterality import eye_from_landmarks
from workbench.metrics import (
    PixelCurve,
    confusion_matrix,
    grading_metrics,
    json_safe,
    localization_metrics,
    scaled_distances,
    segmentation_metrics,
)
from workbench.precision import bf16_units, configured_precision, precision_setting
from workbench.predictors import (
    GRADING_CROP,
    GraderPredictor,
    LocalizerPredictor,
    SegmenterPredictor,
    load_segmenter,
)
from workbench.reports.audit import LabelledImage, grade_images

# the disc for landmark placement comes from the low-resolution segmenter (the disc needs no more)
LANDMARK_SEGMENTER = "segmenter_lite0"

__all__ = ["EVALUATORS", "evaluate", "landmark_errors", "localization_records", "record_in_card"]

log = logging.getLogger(__name__)


def _select(names: list[str], val: set[str], split: str) -> set[str]:
    if split == "val":
        return val
    return set(names) - val if split == "train" else set(names)


def _grading(dataset: IDRiD, split: str, model_name: str, seed: int) -> dict[str, Any]:
    records = dataset.grading("test" if split == "test" else "train")
    if split != "test":
        keep = _select([r.name for r in records], set(split_train_val(records, 0.2, seed).val), split)
        records = [r for r in records if r.name in keep]
    predictor = GraderPredictor(*load_model(model_name))
    # the same grading pass as `drwb evaluate --labels` (workbench.reports.audit): same figures, same images
    labelled = [LabelledImage(r.name, r.image_path, r.dr_grade, r.dme_grade, 0) for r in records]
    bar = tqdm(total=len(labelled), desc="grading", leave=False)
    graded = grade_images(predictor, labelled, progress=lambda done, _: bar.update(done - bar.n))
    bar.close()
    unread = [g.error for g in graded if g.p_dr is None]
    if unread:  # figures over part of a split compare with nothing; `drwb evaluate --labels` audits a part
        raise ValueError(
            f"{len(unread)} of the {len(graded)} images of the {split} split could not be read, so its "
            f"figures would not be the split's: {'; '.join(unread[:5])}{'; ...' if len(unread) > 5 else ''}"
        )
    p_dr, p_dme = np.stack([g.p_dr for g in graded]), np.stack([g.p_dme for g in graded])
    metrics = grading_metrics(
        p_dr, p_dme, np.array([r.dr_grade for r in records]), np.array([r.dme_grade for r in records])
    )
    metrics["confusion_matrix"] = confusion_matrix([r.dr_grade for r in records], p_dr.argmax(1), 5).tolist()
    metrics["gradeable"] = int(sum(g.gradeable for g in graded))
    return metrics


def _segmentation(
    dataset: IDRiD, split: str, model_name: str, seed: int, profile: str = "quality"
) -> dict[str, Any]:
    records = dataset.segmentation("test" if split == "test" else "train")
    if split != "test":
        keep = _select(
            [r.name for r in records], set(split_names([r.name for r in records], 0.2, seed).val), split
        )
        records = [r for r in records if r.name in keep]
    size = PROFILES[profile]["segment_size"]
    predictor = load_segmenter(model_name, input_size=int(size) if size else None)
    curves = {code: PixelCurve() for code in LESION_CODES}
    # the lesion masks as analyze draws them: the card's thresholds for this profile, one type per pixel
    figures = segmenter_figures(predictor.card.training, profile)
    thresholds = lesion_thresholds(figures)
    reliable = reliable_types(figures)
    lesion_codes = [code for code in LESION_CODES if code != "OD"]  # analyze redraws the disc (one_disc)
    drawn = {code: np.zeros(3, np.int64) for code in lesion_codes}  # tp, fp, positives
    for record in tqdm(records, desc="segmentation", leave=False):
        image = load_image(record.image_path, min_side=predictor.decode_side)
        maps = predictor.predict(image)
        # as analyze does: nothing outside the field of view is a lesion
        probabilities = inside_field(
            maps.probabilities, maps.transform, prepare_fundus(image, GRADING_CROP).fov
        )
        masks = one_type_per_pixel(probabilities, thresholds, reliable)
        for channel, code in enumerate(LESION_CODES):
            path = record.mask_paths[code]
            if path is None:
                continue  # not annotated: neither a hit nor a miss
            truth = load_mask(path)
            prob = maps.transform.warp_to_original(probabilities[channel], cv2.INTER_LINEAR)
            curves[code].add(prob, truth)
            if code in drawn:
                shown = maps.transform.warp_to_original(masks[code].astype(np.float32), cv2.INTER_NEAREST)
                hit = shown > 0.5
                drawn[code] += (int((hit & truth).sum()), int((hit & ~truth).sum()), int(truth.sum()))
    return {
        **segmentation_metrics(curves),
        **{f"drawn_dice_{code}": _dice(*counts) for code, counts in drawn.items() if counts[2]},
        # the thresholds those were drawn at: the card's before this run (`--write-card` stores new ones)
        "drawn_thresholds": {code: thresholds[code] for code in lesion_codes},
        "n": len(records),
        "profile": profile,
        "crop_px": predictor.input_size,
        "runtime": predictor.runtime,
    }


def _dice(tp: int, fp: int, positives: int) -> float:
    return float(2 * tp / max(2 * tp + fp + positives - tp, 1))


def localization_records(dataset: IDRiD, split: str, seed: int = 0) -> list[Any]:
    """The localization records of ``split`` ("val": the grading split's validation images)."""
    records = dataset.localization("test" if split == "test" else "train")
    if split != "test":
        val = set(split_train_val(dataset.grading("train"), 0.2, seed).val)
        keep = _select([r.name for r in records], val, split)
        records = [r for r in records if r.name in keep]
    return records


def landmark_errors(records: list[Any], model_name: str) -> dict[str, np.ndarray]:
    """Per-image centre errors (4288-px frame) of the localizer as analyze uses it (one disc from the
    landmark segmenter, fovea anatomy check): ``od``, ``fovea``, the detector's own ``raw_od`` /
    ``raw_fovea``, and ``doubtful`` (the fovea flag). Paired comparisons of two localizers use these.
    Also the eye read from those landmarks (``eye``: +1 right, -1 left, 0 undetermined;
    ``workbench.landmarks.laterality``) and the one the annotated landmarks imply (``eye_true``)."""
    predictor = LocalizerPredictor(*load_model(model_name))
    segmenter = SegmenterPredictor(*load_model(LANDMARK_SEGMENTER))
    threshold = lesion_thresholds(segmenter_figures(segmenter.card.training))["OD"]
    keys = ("raw_od", "raw_fovea", "od", "fovea", "doubtful", "eye", "eye_true")
    out: dict[str, list] = {k: [] for k in keys}
    for record in tqdm(records, desc="localization", leave=False):
        image = load_image(record.image_path, min_side=segmenter.decode_side)
        crop, transform, fov = crop_to_fov(image.rgb, GRADING_CROP, image.original_size)
        marks = predictor.predict_crops([crop], [transform])[0]
        maps = segmenter.predict(image)
        placed = place_landmarks(
            fov,
            marks.od_xy,
            marks.fovea_xy,
            marks.fovea_confidence,
            od_mask=maps.probabilities[LESION_CODES.index("OD")] >= threshold,
            transform=maps.transform,
            prior=predictor.prior,
        )
        width = np.array([image.original_size[1]])
        out["raw_od"].append(scaled_distances([marks.od_xy], [record.od_xy], width))
        out["raw_fovea"].append(scaled_distances([marks.fovea_xy], [record.fovea_xy], width))
        out["od"].append(scaled_distances([placed.od_xy], [record.od_xy], width))
        out["fovea"].append(scaled_distances([placed.fovea.xy], [record.fovea_xy], width))
        out["doubtful"].append(np.array([placed.fovea.doubt is not None]))
        # +1 right eye, -1 left, 0 undetermined; the truth: the annotated disc's side of the annotated fovea
        eye, _ = eye_from_landmarks(placed.od_xy, placed.fovea.xy, fov, placed.fovea.doubt, placed.od_doubt)
        out["eye"].append(np.array([{"right": 1, "left": -1, None: 0}[eye]]))
        out["eye_true"].append(np.sign([record.od_xy[0] - record.fovea_xy[0]]))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def _localization(dataset: IDRiD, split: str, model_name: str, seed: int) -> dict[str, Any]:
    errors = landmark_errors(localization_records(dataset, split, seed), model_name)
    od, fovea, flagged = errors["od"], errors["fovea"], errors["doubtful"].astype(bool)

    def means(rows: np.ndarray) -> dict[str, float]:
        return {"od_mean_px": float(np.nanmean(od[rows])), "fovea_mean_px": float(np.nanmean(fovea[rows]))}

    return {
        **localization_metrics(od, fovea),
        "ci95": bootstrap_intervals(len(od), means),  # the key every figure's interval goes under
        "pipeline": f"localizer (fovea chosen with the card's landmark prior), one disc from "
        f"{LANDMARK_SEGMENTER} (its size: the disc diameter unless implausible), fovea anatomy check "
        "(workbench.landmarks), as in analyze before the refiners (drwb evaluate --task disc / fovea "
        "measure those)",
        "detector_only": localization_metrics(errors["raw_od"], errors["raw_fovea"]),
        "fovea_doubtful": int(flagged.sum()),
        "laterality": _laterality_agreement(errors["eye"], errors["eye_true"]),
        "fovea_mean_px_trusted": float(fovea[~flagged].mean()) if (~flagged).any() else None,
        "fovea_mean_px_doubtful": float(fovea[flagged].mean()) if flagged.any() else None,
    }


def _laterality_agreement(eye: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """How often the eye read from the predicted landmarks is the one the annotated landmarks imply."""
    told = eye != 0
    right = eye[told] == truth[told]
    return {
        "n": int(eye.size),
        "determined": int(told.sum()),
        "agree": int(right.sum()),
        "accuracy_of_determined": float(right.mean()) if told.any() else None,
        # Wilson: a bootstrap of an all-correct sample is the useless [1, 1]
        "ci95_accuracy_of_determined": (
            list(wilson_interval(int(right.sum()), int(told.sum()))) if told.any() else None
        ),
        "truth": "the annotated disc's side of the annotated fovea (right of it: a right eye)",
    }


def _disc(dataset: IDRiD, split: str, model_name: str, seed: int, profile: str = "quality") -> dict[str, Any]:
    from training.evaluate_refiners import evaluate_disc  # imports localization_records from here

    return evaluate_disc(dataset, split, model_name, seed, profile)


def _fovea(dataset: IDRiD, split: str, model_name: str, seed: int) -> dict[str, Any]:
    from training.evaluate_refiners import evaluate_fovea

    return evaluate_fovea(dataset, split, model_name, seed)


EVALUATORS = {
    "grading": ("grader", _grading),
    "segmentation": ("segmenter", _segmentation),
    "localization": ("localizer", _localization),
    "disc": ("disc", _disc),
    "fovea": ("fovea", _fovea),
}


def evaluate(
    data: Path,
    split: str,
    task: str,
    model: str | None = None,
    seed: int = 0,
    profile: str = "quality",
    precision: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` (default: the best shipped one of the task's family) on one split.

    ``profile`` (segmentation and disc) measures the fast profile's smaller crop; its figures go to the card
    under ``<split>_fast`` so they never replace the model's own-resolution figures. ``precision``
    (``workbench.precision``; default ``$DRWB_PRECISION``) is recorded with the figures; segmentation
    also records what ran its networks (``runtime``: "pytorch 2.14.1 bf16", say)."""
    if task not in EVALUATORS:
        raise KeyError(f"unknown task {task!r}; valid tasks: {', '.join(EVALUATORS)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits: train, val, test")
    arch, fn = EVALUATORS[task]
    name = model or default_model(arch)
    with precision_setting(precision):
        if task in ("segmentation", "disc"):
            result = fn(IDRiD(data), split, name, seed, profile)
            result["card_key"] = split if profile == "quality" else f"{split}_{profile}"
        else:
            result = fn(IDRiD(data), split, name, seed)
        result["precision"] = configured_precision()  # the setting; bf16 ran where it says auto or bf16
        result["bf16_units"] = bf16_units()  # and the CPU has these (workbench.precision)
    # undefined figures (NaN) become None: null in JSON, "n/a" in tables
    return json_safe({"task": task, "split": split, "model": name, "data": str(data), **result})


def record_in_card(result: dict[str, Any], command: str, folder: Path | None = None) -> Path:
    """Store ``result`` under ``training.evaluation.<split>`` of the evaluated model's card (JSON only;
    the weights and their sha256 are untouched), so the README table and the card cite one measurement."""
    import json

    from models.registry import weights_dir

    path = Path(folder or weights_dir()) / f"{result['model']}.json"
    card = json.loads(path.read_text())
    metrics = {k: v for k, v in result.items() if k not in ("model", "data", "card_key")}
    key = result.get("card_key", result["split"])
    card["training"].setdefault("evaluation", {})[key] = {"command": command, **metrics}
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path
