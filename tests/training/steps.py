"""A few optimiser steps of a task's loss on one fixed batch (the "it learns" tests)."""

from __future__ import annotations

import torch
from torch import nn

from training.tasks import TrainTask


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
