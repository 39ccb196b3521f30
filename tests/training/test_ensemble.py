"""`drwb ensemble`: two cross-validated graders combined, measured out of fold, loaded and explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_cv import _cv_config


@pytest.fixture(scope="module")
def shipped_members(synthetic_idrid: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny graders from 2-fold runs with the same folds, the second shipped under members/."""
    from training.cv import train_folds

    tmp_path = tmp_path_factory.mktemp("ensemble")
    shipped = tmp_path / "shipped"
    for run, seed, target in (("a", 0, shipped), ("b", 3, shipped / "members")):
        torch.manual_seed(seed)
        cfg = _cv_config(
            synthetic_idrid, tmp_path, run_name=run, ship_name=f"grader_{run}", ship_dir=str(target)
        )
        train_folds(cfg)
    return shipped


def test_ensemble_is_measured_out_of_fold_and_loads_as_it_was_measured(
    shipped_members: Path, synthetic_idrid: Path
) -> None:
    from models.ensemble import GraderEnsemble
    from models.registry import default_model, load_model
    from training.ensemble import build_ensemble, member_oof
    from training.oof import evaluate_oof
    from workbench.calibration import softmax

    path = build_ensemble(
        ["grader_a", "members/grader_b"], "grader_ens", synthetic_idrid, folder=shipped_members
    )
    model, card = load_model("grader_ens", shipped_members)
    assert isinstance(model, GraderEnsemble) and path.name == "grader_ens.json"
    evaluation = card.training["evaluation"]
    oof = evaluation["oof"]
    assert oof["n"] == 10 and set(evaluation["members_alone"]) == {"grader_a", "members/grader_b"}
    assert oof["temperature"] == card.extra["temperature"]
    low, high = oof["ci95"]["dr_accuracy"]
    assert low <= oof["dr_accuracy"] <= high
    # the figures are those of the combination the module computes: members' scaled logits averaged
    # over members and the two views, then the ensemble's temperature
    members = [member_oof(s, shipped_members)[1] for s in ("grader_a", "members/grader_b")]
    combined = np.mean([(m["logits"] + m["logits_flip"]) / 2 for m in members], axis=0)
    p_dr = softmax(combined[:, :5], oof["temperature"]["dr"])
    truth = np.array([r.dr_grade for r in _records(synthetic_idrid, members[0]["names"])])
    assert oof["dr_accuracy"] == pytest.approx(float((p_dr.argmax(1) == truth).mean()))
    # the shipped OOF file re-scores to the same figures (its flip-TTA variant is the ensemble)
    rescored = evaluate_oof(shipped_members / oof["predictions"]["file"], synthetic_idrid)
    assert rescored["hflip_tta"]["dr_accuracy"] == pytest.approx(oof["dr_accuracy"])
    # ranked with the other graders by its OOF score, like any grader
    scores = {
        s: load_model(s, shipped_members)[1].training["evaluation"]["oof"]["score"]
        for s in ("grader_a", "grader_ens")
    }
    assert default_model("grader", shipped_members) == max(scores, key=scores.get)


def _records(data: Path, names: np.ndarray) -> list:
    from workbench.io.idrid import IDRiD

    by_name = {r.name: r for r in IDRiD(data).grading("train")}
    return [by_name[str(n)] for n in names]


def test_members_from_different_folds_are_refused(
    shipped_members: Path, synthetic_idrid: Path, tmp_path: Path
) -> None:
    import shutil

    from training.ensemble import build_ensemble

    folder = tmp_path / "w"
    shutil.copytree(shipped_members, folder)
    table = folder / "members" / "grader_b.oof.csv"
    lines = table.read_text().splitlines()
    # the same images, with the fold of one image moved: no longer the same cross-validation
    head, first = lines[0], lines[1].split(",")
    first[1] = str(1 - int(first[1]))
    table.write_text("\n".join([head, ",".join(first), *lines[2:]]) + "\n")
    card = folder / "members" / "grader_b.json"
    from models.hashing import file_sha256

    card.write_text(card.read_text().replace(_oof_sha(card), file_sha256(table)))
    with pytest.raises(ValueError, match="different folds"):
        build_ensemble(["grader_a", "members/grader_b"], "e", synthetic_idrid, folder=folder)
    with pytest.raises(ValueError, match="two or more"):
        build_ensemble(["grader_a"], "e", synthetic_idrid, folder=folder)


def _oof_sha(card: Path) -> str:
    import json

    return json.loads(card.read_text())["training"]["evaluation"]["oof"]["predictions"]["sha256"]


def test_an_ensemble_is_explained_through_its_nearest_member_and_says_so(
    shipped_members: Path, synthetic_idrid: Path, synthetic_fundus, tmp_path: Path
) -> None:
    import shutil

    from tests.conftest import write_tiny_weights
    from training.ensemble import build_ensemble
    from workbench.analysis import Workbench
    from workbench.io.image_io import LoadedImage
    from workbench.targets import GradeTarget

    folder = tmp_path / "w"
    shutil.copytree(shipped_members, folder)
    build_ensemble(["grader_a", "members/grader_b"], "grader_ens", synthetic_idrid, folder=folder)
    write_tiny_weights(folder)  # segmenter, localizer and refiners beside the graders
    workbench = Workbench(grader="grader_ens", weights_dir=folder)
    image = synthetic_fundus.image
    loaded = LoadedImage(image, image.shape[:2], "PNG", "RGB", "s.png")
    analysis = workbench.analyze(loaded, explain=["attention", "gradcam"], force=True)
    assert analysis.models["grader"] == "grader_ens"
    module, card, note = workbench.grader.explained(analysis.crop)
    assert module in list(workbench.grader.model.members) and "nearest" in note
    for heatmap in analysis.heatmaps.values():
        assert note in heatmap.note
    from workbench.explain.explainers.base import ExplainableModel

    with pytest.raises(ValueError, match="one member"):
        ExplainableModel(workbench.grader.model, workbench.grader.card)
    # a single grader explains itself, with no member note
    single = workbench.explain(analysis.crop, ["gradcam"], GradeTarget(2), grader="grader_a")["gradcam"]
    assert "nearest" not in single.note
