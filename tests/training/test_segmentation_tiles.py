"""High-resolution segmentation: the lesion-rate tile sampler, the focal term, the tiling round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.segmenter import segmenter_card
from training.data import SegmentationData
from training.prepare import load_index, prepare
from training.tasks import TASKS
from training.tasks.segmenter import parse_rates
from training.train import TrainConfig
from workbench.inference import predict_tiles


def _data(synthetic_idrid: Path, tmp_path: Path, rates: dict[str, float]) -> SegmentationData:
    folder = prepare(synthetic_idrid, tmp_path, "segmentation", size=256, workers=1)
    card = segmenter_card(input_size=256)
    from training.augment import AugmentConfig

    return SegmentationData(folder, load_index(folder), card, AugmentConfig(), tile=64, lesion_rates=rates)


def test_rare_lesions_are_drawn_at_the_configured_rate(synthetic_idrid: Path, tmp_path: Path) -> None:
    data = _data(synthetic_idrid, tmp_path, {"MA": 0.4, "EX": 0.2})
    index = next(i for i, e in enumerate(data.entries) if {"MA", "EX"} <= set(e.annotated))
    assert data._lesion_pixels(index, 0)[0].size and data._lesion_pixels(index, 2)[0].size
    rng = np.random.default_rng(0)
    drawn = [data._centre(index, rng, 256)[1] for _ in range(2000)]
    share = {code: drawn.count(code) / len(drawn) for code in ("MA", "EX", None)}
    assert share["MA"] == pytest.approx(0.4, abs=0.04)
    assert share["EX"] == pytest.approx(0.2, abs=0.04)
    assert share[None] == pytest.approx(0.4, abs=0.04)
    # a tile drawn for MA is centred within a quarter tile of a microaneurysm pixel
    ys, xs = data._lesion_pixels(index, 0)
    for _ in range(50):
        centre, code = data._centre(index, rng, 256)
        if code == "MA":
            distance = np.hypot(xs - centre[0], ys - centre[1]).min()
            assert distance <= 64 / 4 * np.sqrt(2) + 1e-6


def test_lesion_rates_are_checked(synthetic_idrid: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MA, HE, EX, SE, OD"):
        _data(synthetic_idrid, tmp_path, {"XX": 0.5})
    with pytest.raises(ValueError, match="summing to <= 1"):
        _data(synthetic_idrid, tmp_path, {"MA": 0.7, "SE": 0.6})
    assert parse_rates("MA:0.3, SE:0.2") == {"MA": 0.3, "SE": 0.2}
    with pytest.raises(ValueError, match="CODE:RATE"):
        parse_rates("MA=0.3")


def test_focal_term_discounts_easy_pixels() -> None:
    masks = torch.zeros(1, 5, 8, 8)
    masks[0, 0, 3, 3] = 1
    logits = torch.full((1, 5, 8, 8), -6.0)  # confident background everywhere, the one lesion missed
    batch = (torch.zeros(1, 3, 8, 8), masks, torch.ones(1, 5, dtype=torch.bool))

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits

    plain = TASKS["segmenter"](TrainConfig(task="segmenter")).loss(Fixed(), batch)
    focal = TASKS["segmenter"](TrainConfig(task="segmenter", focal_gamma=2.0)).loss(Fixed(), batch)
    assert focal.item() < plain.item()  # easy negatives count little; the Dice term is the same in both


class _Echo(nn.Module):
    """A 'segmenter' whose logits are its input's first channel: predict_tiles must return the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].repeat(1, 5, 1, 1) * 40 - 20


def test_full_resolution_tiling_round_trip_is_exact() -> None:
    """A mask of odd size, with lesions on tile seams and borders, survives tile-predict-stitch."""
    height, width = 1400, 2101
    mask = np.zeros((height, width), np.float32)
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, [height, width], size=(60, 2)):
        radius = int(rng.integers(1, 12))
        mask[max(0, y - radius) : y + radius, max(0, x - radius) : x + radius] = 1
    mask[:, 448:450] = 1  # a line on a tile seam (tile 512, overlap 64: seams at 448-512)
    image = torch.from_numpy(np.repeat(mask[None], 3, axis=0))
    probs = predict_tiles(_Echo(), image, tile=512, overlap=64)
    assert probs.shape == (5, height, width)
    restored = probs[0] >= 0.5
    assert (restored != (mask > 0)).sum() == 0
