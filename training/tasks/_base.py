"""The task registry and the base class every training task fills in (imports no task)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from models.card import ModelCard
from training.prepare import prepare
from workbench.io.idrid import IDRiD
from workbench.io.splits import assign_folds, split_train_val

__all__ = ["TASKS", "TrainTask", "register_task"]

TASKS: dict[str, type[TrainTask]] = {}


def register_task(name: str) -> Callable[[type[TrainTask]], type[TrainTask]]:
    def decorator(cls: type[TrainTask]) -> type[TrainTask]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = cls
        return cls

    return decorator


@dataclass
class TrainTask:
    """Base: subclasses fill in the five hooks. ``cfg`` is the ``TrainConfig`` of the run."""

    cfg: Any

    def card(self) -> ModelCard:
        raise NotImplementedError

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def epoch_indices(self, train: Dataset, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(train))

    def prepare_model(self, model: nn.Module) -> None:
        """Called once after the model is built (before the optimiser sees its parameters)."""

    def attach(self, model: nn.Module, device: torch.device) -> nn.Module | None:
        """Called once with the model on ``device``; returns trainable modules that only training uses
        (optimised and saved with the run's state, never shipped), or None."""
        return None

    def detach(self) -> None:
        """Called once when training ends: release what ``attach`` hooked into the model."""

    def train_mode(self, model: nn.Module) -> None:
        """Put the model in training mode at the start of each epoch."""
        model.train()

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        raise NotImplementedError

    def recipe(self) -> dict[str, Any]:
        """What the card should say about how this model learnt, beyond the config (none by default)."""
        return {}

    # shared helpers ---------------------------------------------------------------------------------
    def _cache(self, part: str, size: int) -> Path:
        return prepare(Path(self.cfg.data), Path(self.cfg.cache), part, "train", size, self.cfg.workers)

    def _grading_split(self) -> tuple[set[str], set[str]]:
        """(train names, held-out names): the refit (all, none), fold ``cfg.fold``, or the val split."""
        records = IDRiD(self.cfg.data).grading("train")
        if self.cfg.refit:
            return {r.name for r in records}, set()
        if self.cfg.fold >= 0:
            folds = assign_folds(records, self.cfg.folds, self.cfg.split_seed)
            held = {name for name, fold in folds.items() if fold == self.cfg.fold}
            return set(folds) - held, held
        split = split_train_val(records, self.cfg.val_fraction, self.cfg.split_seed)
        return set(split.train), set(split.val)

    def _limit(self, entries: list) -> list:
        return entries[: self.cfg.limit] if self.cfg.limit else entries
