"""The explainer contract.

Libraries disagree on what a saliency map is: captum's ``LayerGradCam`` returns *signed* values at the
*layer's* resolution, pytorch-grad-cam returns maps that are ReLU'd, min-max scaled and resized to the
input. Every adapter here owns those quirks and returns one ``Heatmap``:

- ``values``: float32 (S, S) at the model's input size, finite;
- ``signed``: True when negative values carry meaning (evidence *against* the target); unsigned maps
  are >= 0; neither is rescaled by the adapter, so magnitudes can be compared within one method;
- ``method``, ``target`` (label) and ``seconds`` for the UI captions.

``Explainer.explain(model, image, target)`` takes an ``ExplainableModel`` (the module with its card, so
the target layer is resolved from ``card.target_layer`` with ``get_submodule``), a (1, 3, S, S) input and
a ``workbench.targets`` target. Adapters must release every hook they set, also after an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from models.card import ModelCard
from workbench.targets import Target

__all__ = ["ExplainableModel", "Explainer", "Heatmap", "frozen_weights", "to_input_size"]


@dataclass(frozen=True)
class ExplainableModel:
    module: nn.Module
    card: ModelCard

    def __post_init__(self) -> None:
        if "members" in self.card.extra:
            # an ensemble runs every member on two views per call: the path-integral and perturbation
            # methods would take four times the time and memory, and their maps would be no one network's
            raise ValueError(
                f"{self.card.name}: explain one member of an ensemble, not the ensemble "
                "(workbench.predictors.GraderPredictor.explained picks it)"
            )

    @property
    def target_layer(self) -> nn.Module:
        return self.module.get_submodule(self.card.target_layer)


@dataclass(frozen=True)
class Heatmap:
    values: np.ndarray
    signed: bool
    method: str
    target: str
    seconds: float
    note: str = ""  # how this map came to be, when a reader must know (e.g. "lesion-supervised attention")
    # the network the map was computed on when it is not the grader asked for: an ensemble's member
    # ("via grader_lite0, the member nearest the ensemble"); the same for every map of one photograph
    model: str = ""

    def named(self, name: str) -> str:
        """``name`` (the method's menu key) with this map's note, for captions and tables."""
        return f"{name} ({self.note})" if self.note else name

    def positive(self) -> np.ndarray:
        """Evidence *for* the target, >= 0 (negative parts of signed maps dropped)."""
        return np.clip(self.values, 0, None)

    def normalised(self, percentile: float = 99.5) -> np.ndarray:
        """Positive evidence scaled to [0, 1] for display, saturating at the ``percentile``-th value.

        Pixel attributions (IG, saliency) are sparse with a few extreme pixels; scaling by the maximum
        would leave the rest invisible, so, as captum's visualisation does, outliers are clipped.
        """
        pos = self.positive()
        nonzero = pos[pos > 0]
        if nonzero.size == 0:
            return pos
        top = float(np.percentile(nonzero, percentile)) or float(nonzero.max())
        return np.clip(pos / top, 0.0, 1.0)


class Explainer(Protocol):
    name: str

    def explain(self, model: ExplainableModel, image: torch.Tensor, target: Target) -> Heatmap: ...


@contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """No weight gradients inside the block, for libraries that call ``loss.backward()`` (pytorch-grad-cam):
    with trainable weights that computes, and accumulates into ``.grad``, every weight gradient although
    the map needs none. (captum takes ``torch.autograd.grad`` of the input alone, which skips them.)
    Shipped models are loaded frozen (``load_model``), so this only toggles modules built elsewhere
    (tests, a model being trained); the flags are restored afterwards. Not thread-safe by itself:
    callers hold the module's ``workbench.inference.model_lock``."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def to_input_size(values: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Bilinear resize of an (h, w) map to (size, size) float32, finite."""
    tensor = torch.as_tensor(values, dtype=torch.float32)
    if tuple(tensor.shape[-2:]) != (size, size):
        tensor = torch.nn.functional.interpolate(
            tensor.reshape(1, 1, *tensor.shape[-2:]), size=(size, size), mode="bilinear", align_corners=False
        )
    return np.nan_to_num(tensor.reshape(size, size).numpy().astype(np.float32))
