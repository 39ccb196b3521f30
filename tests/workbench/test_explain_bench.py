"""explain-bench on a synthetic IDRiD folder with ground-truth lesions and the tiny grader."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import load_model
from workbench.explain.explain_bench import explain_bench, mean_ci
from workbench.predictors import GraderPredictor


def test_mean_ci_known_values() -> None:
    result = mean_ci([1.0, 2.0, 3.0, None])
    assert result["mean"] == pytest.approx(2.0) and result["n"] == 3
    assert result["ci95"] == pytest.approx(1.96 * 1.0 / 3**0.5)
    assert mean_ci([])["mean"] is None


def test_explain_bench_table(synthetic_idrid: Path, tiny_weights: Path) -> None:
    predictor = GraderPredictor(*load_model("tiny_grader", tiny_weights))
    result = explain_bench(
        predictor, synthetic_idrid, "train", ["gradcam", "attention"], limit=2, sanity_images=1
    )
    assert result["images"] == 2 and result["grader"] == "tiny_grader"
    for method in ("gradcam", "attention"):
        stats = result["methods"][method]
        for key in ("deletion_auc", "insertion_auc", "relevance_mass", "seconds"):
            assert stats[key]["n"] == 2 and stats[key]["mean"] is not None
        assert stats["randomisation_spearman"]["n"] == 1
        assert isinstance(stats["fails_sanity_check"], bool)


def test_explain_bench_writes_its_table_into_the_grader_card(
    synthetic_idrid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``drwb explain-bench --write-card``: the Models tab then shows the rows; the weights stay as they
    were (sha256 still matches)."""
    from drwb import main
    from tests.conftest import write_tiny_weights
    from workbench.model_table import models_markdown

    folder = write_tiny_weights(tmp_path)
    monkeypatch.setenv("DRWB_WEIGHTS", str(folder))
    args = ["explain-bench", "--data", str(synthetic_idrid), "--split", "train", "--methods", "attention"]
    assert (
        main([*args, "--grader", "tiny_grader", "--limit", "2", "--sanity-images", "0", "--write-card"]) == 0
    )
    _, card = load_model("tiny_grader", folder)  # sha256 checked
    bench = card.training["evaluation"]["explain_bench_train"]
    assert bench["images"] == 2 and "attention" in bench["methods"] and "explain-bench" in bench["command"]
    assert card.training["evaluation"].get("explain_bench_val") is None
    assert "- tiny_grader: not measured" in models_markdown(folder)  # only --split val rows are shown


def test_unlabelled_inputs_count_as_seen_by_the_rule_training_used(synthetic_idrid: Path) -> None:
    """Without IDRiD's segmentation-to-grading table, training took every segmentation photograph as an
    unlabelled input, so a fold model trained with --unlabelled has seen all of them."""
    from torch import nn

    from models.classifier import grader_card
    from workbench.explain.explain_bench import _seen_by_grader
    from workbench.io.idrid import IDRiD, seg_to_grading

    dataset = IDRiD(synthetic_idrid)
    records = dataset.segmentation("train")
    assert not seg_to_grading(synthetic_idrid)  # the synthetic copy has no table
    config = {"folds": 2, "fold": 0, "seed": 0}
    plain = grader_card("test_convnext", 64).with_updates(training={"config": config})
    unlabelled = plain.with_updates(training={"config": {**config, "unlabelled": True}})
    assert _seen_by_grader(dataset, GraderPredictor(nn.Identity(), unlabelled), records) == {
        r.name for r in records
    }
    assert len(_seen_by_grader(dataset, GraderPredictor(nn.Identity(), plain), records)) < len(records)
