"""How good is an explanation? Faithfulness, localisation on lesions, and a sanity check.

- Deletion / insertion (Petsiuk et al., RISE, 2018): replace the most salient pixels first by a blurred
  copy of the image (deletion) or reveal them first on the blurred copy (insertion), in ``steps`` equal
  fractions, and follow the target's probability. A faithful map makes deletion fall fast (low AUC) and
  insertion rise fast (high AUC). The blurred baseline avoids the out-of-distribution black holes a zero
  baseline punches into a fundus.
- Pointing game (Zhang et al., 2016): is the map's maximum on a lesion, or within a disc of radius
  ``tolerance`` px around one? The caller states the tolerance in original-image pixels and converts it
  to the map's frame (``workbench.explain.scoring``). When several pixels share the maximum, the answer is the
  share of them that hit (the expected result of picking one at random).
- Relevance mass / rank (Arras et al., 2022): share of positive relevance inside the lesion mask, and
  share of the top-|mask| pixels that are lesion pixels (pixels tied at the cut count fractionally, so
  the score never depends on pixel order).
- A map with no positive value carries no evidence: pointing game, mass and rank are all None for it
  (``has_evidence``), and the apps show "no evidence" rather than a number.
- Model randomisation (Adebayo et al., 2018): Spearman rank correlation between the map of the trained
  model and of a weight-randomised copy; a method whose map barely changes is flagged as not depending
  on what the model learnt.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from workbench.explain.explainers.base import ExplainableModel, Explainer
from workbench.explain.explainers.budget import batch_for_budget
from workbench.explain.explainers.captum_methods import make_baseline
from workbench.targets import Target

__all__ = [
    "Curves",
    "deletion_insertion",
    "has_evidence",
    "pointing_game",
    "randomisation_correlation",
    "randomised_copy",
    "relevance_mass",
    "relevance_rank",
    "spearman",
]


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves: the target score after each fraction in ``fractions``."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> float:
        return float(np.trapezoid(self.deletion, self.fractions))

    @property
    def insertion_auc(self) -> float:
        return float(np.trapezoid(self.insertion, self.fractions))


@torch.inference_mode()
def deletion_insertion(
    model: ExplainableModel, image: torch.Tensor, heat: np.ndarray, target: Target, steps: int = 16
) -> Curves:
    """Deletion and insertion curves for one (1, 3, S, S) input and an (S, S) map, batched in one pass."""
    # Ties (e.g. the zeros of a sparse map) are removed in a seeded random order, not raster order, which
    # would delete the top rows of the image first.
    tie_break = np.random.default_rng(0).permutation(heat.size)
    order = np.lexsort((tie_break, -heat.ravel()))
    size = heat.size
    baseline = make_baseline(model, image, "blur")
    fractions = np.linspace(0, 1, steps + 1)
    delete, insert = [], []
    flat_image, flat_base = image.reshape(1, 3, -1), baseline.reshape(1, 3, -1)
    for fraction in fractions:
        chosen = torch.zeros(size, dtype=torch.bool)
        chosen[torch.from_numpy(order[: int(round(fraction * size))])] = True
        delete.append(torch.where(chosen, flat_base, flat_image).reshape_as(image))
        insert.append(torch.where(chosen, flat_image, flat_base).reshape_as(image))
    scores = []
    batch = torch.cat(delete + insert)
    # forwards in chunks that fit the explanation memory budget (17 at a time peaked at 2.6 GB)
    for chunk in batch.split(batch_for_budget(model.module, image.shape[-1], backward=False)):
        scores.append(target.probability(model.module(chunk).float()))
    values = torch.cat(scores).numpy()
    return Curves(fractions, values[: steps + 1], values[steps + 1 :])


def has_evidence(heat: np.ndarray) -> bool:
    """True when the map has at least one positive value (anything for the localisation scores to use)."""
    return bool(np.nanmax(heat) > 0) if heat.size else False


def _disc(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    ys, xs = np.mgrid[-r : r + 1, -r : r + 1]
    return (xs**2 + ys**2 <= radius**2).astype(np.uint8)


def pointing_game(heat: np.ndarray, lesion_mask: np.ndarray, tolerance: float = 0.0) -> float | None:
    """Does the map's maximum hit a lesion (or lie within a disc of ``tolerance`` px of one)?

    Returns 1.0 / 0.0, or the share of hitting pixels when several tie at the maximum; None without
    lesions or without evidence (no positive value).
    """
    if not lesion_mask.any() or not has_evidence(heat):
        return None
    grown = lesion_mask.astype(bool)
    if tolerance > 0:
        grown = cv2.dilate(lesion_mask.astype(np.uint8), _disc(tolerance)) > 0
    peaks = heat == np.nanmax(heat)
    return float(grown[peaks].mean())


def relevance_mass(heat: np.ndarray, lesion_mask: np.ndarray) -> float | None:
    """Share of positive relevance inside the lesion mask, in [0, 1]; None without lesions or evidence."""
    positive = np.clip(heat, 0, None)
    total = positive.sum()
    if not lesion_mask.any() or total <= 0:
        return None
    return float(positive[lesion_mask].sum() / total)


def relevance_rank(heat: np.ndarray, lesion_mask: np.ndarray) -> float | None:
    """Share of the top-K pixels (K = lesion pixels) that are lesion pixels, in [0, 1].

    Pixels tied with the K-th value are taken fractionally (the expectation over random tie-breaking),
    so the answer does not depend on where the lesion sits in raster order. None without lesions or
    without evidence.
    """
    k = int(lesion_mask.sum())
    if k == 0 or not has_evidence(heat):
        return None
    values, inside = heat.ravel(), lesion_mask.ravel().astype(bool)
    cut = np.partition(values, values.size - k)[values.size - k]  # the K-th largest value
    above, tied = values > cut, values == cut
    n_above = int(above.sum())
    from_ties = (k - n_above) * inside[tied].mean()
    return float((inside[above].sum() + from_ties) / k)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (ties broken by position)."""
    ra = np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel(), kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def randomised_copy(model: ExplainableModel, seed: int = 0) -> ExplainableModel:
    """A deep copy with every parameter re-drawn (normal, same std as the original tensor)."""
    clone = copy.deepcopy(model.module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in clone.parameters():
            std = float(parameter.std()) if parameter.numel() > 1 else 0.02
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * max(std, 1e-3))
    return ExplainableModel(clone.eval(), model.card)


def randomisation_correlation(
    explainer: Explainer,
    model: ExplainableModel,
    image: torch.Tensor,
    target: Target,
    trained_map: np.ndarray,
    randomised: ExplainableModel | None = None,
) -> float:
    """Spearman correlation between the trained model's map and a randomised model's map (low is good)."""
    other = randomised or randomised_copy(model)
    random_map = explainer.explain(other, image, target).values
    return spearman(np.abs(trained_map), np.abs(random_map))
