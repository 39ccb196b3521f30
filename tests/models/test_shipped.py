"""Shipped weights: every card loads with a matching sha256; on real IDRiD images they beat trivial baselines.

The real-data checks use a handful of validation images (never seen in training) and compare against the
baseline a model must beat to be worth shipping: the majority grade, an empty mask, the image centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.card import ModelCard
from models.registry import SHIPPED_WEIGHTS_DIR, default_model, file_sha256, list_shipped, load_model
from workbench.io.idrid import IDRiD, load_mask
from workbench.io.image_io import load_image
from workbench.io.splits import split_names, split_train_val
from workbench.metrics import PixelCurve, scaled_distances
from workbench.predictors import (
    GRADING_CROP,
    GraderPredictor,
    LocalizerPredictor,
    SegmenterPredictor,
    crop_for,
)

SHIPPED = list_shipped(SHIPPED_WEIGHTS_DIR)
# networks that ship only as ensemble members (not offered on their own), by card stem
MEMBERS = {
    f"members/{p.stem}": ModelCard.read(p) for p in sorted((SHIPPED_WEIGHTS_DIR / "members").glob("*.json"))
}
EVERY = {c.weights.removesuffix(".safetensors"): c for c in SHIPPED} | MEMBERS
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped weights in models/weights")


@pytest.mark.parametrize("stem", sorted(EVERY))
def test_card_is_complete_and_hash_matches(stem: str) -> None:
    card = EVERY[stem]
    assert card.weights.endswith(".safetensors")
    assert file_sha256((SHIPPED_WEIGHTS_DIR / stem).parent / card.weights) == card.sha256
    assert card.training["command"].startswith(("drwb train", "drwb ensemble"))
    assert card.training.get("validation") or card.training.get("evaluation")
    assert card.label_names and card.input_size > 0
    model, loaded = load_model(stem, SHIPPED_WEIGHTS_DIR)
    assert loaded == card and not model.training
    for member in card.extra.get("members", []):
        assert member["model"] in EVERY and EVERY[member["model"]].sha256 == member["sha256"]


def test_total_size_within_budget() -> None:
    total = sum(((SHIPPED_WEIGHTS_DIR / s).parent / c.weights).stat().st_size for s, c in EVERY.items())
    assert total <= 80 * 1024 * 1024


def _unseen_grading(real_idrid: Path, card, n: int):
    """Grading images the grader of ``card`` did not train on (its card says which it did)."""
    from workbench.provenance import trained_grading_names

    dataset = IDRiD(real_idrid)
    trained = trained_grading_names(card, dataset)
    return [r for r in dataset.grading("train") if r.name not in trained][:n]


@pytest.mark.realdata
def test_grader_beats_majority_class(real_idrid: Path) -> None:
    predictor = GraderPredictor(
        *load_model(default_model("grader", SHIPPED_WEIGHTS_DIR), SHIPPED_WEIGHTS_DIR)
    )
    records = _unseen_grading(real_idrid, predictor.card, 83)
    margin = 0.15
    if not records:
        # a refit (or an ensemble of refits) saw every grading image (its held-out quality is the OOF
        # test's): these weights must at least fit their own training images clearly better than that
        configs = predictor.card.training.get("member_configs", {}).values() or [
            predictor.card.training["config"]
        ]
        assert all(c.get("refit") for c in configs), "only a refit may have no unseen grading image"
        records, margin = IDRiD(real_idrid).grading("train")[::5], 0.35
    assert len(records) >= 80  # a fold model: its held-out fold
    crops = [crop_for(load_image(r.image_path, min_side=GRADING_CROP), GRADING_CROP)[0] for r in records]
    dr, dme = predictor.predict(crops)
    truth = np.array([r.dr_grade for r in records])
    majority = np.bincount(truth).max() / len(truth)
    assert (dr.argmax(1) == truth).mean() >= majority + margin
    referable = truth >= 2
    assert ((dr[:, 2:].sum(1) >= 0.5) == referable).mean() >= 0.8


@pytest.mark.realdata
@pytest.mark.parametrize("profile", ["quality", "fast"])
def test_default_grader_oof_predictions_rescore_to_its_card_and_beat_the_baseline(
    real_idrid: Path, profile: str
) -> None:
    """The OOF predictions shipped beside each profile's default grader, re-scored against the real
    labels, give the card's figures exactly; they beat the majority-grade baseline and predict grade 1."""
    from training.oof import evaluate_oof
    from workbench.analysis.pipeline import PROFILES

    stem = default_model("grader", SHIPPED_WEIGHTS_DIR, max_passes=PROFILES[profile]["max_passes"])
    card = ModelCard.read(SHIPPED_WEIGHTS_DIR / f"{stem}.json")
    oof = card.training.get("evaluation", {}).get("oof")
    if not oof:
        pytest.skip("the default grader has no out-of-fold figures")
    predictions = SHIPPED_WEIGHTS_DIR / oof["predictions"]["file"]
    assert file_sha256(predictions) == oof["predictions"]["sha256"]
    # an ensemble with the mirror view is the flip-TTA variant of its file (training.ensemble)
    variant = "plain" if oof.get("tta", "none") == "none" else "hflip_tta"
    rescored = evaluate_oof(predictions, real_idrid)[variant]
    for key in ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc"):
        assert rescored[key] == pytest.approx(oof[key], abs=1e-9), key
    assert rescored["n"] == 413
    truth = np.array([r.dr_grade for r in IDRiD(real_idrid).grading("train")])
    majority = np.bincount(truth).max() / len(truth)
    assert rescored["dr_accuracy"] >= majority + 0.25 and rescored["dr_qwk"] >= 0.7
    assert np.array(rescored["confusion_matrix"])[:, 1].sum() > 0  # grade 1 is predicted at all


