"""bf16 for the lesion and landmark networks: chosen by name, by the CPU and by an agreement probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models.registry import load_model
from workbench import precision
from workbench.io.image_io import load_image
from workbench.io.synthetic import make_fundus
from workbench.precision import Bf16Forward, configured_precision, precision_setting, with_precision
from workbench.predictors import SegmenterPredictor
from workbench.runtime import forward_for, runtime_name


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test probes anew (agreement is kept per process, keyed by the weights' sha256)."""
    monkeypatch.setattr(precision, "_AGREES", {})


def test_the_precision_is_chosen_by_name_and_a_wrong_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRWB_PRECISION", raising=False)
    assert configured_precision() == "auto"
    monkeypatch.setenv("DRWB_PRECISION", "BF16")
    assert configured_precision() == "bf16" and configured_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="valid precisions: auto, fp32, bf16"):
        configured_precision("fp16")
    with precision_setting("fp32"):
        assert configured_precision() == "fp32"
    assert configured_precision() == "bf16"  # restored
    with pytest.raises(ValueError, match="unknown precision"), precision_setting("int8"):
        pass


def test_graders_and_fp32_never_run_in_bf16(tiny_weights: Path) -> None:
    grader, grader_card = load_model("tiny_grader", tiny_weights)
    segmenter, segmenter_card = load_model("tiny_segmenter", tiny_weights)
    for name in ("auto", "fp32", "bf16"):
        assert with_precision(grader, grader_card, name) is grader  # graders: fp32 (ONNX Runtime under auto)
    assert with_precision(segmenter, segmenter_card, "fp32") is segmenter


def test_auto_keeps_fp32_on_a_cpu_without_bf16_units(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "bf16_units", lambda: False)
    monkeypatch.setattr(precision, "_probe", lambda *a, **k: pytest.fail("no probe without bf16 units"))
    model, card = load_model("tiny_segmenter", tiny_weights)
    assert with_precision(model, card, "auto") is model


def test_auto_takes_bf16_where_the_cpu_has_bf16_units_and_really_computes_in_it(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "bf16_units", lambda: True)
    model, card = load_model("tiny_localizer", tiny_weights)
    forward = with_precision(model, card, "auto")
    assert isinstance(forward, Bf16Forward) and forward.module is model
    seen: list[torch.dtype] = []
    convolution = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    handle = convolution.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    x = torch.rand(2, 3, card.input_size, card.input_size)
    try:
        with torch.inference_mode():
            got, reference = forward(x), model(x)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16, torch.float32]  # inside the bf16 forward, then the plain module
    assert got.dtype == torch.float32 and got.shape == reference.shape
    assert float((torch.sigmoid(got) - torch.sigmoid(reference)).abs().mean()) < 0.01
    assert runtime_name(forward) == f"pytorch {torch.__version__} bf16"
    assert runtime_name(model) == f"pytorch {torch.__version__}"


class _BrokenInBf16(nn.Module):
    """A 1x1 convolution whose output turns to noise under autocast (a broken bf16 kernel, say), or with
    ``fails`` raises there."""

    def __init__(self, fails: bool = False) -> None:
        super().__init__()
        self.conv, self.fails, self.calls = nn.Conv2d(3, 2, 1), fails, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not torch.is_autocast_enabled("cpu"):
            return self.conv(x)
        if self.fails:
            raise RuntimeError("no bf16 kernel for this layer")
        return self.conv(x) * -50


def test_a_bf16_forward_that_disagrees_with_fp32_is_never_used(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "bf16_units", lambda: True)
    _, card = load_model("tiny_segmenter", tiny_weights)
    broken = _BrokenInBf16().eval()
    with caplog.at_level("WARNING", logger="workbench.precision"):
        assert with_precision(broken, card, "auto") is broken
    assert "bf16 disagrees with fp32" in caplog.text and card.name in caplog.text
    with pytest.raises(ValueError, match="DRWB_PRECISION=bf16 cannot be honoured"):
        with_precision(broken, card, "bf16")  # the same answer from the kept check, forced or not


