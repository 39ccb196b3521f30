"""The landmark refiners' geometry: a window lands on its point, what the disc refiner segments there
lands back on the disc in the lesion maps and the fovea refiner's peak back on the photograph, from a
full-size or a reduced decode alike; the Workbench uses the disc's figures and a found fovea only."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from models.preprocess import crop_to_fov
from models.refiners import disc_card
from models.window import extract_window, window_matrix
from workbench.io.image_io import LoadedImage
from workbench.io.synthetic import SyntheticFundus
from workbench.landmarks.disc import DiscRefiner
from workbench.predictors import LesionMaps

OD = 4


def _decoded(truth: SyntheticFundus, factor: int) -> LoadedImage:
    """The synthetic photograph as a loader decoding it ``factor`` x smaller would give it."""
    height, width = truth.image.shape[:2]
    rgb = cv2.resize(truth.image, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return LoadedImage(rgb, (height, width), "PNG", "RGB", "synthetic.png")


class _DiscAtWindowCentre(nn.Module):
    """Stands in for a trained refiner: a disc of ``radius`` window px at the window's centre."""

    def __init__(self, size: int, radius: float) -> None:
        super().__init__()
        ys, xs = np.mgrid[0:size, 0:size]
        centre = (size - 1) / 2
        inside = np.hypot(xs - centre, ys - centre) <= radius
        self.register_buffer("logits", torch.from_numpy(np.where(inside, 12.0, -12.0)).float()[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_window_is_centred_on_the_point_at_the_requested_scale() -> None:
    image = np.zeros((1500, 2000), np.float32)
    cv2.circle(image, (1300, 600), 100, 1.0, -1)
    size, radius, window_r = 256, 1000.0, 0.35
    window = extract_window(image, window_matrix((1300, 600), radius, window_r, size), size)
    ys, xs = np.nonzero(window > 0.5)
    assert abs(xs.mean() - (size - 1) / 2) < 0.5 and abs(ys.mean() - (size - 1) / 2) < 0.5
    expected = 100 * size / (2 * window_r * radius)  # disc radius in window px
    assert np.sqrt((window > 0.5).sum() / np.pi) == pytest.approx(expected, abs=1.0)


def test_window_leaving_the_image_is_black_there() -> None:
    image = np.full((400, 400, 3), 200, np.uint8)
    window = extract_window(image, window_matrix((10, 200), 300, 0.35, 64), 64)
    assert window[32, 0].max() == 0 and window[32, 63].min() == 200


@pytest.mark.parametrize("decode_factor", [1, 2])
def test_refined_disc_lands_on_the_disc_in_the_lesion_maps(
    synthetic_fundus: SyntheticFundus, decode_factor: int
) -> None:
    """The stub refiner puts a disc of the true radius at its window's centre: after ``refine`` the disc
    channel of the maps holds it at the true disc, in the crop frame, within a pixel; outside the window
    the segmenter's channel is untouched."""
    truth = synthetic_fundus
    image = _decoded(truth, decode_factor)
    crop, transform, fov = crop_to_fov(image.rgb, 512, image.original_size)
    size = 96
    card = disc_card(input_size=size, name="test_tiny_disc")
    scale = window_matrix(truth.od_xy, fov.radius, card.extra["window_r"], size)[0, 0]
    refiner = DiscRefiner(_DiscAtWindowCentre(size, truth.od_radius * scale), card)
    maps = LesionMaps(np.full((5, 512, 512), 0.25, np.float32), transform)
    refiner.refine(maps, image, truth.od_xy, fov)
    disc = maps.probabilities[OD] > 0.5
    ys, xs = np.nonzero(disc)
    expected = transform.to_crop(np.array([truth.od_xy]))[0]
    assert np.hypot(xs.mean() - expected[0], ys.mean() - expected[1]) < 1.0
    assert np.sqrt(disc.sum() / np.pi) == pytest.approx(truth.od_radius * transform.scale, abs=1.0)
    assert maps.probabilities[OD, 0, 0] == pytest.approx(0.25)  # far from the disc: the segmenter's
    assert (maps.probabilities[:OD] == 0.25).all()  # the lesion channels are not touched


def test_workbench_takes_the_disc_figures_from_the_refiner(tiny_weights: Path, tmp_path: Path) -> None:
    """With a shipped refiner the disc's threshold and reliability are the refiner's product-pipeline
    measurement (never its training loop's); with ``disc=""`` there is no refiner and the segmenter's own
    are used."""
    import json
    import shutil

    from workbench.analysis import Workbench

    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    card = json.loads((folder / "tiny_disc.json").read_text())
    card["training"]["evaluation"] = {"val": {"aupr_OD": 0.91, "threshold_OD": 0.37, "jaccard_OD": 0.8}}
    (folder / "tiny_disc.json").write_text(json.dumps(card))
    with_disc = Workbench(weights_dir=folder)
    assert with_disc.disc is not None and with_disc.model_names["disc"] == "tiny_disc"
    assert with_disc._thresholds()["OD"] == pytest.approx(0.37)
    assert Workbench(weights_dir=folder, disc="").disc is None
    without = Workbench(weights_dir=folder, disc="")._thresholds()["OD"]
    assert without != pytest.approx(0.37)
    # the training loop's figures (windows centred on the annotated disc) never stand in for them
    card["training"] = {"validation": {"threshold_OD": 0.11, "aupr_OD": 0.99}}
    (folder / "tiny_disc.json").write_text(json.dumps(card))
    assert Workbench(weights_dir=folder)._thresholds()["OD"] == pytest.approx(without)


def test_analyze_with_a_refiner_changes_the_disc_and_says_so(
    tiny_workbench, tiny_weights: Path, synthetic_fundus: SyntheticFundus
) -> None:
    from workbench.analysis import Workbench

    image = synthetic_fundus.image
    loaded = LoadedImage(image, image.shape[:2], "PNG", "RGB", "s.png")
    result = tiny_workbench.analyze(loaded, force=True)
    plain = Workbench(weights_dir=tiny_weights, disc="").analyze(loaded, force=True)
    assert result.models["disc"] == "tiny_disc" and "disc" not in plain.models
    assert result.disc_outline_refined is True and plain.disc_outline_refined is None
    assert not np.array_equal(result.lesions["OD"].probability, plain.lesions["OD"].probability)
    assert np.array_equal(result.lesions["EX"].probability, plain.lesions["EX"].probability)
    assert result.lesions["OD"].count <= 1  # still one disc at most


class _PeakAt(nn.Module):
    """Stands in for a trained fovea refiner: one hot heatmap pixel at ``(x, y)`` (window px), of
    probability ``height``."""

    def __init__(self, size: int, xy: tuple[int, int], height: float) -> None:
        super().__init__()
        logits = torch.full((1, 1, size, size), -12.0)
        logits[0, 0, xy[1], xy[0]] = float(np.log(height / (1 - height)))
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


@pytest.mark.parametrize("decode_factor", [1, 2])
def test_refined_fovea_maps_back_to_the_original_frame(
    synthetic_fundus: SyntheticFundus, decode_factor: int
) -> None:
    """A peak (dx, dy) window pixels from the window's centre is the coarse fovea moved by (dx, dy) / scale
    original pixels, whatever the decode; a faint peak means not found (None)."""
    from models.refiners import fovea_card
    from workbench.landmarks.fovea import FOUND, FoveaRefiner

    truth = synthetic_fundus
    image = _decoded(truth, decode_factor)
    _, _, fov = crop_to_fov(image.rgb, 512, image.original_size)
    size = 64
    card = fovea_card(input_size=size, name="test_tiny_fovea")
    centre = (size - 1) / 2
    peak = (int(centre) + 10, int(centre) - 6)
    scale = window_matrix(truth.fovea_xy, fov.radius, card.extra["window_r"], size)[0, 0]
    found = FoveaRefiner(_PeakAt(size, peak, 0.8), card).refine(image, truth.fovea_xy, fov)
    expected = np.array(truth.fovea_xy) + (np.array(peak) - centre) / scale
    assert found is not None and np.hypot(*(np.array(found) - expected)) < 0.5
    assert FoveaRefiner(_PeakAt(size, peak, FOUND / 2), card).refine(image, truth.fovea_xy, fov) is None


def test_analyze_uses_the_refined_fovea_only_when_found(
    tiny_weights: Path, synthetic_fundus: SyntheticFundus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.analysis import Workbench
    from workbench.landmarks.fovea import FoveaRefiner
    from workbench.reports.report import analysis_to_dict
    from workbench.ui.summary import landmarks_caption, summary_markdown

    image = synthetic_fundus.image
    loaded = LoadedImage(image, image.shape[:2], "PNG", "RGB", "s.png")
    coarse = Workbench(weights_dir=tiny_weights, fovea="", segment=False).analyze(loaded, force=True).fovea_xy
    bench = Workbench(weights_dir=tiny_weights, segment=False)
    assert bench.model_names["fovea"] == "tiny_fovea"
    monkeypatch.setattr(FoveaRefiner, "predict", lambda self, img, xy, fov: ((xy[0] + 7.0, xy[1] - 3.0), 0.9))
    refined = bench.analyze(loaded, force=True)
    assert refined.fovea_xy == pytest.approx((coarse[0] + 7.0, coarse[1] - 3.0)) and refined.fovea_refined
    monkeypatch.setattr(FoveaRefiner, "predict", lambda self, img, xy, fov: ((0.0, 0.0), 0.01))
    kept = bench.analyze(loaded, force=True)
    assert kept.fovea_xy == pytest.approx(coarse) and kept.fovea_refined is False
    # what the faces and report.json say about it
    assert "refined at higher resolution" in summary_markdown(refined)
    assert "the refiner found no fovea near it" in landmarks_caption(kept)
    assert analysis_to_dict(refined)["fovea"]["refined"] is True


class _Recorder(_PeakAt):
    """A fovea refiner stub that keeps the window it was given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return super().forward(x)


@pytest.mark.parametrize("detail", [0.0, 40.0])
@pytest.mark.parametrize("decode_factor", [1, 2])
def test_fovea_window_shows_the_same_square_at_the_training_detail(detail: float, decode_factor: int) -> None:
    """A photograph sharper than the training ones is cut at the training windows' side and resized
    (``extra.source_window_px``); either way, and from a full or a reduced decode, a mark 30 px right of
    the centre of the window's square appears at the same window pixel."""
    from models.refiners import fovea_card
    from workbench.landmarks.fovea import FoveaRefiner

    rgb = np.zeros((1200, 1600, 3), np.uint8)
    cv2.circle(rgb, (800, 600), 560, (90, 60, 40), -1)
    cv2.circle(rgb, (830, 600), 6, (255, 255, 255), -1)
    reduced = cv2.resize(rgb, (1600 // decode_factor, 1200 // decode_factor), interpolation=cv2.INTER_AREA)
    image = LoadedImage(reduced, (1200, 1600), "PNG", "RGB", "marks.png")
    _, _, fov = crop_to_fov(image.rgb, 512, image.original_size)
    card = fovea_card(input_size=96, name="test_tiny_fovea", source_window_px=detail)
    recorder = _Recorder(96, (48, 48), 0.8)
    refiner = FoveaRefiner(recorder, card)
    refiner.predict(image, (800.0, 600.0), fov)
    side = 2 * card.extra["window_r"] * fov.radius
    assert refiner.cut_size(image, fov) == (96 if not detail else 40) and side / decode_factor > 1.25 * 40
    brightness = recorder.seen[0].mean(0).numpy()
    ys, xs = np.nonzero(brightness > brightness.max() - 0.3 * (brightness.max() - np.median(brightness)))
    scale = window_matrix((800.0, 600.0), fov.radius, card.extra["window_r"], 96)[0, 0]
    assert abs(xs.mean() - (47.5 + 30 * scale)) < 1.5 and abs(ys.mean() - 47.5) < 1.5
