"""Explainers: the contract over every registry entry, known answers, and hook hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.card import ModelCard
from models.classifier import grader_card
from models.registry import build_model
from workbench.explain.explainers import EXPLAINERS, ExplainableModel, get_explainer
from workbench.explain.notes import supervision_note
from workbench.targets import DMETarget, GradeTarget, LesionTarget, ReferableTarget, parse_target


@pytest.fixture(scope="module")
def tiny() -> ExplainableModel:
    torch.manual_seed(0)
    card = grader_card("test_convnext", 64, name="test_tiny_cls")
    return ExplainableModel(build_model(card).eval(), card)


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
@pytest.mark.parametrize("target", [GradeTarget(2), ReferableTarget(), DMETarget(1)], ids=lambda t: t.label)
def test_contract(tiny: ExplainableModel, name: str, target) -> None:
    image = torch.randn(1, 3, 64, 64)
    before = image.clone()
    heat = get_explainer(name).explain(tiny, image, target)
    assert heat.values.shape == (64, 64) and heat.values.dtype == np.float32
    assert np.isfinite(heat.values).all()
    if not heat.signed:
        assert heat.values.min() >= 0
    assert heat.seconds >= 0 and heat.target == target.label
    assert torch.equal(image, before)  # the input is never modified


def _backbone_cases() -> list:
    cases = []
    for encoder in ("tf_efficientnet_lite0", "convnext_atto"):
        for name in sorted(EXPLAINERS):
            # Full ScoreCAM masks the input once per channel: 1280 on lite0's last layer (minutes here).
            slow = encoder == "tf_efficientnet_lite0" and name == "scorecam_full"
            cases.append(pytest.param(encoder, name, marks=[pytest.mark.slow] if slow else []))
    return cases


_BACKBONES: dict[str, ExplainableModel] = {}


@pytest.mark.parametrize(("encoder", "name"), _backbone_cases())
def test_every_method_on_both_shipped_backbones(encoder: str, name: str) -> None:
    """Target layers resolve from the card and every method runs on both production architectures."""
    if encoder not in _BACKBONES:
        card = grader_card(encoder, 64)
        _BACKBONES[encoder] = ExplainableModel(build_model(card).eval(), card)
    heat = get_explainer(name).explain(_BACKBONES[encoder], torch.randn(1, 3, 64, 64), ReferableTarget())
    assert heat.values.shape == (64, 64) and np.isfinite(heat.values).all()


class OneConv(nn.Module):
    """logits[:, k] = spatial mean of conv channel k; conv copies input channel 0 into every channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _card(target_layer: str) -> ModelCard:
    return ModelCard(
        name="known", arch="grader", encoder="-", num_classes=5, input_size=8, target_layer=target_layer
    )


def test_gradcam_known_answer() -> None:
    """Weights alpha_k = 1/HW for the target channel, so CAM = minmax(relu(channel 0 of the input))."""
    model = ExplainableModel(OneConv().eval(), _card("conv"))
    image = torch.randn(1, 3, 8, 8)
    heat = get_explainer("gradcam").explain(model, image, GradeTarget(3))
    expected = torch.relu(image[0, 0]).numpy()
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert np.allclose(heat.values, expected, atol=1e-5)


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(dim=(1, 2, 3))[:, None].repeat(1, 8)


def test_integrated_gradients_known_answer() -> None:
    """For a linear model IG is exact: (x - baseline) * w, summed over channels."""
    torch.manual_seed(1)
    weight = torch.randn(1, 3, 8, 8)
    card = _card("weight").with_updates(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model = ExplainableModel(Linear(weight), card)
    image = torch.randn(1, 3, 8, 8)
    explainer = get_explainer("integrated_gradients")
    explainer.baseline = "black"
    heat = explainer.explain(model, image, GradeTarget(0))
    baseline = torch.full_like(image, -1.0)  # (0 - 0.5) / 0.5
    expected = ((image - baseline) * weight).sum(dim=1)[0].numpy()
    assert heat.signed
    assert np.allclose(heat.values, expected, atol=1e-3)


def _hook_count(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in module.modules()
    )


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "integrated_gradients", "occlusion"])
def test_no_hooks_left_even_after_error(tiny: ExplainableModel, name: str) -> None:
    image = torch.randn(1, 3, 64, 64)
    get_explainer(name).explain(tiny, image, GradeTarget(1))
    assert _hook_count(tiny.module) == 0
    with pytest.raises(IndexError):
        get_explainer(name).explain(tiny, image, GradeTarget(99))  # grad-cam would swallow this
    assert _hook_count(tiny.module) == 0


def test_segmentation_gradcam(tiny_workbench) -> None:
    seg = tiny_workbench.segmenter
    model = ExplainableModel(seg.model, seg.card)
    heat = get_explainer("gradcam").explain(model, torch.randn(1, 3, 64, 64), LesionTarget("EX"))
    assert heat.values.shape == (64, 64)


def test_attention_refuses_lesion_target(tiny: ExplainableModel) -> None:
    with pytest.raises(ValueError, match="only for grader targets"):
        get_explainer("attention").explain(tiny, torch.randn(1, 3, 64, 64), LesionTarget("HE"))


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid names: .*gradcam"):
        get_explainer("lime")
    with pytest.raises(ValueError, match="valid: dr:0..4"):
        parse_target("grade:9")
    assert parse_target("lesion:EX") == LesionTarget("EX")


def test_lesion_supervised_attention_says_so_in_captions_reports_and_the_models_table(
    tiny: ExplainableModel, tmp_path
) -> None:
    from dataclasses import replace

    from workbench.model_table import models_markdown
    from workbench.reports.render import method_grid

    image = torch.rand(1, 3, 64, 64)
    plain = get_explainer("attention").explain(tiny, image, GradeTarget(2))
    assert plain.note == "" and plain.named("attention") == "attention"
    recipe = {"recipe": {"attention_supervision": {"weight": 0.5}}}
    supervised_model = ExplainableModel(tiny.module, replace(tiny.card, training=recipe))
    supervised = get_explainer("attention").explain(supervised_model, image, GradeTarget(2))
    assert supervised.note == "lesion-supervised"
    assert supervised.named("attention") == "attention (lesion-supervised)"
    crop = np.zeros((64, 64, 3), np.uint8)
    # the grid tile carries the note on a second line: more caption pixels than without it
    with_note = method_grid(crop, {"attention": supervised}, columns=1)
    without = method_grid(crop, {"attention": plain}, columns=1)
    assert (with_note[30:45] > 200).sum() > (without[30:45] > 200).sum()
    # the Models tab: the shipped card's recipe makes the same note there
    card = replace(tiny.card, weights="tiny.safetensors", training=recipe)
    (tmp_path / "tiny.json").write_text(card.to_json())
    assert "lesion-supervised" in models_markdown(tmp_path)
    # a fine attention map says its stride, so nobody takes it for the 32-px grid
    fine_card = replace(card, extra={**card.extra, "fine_attention": {"stride": 8}})
    assert supervision_note(fine_card) == "lesion-supervised, stride 8"


def test_every_registered_method_has_words_for_the_menus() -> None:
    """Compare's menu shows these instead of registry names such as scorecam_full; a method registered
    without them would appear as its bare name."""
    from workbench.explain.explainers import EXPLAINERS
    from workbench.explain.notes import METHOD_LABELS

    assert set(METHOD_LABELS) == set(EXPLAINERS)
    assert "minutes" in METHOD_LABELS["scorecam_full"] and "grade targets only" in METHOD_LABELS["attention"]
