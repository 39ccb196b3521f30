"""One optic disc, a fovea checked against anatomy, and the doubt flag."""

from __future__ import annotations

import numpy as np
import pytest

from models.fov import FieldOfView
from models.localizer import LandmarkPrior
from models.preprocess import CropTransform
from workbench.io.synthetic import make_fundus
from workbench.landmarks import check_fovea, choose_disc, fovea_doubts, place_landmarks


@pytest.fixture(scope="module")
def eye():
    return make_fundus(3, size=(712, 1072))


def _fov(eye) -> FieldOfView:
    return FieldOfView(eye.fov_xy[0], eye.fov_xy[1], eye.fov_radius, 0.7, 1.0, True)


def _distance(a, b) -> float:
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


def test_a_plausible_fovea_is_trusted_and_kept(eye) -> None:
    dd = 2 * eye.od_radius
    start = (eye.fovea_xy[0] + 0.3 * dd, eye.fovea_xy[1] - 0.2 * dd)
    estimate = check_fovea(_fov(eye), eye.od_xy, dd, start, 0.8)
    assert estimate.doubt is None and estimate.xy == start
    assert 1.7 <= estimate.disc_diameters <= 3.4


def test_a_fovea_in_the_arcade_is_flagged_with_the_reason(eye) -> None:
    dd = 2 * eye.od_radius
    arcade = (eye.od_xy[0], eye.od_xy[1] - 1.8 * dd)  # above the disc, as seen on IDRiD test image 55
    estimate = check_fovea(_fov(eye), eye.od_xy, dd, arcade, 0.35)
    assert estimate.doubt is not None and "above or below the disc" in estimate.doubt
    assert estimate.xy == arcade  # kept where the detector put it, but no longer trusted


def test_doubt_reasons_name_the_problem(eye) -> None:
    dd = 2 * eye.od_radius
    fov = _fov(eye)
    outside = (fov.cx + 1.2 * fov.radius, fov.cy)
    assert "outside the field of view" in fovea_doubts(outside, eye.od_xy, dd, fov)
    assert fovea_doubts(eye.fovea_xy, eye.od_xy, dd, fov, confidence=0.9) == []
    low = fovea_doubts(eye.fovea_xy, eye.od_xy, dd, fov, confidence=0.05)
    assert "low detector confidence, 0.05 against at least 0.10" in low  # no nested brackets downstream
    nasal = (2 * eye.od_xy[0] - eye.fovea_xy[0], eye.fovea_xy[1])
    assert "on the nasal side of the disc" in fovea_doubts(nasal, eye.od_xy, dd, fov)


def test_at_most_one_disc_the_one_the_detector_found() -> None:
    mask = np.zeros((200, 300), bool)
    yy, xx = np.mgrid[0:200, 0:300]
    mask |= (xx - 60) ** 2 + (yy - 100) ** 2 <= 20**2  # the disc
    mask |= (xx - 220) ** 2 + (yy - 100) ** 2 <= 35**2  # a bigger bright lesion cluster
    chosen, centre, area = choose_disc(mask, (58.0, 97.0))
    assert centre == pytest.approx((60, 100), abs=0.5)
    assert chosen.sum() == area and not chosen[100, 220]
    # with the detector nowhere near either, the more disc-like (round, large) one wins
    ragged = np.zeros_like(mask)
    ragged[20:30, 10:290] = True  # a long thin streak: large but not round
    _, centre, _ = choose_disc(mask | ragged, (150.0, 190.0))
    assert centre == pytest.approx((220, 100), abs=0.5)
    empty, none, zero = choose_disc(np.zeros((10, 10), bool), (5.0, 5.0))
    assert none is None and zero == 0 and not empty.any()


def test_place_landmarks_without_a_segmenter_uses_the_field_size(eye) -> None:
    fov = _fov(eye)
    placed = place_landmarks(
        fov,
        eye.od_xy,
        eye.fovea_xy,
        0.9,
        fallback_radius_px=eye.od_radius,
    )
    assert placed.od_xy == eye.od_xy and placed.od_mask is None and placed.od_doubt is None
    assert placed.fovea.doubt is None


