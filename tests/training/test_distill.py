"""Online distillation with feature hints: the hint loss, the teacher's view of the batch, a run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.card import ModelCard
from models.classifier import grader_card
from models.registry import build_model
from tests.training.steps import train_config as _config
from training.distill import HintDistiller, hint_loss
from training.tasks import TASKS
from training.train import train


def test_hint_loss_is_scale_free_and_resamples_the_teacher_grid() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 8, 8)
    assert hint_loss(3.0 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert hint_loss(-teacher, teacher).item() == pytest.approx(2.0, abs=1e-5)
    assert 0.5 < hint_loss(torch.randn(2, 6, 8, 8), teacher).item() < 1.5
    # a teacher seen at a larger input: its map is area-pooled onto the student's grid
    student = torch.nn.functional.adaptive_avg_pool2d(teacher, (4, 4))
    assert hint_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)


def _pair(student_size: int = 64, teacher_size: int = 96) -> tuple[HintDistiller, torch.nn.Module, ModelCard]:
    torch.manual_seed(0)
    student_card = grader_card("test_convnext", student_size, name="test_tiny_cls")
    teacher_card = grader_card("tf_efficientnet_lite0", teacher_size, name="grader", imagenet_init=False)
    student = build_model(student_card)
    teacher = build_model(teacher_card)
    return HintDistiller(student, student_card, teacher, teacher_card), student, teacher_card


def test_the_teacher_sees_the_same_pixels_in_its_own_normalisation_and_size() -> None:
    distiller, _, teacher_card = _pair()
    raw = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(distiller.student_card.mean)[None, :, None, None]
    std = torch.tensor(distiller.student_card.std)[None, :, None, None]
    converted = distiller._teacher_input((raw - mean) / std)
    assert converted.shape == (2, 3, teacher_card.input_size, teacher_card.input_size)
    expected = torch.nn.functional.interpolate((raw - 0.5) / 0.5, size=96, mode="bilinear")
    torch.testing.assert_close(converted, expected, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in distiller.teacher.parameters())


def test_a_few_steps_bring_the_student_features_towards_the_teacher() -> None:
    distiller, student, _ = _pair()
    images = torch.randn(4, 3, 64, 64)
    params = list(student.parameters()) + list(distiller.projections.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(30):
        student(images)
        _, loss, _ = distiller.teach(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::10]


def _student(synthetic_idrid: Path, tmp_path: Path, name: str, **changes: object):
    """Fold 0 of a 3-fold run taught online by a tiny teacher trained here first (one epoch each)."""
    base = _config(synthetic_idrid, tmp_path, 1)
    train(replace(base, run_name="teacher/fold0", folds=3, fold=0))
    teacher = str(tmp_path / "runs" / "teacher" / "fold{fold}")
    return replace(base, run_name=f"{name}/fold0", folds=3, fold=0, teacher_model=teacher, **changes)


def test_online_distillation_run_resumes_with_its_projections_and_says_so(
    synthetic_idrid: Path, tmp_path: Path
) -> None:
    cfg = _student(synthetic_idrid, tmp_path, "student", distill_weight=1.0, hint_weight=2.0, unlabelled=True)
    first = train(cfg)
    assert len(first["history"]) == 1
    state = tmp_path / "runs/student/fold0/state.safetensors"
    with safe_open(str(state), "pt") as handle:
        extra = [k for k in handle.keys() if k.startswith("extra.")]
    assert {k.split(".")[1] for k in extra} == {"8", "16", "32"}
    resumed = train(replace(cfg, epochs=2))  # picks up epoch 2 with the saved projections
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    recipe = ModelCard.read(tmp_path / "runs/student/fold0/best.json").training["recipe"]["distillation"]
    assert recipe["hint_weight"] == 2.0 and "online" in recipe["teacher"] and "simkd" not in recipe
    # a per-fold teacher needs a fold to pick
    with pytest.raises(ValueError, match="--fold"):
        TASKS["grader"](replace(cfg, fold=-1)).attach(build_model(TASKS["grader"](cfg).card()), "cpu")


def test_from_scratch_convnext_options_layer_scale_and_no_decay_on_1d_parameters() -> None:
    from training.train import TrainConfig, _param_groups

    card = TASKS["grader"](TrainConfig(backbone="test_convnext", layer_scale_init=0.1)).card()
    assert card.extra["layer_scale_init"] == 0.1
    model = build_model(card.with_updates(name="grader"))
    gammas = [p for n, p in model.named_parameters() if n.endswith("gamma")]
    assert gammas and all(torch.allclose(g, torch.full_like(g, 0.1)) for g in gammas)
    default = build_model(
        TASKS["grader"](TrainConfig(backbone="test_convnext")).card().with_updates(name="grader")
    )
    assert all(float(p.abs().max()) < 1e-5 for n, p in default.named_parameters() if n.endswith("gamma"))
    params = list(model.parameters())
    decayed, plain = _param_groups(params, TrainConfig(weight_decay=0.05, no_norm_decay=True))
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(params)
    (single,) = _param_groups(params, TrainConfig(weight_decay=0.05))
    assert single["weight_decay"] == 0.05 and len(single["params"]) == len(params)


def test_a_student_with_a_neck_starts_from_its_teachers_heads_and_matches_its_features(
    synthetic_idrid: Path, tmp_path: Path
) -> None:
    """SimKD: the neck maps into the teacher's feature space, the pools and heads are the teacher's, and
    a few steps on the final-feature loss bring the student's features towards the teacher's."""
    base = _config(synthetic_idrid, tmp_path, 1)
    train(replace(base, run_name="teacher/fold0", folds=3, fold=0))
    cfg = replace(
        base,
        folds=3,
        fold=0,
        teacher_model=str(tmp_path / "runs" / "teacher" / "fold{fold}"),
        reuse_teacher_head=True,
        feature_weight=1.0,
    )
    task = TASKS["grader"](cfg)
    card = task.card()
    teacher_card = ModelCard.read(tmp_path / "runs/teacher/fold0/best.json")
    teacher = build_model(teacher_card)
    assert card.extra["neck_channels"] == teacher.dr_head.in_features
    student = build_model(card)
    assert isinstance(student.neck, torch.nn.Sequential)
    task.attach(student, torch.device("cpu"))
    taught = task.distiller.teacher
    for part in ("dr_head", "dme_head", "dr_pool", "dme_pool"):
        pairs = zip(getattr(student, part).parameters(), getattr(taught, part).parameters(), strict=True)
        for mine, theirs in pairs:
            torch.testing.assert_close(mine, theirs)
    images = torch.randn(4, 3, 64, 64)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        student(images)
        _, _, final = task.distiller.teach(images)
        optimizer.zero_grad()
        final.backward()
        optimizer.step()
        losses.append(final.item())
    assert losses[-1] < 0.7 * losses[0], losses[::5]
    # the neck travels in the card: a saved student loads back with it
    student.load_state_dict(build_model(card).state_dict())
    with pytest.raises(ValueError, match="neck"):
        HintDistiller(build_model(grader_card("test_convnext", 64, name="test_tiny_cls")),
                      card, taught, teacher_card, final=True)  # fmt: skip


def test_the_recipe_names_each_teacher_and_refuses_two(synthetic_idrid: Path, tmp_path: Path) -> None:
    from training.train import TrainConfig

    offline = TrainConfig(teacher="cache/t.npz", distill_weight=1.0, layer_scale_init=0.1, no_norm_decay=True)
    recipe = TASKS["grader"](offline).recipe()
    assert "cached" not in recipe["distillation"]["teacher"] and recipe["distillation"]["file"] == "t.npz"
    assert "layer scale starts at 0.1" in recipe["from_scratch"]
    both = replace(offline, teacher_model=str(tmp_path / "teacher"))
    with pytest.raises(ValueError, match="one teacher"):
        TASKS["grader"](both).attach(
            build_model(grader_card("test_convnext", 64, name="test_tiny_cls")), "cpu"
        )
    with pytest.raises(ValueError, match="ConvNeXt"):
        build_model(grader_card("tf_efficientnet_lite0", 64, name="grader", layer_scale_init=0.1))


def test_a_resume_with_other_optimiser_groups_is_refused(synthetic_idrid: Path, tmp_path: Path) -> None:
    cfg = replace(_config(synthetic_idrid, tmp_path, 1), run_name="groups")
    train(cfg)
    with pytest.raises(ValueError, match="no_norm_decay"):
        train(replace(cfg, epochs=2, no_norm_decay=True))


def test_a_simkd_run_trains_resumes_and_ships_its_neck(synthetic_idrid: Path, tmp_path: Path) -> None:
    """End to end: the run's card carries the neck, its projections and neck survive a resume, and the
    best weights load into the card's architecture."""
    from safetensors.torch import load_file

    cfg = _student(
        synthetic_idrid, tmp_path, "simkd", reuse_teacher_head=True, feature_weight=4.0, no_norm_decay=True
    )
    train(cfg)
    state = tmp_path / "runs/simkd/fold0/state.safetensors"
    before = load_file(str(state))
    resumed = train(replace(cfg, epochs=2))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    after = load_file(str(state))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("extra."))
    card = ModelCard.read(tmp_path / "runs/simkd/fold0/best.json")
    assert card.extra["neck_channels"] > 0 and "simkd" in card.training["recipe"]["distillation"]
    model = build_model(card.with_updates(extra={**card.extra, "imagenet_init": False}))
    model.load_state_dict(load_file(str(tmp_path / "runs/simkd/fold0/best.safetensors")))
    assert isinstance(model.neck, torch.nn.Sequential)


