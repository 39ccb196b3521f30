"""Run state on disk: model, AdamW and the task's training-only modules after each epoch (atomic), and
the weights a run starts from (``--init-from``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["initial_state", "load_initial", "load_state", "save_state"]


def save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    extra: nn.Module | None = None,
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if extra is not None:  # the task's training-only modules (``TrainTask.attach``)
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra.state_dict().items()})
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt.{index}.{key}"] = tensor.detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_suffix(".safetensors"))
    meta_tmp = path.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(meta_tmp, path.with_suffix(".json"))


def load_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, extra: nn.Module | None = None
) -> dict[str, Any]:
    tensors = load_file(str(path.with_suffix(".safetensors")))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if extra is not None:
        extra.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
    opt_state = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    return json.loads(path.with_suffix(".json").read_text())


def load_initial(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``initial_state`` into ``model``. Only a part the source cannot have may be missing: a new
    fine-attention module (``fine.*``, which starts as a no-op); anything else missing or extra raises."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fine.")]
    if missing or unexpected:
        raise ValueError(
            f"the initial weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def initial_state(source: str, fold: int) -> dict[str, torch.Tensor]:
    """fp32 weights to start from: a shipped model's card stem (hash-checked by ``load_model``), or a
    ``.safetensors`` file whose path may hold ``{fold}`` (each fold of a --folds run from its own)."""
    if source.endswith(".safetensors"):
        state = load_file(source.format(fold=fold))
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    from models.registry import load_model

    shipped, _ = load_model(source)
    return {k: v.detach().clone() for k, v in shipped.state_dict().items()}