@pytest.mark.realdata
def test_localizer_beats_image_centre(real_idrid: Path) -> None:
    records = IDRiD(real_idrid).localization("train")
    val = set(split_train_val(IDRiD(real_idrid).grading("train"), 0.2, 0).val)
    records = [r for r in records if r.name in val][:16]
    predictor = LocalizerPredictor(
        *load_model(default_model("localizer", SHIPPED_WEIGHTS_DIR), SHIPPED_WEIGHTS_DIR)
    )
    images = [load_image(r.image_path, min_side=GRADING_CROP) for r in records]
    crops = [crop_for(image, GRADING_CROP) for image in images]
    marks = predictor.predict_crops([c for c, _ in crops], [t for _, t in crops])
    widths = np.array([image.original_size[1] for image in images])
    centres = np.array([[image.original_size[1] / 2, image.original_size[0] / 2] for image in images])
    od = scaled_distances([m.od_xy for m in marks], [r.od_xy for r in records], widths)
    od_baseline = scaled_distances(centres, [r.od_xy for r in records], widths)
    fovea = scaled_distances([m.fovea_xy for m in marks], [r.fovea_xy for r in records], widths)
    fovea_baseline = scaled_distances(centres, [r.fovea_xy for r in records], widths)
    assert np.median(od) < np.median(od_baseline) / 4
    assert np.median(fovea) < np.median(fovea_baseline) / 2


