"""Metric code against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.metrics import (
    binary_auc,
    confusion_matrix,
    per_class_recall,
    pixel_curve,
    quadratic_weighted_kappa,
    scaled_distances,
    sensitivity_specificity,
)


def test_qwk_hand_value() -> None:
    # 3 classes; truth [0,1,2,2], pred [0,2,2,1]. O = [[1,0,0],[0,0,1],[0,1,1]]
    # W = [[0,.25,1],[.25,0,.25],[1,.25,0]]; row sums [1,1,2], col sums [1,1,2], E = outer/4
    # sum(W*O) = .25 + .25 = 0.5
    # sum(W*E) = (0.25*1*1 + 1*1*2 + 0.25*1*1 + 0.25*1*2 + 1*2*1 + 0.25*2*1)/4 = 5.5/4
    assert quadratic_weighted_kappa([0, 1, 2, 2], [0, 2, 2, 1], 3) == pytest.approx(1 - 0.5 / (5.5 / 4))
    assert quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], 5) == pytest.approx(1.0)


def test_confusion_and_recall() -> None:
    matrix = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert per_class_recall([0, 0, 1, 2], [0, 1, 1, 1], 4) == [0.5, 1.0, 0.0, None]


def test_auc_with_ties() -> None:
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4) (0.8>0.1) (0.4=0.4 -> .5) (0.4>0.1) = 3.5/4
    assert binary_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    assert np.isnan(binary_auc([1, 1], [0.2, 0.3]))


def test_sensitivity_specificity() -> None:
    assert sensitivity_specificity([1, 1, 0, 0, 0], [1, 0, 0, 0, 1]) == pytest.approx((0.5, 2 / 3))


def test_aupr_dice_jaccard_hand_values() -> None:
    # 4 pixels: scores 0.9 (pos), 0.6 (neg), 0.3 (pos), 0.0 (neg).
    # PR steps: t=0.9 -> R .5 P 1; t=0.6 -> R .5 P .5; t=0.3 -> R 1 P 2/3. AP = .5*1 + .5*(2/3)
    curve = pixel_curve(np.array([0.9, 0.6, 0.3, 0.0]), np.array([1, 0, 1, 0], bool), bins=11)
    assert curve.aupr() == pytest.approx(0.5 + 0.5 * 2 / 3)
    dice, threshold = curve.best_dice()
    assert dice == pytest.approx(0.8) and threshold == pytest.approx(0.3)  # tp 2 fp 1 fn 0
    assert curve.jaccard_at(0.5) == pytest.approx(1 / 3)  # tp 1, fp 1, fn 1


def test_perfect_segmentation() -> None:
    truth = np.zeros((10, 10), bool)
    truth[2:5, 2:5] = True
    curve = pixel_curve(truth.astype(float), truth)
    assert curve.aupr() == pytest.approx(1.0) and curve.best_dice()[0] == pytest.approx(1.0)


def test_distances_in_challenge_frame() -> None:
    d = scaled_distances(np.array([[3.0, 4.0]]), np.array([[0.0, 0.0]]), np.array([1072]))
    assert d[0] == pytest.approx(5.0 * 4)


def test_mask_dice() -> None:
    from workbench.metrics import mask_dice

    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    assert mask_dice(a, b) is None
    a[:5] = True
    b[:5] = True
    assert mask_dice(a, b) == 1.0
    b[:] = False
    b[5:] = True
    assert mask_dice(a, b) == 0.0
    b[:] = False
    b[:5, :5] = True  # 25 of a's 50
    assert mask_dice(a, b) == pytest.approx(2 * 25 / 75)
