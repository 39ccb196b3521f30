"""Temperature scaling, reliability / ECE and bootstrap intervals against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.calibration import expected_calibration_error, fit_temperature, reliability, softmax
from workbench.intervals import bootstrap_intervals
from workbench.metrics import accuracy


def test_ece_hand_computed() -> None:
    # four predictions: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right); 10 bins
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    # bin (0.8, 0.9]: 2 items, conf 0.9, acc 0.5 -> |0.4| * 2/4 = 0.2
    # bin (0.5, 0.6]: 2 items, conf 0.575, acc 1.0 -> |0.425| * 2/4 = 0.2125
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4125)
    diagram = reliability(probs, labels)
    assert diagram.counts.sum() == 4 and diagram.counts[8] == 2 and diagram.counts[5] == 2


def test_temperature_scaling_lowers_calibration_error_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    n, k = 3000, 5
    labels = rng.integers(0, k, n)
    calibrated = rng.normal(0, 1, (n, k))
    calibrated[np.arange(n), labels] += 1.5  # a moderately good classifier ...
    overconfident = calibrated * 4.0  # ... made 4x too sure of itself
    before = expected_calibration_error(softmax(overconfident), labels)
    temperature = fit_temperature(overconfident, labels)
    assert temperature > 1.5  # it cools the over-confident logits
    after = expected_calibration_error(softmax(overconfident, temperature), labels)
    assert after < before / 3 and after < 0.05
    # the arg-max, hence accuracy, never changes
    assert (softmax(overconfident, temperature).argmax(1) == overconfident.argmax(1)).all()


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        truth = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, truth, 1 - truth)
        point = accuracy(truth, pred)
        ci = bootstrap_intervals(
            n, lambda idx, t=truth, p=pred: {"acc": accuracy(t[idx], p[idx])}, resamples=500
        )["acc"]
        assert ci[0] <= point <= ci[1]
        widths.append(ci[1] - ci[0])
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): 4x narrower for 16x the images


def test_bootstrap_undefined_metric_gives_no_interval() -> None:
    ci = bootstrap_intervals(10, lambda idx: {"x": float("nan"), "items": [1.0, None]}, resamples=50)
    assert ci["x"] is None and ci["items[1]"] is None and ci["items[0]"] == [1.0, 1.0]


def test_cross_fitted_calibration_scores_each_fold_with_a_temperature_fitted_elsewhere() -> None:
    """Two folds whose logits need opposite temperatures: one temperature fitted on both flatters the
    pooled ECE; scoring each fold with the other's temperature shows the miscalibration a user meets."""
    from training.oof import cross_fitted_ece

    rng = np.random.default_rng(2)
    n, k = 2000, 5
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.5
    folds = np.repeat([0, 1], n // 2)
    logits[folds == 0] *= 4.0  # fold 0 over-confident, fold 1 under-confident
    logits[folds == 1] *= 0.25
    expected = np.zeros((n, k))
    for fold in (0, 1):
        held = folds == fold
        expected[held] = softmax(logits[held], fit_temperature(logits[~held], labels[~held]))
    crossed = cross_fitted_ece(logits, labels, folds)
    assert crossed == pytest.approx(expected_calibration_error(expected, labels))
    pooled = expected_calibration_error(softmax(logits, fit_temperature(logits, labels)), labels)
    assert crossed > pooled + 0.05