@pytest.mark.realdata
def test_landmark_pipeline_errors_per_image(real_idrid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The localization evaluation as analyze places landmarks, per image (what paired comparisons of
    two localizers use): one finite error per validation image, the disc within ~2 disc radii."""
    from training.evaluate import landmark_errors, localization_records

    monkeypatch.setenv("DRWB_WEIGHTS", str(SHIPPED_WEIGHTS_DIR))
    records = localization_records(IDRiD(real_idrid), "val")[:2]
    errors = landmark_errors(records, default_model("localizer", SHIPPED_WEIGHTS_DIR))
    assert {len(v) for v in errors.values()} == {2}
    assert np.isfinite(errors["od"]).all() and np.isfinite(errors["fovea"]).all()
    assert np.median(errors["od"]) < 150 and errors["doubtful"].dtype == bool
    # the eye read from those landmarks, where they decide one, is the one the annotated landmarks imply
    told = errors["eye"] != 0
    assert set(errors["eye_true"]) <= {-1, 1} and told.any()
    assert (errors["eye"][told] == errors["eye_true"][told]).all()


@pytest.mark.realdata
def test_segmenter_beats_empty_mask(real_idrid: Path) -> None:
    records = IDRiD(real_idrid).segmentation("train")
    val = set(split_names([r.name for r in records], 0.2, 0).val)
    records = [r for r in records if r.name in val][:2]
    predictor = SegmenterPredictor(
        *load_model(default_model("segmenter", SHIPPED_WEIGHTS_DIR), SHIPPED_WEIGHTS_DIR)
    )
    curves = {code: PixelCurve() for code in ("EX", "OD")}
    prevalence = {code: [] for code in curves}
    for record in records:
        maps = predictor.predict(load_image(record.image_path, min_side=predictor.decode_side))
        for code in curves:
            channel = ("MA", "HE", "EX", "SE", "OD").index(code)
            truth = maps.transform.warp_to_crop(load_mask(record.mask_paths[code])) > 0.5
            curves[code].add(maps.probabilities[channel], truth)
            prevalence[code].append(truth.mean())
    # An empty / constant mask has AUPR equal to the prevalence; demand a clear margin above it.
    assert curves["EX"].aupr() > 5 * np.mean(prevalence["EX"])
    assert curves["OD"].aupr() > 0.5


def _aupr_on(predictor: SegmenterPredictor, records: list, codes: tuple[str, ...]) -> dict[str, float]:
    """AUPR at the original resolution (as `drwb evaluate` scores), over ``records``."""
    import cv2

    curves = {code: PixelCurve() for code in codes}
    for record in records:
        maps = predictor.predict(load_image(record.image_path, min_side=predictor.decode_side))
        for code in codes:
            channel = ("MA", "HE", "EX", "SE", "OD").index(code)
            truth = load_mask(record.mask_paths[code])
            curves[code].add(
                maps.transform.warp_to_original(maps.probabilities[channel], cv2.INTER_LINEAR), truth
            )
    return {code: curve.aupr() for code, curve in curves.items()}


@pytest.mark.skipif(
    not (SHIPPED_WEIGHTS_DIR / "segmenter_lite0_hr.json").is_file(), reason="no high-resolution segmenter"
)
def test_high_resolution_segmenter_beats_the_old_one_on_microaneurysms_and_soft_exudates(
    real_idrid: Path,
) -> None:
    """On validation images with soft exudates (never trained on), scored at 4288x2848."""
    records = IDRiD(real_idrid).segmentation("train")
    val = set(split_names([r.name for r in records], 0.2, 0).val)
    records = [r for r in records if r.name in val and r.mask_paths["SE"] is not None][:2]
    assert records, "the validation split has images with soft-exudate masks"
    old = _aupr_on(
        SegmenterPredictor(*load_model("segmenter_lite0", SHIPPED_WEIGHTS_DIR)), records, ("MA", "SE")
    )
    new = _aupr_on(
        SegmenterPredictor(*load_model("segmenter_lite0_hr", SHIPPED_WEIGHTS_DIR)), records, ("MA", "SE")
    )
    assert new["MA"] > old["MA"] and new["SE"] > old["SE"], (old, new)


@pytest.mark.realdata
def test_disc_refiner_outlines_the_disc_better_than_the_segmenter(
    real_idrid: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the 11 segmentation validation photographs at the original resolution (fast profile, as analyze
    runs it there), the refined disc overlaps the annotated disc better than the segmenter's own disc."""
    if not any(card.arch == "disc" for card in SHIPPED):
        pytest.skip("no disc refiner shipped")
    from training.evaluate_refiners import disc_outline

    monkeypatch.setenv("DRWB_WEIGHTS", str(SHIPPED_WEIGHTS_DIR))
    result = disc_outline(IDRiD(real_idrid), "val", default_model("disc", SHIPPED_WEIGHTS_DIR), 0, "fast")
    alone = result["segmenter_alone"]
    assert result["n"] == 11
    assert result["jaccard_OD_at_0.5"] > alone["jaccard_OD_at_0.5"] + 0.05
    assert result["paired_jaccard_difference"]["mean"] > 0


@pytest.mark.skipif(
    not (SHIPPED_WEIGHTS_DIR / "segmenter_lite0_hr.json").is_file(), reason="no high-resolution segmenter"
)
def test_haemorrhages_averaged_over_both_models_beat_the_low_resolution_model_alone(real_idrid: Path) -> None:
    """The quality profile's HE map (``"averaged": ["HE"]`` in the card: the mean of the 2048-px model's
    and ``segmenter_lite0``'s at 640 px) against ``segmenter_lite0`` at 640 px alone, which gave HE before,
    on validation photographs (never trained on) at 4288x2848."""
    from workbench.predictors import load_segmenter

    records = IDRiD(real_idrid).segmentation("train")
    val = set(split_names([r.name for r in records], 0.2, 0).val)
    records = [r for r in records if r.name in val and r.mask_paths["HE"] is not None][:2]
    composite = load_segmenter("segmenter_lite0_hr", SHIPPED_WEIGHTS_DIR)
    assert [entry.get("averaged") for entry in composite.card.extra["channels_from"]] == [["HE"]]
    alone = SegmenterPredictor(*load_model("segmenter_lite0", SHIPPED_WEIGHTS_DIR), input_size=640)
    both, donor = _aupr_on(composite, records, ("HE",)), _aupr_on(alone, records, ("HE",))
    assert both["HE"] > donor["HE"], (both, donor)
