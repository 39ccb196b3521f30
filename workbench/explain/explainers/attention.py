"""The grader's own explanation: its per-disease spatial attention (``models.classifier.AttentionPool``).

The DR head's attention answers DR targets (a grade, referable), the DME head's answers DME targets. The
maps are distributions over the feature grid (sum 1, unsigned), upsampled to input size. Segmenter
targets have no attention head and are refused with a clear error.

A grader trained with attention supervision (its card's ``training.recipe.attention_supervision``: the
heads pulled towards lesion masks) gives maps noted "lesion-supervised", so that nobody reads them as
the network's unprompted evidence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from workbench.explain.explainers import register_explainer
from workbench.explain.explainers.base import ExplainableModel, Heatmap, to_input_size
from workbench.explain.notes import supervision_note
from workbench.targets import DMETarget, Target

__all__ = ["AttentionExplainer"]


@dataclass
class AttentionExplainer:
    name: str = "attention"

    def explain(self, model: ExplainableModel, image: torch.Tensor, target: Target) -> Heatmap:
        start = time.perf_counter()
        if target.arch != "grader" or not hasattr(model.module, "attention_maps"):
            raise ValueError(f"attention maps exist only for grader targets, not {target.label}")
        with torch.inference_mode():
            maps = model.module.attention_maps(image)
        head = "dme" if isinstance(target, DMETarget) else "dr"
        values = to_input_size(maps[head][0].float(), image.shape[-1])
        method = f"attention ({head.upper()} head)"
        seconds = time.perf_counter() - start
        return Heatmap(values, False, method, target.label, seconds, supervision_note(model.card))


register_explainer("attention")(AttentionExplainer)
