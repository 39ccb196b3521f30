"""Shared by the training tests: a tiny run's config, and a few optimiser steps of a task's loss on one
fixed batch (the "it learns" tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.tasks import TrainTask
from training.train import TrainConfig


def losses_over_steps(
    task: TrainTask, model: nn.Module, batch: tuple, steps: int, lr: float = 3e-3
) -> list[float]:
    """The loss before each of ``steps`` AdamW steps on ``batch`` (``task.loss``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_config(synthetic_idrid: Path, tmp_path: Path, epochs: int, task: str = "grader") -> TrainConfig:
    """A tiny, fast run of ``task`` on a synthetic IDRiD folder (no ImageNet init)."""
    names = {
        "grader": "test_tiny_cls",
        "localizer": "test_tiny_loc",
        "segmenter": "test_tiny_seg",
        "disc": "test_tiny_disc",
        "fovea": "test_tiny_fovea",
    }
    return TrainConfig(
        task=task,
        backbone="test_convnext" if task == "grader" else "tf_efficientnet_lite0",
        data=str(synthetic_idrid),
        cache=str(tmp_path / "cache"),
        runs=str(tmp_path / "runs"),
        run_name="run",
        model_name=names[task],
        epochs=epochs,
        batch_size=4,
        lr=3e-3,
        input_size=64,
        tile=64,
        tiles_per_image=1,
        workers=1,
        val_fraction=0.25,
        no_pretrained=True,
    )