def test_a_bf16_probe_that_fails_keeps_auto_in_fp32_and_refuses_bf16(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """auto never stops a model from loading; a forced bf16 says why it cannot."""
    monkeypatch.setattr(precision, "bf16_units", lambda: True)
    _, card = load_model("tiny_segmenter", tiny_weights)
    failing = _BrokenInBf16(fails=True).eval()
    with caplog.at_level("WARNING", logger="workbench.precision"):
        assert with_precision(failing, card, "auto") is failing
    assert "bf16 failed on its probe" in caplog.text and "no bf16 kernel" in caplog.text
    with pytest.raises(ValueError, match="bf16 cannot run here"):
        with_precision(failing, card, "bf16")


def test_the_agreement_check_runs_once_per_weights_file(tiny_weights: Path) -> None:
    _, card = load_model("tiny_segmenter", tiny_weights)
    module = _BrokenInBf16().eval()
    for _ in range(3):
        precision._agrees(module, card)
    assert module.calls == 2  # one fp32 and one bf16 pass, once
    unsaved = card.with_updates(sha256="")  # built in memory: nothing to key it by, checked each time
    precision._agrees(module, unsaved)
    precision._agrees(module, unsaved)
    assert module.calls == 6


def _photograph(folder: Path, seed: int, size: tuple[int, int] = (356, 536)):
    path = folder / f"fundus{seed}.png"
    Image.fromarray(make_fundus(seed, size=size).image).save(path)
    return load_image(path)


def test_a_segmenter_in_bf16_says_so_and_gives_the_fp32_maps(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a user gets with DRWB_PRECISION=bf16: the record names it, the lesion maps barely move."""
    image = _photograph(tmp_path, 3)
    model, card = load_model("tiny_segmenter", tiny_weights)
    monkeypatch.setenv("DRWB_PRECISION", "fp32")
    reference = SegmenterPredictor(model, card).predict(image).probabilities
    monkeypatch.setenv("DRWB_PRECISION", "bf16")
    predictor = SegmenterPredictor(model, card)
    assert predictor.runtime.endswith(" bf16") and isinstance(forward_for(model, card), Bf16Forward)
    got = predictor.predict(image).probabilities
    assert got.shape == reference.shape and got.dtype == np.float32
    assert float(np.abs(got - reference).mean()) < 0.01


@pytest.mark.skipif(not precision.bf16_units(), reason="this CPU has no bf16 units (AMX or AVX512-BF16)")
def test_the_shipped_fast_segmenter_in_bf16_agrees_with_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast profile's segmenter (640-px crop, one tile) on a synthetic photograph: bf16 probabilities
    within 0.01 of fp32 on average (the validated AUPR difference is in its card, ``training.bf16_check``)."""
    image = _photograph(tmp_path, 5, size=(712, 1072))
    model, card = load_model("segmenter_lite0")
    maps = {}
    for name in ("fp32", "bf16"):
        monkeypatch.setenv("DRWB_PRECISION", name)
        maps[name] = SegmenterPredictor(model, card, input_size=640).predict(image).probabilities
    assert float(np.abs(maps["bf16"] - maps["fp32"]).mean()) < 0.01


def test_the_precision_benchmark_times_both_sides_on_one_network(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.bench.precision import compare_precisions

    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))
    result = compare_precisions("tiny_segmenter", 96, repeats=2)
    assert result["input_px"] == 96 and result["fp32_median_ms"] > 0 and result["bf16_median_ms"] > 0
    assert result["bf16_over_fp32"] == pytest.approx(result["bf16_median_ms"] / result["fp32_median_ms"])
    assert 0 <= result["mean_abs_sigmoid_difference"] < 0.01


def test_an_analysis_names_the_networks_that_ran_in_bf16(
    tiny_weights: Path, synthetic_fundus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's runtimes and the summary's model line say which networks ran in bf16 (the graders
    never: ONNX Runtime, fp32)."""
    from workbench.analysis import Workbench
    from workbench.io.image_io import LoadedImage
    from workbench.ui.summary import summary_markdown

    monkeypatch.setenv("DRWB_PRECISION", "bf16")
    bench = Workbench(weights_dir=tiny_weights)
    image = synthetic_fundus.image
    analysis = bench.analyze(LoadedImage(image, image.shape[:2], "PNG", "RGB", "s.png"), force=True)
    ran_in_bf16 = {role for role, runtime in analysis.runtimes.items() if runtime.endswith(" bf16")}
    assert ran_in_bf16 == {"segmenter", "localizer", "disc"} and "grader" in analysis.runtimes
    line = summary_markdown(analysis).rsplit("Models: ", 1)[1]
    assert f"segmenter {analysis.models['segmenter']} (bf16)" in line
    assert f"grader {analysis.models['grader']}," in line  # no marker
