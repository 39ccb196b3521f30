"""Distillation and attention supervision: the losses, the data items that carry them, the card."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import ModelCard
from models.classifier import grader_card
from models.registry import build_model
from tests.training.test_train import _config
from training.distill import distillation_loss
from training.guides import GUIDE_SIDE, load_guides, load_teacher
from training.losses import attention_loss
from training.tasks import TASKS
from training.train import TrainConfig, train
from workbench.io.idrid import IDRiD


def test_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it() -> None:
    teacher = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3]])
    assert distillation_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(1, 5, requires_grad=True)
    before = distillation_loss(student, teacher, 2.0)
    assert before.item() > 0.05
    before.backward()
    with torch.no_grad():
        moved = student - 1.0 * student.grad
    assert distillation_loss(moved, teacher, 2.0).item() < before.item()
    # the T^2 factor: at a high temperature the gradient keeps the scale of the hard-label loss
    hot = torch.zeros(1, 5, requires_grad=True)
    distillation_loss(hot, teacher, 8.0).backward()
    assert hot.grad.abs().max().item() > 0.1 * student.grad.abs().max().item()


def test_attention_loss_known_answer() -> None:
    attention = torch.full((1, 4, 4), 1 / 16)
    guide = torch.zeros(1, 8, 8)
    guide[0, :4, :4] = 1  # the top-left quarter of the image: 4 of the 16 feature cells
    loss = attention_loss(attention, guide, torch.tensor([True]))
    assert loss.item() == pytest.approx(math.log(4), rel=1e-5)
    # a single lesion pixel still marks its cell (max pooling), rows without guide are left out
    guide = torch.zeros(2, 8, 8)
    guide[0, 7, 7] = 1
    loss = attention_loss(attention.expand(2, 4, 4), guide, torch.tensor([True, True]))
    assert loss.item() == pytest.approx(math.log(16), rel=1e-5)
    assert attention_loss(attention, torch.zeros(1, 8, 8), torch.tensor([True])).item() == 0.0


def _lesion_batch(count: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Dark images with one bright 24-px "lesion" at a random place, its guide, grades 2 / DME 1."""
    rng = np.random.default_rng(seed)
    images = torch.full((count, 3, 128, 128), -0.8)
    guide = torch.zeros(count, 2, GUIDE_SIDE, GUIDE_SIDE)
    for i in range(count):
        y, x = rng.integers(0, 104, 2)
        images[i, :, y : y + 24, x : x + 24] = 0.9
        g0, g1 = y * GUIDE_SIDE // 128, x * GUIDE_SIDE // 128
        guide[i, :, g0 : g0 + 12, g1 : g1 + 12] = 1
    dr, dme = torch.full((count,), 2), torch.full((count,), 1)
    teacher = torch.zeros(count, 8)
    has_guide, has_teacher = torch.ones(count, dtype=torch.bool), torch.zeros(count, dtype=torch.bool)
    return images, dr, dme, guide, has_guide, teacher, has_teacher


def _mass_on_lesions(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> float:
    model.eval()
    with torch.no_grad():
        _, attention, _ = model(batch[0], with_attention=True)
    region = torch.nn.functional.adaptive_max_pool2d(batch[3][:, :1], attention.shape[-2:])[:, 0] > 0.25
    return float((attention * region).flatten(1).sum(1).mean())


def test_attention_supervision_puts_attention_on_lesions() -> None:
    """Trained a few steps with the attention loss, the DR attention lies on the lesions more than the
    same model trained on the labels alone."""
    batch = _lesion_batch(8, seed=1)
    held_out = _lesion_batch(8, seed=2)
    masses = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = TrainConfig(backbone="test_convnext", model_name="test_tiny_cls", attention_weight=weight)
        task = TASKS["grader"](cfg)
        model = build_model(grader_card("test_convnext", 128, name="test_tiny_cls"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(25):
            model.train()
            loss = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        masses[weight] = _mass_on_lesions(model, held_out)
    assert masses[1.0] > masses[0.0] + 0.1, masses


def _guide_and_teacher_files(synthetic_idrid: Path, folder: Path) -> tuple[Path, Path]:
    names = [r.name for r in IDRiD(synthetic_idrid).grading("train")]
    guides = np.zeros((len(names), 2, GUIDE_SIDE, GUIDE_SIDE), bool)
    guides[:, :, 20:40, 20:40] = True
    rng = np.random.default_rng(0)
    np.savez_compressed(folder / "guides.npz", names=np.array(names), guides=guides, sources=np.array(names))
    logits = rng.normal(size=(5, len(names), 8)).astype(np.float32)
    np.savez_compressed(folder / "teacher.npz", names=np.array(names), logits=logits, source=np.array("x"))
    return folder / "guides.npz", folder / "teacher.npz"


def test_files_load_and_fold_teachers_differ(synthetic_idrid: Path, tmp_path: Path) -> None:
    guides_path, teacher_path = _guide_and_teacher_files(synthetic_idrid, tmp_path)
    guides = load_guides(guides_path)
    first = next(iter(guides.values()))
    assert first.shape == (2, GUIDE_SIDE, GUIDE_SIDE) and first.dtype == bool
    fold0, fold1, mean = (load_teacher(teacher_path, k) for k in (0, 1, -1))
    name = next(iter(fold0))
    assert not np.allclose(fold0[name], fold1[name])
    with np.load(teacher_path) as arrays:
        np.testing.assert_allclose(mean[name], arrays["logits"][:, 0].mean(axis=0), rtol=1e-6)


def test_guided_distilled_training_says_so_in_the_card(synthetic_idrid: Path, tmp_path: Path) -> None:
    guides_path, teacher_path = _guide_and_teacher_files(synthetic_idrid, tmp_path)
    cfg = replace(
        _config(synthetic_idrid, tmp_path, 1),
        run_name="guided",
        guides=str(guides_path),
        attention_weight=0.5,
        teacher=str(teacher_path),
        distill_weight=1.0,
    )
    task = TASKS["grader"](cfg)
    train_set, val_set = task.datasets(task.card())
    item = train_set[0]
    assert len(item) == 7 and item[4] and item[6]  # guide and teacher present
    assert item[3].shape == (2, GUIDE_SIDE, GUIDE_SIDE) and float(item[3].max()) == 1.0
    assert len(val_set[0]) == 3  # validation stays plain
    result = train(cfg)
    assert np.isfinite(result["history"][0]["train_loss"])
    card = ModelCard.read(tmp_path / "runs/guided/best.json")
    recipe = card.training["recipe"]
    assert recipe["attention_supervision"]["weight"] == 0.5
    assert recipe["distillation"]["temperature"] == 2.0
    assert json.loads(card.to_json())["training"]["config"]["teacher"] == str(teacher_path)


def test_unguided_grading_items_stay_three_values(synthetic_idrid: Path, tmp_path: Path) -> None:
    cfg = _config(synthetic_idrid, tmp_path, 1)
    task = TASKS["grader"](cfg)
    train_set, _ = task.datasets(task.card())
    assert len(train_set[0]) == 3
