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


def test_explain_bench_scores_a_training_runs_folder_and_will_not_write_it_into_a_card(
    synthetic_idrid: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--grader runs/NAME/foldK``: a fold model (best.json + best.safetensors) is scored as it is; its
    table cannot go into a shipped card, and saying so leaves the run folder as it was."""
    import torch
    from safetensors.torch import save_file

    from drwb import main
    from models.classifier import grader_card
    from models.registry import build_model
    from workbench.explain.explain_bench import bench_grader

    run = tmp_path / "fold0"
    run.mkdir()
    card = grader_card("test_convnext", 64, name="test_tiny_cls", fine_attention={"stride": 8})
    torch.manual_seed(0)
    model = build_model(card)
    save_file(model.state_dict(), str(run / "best.safetensors"))
    (run / "best.json").write_text(card.to_json())
    predictor = bench_grader(str(run))
    assert predictor.model.fine is not None  # the run's own card built it
    torch.testing.assert_close(
        predictor.model.state_dict()["fine.project.0.weight"], model.fine.project[0].weight
    )
    result = explain_bench(predictor, synthetic_idrid, "train", ["attention"], limit=1, sanity_images=0)
    assert result["grader"] == str(run / "best") and result["methods"]["attention"]["pointing_game"]["n"] <= 1
    before = sorted(p.name for p in run.iterdir())
    args = ["explain-bench", "--data", str(synthetic_idrid), "--grader", str(run), "--write-card"]
    assert main(args) == 2
    assert "training run's folder" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before
