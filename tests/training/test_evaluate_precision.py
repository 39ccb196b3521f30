"""`drwb evaluate --precision`: figures say which precision made them; a card's own figures are fp32."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import drwb
from training.evaluate import evaluate


def test_evaluate_records_the_precision_it_ran_in_and_restores_the_setting(
    synthetic_idrid: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))
    result = evaluate(synthetic_idrid, "val", "segmentation", "tiny_segmenter", precision="bf16")
    assert result["precision"] == "bf16" and result["runtime"].endswith(" bf16")
    assert os.environ["DRWB_PRECISION"] == "fp32"  # the tests' setting, back after the call
    plain = evaluate(synthetic_idrid, "val", "segmentation", "tiny_segmenter")
    assert plain["precision"] == "fp32" and not plain["runtime"].endswith(" bf16")


def test_write_card_measures_in_fp32_unless_told_otherwise(
    synthetic_idrid: Path, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = shutil.copytree(tiny_weights, tmp_path / "weights")
    monkeypatch.setenv("DRWB_WEIGHTS", str(folder))
    monkeypatch.setenv("DRWB_PRECISION", "bf16")  # a user's setting for the apps
    args = ["evaluate", "--data", str(synthetic_idrid), "--task", "segmentation", "--model", "tiny_segmenter"]
    assert drwb.main([*args, "--write-card"]) == 0
    recorded = json.loads((folder / "tiny_segmenter.json").read_text())["training"]["evaluation"]["val"]
    assert recorded["precision"] == "fp32" and not recorded["runtime"].endswith(" bf16")
    before = (folder / "tiny_segmenter.json").read_text()
    assert drwb.main([*args, "--write-card", "--precision", "bf16"]) == 2  # refused, card untouched
    assert (folder / "tiny_segmenter.json").read_text() == before


def test_segmentation_figures_include_the_dice_of_the_masks_as_drawn(
    synthetic_idrid: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside the threshold-free figures, the Dice of the lesion masks analyze draws (the card's thresholds,
    one lesion type per pixel) for every annotated lesion type, with the thresholds they were drawn at."""
    import numpy as np

    import training.evaluate as evaluating
    from workbench.analysis.lesion_maps import one_type_per_pixel

    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))
    result = evaluate(synthetic_idrid, "val", "segmentation", "tiny_segmenter")
    drawn = {key: value for key, value in result.items() if key.startswith("drawn_dice_")}
    assert set(drawn) == {f"drawn_dice_{code}" for code in ("MA", "HE", "EX", "SE")}  # OD: redrawn
    assert all(0.0 <= value <= 1.0 for value in drawn.values())
    assert set(result["drawn_thresholds"]) == {"MA", "HE", "EX", "SE"}

    def everywhere(probabilities, thresholds, reliable=frozenset()):
        masks = one_type_per_pixel(probabilities, thresholds, reliable)
        return {**masks, "EX": np.ones_like(masks["EX"])}  # every pixel of the crop a hard exudate

    monkeypatch.setattr(evaluating, "one_type_per_pixel", everywhere)
    claimed = evaluate(synthetic_idrid, "val", "segmentation", "tiny_segmenter")
    assert claimed["drawn_dice_EX"] != drawn["drawn_dice_EX"]  # the figure is of the masks as drawn
    assert claimed["drawn_dice_MA"] == drawn["drawn_dice_MA"] and claimed["dice_EX"] == result["dice_EX"]
