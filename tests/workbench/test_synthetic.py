"""Synthetic fundus: deterministic, lesions where the masks say, labels consistent with the rules."""

from __future__ import annotations

import numpy as np
import pytest

from models.constants import LESION_CODES
from workbench.io.synthetic import make_fundus


def test_deterministic_from_seed() -> None:
    a, b = make_fundus(5, size=(300, 450)), make_fundus(5, size=(300, 450))
    assert np.array_equal(a.image, b.image) and a.dr_grade == b.dr_grade
    assert not np.array_equal(a.image, make_fundus(6, size=(300, 450)).image)


@pytest.mark.parametrize("grade", range(5))
def test_lesions_follow_the_grade(grade: int) -> None:
    sample = make_fundus(1, size=(356, 536), dr_grade=grade, dme_grade=1)
    present = {code for code in LESION_CODES if sample.masks[code].any()}
    expected = {0: {"OD"}, 1: {"OD", "MA"}}.get(grade, {"OD", "MA", "HE", "EX", "SE"})
    assert present == expected
    assert sample.dr_grade == grade


@pytest.mark.parametrize("dme", [0, 1, 2])
def test_dme_rule_holds(dme: int) -> None:
    sample = make_fundus(2, size=(712, 1072), dr_grade=2, dme_grade=dme)
    assert sample.dme_grade == dme
    ys, xs = np.nonzero(sample.masks["EX"])
    if dme == 0:
        assert xs.size == 0
        return
    distance = np.hypot(xs - sample.fovea_xy[0], ys - sample.fovea_xy[1]) / (2 * sample.od_radius)
    if dme == 2:
        assert distance.min() <= 1.0
    else:
        assert distance.min() > 1.0


def test_lesion_pixels_look_like_lesions() -> None:
    sample = make_fundus(4, dr_grade=3, dme_grade=2)
    red = sample.image[sample.masks["HE"]].astype(float).mean(axis=0)
    yellow = sample.image[sample.masks["EX"]].astype(float).mean(axis=0)
    background = sample.image[sample.image.sum(axis=2) > 0].astype(float).mean(axis=0)
    assert red.sum() < background.sum()  # haemorrhages are dark
    assert yellow[1] > background[1] + 40  # exudates are bright yellow
    assert sample.masks["OD"][int(sample.od_xy[1]), int(sample.od_xy[0])]
