"""Explainer benchmarks of ``drwb bench``: each method on the default grader (median ms, ratio to one
forward pass, overhead against a bare library call) and each method's peak memory in a fresh process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from workbench.bench.timing import time_call
from workbench.io.image_io import load_image

__all__ = ["EXPLAINER_TARGETS_MS", "bench_explainer_memory", "bench_explainers"]

# method -> target in ms (the explanation-speed issue); None: reported without a target
EXPLAINER_TARGETS_MS: dict[str, float | None] = {
    "attention": None,
    "gradcam": 150.0,
    "gradcam++": 150.0,
    "integrated_gradients": 1500.0,
    "smoothgrad": 800.0,
    "occlusion": 1500.0,
    "scorecam": 5000.0,
}


def _grader_input(image_path: Path):
    from models.registry import default_model, load_model
    from workbench.explain.explainers import ExplainableModel
    from workbench.fundus import prepare_fundus
    from workbench.predictors import GraderPredictor

    predictor = GraderPredictor(*load_model(default_model("grader", ensembles=False)))  # one network
    prepared = prepare_fundus(load_image(image_path, min_side=512), 512)
    return ExplainableModel(predictor.model, predictor.card), predictor.input_tensor(prepared.crop)


def _bare_calls(model, tensor, target) -> dict[str, Callable[[], object]]:
    """The same work through the libraries directly, without our adapters (for the overhead ratio)."""
    import torch
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM

    from workbench.explain.explainers.budget import batch_for_budget
    from workbench.explain.explainers.captum_methods import make_baseline
    from workbench.targets import per_sample

    @contextmanager
    def as_a_user_holds_it() -> Iterator[None]:
        # a model built with timm has trainable weights; shipped models are loaded frozen
        model.module.requires_grad_(True)
        try:
            yield
        finally:
            model.module.requires_grad_(False)

    def gradcam() -> object:
        cam = GradCAM(model=model.module, target_layers=[model.target_layer])
        try:
            with as_a_user_holds_it():
                return cam(input_tensor=tensor, targets=[per_sample(target)])
        finally:
            cam.activations_and_grads.release()

    def integrated_gradients() -> object:
        def forward(x):
            return target(model.module(x).float())

        baseline = make_baseline(model, tensor, "blur")
        batch = min(16, batch_for_budget(model.module, tensor.shape[-1], backward=True))
        with as_a_user_holds_it(), torch.enable_grad():
            return IntegratedGradients(forward).attribute(
                tensor.clone().requires_grad_(True),
                baselines=baseline,
                n_steps=16,
                method="gausslegendre",
                internal_batch_size=batch,
            )

    return {"gradcam": gradcam, "integrated_gradients": integrated_gradients}


def bench_explainers(image_path: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Each explainer on the default grader: median ms, its ratio to one forward pass of the same model in
    the same run (comparable across machines), and our adapter's overhead against a bare library call
    (target <= 1.1x)."""
    import torch

    from workbench.explain.explainers import get_explainer
    from workbench.targets import GradeTarget

    model, tensor = _grader_input(image_path)
    target = GradeTarget(2)
    with torch.inference_mode():
        forward = time_call(lambda: model.module(tensor), max(5, repeats))
    out: dict[str, dict[str, float]] = {"forward_pass": {**forward, "input_px": tensor.shape[-1]}}
    bare = _bare_calls(model, tensor, target)
    for name, target_ms in EXPLAINER_TARGETS_MS.items():
        explainer = get_explainer(name)
        n = (
            max(3, repeats // 5)
            if name in ("scorecam", "occlusion", "integrated_gradients")
            else max(3, repeats // 3)
        )
        result = time_call(lambda e=explainer: e.explain(model, tensor, target), n, warmup=1)
        result["target_ms"] = target_ms
        result["x_forward"] = result["median_ms"] / forward["median_ms"]
        if name in bare:
            library = time_call(bare[name], n, warmup=1)
            result["bare_library_ms"] = library["median_ms"]
            result["overhead_ratio"] = result["median_ms"] / library["median_ms"]
        out[name] = result
    return out


def _explainer_peak_rss_mb(image_path: str, method: str) -> tuple[float, float]:
    from workbench.explain.explainers import get_explainer
    from workbench.explain.explainers.budget import peak_rss_mb
    from workbench.targets import GradeTarget

    model, tensor = _grader_input(Path(image_path))
    before = peak_rss_mb()
    get_explainer(method).explain(model, tensor, GradeTarget(2))
    return before, peak_rss_mb()


def bench_explainer_memory(image_path: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Peak RSS of a fresh process (grader loaded) running one explainer once, per method; <= 2 GB."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out = {}
    for method in EXPLAINER_TARGETS_MS:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            before, peak = pool.submit(_explainer_peak_rss_mb, str(image_path), method).result()
        out[method] = {"loaded_mb": before, "peak_rss_mb": peak, "target_mb": 2048.0}
    return out
