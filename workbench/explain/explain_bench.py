"""``drwb explain-bench``: rank explanation methods for DR grading on images with lesion ground truth.

For every image of an IDRiD segmentation split, every method explains the grader's predicted grade; we
record deletion / insertion AUC, pointing game, relevance mass and rank against the *ground-truth*
lesion masks, and seconds per image.

``train`` means every training segmentation image; ``val`` those the grader never trained on: every
segmentation image that is the same photograph (matched by content, ``workbench.provenance``) as one of
the grader's training images is excluded, and the result lists how many remain and which were
excluded. The segmenter plays no part here (ground-truth masks, grader targets), so its training images
need no exclusion.
The table gives mean +- 95% CI (normal approximation, 1.96 * sd / sqrt(n)). The model-randomisation
sanity check is run on the first ``sanity_images`` images (it doubles the cost) and reported as the
mean Spearman correlation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.constants import LESION_CODES
from models.registry import default_model, load_model, load_run
from workbench.explain.explainers import ExplainableModel, get_explainer
from workbench.explain.explanation_quality import randomisation_correlation, randomised_copy
from workbench.explain.notes import RANDOMISATION_RHO_LIMIT
from workbench.explain.scoring import (
    POINTING_TOLERANCE_PX,
    lesion_union_in_input,
    original_masks_to_crop,
    pointing_tolerance,
    score_heatmap,
)
from workbench.fundus import prepare_fundus
from workbench.io.idrid import IDRiD, load_mask, seg_to_grading
from workbench.io.image_io import load_image
from workbench.predictors import GRADING_CROP, GraderPredictor
from workbench.provenance import matching_names, trained_grading_names
from workbench.targets import GradeTarget

__all__ = ["bench_grader", "explain_bench", "mean_ci"]


def mean_ci(values: Sequence[float]) -> dict[str, float | int | None]:
    clean = np.array([v for v in values if v is not None], dtype=float)
    if clean.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    ci = 1.96 * clean.std(ddof=1) / np.sqrt(clean.size) if clean.size > 1 else 0.0
    return {"mean": float(clean.mean()), "ci95": float(ci), "n": int(clean.size)}


def _seen_by_grader(dataset: IDRiD, predictor: GraderPredictor, records: list) -> set[str]:
    """Segmentation names whose photograph the grader trained on, matched by content.

    Seen: the same photograph as one of its grading training images and, for a grader trained with
    ``--unlabelled``, every photograph training took as an unlabelled input (with its annotated lesions
    as attention guides): by the same rule as training, those not in IDRiD's segmentation-to-grading
    table (all of them where a copy of the data has no such table).
    """
    config = predictor.card.training.get("config") or {}
    trained = trained_grading_names(predictor.card, dataset)
    references = {r.name: r.image_path for r in dataset.grading("train")}
    matches = matching_names([r.image_path for r in records], references)
    seen = {records[i].name for i, names in matches.items() if set(names) & trained}
    if config.get("unlabelled"):
        in_grading = seg_to_grading(dataset.root)
        seen |= {r.name for r in records if r.name not in in_grading}
    return seen


def bench_grader(name: str | None = None) -> GraderPredictor:
    """The grader whose explanations the bench scores: ``name``, else the best single network (the bench
    scores one network's maps; an ensemble is explained through its members).

    ``name`` may also be a training run's folder (``best.json`` + ``best.safetensors``, for example one
    fold of a ``--folds`` run): its card says which images it trained on, so ``--split val`` scores the
    segmentation photographs it never saw.
    """
    folder = Path(name) if name else None
    if folder is not None and (folder / "best.json").is_file():
        model, card = load_run(folder)
        return GraderPredictor(model, card.with_updates(weights=str(folder / "best.safetensors")))
    return GraderPredictor(*load_model(name or default_model("grader", ensembles=False)))


def explain_bench(
    predictor: GraderPredictor,
    data: Path,
    split: str,
    methods: Sequence[str],
    limit: int = 0,
    sanity_images: int = 2,
) -> dict[str, Any]:
    """Score ``methods`` on the grader of ``predictor`` over one split's segmentation images.

    Raises:
        ValueError: for an ensemble, whose maps come from one member per image: its members are scored.
    """
    if "members" in predictor.card.extra:
        members = ", ".join(m["model"] for m in predictor.card.extra["members"])
        raise ValueError(
            "explain-bench scores one network's explanations; an ensemble is explained through one "
            f"member per image, so score its members instead (--grader with one of: {members})"
        )
    dataset = IDRiD(data)
    records = dataset.segmentation("test" if split == "test" else "train")
    excluded: list[str] = []
    if split == "val":  # "train": every training segmentation image, seen or not
        seen = _seen_by_grader(dataset, predictor, records)
        excluded = sorted(r.name for r in records if r.name in seen)
        records = [r for r in records if r.name not in seen]
        if not records:
            raise ValueError(
                f"{predictor.card.name}: every segmentation training image is one its grader trained on "
                "(as a grading image or an unlabelled input), so none is left to score explanations on "
                "unseen photographs; use --split test, or score a fold model of the same recipe"
            )
    records = records[:limit] if limit else records
    model = ExplainableModel(predictor.model, predictor.card)
    random_model = randomised_copy(model) if sanity_images else None
    per_method: dict[str, dict[str, list]] = {m: {} for m in methods}
    for index, record in enumerate(tqdm(records, desc="explain-bench", unit="image")):
        image = load_image(record.image_path, min_side=GRADING_CROP)
        prepared = prepare_fundus(image, GRADING_CROP)
        masks = [
            load_mask(record.mask_paths[c]) for c in LESION_CODES[:4] if record.mask_paths[c] is not None
        ]
        union = np.logical_or.reduce(masks) if masks else np.zeros(image.original_size, bool)
        size = predictor.card.input_size
        truth = lesion_union_in_input(original_masks_to_crop({"MA": union}, prepared.transform), size)
        tolerance = pointing_tolerance(prepared.transform, size)
        tensor = predictor.input_tensor(prepared.crop)
        dr, _ = predictor.predict([prepared.crop])
        target = GradeTarget(int(np.argmax(dr[0])))
        for method in methods:
            explainer = get_explainer(method)
            heat = explainer.explain(model, tensor, target)
            score = score_heatmap(model, tensor, heat, target, truth, tolerance=tolerance)
            bucket = per_method[method]
            for key, value in score.as_dict().items():
                if key != "method":
                    bucket.setdefault(key, []).append(None if value is None else float(value))
            if index < sanity_images:
                rho = randomisation_correlation(explainer, model, tensor, target, heat.values, random_model)
                bucket.setdefault("randomisation_spearman", []).append(rho)
    table = {m: {k: mean_ci(v) for k, v in stats.items()} for m, stats in per_method.items()}
    for stats in table.values():
        rho = stats.get("randomisation_spearman", {}).get("mean")
        stats["fails_sanity_check"] = rho is not None and rho > RANDOMISATION_RHO_LIMIT
    return {
        "data": str(data),
        "split": split,
        "images": len(records),
        "image_names": [r.name for r in records],
        "excluded_seen_by_grader": excluded,
        "pointing_tolerance_px_4288": POINTING_TOLERANCE_PX,
        "grader": predictor.card.weights.removesuffix(".safetensors"),
        "methods": table,
    }
