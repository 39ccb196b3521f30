"""The grader ensemble: what its forward pass computes, and its card and sha256 round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.classifier import grader_card
from models.ensemble import GraderEnsemble, area_resize, ensemble_card
from models.hashing import file_sha256
from models.registry import WeightsError, build_model, load_model, save_model


def _member(seed: int, temperature: float = 1.0):
    card = grader_card("test_convnext", 64, name="test_tiny_cls", temperature={"dr": temperature, "dme": 1.0})
    torch.manual_seed(seed)
    return build_model(card), card


def _write_ensemble(folder: Path, flip: bool = True) -> None:
    """Two tiny members (the second in members/) and an ensemble card over them, as `drwb ensemble`."""
    stems = []
    for seed, stem in ((0, "grader_a"), (1, "members/grader_b")):
        model, card = _member(seed, temperature=1.5 + seed)
        target = folder / Path(stem).parent
        save_model(model, card.with_updates(weights=f"{Path(stem).name}.safetensors"), target, half=False)
        stems.append(stem)
    cards = [(s, load_model(s, folder)[1]) for s in stems]
    card = ensemble_card(cards, flip, temperature={"dr": 0.8, "dme": 1.2})
    weights = folder / "grader_ens.safetensors"
    save_file({"temperature": torch.tensor([0.8, 1.2])}, str(weights))
    card = card.with_updates(weights=weights.name, sha256=file_sha256(weights))
    (folder / "grader_ens.json").write_text(card.to_json())


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def test_forward_is_the_mean_of_member_logits_over_the_image_and_its_mirror() -> None:
    members = [_member(0, 1.5)[0], _member(1, 2.0)[0]]
    ensemble = GraderEnsemble(members, flip=True, temperature=(0.5, 2.0)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        views = [m(v) for m in members for v in (x, x.flip(-1))]
        expected = torch.stack(views).mean(0)
        out = ensemble(x)
        plain = GraderEnsemble(members, flip=False).eval()(x)
    assert torch.allclose(out[:, :5], expected[:, :5] / 0.5, atol=1e-5)
    assert torch.allclose(out[:, 5:], expected[:, 5:] / 2.0, atol=1e-5)
    assert torch.allclose(plain, torch.stack([m(x) for m in members]).mean(0), atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the mirror view changes the answer


def test_members_must_share_their_heads() -> None:
    odd = build_model(grader_card("test_convnext", 64, name="test_tiny_cls").with_updates(num_classes=3))
    with pytest.raises(ValueError, match="heads"):
        GraderEnsemble([_member(0)[0], odd])


def test_ensemble_card_round_trip_loads_verified_members(tmp_path: Path) -> None:
    _write_ensemble(tmp_path)
    model, card = load_model("grader_ens", tmp_path)
    assert isinstance(model, GraderEnsemble) and card.arch == "grader"
    assert model.member_names == ("grader_a", "members/grader_b")
    assert model.temperature.tolist() == pytest.approx([0.8, 1.2])
    a, b = load_model("grader_a", tmp_path)[0], load_model("members/grader_b", tmp_path)[0]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([m(v) for m in (a, b) for v in (x, x.flip(-1))]).mean(0)
        assert torch.allclose(model(x)[:, :5], expected[:, :5] / 0.8, atol=1e-5)
    assert b.temperature.tolist() == pytest.approx([2.5, 1.0])  # each member keeps its own temperature


def test_a_member_changed_after_the_ensemble_was_built_refuses_to_load(tmp_path: Path) -> None:
    _write_ensemble(tmp_path)
    model, card = _member(7)
    # retrained under the same name: its own card and hash agree, the ensemble's record does not
    save_model(model, card.with_updates(weights="grader_b.safetensors"), tmp_path / "members", half=False)
    assert load_model("members/grader_b", tmp_path)
    with pytest.raises(WeightsError, match="member members/grader_b"):
        load_model("grader_ens", tmp_path)


def test_a_corrupt_ensemble_or_member_file_fails_its_sha256(tmp_path: Path) -> None:
    _write_ensemble(tmp_path)
    member = tmp_path / "members" / "grader_b.safetensors"
    member.write_bytes(_flip_last_byte(member.read_bytes()))
    with pytest.raises(WeightsError, match="grader_b.safetensors"):
        load_model("grader_ens", tmp_path)
    _write_ensemble(tmp_path)
    own = tmp_path / "grader_ens.safetensors"
    own.write_bytes(_flip_last_byte(own.read_bytes()))
    with pytest.raises(WeightsError, match="grader_ens.safetensors"):
        load_model("grader_ens", tmp_path)


@pytest.mark.parametrize(("side", "size"), [(512, 448), (512, 384), (64, 48), (300, 299)])
def test_area_resize_is_what_resize_crop_does_when_it_shrinks(side: int, size: int) -> None:
    """cv2's INTER_AREA, on floats to the last bits (300 -> 299 has no short period: the dense path)."""
    import cv2
    import numpy as np

    image = np.random.default_rng(side + size).random((side, side, 3)).astype(np.float32)
    expected = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    got = area_resize(torch.from_numpy(image).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="only shrinks"):
        area_resize(torch.zeros(1, 3, size, size), side)


