"""DME rule and ETDRS geometry on synthetic fundi with exudates placed inside / outside one disc diameter."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.anatomy import dme_rule, etdrs_grid, region_of_points
from workbench.io.synthetic import make_fundus


@pytest.mark.parametrize("dme", [0, 1, 2])
def test_dme_rule_recovers_synthetic_label(dme: int) -> None:
    sample = make_fundus(21, size=(712, 1072), dr_grade=3, dme_grade=dme)
    ys, xs = np.nonzero(sample.masks["EX"])
    check = dme_rule(np.stack([xs, ys], 1), sample.fovea_xy, sample.od_radius, grader_grade=dme)
    assert check.grade == dme == sample.dme_grade
    assert check.agrees
    disagreeing = dme_rule(
        np.stack([xs, ys], 1), sample.fovea_xy, sample.od_radius, grader_grade=(dme + 1) % 3
    )
    assert not disagreeing.agrees


def test_exudate_just_inside_and_outside_one_disc_diameter() -> None:
    fovea, radius = (500.0, 300.0), 40.0  # disc diameter 80 px
    assert dme_rule(np.array([[579.0, 300.0]]), fovea, radius, 2).grade == 2
    assert dme_rule(np.array([[581.0, 300.0]]), fovea, radius, 1).grade == 1


def test_etdrs_grid_scale_and_regions() -> None:
    grid = etdrs_grid((500.0, 300.0), od_xy=(800.0, 300.0), od_radius_px=90.0)  # disc 180 px = 1.8 mm
    assert grid.px_per_mm == pytest.approx(100.0)
    assert grid.radii_px == pytest.approx((50.0, 150.0, 300.0))
    points = np.array([[500, 300], [600, 300], [400, 300], [500, 200], [500, 550], [900, 300]])
    assert region_of_points(grid, points) == [
        "centre",
        "inner_nasal",
        "inner_temporal",
        "inner_superior",
        "outer_inferior",
        None,
    ]