def test_a_landmark_placed_outside_the_photograph_is_doubtful(eye) -> None:
    """A picture that is not a fundus, graded on request, once got a disc at (-6, 896) in a 1072x712 frame:
    a landmark outside the photograph is doubtful, saying so; inside, nothing changes."""
    fov, size = _fov(eye), (712, 1072)
    inside = place_landmarks(
        fov, eye.od_xy, eye.fovea_xy, 0.9, fallback_radius_px=eye.od_radius, image_size=size
    )
    assert inside.od_doubt is None and inside.fovea.doubt is None
    off = place_landmarks(fov, (-6.0, 896.0), (1200.0, 356.0), 0.9, eye.od_radius, image_size=size)
    assert off.od_doubt is not None and "outside the photograph (1072x712 px)" in off.od_doubt
    assert off.fovea.doubt is not None and "outside the photograph" in off.fovea.doubt


def _prior_for(eye) -> LandmarkPrior:
    """A prior centred on the synthetic eye's own fovea (its geometry in field radii)."""
    temporal = 1.0 if eye.fov_xy[0] >= eye.od_xy[0] else -1.0
    offset = (
        temporal * (eye.fovea_xy[0] - eye.od_xy[0]) / eye.fov_radius,
        (eye.fovea_xy[1] - eye.od_xy[1]) / eye.fov_radius,
    )
    disc = 2 * eye.od_radius / eye.fov_radius
    return LandmarkPrior(offset, (0.05, 0.06), disc, (0.8 * disc, 1.2 * disc))


def test_with_a_prior_a_fovea_far_from_its_expected_place_is_doubtful(eye) -> None:
    fov, prior = _fov(eye), _prior_for(eye)
    near = (eye.fovea_xy[0] + 0.05 * eye.fov_radius, eye.fovea_xy[1] - 0.05 * eye.fov_radius)
    assert fovea_doubts(near, eye.od_xy, 1.0, fov, 0.5, prior) == []  # the disc size plays no part
    arcade = (eye.fovea_xy[0], eye.fovea_xy[1] - 0.5 * eye.fov_radius)
    (reason,) = fovea_doubts(arcade, eye.od_xy, 1.0, fov, 0.5, prior)
    assert "disc diameters across" in reason and "expected about" in reason


def test_an_implausibly_small_segmented_disc_gives_way_to_the_typical_size(eye) -> None:
    fov, prior = _fov(eye), _prior_for(eye)
    h, w = eye.image.shape[:2]
    transform = CropTransform(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), (h, w), w)
    yy, xx = np.mgrid[0 : eye.image.shape[0], 0 : eye.image.shape[1]]
    distance = np.hypot(xx - eye.od_xy[0], yy - eye.od_xy[1])
    whole = distance <= eye.od_radius
    placed = place_landmarks(fov, eye.od_xy, eye.fovea_xy, 0.9, None, whole, transform, prior)
    assert placed.od_doubt is None and placed.od_radius_px == pytest.approx(eye.od_radius, rel=0.05)
    sliver = distance <= 0.4 * eye.od_radius
    placed = place_landmarks(fov, eye.od_xy, eye.fovea_xy, 0.9, None, sliver, transform, prior)
    assert "too small" in placed.od_doubt
    assert placed.od_radius_px == pytest.approx(prior.disc_diameter * fov.radius / 2)
    assert placed.fovea.doubt is None


def test_analyze_uses_the_localizer_cards_prior(tiny_weights, tmp_path, eye) -> None:
    """The wiring card -> LocalizerPredictor.prior -> place_landmarks: with a prior in the card, the
    fovea is never judged by the segmented disc's size (the rule without a prior)."""
    import shutil

    from PIL import Image

    from models.card import ModelCard
    from workbench.analysis import Workbench

    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    prior = _prior_for(eye)
    card_path = folder / "tiny_localizer.json"
    card = ModelCard.read(card_path)
    card_path.write_text(card.with_updates(extra={**card.extra, "landmark_prior": prior.to_dict()}).to_json())
    workbench = Workbench(weights_dir=folder)
    assert workbench.localizer.prior == prior
    path = tmp_path / "eye.png"
    Image.fromarray(eye.image).save(path)
    analysis = workbench.analyze(path)
    assert analysis.fovea_doubt is None or "disc diameters from the disc" not in analysis.fovea_doubt
    assert analysis.od_radius_px > 0
