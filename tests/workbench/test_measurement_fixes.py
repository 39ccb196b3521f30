"""Known-answer tests for the measurement faults of the "scores that can be trusted" issue.

Each test failed on the code before the fix (the old behaviour is named in its docstring).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.preprocess import CropTransform
from workbench.explain.explanation_quality import (
    deletion_insertion,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from workbench.explain.scoring import (
    POINTING_TOLERANCE_PX,
    lesion_union_in_input,
    original_masks_to_crop,
    pointing_tolerance,
)
from workbench.metrics import (
    grading_metrics,
    json_safe,
    localization_metrics,
    pixel_curve,
    quadratic_weighted_kappa,
    scaled_distances,
)


def test_relevance_rank_does_not_depend_on_where_the_lesion_sits() -> None:
    """Old: ties among zeros broken by argpartition's order (0.060, 0.000 or 0.050 for one map)."""
    heat = np.zeros((100, 100))
    heat[50, 50] = 1.0  # one positive pixel, outside every mask below
    ranks = []
    for y, x in [(0, 0), (10, 80), (90, 5), (70, 70)]:
        mask = np.zeros((100, 100), bool)
        mask[y : y + 5, x : x + 4] = True  # 20 lesion pixels
        ranks.append(relevance_rank(heat, mask))
    # expected: 19 of the top 20 come from 9999 tied zeros, of which 20 are lesion pixels
    expected = 19 * 20 / 9999 / 20
    assert ranks == pytest.approx([expected] * 4, abs=1e-12)


