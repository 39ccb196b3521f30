"""pytorch-grad-cam adapters: the CAM family, one registry entry per method.

Quirks owned here: grad-cam calls targets per sample (``per_sample``), returns ReLU'd maps min-max
scaled to [0, 1] at input size (so ``signed=False``), and its ``__exit__`` *swallows* IndexError, so we
never use its ``with`` block: hooks are released in ``finally`` instead. ScoreCAM is batched (32 masked
inputs per forward) to stay within seconds on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM

from workbench.explainers import register_explainer
from workbench.explainers.base import ExplainableModel, Heatmap, to_input_size
from workbench.targets import Target, per_sample

__all__ = ["CamExplainer"]

_CAMS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}


@dataclass
class CamExplainer:
    """One CAM method of pytorch-grad-cam on the card's ``target_layer``."""

    name: str
    batch_size: int = 32

    def explain(self, model: ExplainableModel, image: torch.Tensor, target: Target) -> Heatmap:
        start = time.perf_counter()
        cam = _CAMS[self.name](model=model.module, target_layers=[model.target_layer])
        if hasattr(cam, "batch_size") or self.name == "scorecam":
            cam.batch_size = self.batch_size
        try:
            with torch.enable_grad():
                values = cam(input_tensor=image, targets=[per_sample(target)])[0]
        finally:
            cam.activations_and_grads.release()
        size = image.shape[-1]
        return Heatmap(
            to_input_size(values, size), False, self.name, target.label, time.perf_counter() - start
        )


for _name in _CAMS:
    register_explainer(_name)(lambda name=_name: CamExplainer(name))
