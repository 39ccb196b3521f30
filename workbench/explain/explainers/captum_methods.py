"""captum adapters: Integrated Gradients, Saliency, SmoothGrad, GradientShap, Occlusion.

Quirks owned here: captum wants ``forward_func(x) -> (B,)``, so the target is folded into the forward;
attributions come per input channel at input size and are reduced to one map: summed over channels for
the signed methods (IG, GradientShap, Occlusion), max of absolute values for the gradient magnitudes
(Saliency, SmoothGrad). Baselines are in the model's normalised space: "black" is a black image after
normalisation, "blur" a strongly blurred copy of the input (keeps colour, removes lesions).

Speed and memory (measured in ``drwb bench``, tolerances held by tests): Integrated Gradients uses
Gauss-Legendre quadrature with 16 steps (captum's default rule; the old 32 steps gave the same map
within the tested tolerance at twice the cost); every method batches its model evaluations in chunks
that fit the explanation memory budget (``workbench.explain.explainers.budget``); Occlusion needs no gradient
and runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Occlusion, Saliency

from workbench.explain.explainers import register_explainer
from workbench.explain.explainers.base import ExplainableModel, Heatmap, to_input_size
from workbench.explain.explainers.budget import batch_for_budget
from workbench.targets import Target

__all__ = ["CaptumExplainer", "make_baseline"]


def make_baseline(model: ExplainableModel, image: torch.Tensor, kind: str) -> torch.Tensor:
    """The reference input: ``black`` (zero pixels, normalised) or ``blur`` (Gaussian sigma = S/20)."""
    if kind == "black":
        mean = torch.tensor(model.card.mean).view(1, 3, 1, 1)
        std = torch.tensor(model.card.std).view(1, 3, 1, 1)
        return ((torch.zeros_like(image) - mean) / std).to(image.dtype)
    if kind == "blur":
        sigma = image.shape[-1] / 20
        radius = int(3 * sigma)
        xs = torch.arange(-radius, radius + 1, dtype=image.dtype)
        kernel = torch.exp(-(xs**2) / (2 * sigma**2))
        kernel = (kernel / kernel.sum()).to(image.dtype)
        padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
        horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
        return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    raise ValueError(f"unknown baseline {kind!r}; valid: black, blur")


COMPLETENESS_TOLERANCE = 0.20  # of f(x) - f(baseline): IG's steps double until its sum is this close
MAX_STEPS = 64


@dataclass
class CaptumExplainer:
    """One captum method. ``steps`` / ``internal_batch_size`` apply to IG; ``samples`` to SmoothGrad/SHAP."""

    name: str
    baseline: str = "blur"
    steps: int = 16
    internal_batch_size: int = 0  # 0: from the memory budget
    samples: int = 16
    occlusion_window: int = 64
    occlusion_stride: int = 48

    def explain(self, model: ExplainableModel, image: torch.Tensor, target: Target) -> Heatmap:
        start = time.perf_counter()
        module = model.module.eval()

        def forward(x: torch.Tensor) -> torch.Tensor:
            return target(module(x).float())

        if self.name == "occlusion":  # perturbation only: no autograd graph, no gradient memory
            with torch.inference_mode():
                attribution, signed = self._occlusion(forward, model, image.detach())
        else:
            image = image.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                attribution, signed = self._attribute(forward, model, image)
        reduced = attribution.sum(dim=1)[0] if signed else attribution.abs().amax(dim=1)[0]
        values = to_input_size(reduced.detach(), image.shape[-1])
        return Heatmap(values, signed, self.name, target.label, time.perf_counter() - start)

    def _batch(self, model: ExplainableModel, image: torch.Tensor, backward: bool) -> int:
        if self.internal_batch_size:
            return self.internal_batch_size
        return batch_for_budget(model.module, image.shape[-1], backward)

    def _occlusion(self, forward, model: ExplainableModel, image: torch.Tensor) -> tuple[torch.Tensor, bool]:
        window, stride = self.occlusion_window, self.occlusion_stride
        baseline = make_baseline(model, image, self.baseline)
        return Occlusion(forward).attribute(
            image,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=baseline,
            perturbations_per_eval=self._batch(model, image, backward=False),
        ), True

    def _attribute(self, forward, model: ExplainableModel, image: torch.Tensor) -> tuple[torch.Tensor, bool]:
        batch = self._batch(model, image, backward=True)
        if self.name == "integrated_gradients":
            baseline = make_baseline(model, image.detach(), self.baseline)
            ig = IntegratedGradients(forward)
            with torch.no_grad():
                gap = float(forward(image.detach()) - forward(baseline))
            # Completeness check per image: the attributions must sum to f(x) - f(baseline). Where 16
            # Gauss-Legendre steps miss by more than COMPLETENESS_TOLERANCE (a sharp model on some
            # photographs: 35% on one IDRiD image, 3% at 64 steps), the steps double, up to MAX_STEPS.
            steps = self.steps
            while True:
                attribution = ig.attribute(
                    image,
                    baselines=baseline,
                    n_steps=steps,
                    method="gausslegendre",
                    internal_batch_size=min(batch, steps),
                )
                error = abs(float(attribution.detach().sum()) - gap) / max(abs(gap), 1e-8)
                if error <= COMPLETENESS_TOLERANCE or steps >= MAX_STEPS:
                    return attribution, True
                steps *= 2
        if self.name == "saliency":
            return Saliency(forward).attribute(image, abs=True), False
        if self.name == "smoothgrad":
            tunnel = NoiseTunnel(Saliency(forward))
            return tunnel.attribute(
                image,
                nt_type="smoothgrad",
                nt_samples=self.samples,
                nt_samples_batch_size=min(batch, self.samples),
                stdevs=0.15,
                abs=True,
            ), False
        if self.name == "gradient_shap":
            baselines = torch.cat(
                [make_baseline(model, image.detach(), "black"), make_baseline(model, image.detach(), "blur")]
            )
            # expected gradients are a mean over samples: chunks within the budget, averaged by size
            shap, total, left = GradientShap(forward), 0.0, self.samples
            while left > 0:
                n = min(batch, left)
                total = total + shap.attribute(image, baselines=baselines, n_samples=n, stdevs=0.1) * n
                left -= n
            return total / self.samples, True
        raise KeyError(self.name)


for _name in ("integrated_gradients", "saliency", "smoothgrad", "gradient_shap", "occlusion"):
    register_explainer(_name)(lambda name=_name: CaptumExplainer(name))
# IG's answer depends on its reference image: offer the black baseline beside the default blurred one.
register_explainer("integrated_gradients_black")(
    lambda: CaptumExplainer("integrated_gradients", baseline="black")
)