def test_deletion_removes_tied_pixels_in_no_particular_order() -> None:
    """Old: a flat map deleted the image's top rows first; a model reading only the bottom half then
    kept its score until half the curve was gone."""

    class BottomHalf(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x[:, :, 16:].mean(dim=(1, 2, 3))
            return torch.stack([mean, -mean], dim=1)

    class Target:
        def probability(self, logits: torch.Tensor) -> torch.Tensor:
            return torch.softmax(logits, 1)[:, 0]

    from models.classifier import grader_card
    from workbench.explain.explainers import ExplainableModel

    model = ExplainableModel(BottomHalf(), grader_card("test_convnext", 32))
    image = torch.ones(1, 3, 32, 32)
    image[:, :, 16:] = 2.0
    curves = deletion_insertion(model, image, np.zeros((32, 32)), Target(), steps=4)
    # after deleting a quarter of the (all tied) pixels, about a quarter of the bottom half is gone too
    assert curves.deletion[1] < curves.deletion[0] - 0.2 * (curves.deletion[0] - curves.deletion[-1])


def test_an_empty_map_is_no_evidence() -> None:
    """Old: pointing game False (or True near a corner lesion), rank 0.0, mass None."""
    mask = np.zeros((20, 20), bool)
    mask[0:2, 0:2] = True
    empty = np.zeros((20, 20))
    assert pointing_game(empty, mask, tolerance=3) is None
    assert relevance_mass(empty, mask) is None
    assert relevance_rank(empty, mask) is None


def test_pointing_tolerance_is_a_disc() -> None:
    """Old: a square (a peak 4.2 px away diagonally counted, 4 px straight did not)."""
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    straight, diagonal = np.zeros((21, 21)), np.zeros((21, 21))
    straight[10, 14] = 1.0  # 4 px away
    diagonal[13, 13] = 1.0  # 4.24 px away
    assert pointing_game(straight, mask, tolerance=4) == 1.0
    assert pointing_game(diagonal, mask, tolerance=4) == 0.0


def test_pointing_tolerance_is_stated_in_original_pixels() -> None:
    # a 4288-wide photo whose 3000-px field of view becomes a 512-px crop, explained at 384 px
    scale = 512 / 3000
    transform = CropTransform(((scale, 0, 0), (0, scale, 0)), (2848, 4288), 512)
    assert pointing_tolerance(transform, 384) == pytest.approx(POINTING_TOLERANCE_PX * scale * 384 / 512)
    # the same photograph 4x smaller: the same physical tolerance
    small = CropTransform(((scale * 4, 0, 0), (0, scale * 4, 0)), (712, 1072), 512)
    assert pointing_tolerance(small, 384) == pytest.approx(pointing_tolerance(transform, 384), rel=1e-3)


def test_lesion_masks_keep_their_area() -> None:
    """Old: "any overlap" twice grew lesions 1.1-1.5x and microaneurysm-sized ones 1.6-2x."""
    rng = np.random.default_rng(0)
    original = np.zeros((2848, 4288), bool)
    ys, xs = np.mgrid[0:2848, 0:4288]
    for _ in range(60):  # microaneurysm-sized discs, 16-24 px across
        cy, cx, r = rng.integers(400, 2400), rng.integers(700, 3600), rng.uniform(8, 12)
        original |= (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    side = 2848
    scale = 512 / side
    transform = CropTransform(((scale, 0, -(4288 - side) / 2 * scale), (0, scale, 0)), (2848, 4288), 512)
    crop = original_masks_to_crop({"MA": original}, transform)
    mask = lesion_union_in_input(crop, 384)
    expected = original.sum() * (scale * 384 / 512) ** 2
    assert mask.sum() == pytest.approx(expected, rel=0.25)


def test_aupr_matches_scikit_learn_to_1e4() -> None:
    """Old: 1001 score levels lowered AP by up to 2% relative."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    truth = rng.random(400_000) < 0.01
    # a realistic lesion map: most scores near 0, positives higher, many near-ties
    scores = np.clip(rng.beta(0.3, 8, truth.size) + truth * rng.beta(2, 3, truth.size), 0, 1)
    scores = scores.astype(np.float32)
    ours = pixel_curve(scores, truth).aupr()
    assert abs(ours - average_precision_score(truth, scores)) < 1e-4
    old = pixel_curve(scores, truth, bins=1001).aupr()
    assert abs(old - average_precision_score(truth, scores)) > 1e-4  # what the old binning lost


def test_undefined_figures_are_undefined() -> None:
    """Old: QWK 1.0 for one identical class; sensitivity 0.0 without referable cases."""
    assert math.isnan(quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], 5))
    probs = np.tile([0.7, 0.2, 0.05, 0.03, 0.02], (3, 1))
    metrics = grading_metrics(probs, np.tile([1.0, 0, 0], (3, 1)), np.zeros(3, int), np.zeros(3, int))
    assert math.isnan(metrics["referable_sensitivity"]) and math.isnan(metrics["referable_auc"])
    assert metrics["referable_specificity"] == 1.0
    assert json_safe(metrics)["referable_sensitivity"] is None


def test_a_missing_landmark_is_left_out_not_a_crash() -> None:
    """Old: a record without a fovea centre crashed `drwb evaluate`."""
    distances = scaled_distances(
        np.array([[10.0, 10.0], [0.0, 0.0]]), [(13.0, 14.0), None], np.array([1072, 1072])
    )
    assert distances[0] == pytest.approx(5.0 * 4) and np.isnan(distances[1])
    metrics = localization_metrics(np.array([20.0, 10.0]), distances)
    assert metrics["fovea_mean_px"] == pytest.approx(20.0) and metrics["fovea_missing"] == 1


def test_training_validation_decodes_like_evaluate(tmp_path: Path) -> None:
    """Old: the training-time score decoded without the anatomical prior that `drwb evaluate` uses."""
    from training.tasks import TASKS
    from training.train import TrainConfig

    size = 64
    logits = torch.full((1, 2, size, size), -10.0)
    logits[0, 0, 32, 10] = 10.0  # optic disc at (10, 32)
    logits[0, 1, 32, 11] = 9.0  # a false fovea peak right beside the disc (outside the annulus)
    logits[0, 1, 32, 36] = 8.0  # the real fovea, 26 px (0.4 of the side) from the disc

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits.expand(x.shape[0], -1, -1, -1)

    task = TASKS["localizer"](TrainConfig(task="localizer", input_size=size, model_name="test_tiny_loc"))
    points = torch.tensor([[[10.0, 32.0], [36.0, 32.0]]])
    metrics = task.validate(Fixed(), [(torch.zeros(1, 3, size, size), None, points, torch.tensor([1.0]))])
    assert metrics["fovea_mean_px"] < 1.0  # the prior found the real fovea


def test_compare_scores_the_grader_that_made_the_heatmaps(tmp_path: Path) -> None:
    """Old: heatmaps from the chosen grader, deletion / insertion measured on the default grader."""
    import shutil

    from models.classifier import grader_card
    from models.registry import build_model, save_model
    from tests.conftest import write_tiny_weights
    from workbench.analysis import Workbench
    from workbench.io.synthetic import make_fundus
    from workbench.reports.batch import score_analysis
    from workbench.targets import GradeTarget

    folder = write_tiny_weights(tmp_path / "weights")
    torch.manual_seed(123)
    other = build_model(grader_card("test_convnext", 64, name="test_tiny_cls"))
    with torch.no_grad():
        other.dr_head.bias.copy_(torch.tensor([3.0, 0, 0, 0, -3.0]))  # clearly unlike the default
    card = grader_card("test_convnext", 64, name="test_tiny_cls").with_updates(
        weights="other_grader.safetensors", training={"validation": {"score": -1.0}}
    )
    save_model(other, card, folder, half=False)
    workbench = Workbench(weights_dir=folder)
    assert workbench.grader.card.weights != "other_grader.safetensors"
    from PIL import Image

    image = tmp_path / "fundus.png"
    Image.fromarray(make_fundus(3, size=(356, 536), dr_grade=3, dme_grade=2).image).save(image)
    analysis = workbench.analyze(image, force=True)
    target = GradeTarget(0)
    heatmaps = workbench.explain(analysis.crop, ["attention"], target, grader="other_grader")
    from dataclasses import replace

    scored = replace(analysis, heatmaps=heatmaps)
    scores = score_analysis(workbench, scored, target, grader="other_grader")
    chosen = workbench.grader_predictor("other_grader")
    with torch.no_grad():
        p0 = float(target.probability(chosen.model(chosen.input_tensor(analysis.crop)).float())[0])
    assert scores["attention"].curves.deletion[0] == pytest.approx(p0, abs=1e-5)
    default = score_analysis(workbench, scored, target)["attention"].curves.deletion[0]
    assert abs(default - p0) > 1e-3  # the test can tell the two graders apart
    shutil.rmtree(folder)


def test_explain_bench_val_excludes_photographs_the_grader_trained_on(real_idrid: Path) -> None:
    """Old: split by name only; 7 of 11 "validation" images were grading images the grader trained on."""
    import csv

    from models.classifier import grader_card
    from workbench.explain.explain_bench import _seen_by_grader
    from workbench.io.idrid import IDRiD
    from workbench.predictors import GraderPredictor

    dataset = IDRiD(real_idrid)
    records = dataset.segmentation("train")
    table = real_idrid / "extras" / "segmentation_train_in_grading_train.csv"
    with table.open() as handle:
        overlap = {row["segmentation_image"] for row in csv.DictReader(handle)}
    refit = grader_card("test_convnext", 64).with_updates(training={"config": {"refit": True, "seed": 0}})
    seen = _seen_by_grader(dataset, GraderPredictor(nn.Identity(), refit), records)
    assert seen == overlap  # content matching finds exactly the 42 known pairs, no more
    assert len(records) - len(seen) == 12
    # segmentation-only photographs as unlabelled inputs (with their masks as guides): all 54 are seen
    unlabelled = refit.with_updates(training={"config": {"refit": True, "seed": 0, "unlabelled": True}})
    assert _seen_by_grader(dataset, GraderPredictor(nn.Identity(), unlabelled), records) == {
        r.name for r in records
    }
    # a fold model with unlabelled inputs: unseen are exactly the photographs of its held-out fold
    from workbench.io.idrid import seg_to_grading
    from workbench.io.splits import assign_folds

    config = {"folds": 5, "fold": 0, "seed": 0, "unlabelled": True}
    fold0 = refit.with_updates(training={"config": config})
    folds = assign_folds(dataset.grading("train"), 5, 0)
    held = {seg for seg, grading in seg_to_grading(real_idrid).items() if folds[grading] == 0}
    seen = _seen_by_grader(dataset, GraderPredictor(nn.Identity(), fold0), records)
    assert {r.name for r in records} - seen == held and len(held) >= 5
