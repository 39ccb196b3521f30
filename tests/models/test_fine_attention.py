"""Fine attention (``models.classifier.FineAttention``): a no-op when added, finer maps that pool what the
heads read, the same logits in ONNX Runtime, and a frozen-backbone head that learns where lesions are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.classifier import Grader, grader_card
from models.registry import build_model, load_model, save_model
from tests.training.test_guidance import _lesion_batch, _mass_on_lesions
from training.checkpoint import load_initial
from training.tasks import TASKS
from training.train import TrainConfig
from workbench.runtime import OnnxForward, forward_for


def _pair(size: int = 128) -> tuple[Grader, Grader]:
    torch.manual_seed(0)
    plain = build_model(grader_card("test_convnext", size, name="test_tiny_cls")).eval()
    fine = build_model(
        grader_card("test_convnext", size, name="test_tiny_cls", fine_attention={"stride": 8})
    ).eval()
    load_initial(fine, plain.state_dict())
    return plain, fine


def test_added_fine_attention_changes_nothing_until_it_is_trained() -> None:
    plain, fine = _pair()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(fine(x), plain(x), atol=1e-5, rtol=1e-5)
        maps = fine.attention_maps(x)
        coarse = plain.attention_maps(x)
    assert maps["dr"].shape == (2, 16, 16) and coarse["dr"].shape == (2, 4, 4)  # stride 8, not 32
    assert torch.allclose(maps["dme"].sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    # untrained, the fine map spreads each coarse cell's weight evenly over its 4x4 fine cells
    torch.testing.assert_close(maps["dr"][:, ::4, ::4] * 16, coarse["dr"], atol=1e-5, rtol=1e-4)


def test_the_fine_map_is_what_the_heads_read() -> None:
    """Moving the fine attention moves the logits: the map is the network's evidence, not decoration."""
    _, fine = _pair()
    with torch.no_grad():
        fine.fine.dr_head.weight.normal_()
        fine.fine.score[-1].weight.normal_()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = fine(x)
        fine.fine.score[-1].weight.mul_(-1)  # another distribution over the fine grid
        after = fine(x)
    assert (before[:, :5] - after[:, :5]).abs().max() > 1e-3


def test_initial_weights_may_lack_only_the_fine_module() -> None:
    plain, fine = _pair()
    state = plain.state_dict()
    del state["dr_head.bias"]
    with pytest.raises(ValueError, match="dr_head.bias"):
        load_initial(fine, state)


def test_onnx_runtime_gives_the_fine_graders_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRWB_CACHE", str(tmp_path / "cache"))
    _, fine = _pair(64)
    with torch.no_grad():
        for parameter in fine.fine.parameters():
            parameter.normal_(std=0.3)
    card = grader_card("test_convnext", 64, name="test_tiny_cls", fine_attention={"stride": 8})
    save_model(fine, card.with_updates(weights="tiny_fine.safetensors"), tmp_path, half=False)
    model, loaded = load_model("tiny_fine", tmp_path)
    onnx = forward_for(model, loaded, "onnx")
    assert isinstance(onnx, OnnxForward)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        np_logits = onnx(x)
        torch.testing.assert_close(torch.as_tensor(np_logits).float(), model(x), atol=1e-4, rtol=1e-4)


def test_a_frozen_backbone_fine_head_learns_where_the_lesions_are() -> None:
    """Only the pools and heads train (``--freeze-backbone``): with the attention loss the fine DR map
    puts more of its mass on held-out lesions than the same head trained on the labels alone, and the
    backbone does not move."""
    batch, held_out = _lesion_batch(8, seed=1), _lesion_batch(8, seed=2)
    masses = {}
    for weight in (0.0, 1.0):
        _, model = _pair()
        frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        cfg = TrainConfig(
            backbone="test_convnext",
            model_name="test_tiny_cls",
            attention_weight=weight,
            fine_attention=8,
            freeze_backbone=True,
        )
        task = TASKS["grader"](cfg)
        task.prepare_model(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        for _ in range(25):
            task.train_mode(model)
            loss = task.loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        masses[weight] = _mass_on_lesions(model, held_out)  # on the fine grid
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, frozen[key]), key
    assert masses[1.0] > masses[0.0] + 0.1, masses
