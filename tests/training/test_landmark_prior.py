"""The landmark prior is fitted from annotations in field radii, and written into a localizer's card."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models.card import ModelCard
from models.localizer import LandmarkPrior
from training.landmark_prior import fit_landmark_prior, fovea_offsets, write_prior_to_card
from workbench.io.idrid import IDRiD
from workbench.io.splits import split_train_val
from workbench.landmarks import MAX_DEVIATION


def test_offsets_are_temporal_and_downward_in_field_radii_for_either_eye() -> None:
    od = np.array([[100.0, 200.0], [900.0, 200.0]])  # a left-of-centre and a right-of-centre disc
    fovea = np.array([[250.0, 220.0], [750.0, 220.0]])
    offsets = fovea_offsets(od, fovea, np.array([500.0, 500.0]), np.array([200.0, 200.0]))
    assert offsets.tolist() == [[0.75, 0.1], [0.75, 0.1]]


def test_fit_on_a_synthetic_idrid_and_write_it_into_a_card(synthetic_idrid: Path, tmp_path: Path) -> None:
    prior = fit_landmark_prior(synthetic_idrid)
    assert prior.fovea_offset[0] > 0.3  # the fovea is on the temporal side of every synthetic disc
    assert min(prior.fovea_spread) > 0 and prior.disc_range[0] <= prior.disc_diameter <= prior.disc_range[1]
    assert "training localization images" in prior.source
    card_path = tmp_path / "loc.json"
    shutil.copy(Path("models/weights/localizer_lite0.json"), card_path)
    before = ModelCard.read(card_path)
    write_prior_to_card(card_path, prior)
    after = ModelCard.read(card_path)
    assert LandmarkPrior.from_card(after) == prior
    assert (after.sha256, after.weights, after.training) == (before.sha256, before.weights, before.training)


def test_a_folder_with_too_few_annotated_images_is_named(synthetic_idrid: Path, tmp_path: Path) -> None:
    one = {r.name for r in IDRiD(synthetic_idrid).localization("train")[:1]}
    with pytest.raises(ValueError, match="fewer than two annotated localization images"):
        fit_landmark_prior(synthetic_idrid, train_names=one)


@pytest.mark.realdata
def test_the_prior_fitted_on_training_images_holds_on_validation_foveae(real_idrid: Path) -> None:
    """Annotated validation foveae (never used in the fit) lie within the doubt limit of the prior."""
    from training.landmark_prior import _field

    prior = fit_landmark_prior(real_idrid)
    assert 0.70 < prior.fovea_offset[0] < 0.80 and 0.25 < prior.disc_diameter < 0.36
    dataset = IDRiD(real_idrid)
    val = set(split_train_val(dataset.grading("train"), 0.2, 0).val)
    records = [r for r in dataset.localization("train") if r.name in val]
    deviations = []
    for record in records:
        centre_x, radius, _ = _field(record.image_path)
        deviations.append(np.hypot(*prior.fovea_deviation(record.fovea_xy, record.od_xy, centre_x, radius)))
    assert np.mean(np.array(deviations) <= MAX_DEVIATION) >= 0.97
