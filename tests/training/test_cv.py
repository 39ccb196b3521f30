"""k-fold cross-validation: fold assignment, OOF coverage, calibration output, and the refit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.train import TrainConfig
from workbench.io.idrid import IDRiD
from workbench.io.splits import assign_folds, duplicate_groups


def test_folds_keep_duplicates_together_and_cover_every_image(real_idrid: Path) -> None:
    records = IDRiD(real_idrid).grading("train")
    folds = assign_folds(records, 5, seed=0)
    assert set(folds) == {r.name for r in records}  # every image exactly once (a dict: one fold each)
    groups = duplicate_groups(records)
    assert len(groups) == 5
    for group in groups:
        assert len({folds[name] for name in group}) == 1, group
    sizes = np.bincount(list(folds.values()), minlength=5)
    assert sizes.max() - sizes.min() <= 2
    grade = {r.name: r.dr_grade for r in records}
    for g in range(5):
        per_fold = np.bincount([folds[n] for n in folds if grade[n] == g], minlength=5)
        assert per_fold.max() - per_fold.min() <= 2, (g, per_fold)  # stratified (pairs may add one)


def test_fold_seed_keeps_the_folds_while_seed_changes_the_training(synthetic_idrid: Path) -> None:
    """A second member with another --seed must be held out on the same folds to be ensembled."""
    from training.tasks import TASKS

    def held_out(**changes: object) -> set[str]:
        cfg = TrainConfig(task="grader", data=str(synthetic_idrid), folds=2, fold=0, **changes)
        return TASKS["grader"](cfg)._grading_split()[1]

    base = held_out(seed=0)
    assert held_out(seed=1, fold_seed=0) == base
    assert TrainConfig(seed=1, fold_seed=0).split_seed == 0
    assert TrainConfig(seed=3).split_seed == 3
    assert held_out(seed=1) != base  # without --fold-seed the folds follow --seed
    # and what a shipped card says it trained on follows the same folds (drwb provenance, the browser)
    from models.card import ModelCard
    from models.registry import weights_dir
    from workbench.provenance import trained_grading_names

    config = {"folds": 2, "fold": 0, "seed": 1, "fold_seed": 0}
    card = ModelCard.read(weights_dir() / "grader_lite0.json").with_updates(training={"config": config})
    names = {r.name for r in IDRiD(synthetic_idrid).grading("train")}
    assert trained_grading_names(card, IDRiD(synthetic_idrid)) == names - base


def test_a_run_resumed_with_other_folds_is_refused(tmp_path: Path) -> None:
    """Other folds on resume would hold out images the saved model trained on (OOF figures leak)."""
    from training.train import _check_resumable

    state = tmp_path / "state.json"
    state.write_text(json.dumps({"config": {"seed": 0}}))  # a run from before --fold-seed existed
    _check_resumable(state, TrainConfig(seed=1, fold_seed=0))  # another training seed, the same folds
    with pytest.raises(ValueError, match="seed 0, not 1"):
        _check_resumable(state, TrainConfig(seed=1))
    state.write_text(json.dumps({"config": {"seed": 1, "fold_seed": 0}}))
    with pytest.raises(ValueError, match="seed 0, not 2"):
        _check_resumable(state, TrainConfig(seed=0, fold_seed=2))


def _cv_config(synthetic_idrid: Path, tmp_path: Path, **changes: object) -> TrainConfig:
    return TrainConfig(
        **{
            "task": "grader",
            "backbone": "test_convnext",
            "data": str(synthetic_idrid),
            "cache": str(tmp_path / "cache"),
            "runs": str(tmp_path / "runs"),
            "run_name": "cv",
            "model_name": "test_tiny_cls",
            "epochs": 1,
            "batch_size": 4,
            "input_size": 64,
            "workers": 1,
            "folds": 2,
            "no_pretrained": True,
            "ship": True,
            "ship_dir": str(tmp_path / "shipped"),
            **changes,
        }
    )


def test_cv_run_scores_every_image_once_and_refits(synthetic_idrid: Path, tmp_path: Path) -> None:
    from training.cv import train_folds

    cfg = _cv_config(
        synthetic_idrid, tmp_path, ordinal_weight=0.5, sampling="sqrt", ship_name="tiny_cv_grader"
    )
    summary = train_folds(cfg)
    n = len(IDRiD(synthetic_idrid).grading("train"))
    oof = np.load(tmp_path / "runs" / "cv" / "oof.npz")
    assert sorted(oof["names"].tolist()) == sorted(r.name for r in IDRiD(synthetic_idrid).grading("train"))
    assert summary["n"] == n and sum(summary["fold_sizes"]) == n
    written = json.loads((tmp_path / "runs" / "cv" / "oof.json").read_text())
    for key in ("plain", "hflip_tta"):
        metrics = written[key]
        assert metrics["temperature"]["dr"] > 0
        low, high = metrics["ci95"]["dr_accuracy"]
        assert low <= metrics["dr_accuracy"] <= high
    assert (tmp_path / "runs" / "cv" / "refit" / "best.safetensors").is_file()
    refit_state = json.loads((tmp_path / "runs" / "cv" / "refit" / "state.json").read_text())
    assert refit_state["config"]["refit"] and refit_state["epoch"] == 1

    # the shipped refit: card round trip, OOF figures, temperatures applied at inference, sha256 checked
    import pytest
    import torch

    from models.registry import WeightsError, default_model, load_model

    shipped = tmp_path / "shipped"
    model, card = load_model("tiny_cv_grader", shipped)
    oof = card.training["evaluation"]["oof"]
    assert oof["n"] == n and oof["temperature"] == card.extra["temperature"]
    assert model.temperature.tolist() == pytest.approx([oof["temperature"]["dr"], oof["temperature"]["dme"]])
    assert default_model("grader", shipped) == "tiny_cv_grader"
    raw = load_model("tiny_cv_grader", shipped)[0]
    raw.temperature.fill_(1.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        scaled, unscaled = model(x), raw(x)
    assert torch.allclose(scaled[:, :5], unscaled[:, :5] / oof["temperature"]["dr"], atol=1e-5)
    # the OOF predictions shipped beside the card re-score to the card's figures
    from training.oof import evaluate_oof

    rescored = evaluate_oof(shipped / oof["predictions"]["file"], synthetic_idrid)
    assert rescored["plain"]["dr_accuracy"] == pytest.approx(oof["dr_accuracy"])
    # the card's re-score command names the folder the CSV was written to (here --ship-dir), not another
    assert oof["predictions"]["rescore"].endswith(f"--oof {shipped / oof['predictions']['file']}")
    assert rescored["plain"]["temperature"]["dr"] == pytest.approx(oof["temperature"]["dr"], rel=1e-4)
    weights = shipped / card.weights
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="sha256"):
        load_model("tiny_cv_grader", shipped)


def test_cv_can_ship_one_fold_model_without_a_refit(synthetic_idrid: Path, tmp_path: Path) -> None:
    from models.registry import load_model
    from training.cv import train_folds
    from workbench.provenance import trained_grading_names

    cfg = _cv_config(synthetic_idrid, tmp_path, ship_fold=1, ship_name="fold_grader")
    train_folds(cfg)
    assert not (tmp_path / "runs" / "cv" / "refit").exists()
    _, card = load_model("fold_grader", tmp_path / "shipped")
    assert card.training["config"]["fold"] == 1 and "held_out_fold_1" in card.training["evaluation"]
    records = IDRiD(synthetic_idrid).grading("train")
    folds = assign_folds(records, 2, 0)
    assert trained_grading_names(card, IDRiD(synthetic_idrid)) == {n for n, f in folds.items() if f == 0}


def test_one_trained_fold_ships_with_its_own_fold_figures_and_its_teacher_beside_them(
    synthetic_idrid: Path, tmp_path: Path
) -> None:
    """A run whose other folds were never trained ships fold K with fold K's figures only, named so, and
    a student of a per-fold teacher records the teacher on the same images."""
    from models.registry import default_model, load_model
    from training.cv import train_folds, train_piece
    from workbench.model_table import held_out, models_markdown

    teacher = _cv_config(synthetic_idrid, tmp_path, run_name="teacher", ship=False, ship_fold=0)
    train_folds(teacher)
    student = _cv_config(
        synthetic_idrid,
        tmp_path,
        run_name="student",
        fold=1,
        ship_name="student_grader",
        teacher_model=str(tmp_path / "runs" / "teacher" / "fold{fold}"),
        distill_weight=1.0,
    )
    train_piece(student)
    assert not (tmp_path / "runs" / "student" / "fold0").exists()
    _, card = load_model("student_grader", tmp_path / "shipped")
    evaluation = card.training["evaluation"]
    held = assign_folds(IDRiD(synthetic_idrid).grading("train"), 2, 0)
    assert "oof" not in evaluation
    assert evaluation["held_out_fold_1"]["n"] == sum(f == 1 for f in held.values())
    comparison = evaluation["teacher_comparison"]
    assert comparison["n"] == evaluation["held_out_fold_1"]["n"]
    assert set(comparison["student_minus_teacher_ci95"]) >= {"dr_accuracy", "referable_auc"}
    assert held_out(card)[0].startswith("fold 1 held out")
    assert "fold 1 held out" in models_markdown(tmp_path / "shipped")
    folds = evaluation["held_out_fold_1"]["fold_sizes"]
    assert sum(folds) == len(held) and folds[1] == evaluation["held_out_fold_1"]["n"]
    assert f"folds other than 1 ({folds[0]} of {len(held)} images)" in card.training["data"]
    rows = (tmp_path / "shipped" / "student_grader.oof.csv").read_text().splitlines()
    assert len(rows) == 1 + evaluation["held_out_fold_1"]["n"]
    assert default_model("grader", tmp_path / "shipped") == "student_grader"  # the only one there


def test_a_per_fold_teacher_needs_a_fold_to_ship_and_the_same_folds(
    synthetic_idrid: Path, tmp_path: Path
) -> None:
    """No refit can learn from one teacher per fold; a teacher run with other folds is refused."""
    import pytest

    from training.cv import train_folds, train_piece
    from training.oof import teacher_comparison

    per_fold = str(tmp_path / "runs" / "teacher" / "fold{fold}")
    cfg = _cv_config(synthetic_idrid, tmp_path, run_name="student", teacher_model=per_fold)
    with pytest.raises(ValueError, match="--ship-fold"):
        train_folds(cfg)
    with pytest.raises(ValueError, match="refit"):
        train_piece(TrainConfig(**{**cfg.__dict__, "refit": True}))
    folder = tmp_path / "runs" / "teacher"
    folder.mkdir(parents=True)
    names = np.array(["a", "b"])
    np.savez(folder / "oof.npz", names=names, fold=np.array([1, 0]), logits=np.zeros((2, 8)))
    oof = {"names": names, "fold": np.array([0, 1]), "logits": np.zeros((2, 8)),
           "dr_true": np.array([0, 2]), "dme_true": np.array([0, 1])}  # fmt: skip
    with pytest.raises(ValueError, match="folds differ"):
        teacher_comparison(per_fold, oof)
    with pytest.raises(ValueError, match="no teacher prediction"):
        teacher_comparison(per_fold, {**oof, "names": np.array(["a", "c"])})