def _mixed_members() -> list[tuple[str, torch.nn.Module, object]]:
    """A 64-px and a 48-px member (the same tiny network family; only the card's input size differs)."""
    out = []
    for seed, size in ((0, 64), (1, 48)):
        model, card = _member(seed, temperature=1.5)
        out.append((f"grader_{size}", model, card.with_updates(input_size=size)))
    return out


def _ensemble_of(members: list, flip: bool) -> GraderEnsemble:
    names, modules, cards = zip(*members, strict=True)
    return GraderEnsemble(list(modules), flip=flip, names=names, cards=cards).eval()


@pytest.mark.parametrize("smaller_first", [False, True])  # the shipped pair lists its 448-px member first
def test_members_of_different_input_sizes_each_see_the_crop_as_they_would_alone(smaller_first: bool) -> None:
    """The ensemble takes the largest size; the smaller member grades the crop shrunk as resize_crop
    shrinks it for that member alone (the uint8 crop through ``workbench.predictors``: within cv2's
    rounding to 8 bits)."""
    import numpy as np

    from workbench.predictors import _batch

    members = _mixed_members()[::-1] if smaller_first else _mixed_members()
    card = ensemble_card([(stem, c) for stem, _, c in members], flip=True)
    assert card.input_size == 64
    assert [m["input_size"] for m in card.extra["members"]] == [c.input_size for _, _, c in members]
    ensemble = _ensemble_of(members, flip=True)
    crop = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def both_views(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(v) for v in (x, x.flip(-1))]).mean(0)

    with torch.no_grad():
        alone = torch.stack([both_views(m, _batch([crop], c)) for _, m, c in members]).mean(0)
        unresized = torch.stack([both_views(m, _batch([crop], card)) for _, m, _ in members]).mean(0)
        got = ensemble(_batch([crop], card))
    assert sorted(_batch([crop], c).shape[-1] for _, _, c in members) == [48, 64]
    torch.testing.assert_close(got, alone, atol=2e-3, rtol=0)
    assert not torch.allclose(got, unresized, atol=1e-2)  # without the resize the 48-px member differs


def test_area_resize_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="square"):
        area_resize(torch.zeros(2, 3, 32, 64), 16)  # would fold the batch into the columns
    with pytest.raises(ValueError, match="only shrinks: 32 -> 48"):
        area_resize(torch.zeros(1, 3, 32, 32), 48)


def test_members_must_share_their_normalisation_but_not_their_input_size() -> None:
    (a, _, card_a), (b, _, card_b) = _mixed_members()
    assert ensemble_card([(a, card_a), (b, card_b)], flip=False).input_size == 64
    odd = card_b.with_updates(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="normalisation"):
        ensemble_card([(a, card_a), (b, odd)], flip=False)


def test_a_mixed_size_ensemble_runs_in_onnx_runtime_as_in_pytorch() -> None:
    """The shrinking is part of the exported graph (``workbench.runtime`` checks the graph agrees)."""
    from workbench.runtime import OnnxForward

    members = _mixed_members()
    card = ensemble_card([(stem, c) for stem, _, c in members], flip=False)
    ensemble = _ensemble_of(members, flip=False)
    forward = OnnxForward(ensemble, card)  # raises unless the graph agrees with the module
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(forward(x), ensemble(x), atol=1e-3, rtol=0)
