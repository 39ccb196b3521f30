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