def test_a_simkd_student_continued_from_its_own_weights_keeps_its_heads(
    synthetic_idrid: Path, tmp_path: Path
) -> None:
    """--init-from a trained student: the pools and heads it learnt are kept, not reset to the teacher's
    (a fresh SimKD student starts from the teacher's, test above)."""
    from training.checkpoint import initial_state

    cfg = _student(synthetic_idrid, tmp_path, "simkd", reuse_teacher_head=True, feature_weight=4.0, lr=0.05)
    train(cfg)
    trained = tmp_path / "runs/simkd/fold0/best.safetensors"
    task = TASKS["grader"](replace(cfg, run_name="simkd_more/fold0", init_from=str(trained)))
    student = build_model(task.card())
    student.load_state_dict(initial_state(str(trained), 0))
    parts = ("dr_head", "dme_head", "dr_pool", "dme_pool")
    own = {k: v.clone() for k, v in student.state_dict().items() if k.split(".")[0] in parts}
    assert own
    task.attach(student, torch.device("cpu"))
    teacher = task.distiller.teacher
    for key, value in own.items():
        torch.testing.assert_close(student.state_dict()[key], value)
    assert "continue from" in task.recipe()["distillation"]["simkd"]
    taught = teacher.dr_head.state_dict()
    assert any(not torch.equal(own[f"dr_head.{name}"], tensor) for name, tensor in taught.items()), (
        "the student's trained head equals the teacher's: the test would not see a reset"
    )
