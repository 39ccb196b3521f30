"""`drwb ensemble`: two cross-validated graders combined, measured out of fold, loaded and explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_cv import _cv_config
from workbench.runtime import OnnxForward


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
    from models.card import ModelCard
    from models.ensemble import GraderEnsemble
    from models.registry import default_model, load_model
    from training.ensemble import build_ensemble
    from training.oof import evaluate_oof, read_oof_csv
    from workbench.calibration import fit_temperature, softmax

    path = build_ensemble(
        ["grader_a", "members/grader_b"], "grader_ens", synthetic_idrid, folder=shipped_members
    )
    model, card = load_model("grader_ens", shipped_members)
    assert isinstance(model, GraderEnsemble) and path.name == "grader_ens.json"
    evaluation = card.training["evaluation"]
    oof = evaluation["oof"]
    assert oof["n"] == 10 and set(evaluation["members_alone"]) == {"grader_a", "members/grader_b"}
    for key in ("paired_minus_grader_a", "paired_minus_grader_a_with_flip"):  # plain, and like for like
        low, high = evaluation[key]["ci95"]["dr_accuracy"]
        assert low <= evaluation[key]["difference"]["dr_accuracy"] <= high
    assert oof["temperature"] == card.extra["temperature"]
    low, high = oof["ci95"]["dr_accuracy"]
    assert low <= oof["dr_accuracy"] <= high
    # the figures are those of the combination the module computes (GraderEnsemble.forward): each
    # member's raw OOF logits divided by that member's own card temperature, averaged over members and
    # the two views, then the ensemble's temperature fitted on them; worked out here from the raw files
    plain, mirrored = [], []
    for stem in ("grader_a", "members/grader_b"):
        member = ModelCard.read(shipped_members / f"{stem}.json")
        predictions = member.training["evaluation"]["oof"]["predictions"]["file"]
        raw = read_oof_csv((shipped_members / stem).parent / predictions)
        t = member.extra["temperature"]
        scale = np.array([t["dr"]] * 5 + [t["dme"]] * 3)
        assert not np.allclose(scale, 1.0)  # the member temperatures matter to this check
        plain.append(raw["logits"] / scale)
        mirrored.append(raw["logits_flip"] / scale)
    written = read_oof_csv(shipped_members / oof["predictions"]["file"])
    np.testing.assert_allclose(written["logits"], np.mean(plain, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(written["logits_flip"], np.mean(mirrored, 0), rtol=1e-4, atol=1e-5)
    combined = (np.mean(plain, 0) + np.mean(mirrored, 0)) / 2
    truth = np.array([r.dr_grade for r in _records(synthetic_idrid, written["names"])])
    assert oof["temperature"]["dr"] == pytest.approx(fit_temperature(combined[:, :5], truth), rel=1e-3)
    p_dr = softmax(combined[:, :5], oof["temperature"]["dr"])
    assert oof["dr_accuracy"] == pytest.approx(float((p_dr.argmax(1) == truth).mean()))
    # calibration cross-fitted over the members' folds, beside the in-sample figure
    from training.oof import cross_fitted_ece

    assert oof["ece"]["dr_after_cross_fitted"] == pytest.approx(
        cross_fitted_ece(combined[:, :5], truth, written["fold"])
    )
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
    # members of different normalisation cannot run on one input: refused, and no file is left behind
    other = tmp_path / "norm"
    shutil.copytree(shipped_members, other)
    _edit_card(other / "members" / "grader_b.json", mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="differs from grader_a in normalisation"):
        build_ensemble(["grader_a", "members/grader_b"], "e", synthetic_idrid, folder=other)
    assert not list(other.glob("e.*"))
    # a member larger than the grading crop would make the smaller see an enlarged crop shrunk again
    _edit_card(other / "members" / "grader_b.json", mean=_edit_card(folder / "grader_a.json")["mean"])
    _edit_card(other / "grader_a.json", input_size=520)
    with pytest.raises(ValueError, match="within the 512-px grading crop"):
        build_ensemble(["grader_a", "members/grader_b"], "e", synthetic_idrid, folder=other)
    assert not list(other.glob("e.*"))


def _edit_card(path: Path, **fields: object) -> dict:
    import json

    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))
    return data


def test_members_of_different_input_sizes_form_one_grader_at_the_largest(
    shipped_members: Path, synthetic_idrid: Path, synthetic_fundus, tmp_path: Path
) -> None:
    """The smaller member grades the crop shrunk to its own size, in ONNX Runtime too (the workbench's
    default runtime checks its graph against the module); its explanations are at its own size."""
    import hashlib
    import shutil

    from models.registry import load_model
    from tests.conftest import write_tiny_weights
    from training.ensemble import build_ensemble
    from workbench.analysis import Workbench
    from workbench.io.image_io import LoadedImage
    from workbench.reports.batch import score_analysis
    from workbench.targets import GradeTarget

    folder = tmp_path / "w"
    shutil.copytree(shipped_members, folder)
    small = load_model("members/grader_b", folder)[1].input_size
    _edit_card(folder / "grader_a.json", input_size=small + 16)
    build_ensemble(["grader_a", "members/grader_b"], "grader_mixed", synthetic_idrid, folder=folder)
    model, card = load_model("grader_mixed", folder)
    assert card.input_size == small + 16 and model.sizes == (small + 16, small)
    assert [m["input_size"] for m in card.extra["members"]] == [small + 16, small]
    write_tiny_weights(folder)
    workbench = Workbench(grader="grader_mixed", weights_dir=folder)
    assert workbench.grader.runtime.startswith("onnxruntime")  # exported, agreed with the module on a probe
    image = synthetic_fundus.image
    loaded = LoadedImage(image, image.shape[:2], "PNG", "RGB", "s.png")
    crop = workbench.analyze(loaded, force=True).crop
    # the member explained is the one nearest the ensemble's probabilities: make it the smaller one
    workbench.grader._chosen[hashlib.sha1(np.ascontiguousarray(crop).tobytes()).hexdigest()] = 1
    analysis = workbench.analyze(loaded, explain=["gradcam"], force=True)
    assert workbench.grader.explained(analysis.crop)[1].input_size == small
    assert analysis.heatmaps["gradcam"].values.shape[-1] == small
    assert "members/grader_b" in analysis.heatmaps["gradcam"].model
    scores = score_analysis(workbench, analysis, GradeTarget(int(np.argmax(analysis.dr_probabilities))))
    assert set(scores) == {"gradcam"}


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
    from workbench.ui.summary import summary_markdown

    assert "Models: grader grader_ens," in summary_markdown(analysis)  # the face names what graded
    module, card, note = workbench.grader.explained(analysis.crop)
    # the member nearest (L1 over the DR probabilities) to the ensemble, worked out from the members
    ensemble = workbench.grader.model
    tensor = workbench.grader.input_tensor(analysis.crop)
    with torch.no_grad():
        p_ens = torch.softmax(ensemble(tensor)[0, :5], 0)
        views = [tensor, tensor.flip(-1)]
        distances = [
            float((torch.softmax(torch.stack([m(v) for v in views]).mean(0)[0, :5], 0) - p_ens).abs().sum())
            for m in ensemble.members
        ]
    nearest = int(np.argmin(distances))
    assert module is ensemble.members[nearest] and card == ensemble.member_cards[nearest]
    assert ensemble.member_names[nearest] in note and "nearest" in note
    assert workbench.grader.explained(analysis.crop)[0] is module  # the same choice, remembered
    for heatmap in analysis.heatmaps.values():
        assert heatmap.model == note and note not in heatmap.named("x")  # said once, not in every label
    from workbench.reports.report import analysis_to_dict

    explanations = analysis_to_dict(analysis)["explanations"]
    assert {e["computed_on"] for e in explanations.values()} == {note}
    from workbench.explain.explainers.base import ExplainableModel

    with pytest.raises(ValueError, match="one member"):
        ExplainableModel(workbench.grader.model, workbench.grader.card)
    # a single grader explains itself, with no member note
    single = workbench.explain(analysis.crop, ["gradcam"], GradeTarget(2), grader="grader_a")["gradcam"]
    assert single.model == "" and "nearest" not in single.note


def test_each_profile_grades_with_its_default_and_a_forward_pass_holds_every_member(
    shipped_members: Path, synthetic_idrid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quality: the best grader, the ensemble included; fast: the best single network. A PyTorch forward
    pass of the ensemble waits while an explainer holds (hooks) one of its members; one in ONNX Runtime
    (the default for graders) never touches the module, so it does not wait."""
    import shutil
    import threading

    from tests.conftest import write_tiny_weights
    from training.ensemble import build_ensemble
    from workbench.analysis import Workbench
    from workbench.inference import model_lock

    folder = tmp_path / "w"
    shutil.copytree(shipped_members, folder)
    build_ensemble(["grader_a", "members/grader_b"], "grader_ens", synthetic_idrid, folder=folder)
    write_tiny_weights(folder)
    (folder / "tiny_grader.json").unlink()  # the two cross-validated graders only
    import json

    card = json.loads((folder / "grader_ens.json").read_text())
    card["training"]["evaluation"]["oof"]["score"] = 99.0  # the best held-out score of all (not hashed)
    (folder / "grader_ens.json").write_text(json.dumps(card))
    monkeypatch.setenv("DRWB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DRWB_RUNTIME", raising=False)
    quality = Workbench(weights_dir=folder, segment=False)  # the default runtime, "auto"
    fast = Workbench(weights_dir=folder, segment=False, profile="fast")
    assert quality.model_names["grader"] == "grader_ens"
    assert fast.model_names["grader"] == "grader_a"  # never an ensemble, whatever its score

    monkeypatch.setenv("DRWB_RUNTIME", "torch")
    in_torch = Workbench(weights_dir=folder, segment=False)
    crop = np.zeros((512, 512, 3), np.uint8)
    for workbench, waits in ((in_torch, True), (quality, False)):
        member = workbench.grader.model.members[1]
        done = threading.Event()
        with model_lock(member):  # as an explainer holds it
            worker = threading.Thread(target=lambda w=workbench, d=done: (w.grader.predict([crop]), d.set()))
            worker.start()
            assert done.wait(0.5 if waits else 30) is not waits  # blocked on the member's lock, or not
        worker.join(30)
        assert done.is_set()
    # the ensemble as one ONNX Runtime graph: members, mirror view and temperatures, as in PyTorch
    assert (
        isinstance(quality.grader.forward, OnnxForward) and in_torch.grader.forward is in_torch.grader.model
    )
    side = quality.grader.card.input_size  # a grader's graph takes its own input size (workbench.runtime)
    x = torch.rand(2, 3, side, side) * 4 - 2
    with torch.inference_mode():
        expected = in_torch.grader.model(x).numpy()
    assert np.abs(quality.grader.forward(x).numpy() - expected).max() < 1e-4
    # a member's card edited (its temperature is a constant in the graph) names a new export
    from workbench.runtime import export_key

    ensemble = quality.grader
    warmer = ensemble.model.member_cards[1].with_updates(extra={"temperature": {"dr": 3.0, "dme": 1.0}})
    assert export_key(ensemble.card, ensemble.model.member_cards) != export_key(
        ensemble.card, [ensemble.model.member_cards[0], warmer]
    )
