"""pytorch-grad-cam adapters: the CAM family, one registry entry per method.

Quirks owned here: grad-cam calls targets per sample (``per_sample``), returns ReLU'd maps min-max
scaled to [0, 1] at input size (so ``signed=False``), and its ``__exit__`` *swallows* IndexError, so we
never use its ``with`` block: hooks are released in ``finally`` instead.

ScoreCAM weighs every channel of the target layer by the score of the input masked with that channel's
map: 1280 masked forwards on lite0 (minutes on a CPU) and, in grad-cam's implementation, all 1280 masked
copies of the input in memory at once (3 GB at 448 px). ``scorecam`` evaluates only the ``TOP_K``
channels with the highest mean activation, in batches sized by the memory budget; channels left out get
weight 0. The full method stays available as ``scorecam_full``; the difference between the two was
measured (README) and is held by a test on a small model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM

from workbench.explain.explainers import register_explainer
from workbench.explain.explainers.base import ExplainableModel, Heatmap, frozen_weights, to_input_size
from workbench.explain.explainers.budget import batch_for_budget
from workbench.targets import Target, per_sample

__all__ = ["TOP_K", "CamExplainer", "TopKScoreCAM"]

TOP_K = 32


class TopKScoreCAM(ScoreCAM):
    """ScoreCAM over the ``top_k`` channels with the highest mean activation (softmax over those)."""

    top_k = TOP_K
    batch_size = 16

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        acts = torch.from_numpy(activations)  # (B, C, h, w)
        weights = np.zeros(acts.shape[:2], np.float32)
        k = min(self.top_k, acts.shape[1])
        with torch.no_grad():
            for b, target in enumerate(targets):
                chosen = acts[b].mean(dim=(1, 2)).topk(k).indices
                maps = F.interpolate(
                    acts[b, chosen][None], size=input_tensor.shape[-2:], mode="bilinear", align_corners=True
                )[0]
                low = maps.flatten(1).min(1)[0][:, None, None]
                high = maps.flatten(1).max(1)[0][:, None, None]
                maps = (maps - low) / (high - low + 1e-8)
                scores = []
                for i in range(0, k, self.batch_size):
                    masked = input_tensor[b : b + 1] * maps[i : i + self.batch_size, None]
                    scores.extend(float(target(o)) for o in self.model(masked))
                weights[b, chosen.numpy()] = torch.softmax(torch.tensor(scores), 0).numpy()
        return weights


_CAMS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": TopKScoreCAM,
    "scorecam_full": ScoreCAM,
}


def _graph_starts_here(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's output as a fresh leaf that requires grad (autograd stops here)."""
    return output.detach().requires_grad_(True)


@dataclass
class CamExplainer:
    """One CAM method of pytorch-grad-cam on the card's ``target_layer``."""

    name: str

    def explain(self, model: ExplainableModel, image: torch.Tensor, target: Target) -> Heatmap:
        start = time.perf_counter()
        # grad-cam calls loss.backward(): with the weights requiring grad that is a full backward pass
        # (every weight gradient, down to the stem). The map needs only d(target)/d(target-layer output):
        # weights frozen for the call and the graph started at that output (a forward hook registered
        # before grad-cam's own, so grad-cam records the new graph leaf), the backward pass covers the
        # layers after it only. Same maps (tested); Grad-CAM on lite0 at 448 px 304 -> 93 ms (README).
        start_here = model.target_layer.register_forward_hook(_graph_starts_here)
        cam = _CAMS[self.name](model=model.module, target_layers=[model.target_layer])
        if self.name.startswith("scorecam"):
            cam.batch_size = batch_for_budget(model.module, image.shape[-1], backward=False)
        try:
            with frozen_weights(model.module), torch.enable_grad():
                values = cam(input_tensor=image, targets=[per_sample(target)])[0]
        finally:
            cam.activations_and_grads.release()
            start_here.remove()
        size = image.shape[-1]
        return Heatmap(
            to_input_size(values, size), False, self.name, target.label, time.perf_counter() - start
        )


for _name in _CAMS:
    register_explainer(_name)(lambda name=_name: CamExplainer(name))
