"""The Models tab table: one metric per column, intervals, OOF preferred, weak graders marked."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write_tiny_weights
from workbench.model_table import grader_label, models_markdown


def test_models_table_columns_intervals_and_weak_marking(tmp_path: Path) -> None:
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_grader.json"
    card = json.loads(card_path.read_text())
    card["training"]["evaluation"] = {
        "oof": {
            "n": 413,
            "folds": 5,
            "dr_accuracy": 0.71,
            "dr_qwk": 0.86,
            "score": 0.9,
            "ci95": {"dr_accuracy": [0.66, 0.75]},
            "ece": {"dr_after": 0.03},
        }
    }
    card_path.write_text(json.dumps(card))
    weak = dict(card, weights="weak.safetensors")
    weak["training"] = {"evaluation": {"val": {"n": 83, "dr_qwk": 0.34, "dr_accuracy": 0.35}}}
    (folder / "weak.json").write_text(json.dumps(weak))
    (folder / "weak.safetensors").write_bytes((folder / "tiny_grader.safetensors").read_bytes())
    table = models_markdown(folder)
    header = next(line for line in table.splitlines() if line.startswith("| model | backbone"))
    assert [c.strip() for c in header.strip("|").split("|")][4:6] == ["DR accuracy", "DR QWK"]
    row = next(line for line in table.splitlines() if line.startswith("| tiny_grader"))
    assert "5-fold out-of-fold, n=413" in row and "0.710 [0.660, 0.750]" in row and "default" in row
    assert "0.030" in row  # ECE after temperature scaling
    weak_row = next(line for line in table.splitlines() if line.startswith("| weak"))
    assert "**weak**" in weak_row and "validation split, n=83" in weak_row
    from models.card import ModelCard

    assert grader_label(ModelCard.read(folder / "weak.json")) == "weak (weak: QWK 0.34)"


def test_models_table_names_the_channels_a_segmenter_takes_from_another(tmp_path: Path) -> None:
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_segmenter.json"
    card = json.loads(card_path.read_text())
    entry = {"model": "segmenter_lite0", "input_size": 640, "channels": ["HE", "OD"]}
    card["extra"]["channels_from"] = [entry]
    card_path.write_text(json.dumps(card))
    row = next(line for line in models_markdown(folder).splitlines() if line.startswith("| tiny_segmenter"))
    assert "HE, OD from segmenter_lite0 at 640 px" in row
