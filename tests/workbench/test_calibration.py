"""Temperature scaling, reliability / ECE and bootstrap intervals against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.calibration import (
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_bias,
    reliability,
    softmax,
)
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


def test_ece_if_calibrated_tells_sampling_from_miscalibration() -> None:
    """On 400 images a calibrated grader still shows an ECE of a few points; an over-confident one shows
    more than any draw of a calibrated one."""
    rng = np.random.default_rng(1)
    n, k = 400, 5
    logits = rng.normal(0, 1.5, (n, k))
    probs = softmax(logits)
    labels = (rng.random((n, 1)) > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, k - 1)  # drawn from probs
    calibrated = ece_if_calibrated(probs, labels)
    assert calibrated["observed"] == pytest.approx(expected_calibration_error(probs, labels))
    assert 0.01 < calibrated["median"] < calibrated["p95"] < 0.15  # a floor well above 0 on 400 images
    assert calibrated["p_value"] > 0.05  # its ECE is what sampling gives
    overconfident = ece_if_calibrated(softmax(logits * 3), labels)  # same labels, 3x too sure
    assert overconfident["observed"] > overconfident["p95"] and overconfident["p_value"] < 0.01
    with pytest.raises(ValueError, match="at least one"):
        ece_if_calibrated(probs[:0], labels[:0])


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


def _prior_shifted(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 3-class model trained on balanced classes, used where class 0 is 8x as common:
    its scores favour the rare classes by log(8) too little, as a grader sampled towards rare grades."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=[0.8, 0.1, 0.1])
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += 1.0
    return logits * 2.0, labels  # and twice too sure of itself


def test_class_biases_undo_a_prior_shift_that_temperature_cannot() -> None:
    logits, labels = _prior_shifted(3)
    temperature, bias = fit_temperature_bias(logits, labels)
    assert bias[0] == 0.0 and (bias[1:] < -1.0).all()  # the rare classes pushed down
    assert temperature == pytest.approx(2.0, rel=0.15)  # and the logits cooled
    plain = accuracy(labels, logits.argmax(1))
    biased = softmax(logits / temperature + bias)
    assert accuracy(labels, biased.argmax(1)) > plain + 0.05  # the arg-max moved, for the better
    # at the optimum each class's mean probability is its frequency; temperature alone misses it
    frequency = np.bincount(labels, minlength=3) / len(labels)
    assert np.abs(biased.mean(0) - frequency).max() < 1e-6
    alone = softmax(logits, fit_temperature(logits, labels))
    assert np.abs(alone.mean(0) - frequency).max() > 0.1

    # an optimum: no small move of T or of a bias lowers the NLL
    def nll(t: float, b: np.ndarray) -> float:
        return float(-np.log(softmax(logits / t + b)[np.arange(len(labels)), labels]).mean())

    best = nll(temperature, bias)
    for t, b in ((temperature * 1.02, bias), (temperature / 1.02, bias), (temperature, bias + [0, 0.02, 0])):
        assert nll(t, b) > best


def test_class_biases_need_every_class() -> None:
    logits, labels = _prior_shifted(4, n=200)
    with pytest.raises(ValueError, match="every one of 3 classes"):
        fit_temperature_bias(logits, np.where(labels == 2, 1, labels))


def test_cross_fitted_class_bias_figures_ride_along_the_oof_metrics() -> None:
    """training.oof.oof_metrics records what class biases would give, each fold fitted elsewhere; only
    the temperature is applied (the figures beside it are the shipped behaviour)."""
    from training.oof import class_bias_cross_fitted, oof_metrics

    rng = np.random.default_rng(5)
    n = 1000
    dr, dr_true = _prior_shifted(6, n)
    dr = np.concatenate([dr, rng.normal(-5, 0.1, (n, 2))], axis=1)  # grades 3, 4 never predicted ...
    dr_true[:5], dr_true[5:10] = 3, 4  # ... but present
    dme, dme_true = _prior_shifted(7, n)
    oof = {"logits": np.concatenate([dr, dme], 1), "dr_true": dr_true, "dme_true": dme_true}
    oof["logits_flip"], folds = oof["logits"], np.arange(n) % 5
    assert "class_bias_cross_fitted" not in oof_metrics(oof, tta=False)  # no folds: nothing to cross-fit
    measured = oof_metrics({**oof, "fold": folds}, tta=False)
    floor = measured["ece"]["dr_after_if_calibrated"]  # what sampling alone gives, beside the ECE
    assert floor["observed"] == measured["ece"]["dr_after"] and 0 < floor["median"] < floor["p95"]
    biased = measured["class_bias_cross_fitted"]
    assert biased["dme_accuracy"] > measured["dme_accuracy"] + 0.05 and biased["dme_ece"] < 0.05
    assert biased == {
        k: v for k, v in class_bias_cross_fitted(oof["logits"], dr_true, dme_true, folds).items()
    }
    dr_true[:10] = 0  # a grade that no fold's complement holds: nothing to fit, no figures
    assert class_bias_cross_fitted(oof["logits"], dr_true, dme_true, folds) is None
