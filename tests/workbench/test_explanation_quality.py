"""Deletion/insertion, pointing game, relevance mass/rank and the sanity check on known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.card import ModelCard
from workbench.explain.explainers import ExplainableModel, get_explainer
from workbench.explain.explanation_quality import (
    deletion_insertion,
    pointing_game,
    randomisation_correlation,
    relevance_mass,
    relevance_rank,
    spearman,
)
from workbench.targets import GradeTarget


class RegionModel(nn.Module):
    """Grade-2 logit = 4 * mean of channel 0 inside the top-left 8x8 square; the rest is ignored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 8)
        logits[:, 2] = 4 * x[:, 0, :8, :8].mean(dim=(1, 2))
        return logits


def test_faithful_map_beats_reversed_map() -> None:
    card = ModelCard(name="r", arch="grader", encoder="-", num_classes=5, input_size=32)
    model = ExplainableModel(RegionModel(), card)
    image = torch.zeros(1, 3, 32, 32)
    image[:, 0, :8, :8] = 3.0  # evidence for grade 2 only in the region
    good = np.zeros((32, 32), np.float32)
    good[:8, :8] = 1.0
    good += np.linspace(0, 0.01, 32 * 32).reshape(32, 32)  # break ties deterministically
    bad = -good
    faithful = deletion_insertion(model, image, good, GradeTarget(2), steps=8)
    reversed_ = deletion_insertion(model, image, bad, GradeTarget(2), steps=8)
    assert faithful.deletion_auc < reversed_.deletion_auc
    assert faithful.insertion_auc > reversed_.insertion_auc
    assert faithful.deletion[0] == pytest.approx(reversed_.deletion[0])  # same starting image


def test_pointing_game_and_relevance_known_values() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True  # 4 lesion pixels
    heat = np.zeros((10, 10))
    heat[3, 3], heat[8, 8], heat[2, 2] = 3.0, 1.0, 0.5
    assert pointing_game(heat, mask, tolerance=0) == 1.0
    assert relevance_mass(heat, mask) == pytest.approx(3.5 / 4.5)
    # top-4: (3,3) hit, (8,8) miss, (2,2) hit, then one of 97 tied zeros of which 2 are lesion pixels
    assert relevance_rank(heat, mask) == pytest.approx((2 + 2 / 97) / 4)
    heat[3, 3] = 0
    assert pointing_game(heat, mask, tolerance=0) == 0.0
    assert pointing_game(heat, np.zeros_like(mask)) is None


def test_spearman_extremes() -> None:
    a = np.arange(20, dtype=float)
    assert spearman(a, a * 2) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_randomisation_changes_gradcam() -> None:
    torch.manual_seed(0)
    from models.classifier import grader_card
    from models.registry import build_model

    card = grader_card("test_convnext", 64, name="test_tiny_cls")
    model = ExplainableModel(build_model(card).eval(), card)
    image = torch.randn(1, 3, 64, 64)
    explainer = get_explainer("gradcam")
    heat = explainer.explain(model, image, GradeTarget(1))
    rho = randomisation_correlation(explainer, model, image, GradeTarget(1), heat.values)
    assert -1.0 <= rho < 0.99
