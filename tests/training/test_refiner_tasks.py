"""The landmark-refiner tasks: disc windows centred on the annotated disc (moved within the jitter in
training), a run that learns and ships a card saying how, training photographs that leave the held-out
ones out; fovea windows whose heatmap peaks on the annotated fovea."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.registry import build_model
from tests.training.steps import losses_over_steps, train_config
from training.tasks.disc import JITTER_R, disc_training_names
from training.train import TrainConfig, train
from workbench.io.idrid import IDRiD, seg_to_grading
from workbench.io.splits import split_names, split_train_val


def _config(synthetic_idrid: Path, tmp_path: Path) -> TrainConfig:
    return replace(train_config(synthetic_idrid, tmp_path, 1, "disc"), batch_size=2, tiles_per_image=2)


def _centroid(mask: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(mask[0].numpy() >= 0.5)
    return np.array([xs.mean(), ys.mean()])


def test_windows_hold_the_disc_at_their_centre(synthetic_idrid: Path, tmp_path: Path) -> None:
    from training.tasks import TASKS

    task = TASKS["disc"](_config(synthetic_idrid, tmp_path))
    card = task.card()
    train_set, val_set = task.datasets(card)
    assert len(train_set) == 3 and len(val_set) == 1
    size, centre = card.input_size, (card.input_size - 1) / 2
    image, mask = val_set[0]
    assert image.shape == (3, size, size) and mask.shape == (1, size, size)
    assert np.hypot(*(_centroid(mask) - centre)) < 1.0  # validation: on the annotated disc
    # training: moved by at most JITTER_R field radii per axis (window px grow as 1 / zoom, zoom >= 0.9);
    # the rotation turns about the centre
    reach = JITTER_R * size / (2 * card.extra["window_r"]) / 0.9 * np.sqrt(2)
    offsets = []
    for epoch in range(3):
        train_set.set_epoch(epoch)
        offsets += [np.hypot(*(_centroid(train_set[i][1]) - centre)) for i in range(len(train_set))]
    assert max(offsets) <= reach + 1.0 and max(offsets) > 1.0  # jittered, within the bound


def test_a_disc_run_learns_and_ships_its_card(synthetic_idrid: Path, tmp_path: Path) -> None:
    import json

    from training.tasks import TASKS

    cfg = _config(synthetic_idrid, tmp_path)
    task = TASKS["disc"](cfg)
    card = task.card()
    torch.manual_seed(0)
    model = build_model(card)
    train_set, _ = task.datasets(card)
    batch = tuple(torch.stack([train_set[j][i] for j in range(3)]) for i in range(2))
    losses = losses_over_steps(task, model, batch, 12)
    assert losses[-1] < 0.8 * losses[0]

    shipped = replace(cfg, ship=True, ship_name="tiny_disc_shipped", ship_dir=str(tmp_path / "weights"))
    result = train(shipped, command="drwb train disc --test")
    assert 0 <= result["best_metrics"]["dice_OD"] <= 1
    written = json.loads((tmp_path / "weights/tiny_disc_shipped.json").read_text())
    assert written["arch"] == "disc" and written["extra"]["window_r"] == card.extra["window_r"]
    assert "annotated disc" in written["training"]["recipe"]["windows"]


def test_training_photographs_leave_out_every_held_out_one(real_idrid: Path) -> None:
    """No refiner training photograph is a segmentation validation image or a copy of a grading
    validation image (the disc-centre figures are measured on those)."""
    names = [r.name for r in IDRiD(real_idrid).segmentation("train") if r.mask_paths["OD"] is not None]
    train_names, val_names = disc_training_names(str(real_idrid), names, 0.2, 0)
    assert set(val_names) == set(split_names(names, 0.2, 0).val)
    held_grading = set(split_train_val(IDRiD(real_idrid).grading("train"), 0.2, 0).val)
    copies = seg_to_grading(real_idrid)
    assert not set(train_names) & set(val_names)
    assert not {copies.get(n) for n in train_names} & held_grading
    # the rule removes some photographs that would otherwise train (the test would pass vacuously if not)
    assert len(train_names) < len(names) - len(val_names)


def test_fovea_windows_put_the_heatmap_peak_on_the_fovea(synthetic_idrid: Path, tmp_path: Path) -> None:
    """Each fovea window's heatmap peaks on the annotated fovea, which is within the jitter of the window's
    centre; validation windows are the same every epoch, training windows are not."""
    from training.tasks import TASKS
    from training.tasks.fovea import JITTER_R as FOVEA_JITTER

    cfg = replace(train_config(synthetic_idrid, tmp_path, 1, "fovea"), val_fraction=0.3)
    task = TASKS["fovea"](cfg)
    card = task.card()
    train_set, val_set = task.datasets(card)
    # the training windows' side in the photographs' own pixels (synthetic: 1072 px wide, field ~0.45 of it)
    assert (
        0.3 * 1072 * card.extra["window_r"] < card.extra["source_window_px"] < 1072 * card.extra["window_r"]
    )
    size, centre = card.input_size, (card.input_size - 1) / 2
    reach = FOVEA_JITTER * size / (2 * card.extra["window_r"]) / 0.9 * np.sqrt(2) + 1
    seen = []
    for epoch in (0, 1):
        train_set.set_epoch(epoch)
        val_set.set_epoch(epoch)
        for dataset in (train_set, val_set):
            _, heat, point, challenge_px = dataset[0]
            peak = np.unravel_index(int(heat[0].argmax()), heat[0].shape)[::-1]
            assert np.abs(np.array(peak) - point.numpy()).max() <= 0.5 + 1e-6
            assert np.hypot(*(point.numpy() - centre)) <= reach and challenge_px > 0
            seen.append(point.numpy())
    assert np.allclose(seen[1], seen[3])  # validation: one fixed window per image
    assert not np.allclose(seen[0], seen[2])  # training: a new window each epoch

    model = build_model(card)
    batch = tuple(
        torch.stack([torch.as_tensor(train_set[j][i]) for j in range(len(train_set))]) for i in range(4)
    )
    losses = losses_over_steps(task, model, batch, 12)
    assert losses[-1] < 0.7 * losses[0]
    with torch.no_grad():
        metrics = task.validate(model.eval(), [batch])
    assert metrics["fovea_mean_px"] > 0 and metrics["score"] == -metrics["fovea_mean_px"]


def test_refiner_evaluations_run_on_synthetic_data(
    synthetic_idrid: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drwb evaluate --task disc / fovea` end to end (tiny random models, synthetic IDRiD): every figure
    is there and in range, the paired figures are differences of the two, and train is refused."""
    from training.evaluate import evaluate, localization_records

    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))
    disc = evaluate(synthetic_idrid, "val", "disc", "tiny_disc")
    alone = disc["segmenter_alone"]
    assert disc["n"] == 1 and alone["model"] == "tiny_segmenter" and disc["card_key"] == "val"
    for figures in (disc, alone):
        assert 0 <= figures["aupr_OD"] <= 1 and 0 <= figures["jaccard_OD_at_0.5"] <= 1
        assert 0 <= figures["jaccard_OD"] <= figures["dice_OD"] <= 1  # Jaccard never exceeds Dice
    difference = disc["paired_jaccard_difference"]
    assert difference["mean"] == pytest.approx(
        disc["jaccard_OD"] - alone["jaccard_OD"], abs=1e-9
    )  # one image
    centre = disc["centre"]
    records = localization_records(IDRiD(synthetic_idrid), "val")
    assert centre["n"] == len(records) > 0 and centre["refined_minus_detector_px"] == pytest.approx(
        centre["refined_mean_px"] - centre["detector_mean_px"]
    )
    fovea = evaluate(synthetic_idrid, "val", "fovea", "tiny_fovea")
    # the tiny refiner finds no fovea (conftest): the localizer's stands, error for error
    assert fovea["found"] == 0 and fovea["refined_mean_px"] == fovea["detector_mean_px"]
    assert fovea["score"] == -fovea["refined_mean_px"]
    with pytest.raises(ValueError, match="trained on"):
        evaluate(synthetic_idrid, "train", "fovea", "tiny_fovea")
