"""ONNX Runtime as an alternative to PyTorch for the forward-only paths: same outputs, exported once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.classifier import grader_card
from models.registry import build_model, load_model
from workbench.io.image_io import load_image
from workbench.io.synthetic import make_fundus
from workbench.predictors import (
    GRADING_CROP,
    GraderPredictor,
    LocalizerPredictor,
    SegmenterPredictor,
    crop_for,
)
from workbench.runtime import OnnxForward, configured_runtime, export_key, forward_for


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DRWB_CACHE", str(tmp_path))
    return tmp_path / "onnx"


def test_the_runtime_is_chosen_by_name_and_a_wrong_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRWB_RUNTIME", raising=False)
    assert configured_runtime() == "auto"
    monkeypatch.setenv("DRWB_RUNTIME", "ONNX")
    assert configured_runtime() == "onnx" and configured_runtime("torch") == "torch"
    with pytest.raises(ValueError, match="valid runtimes: auto, torch, onnx"):
        configured_runtime("tensorrt")


def test_auto_runs_graders_from_files_in_onnx_runtime_and_the_rest_in_pytorch(
    tiny_weights: Path, cache: Path
) -> None:
    loaded = {
        stem: load_model(stem, tiny_weights) for stem in ("tiny_grader", "tiny_segmenter", "tiny_localizer")
    }
    chosen = {stem: forward_for(model, card, "auto") for stem, (model, card) in loaded.items()}
    assert isinstance(chosen["tiny_grader"], OnnxForward)
    assert chosen["tiny_segmenter"] is loaded["tiny_segmenter"][0]
    assert chosen["tiny_localizer"] is loaded["tiny_localizer"][0]
    model, card = loaded["tiny_grader"]
    assert forward_for(model, card.with_updates(sha256=""), "auto") is model  # built in memory: no export
    assert forward_for(model, card, "torch") is model


def test_auto_falls_back_to_pytorch_when_the_export_fails_and_onnx_says_why(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    monkeypatch.setenv("DRWB_CACHE", str(blocked))  # the export cannot be written under it
    model, card = load_model("tiny_grader", tiny_weights)
    with caplog.at_level("WARNING", logger="workbench.runtime"):
        assert forward_for(model, card, "auto") is model
    assert "runs in PyTorch" in caplog.text and card.name in caplog.text
    with pytest.raises(OSError):
        forward_for(model, card, "onnx")


@pytest.mark.parametrize(
    "stem", ["tiny_grader", "tiny_segmenter", "tiny_localizer", "tiny_disc", "tiny_fovea"]
)
def test_onnx_forward_matches_pytorch_at_any_size_and_batch(
    tiny_weights: Path, cache: Path, stem: str
) -> None:
    model, card = load_model(stem, tiny_weights)
    onnx = forward_for(model, card, "onnx")
    assert isinstance(onnx, OnnxForward) and forward_for(model, card, "torch") is model
    for side, batch in ((card.input_size, 1), (card.input_size + 32, 2)):
        if card.arch == "grader" and side != card.input_size:
            continue  # graders always see their own input size
        x = torch.rand(batch, 3, side, side)
        with torch.inference_mode():
            expected = model(x).float().numpy()
        assert np.abs(onnx(x).numpy() - expected).max() < 1e-4


def test_a_model_is_exported_once_per_weights_file(tiny_weights: Path, cache: Path) -> None:
    model, card = load_model("tiny_localizer", tiny_weights)
    first = OnnxForward(model, card)
    stamp = first.path.stat().st_mtime_ns
    second = OnnxForward(model, card)
    assert second.path == first.path and first.path.stat().st_mtime_ns == stamp
    assert export_key(card) in first.path.name and list(cache.glob("*.part")) == []


def test_a_damaged_cached_export_is_exported_again(tiny_weights: Path, cache: Path) -> None:
    model, card = load_model("tiny_grader", tiny_weights)
    first = OnnxForward(model, card)
    for damage in (b"not an onnx graph", None):  # unreadable, then a valid graph of another model
        if damage is None:
            other, other_card = load_model("tiny_localizer", tiny_weights)
            damage = OnnxForward(other, other_card).path.read_bytes()
        first.path.write_bytes(damage)
        again = OnnxForward(model, card)
        assert again.path == first.path and first.path.read_bytes() != damage
        x = torch.rand(1, 3, card.input_size, card.input_size)
        with torch.inference_mode():
            assert np.abs(again(x).numpy() - model(x).float().numpy()).max() < 1e-4


def test_predictors_give_the_same_answers_in_either_runtime(
    tiny_weights: Path, cache: Path, tmp_path: Path
) -> None:
    from PIL import Image

    path = tmp_path / "eye.png"
    Image.fromarray(make_fundus(5, size=(356, 536)).image).save(path)
    image = load_image(path)
    crop, transform = crop_for(image, GRADING_CROP)
    results = {}
    for runtime in ("torch", "onnx"):
        grader = GraderPredictor(*load_model("tiny_grader", tiny_weights), runtime=runtime)
        segmenter = SegmenterPredictor(*load_model("tiny_segmenter", tiny_weights), runtime=runtime)
        localizer = LocalizerPredictor(*load_model("tiny_localizer", tiny_weights), runtime=runtime)
        results[runtime] = (
            grader.predict([crop]),
            segmenter.predict(image).probabilities,
            localizer.predict_crops([crop], [transform])[0],
        )
    (dr_t, dme_t), seg_t, marks_t = results["torch"]
    (dr_o, dme_o), seg_o, marks_o = results["onnx"]
    assert np.allclose(dr_t, dr_o, atol=1e-5) and np.allclose(dme_t, dme_o, atol=1e-5)
    assert np.abs(seg_t - seg_o).max() < 1e-4
    assert np.allclose(marks_t.od_xy, marks_o.od_xy, atol=0.05)
    assert np.allclose(marks_t.fovea_xy, marks_o.fovea_xy, atol=0.05)


def test_a_grader_graph_pads_by_constants_that_onnx_runtime_folds_into_its_convolutions(
    cache: Path, tmp_path: Path
) -> None:
    """A TF-ported backbone pads its stride-2 layers by an amount computed from the input at every call
    (timm ``Conv2dSame``); a grader only ever sees its input size, so its export pads by constants, which
    ONNX Runtime fuses into the convolutions (no Pad left). The module itself keeps its layers."""
    import onnx
    import onnxruntime as ort
    from timm.layers.conv2d_same import Conv2dSame

    card = grader_card("tf_efficientnet_lite0", 64, imagenet_init=False).with_updates(sha256="ab" * 32)
    model = build_model(card).eval()
    assert sum(isinstance(m, Conv2dSame) for m in model.modules()) == 5

    def pads_left(forward: OnnxForward) -> int:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
        ort.InferenceSession(str(forward.path), options, providers=["CPUExecutionProvider"])
        return sum(node.op_type == "Pad" for node in onnx.load(options.optimized_model_filepath).graph.node)

    grader = OnnxForward(model, card)
    assert pads_left(grader) == 0
    assert sum(isinstance(m, Conv2dSame) for m in model.modules()) == 5  # the module is left as it was
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert np.abs(grader(x).numpy() - model(x).numpy()).max() < 1e-5
    # the same network as another arch keeps its sizes dynamic, so its padding stays a Pad per layer
    assert pads_left(OnnxForward(model, card.with_updates(arch="localizer"))) == 5


def test_an_edited_card_or_an_unsaved_model_never_reuses_an_export(tiny_weights: Path, cache: Path) -> None:
    """The export key covers what the graph is built from (a grader's temperature is a constant in it);
    a model without a weights hash is exported to memory, never to the shared cache."""
    model, card = load_model("tiny_grader", tiny_weights)
    warmer = card.with_updates(extra={**card.extra, "temperature": {"dr": 2.0, "dme": 1.0}})
    assert export_key(warmer) != export_key(card)
    assert export_key(card.with_updates(training={"anything": 1})) == export_key(card)
    unsaved = OnnxForward(model, card.with_updates(sha256=""))
    assert unsaved.path is None and not cache.exists()
    x = torch.rand(1, 3, card.input_size, card.input_size)
    with torch.inference_mode():
        assert np.abs(unsaved(x).numpy() - model(x).float().numpy()).max() < 1e-4


def test_graders_in_onnx_runtime_grade_a_folder_on_every_core_with_the_same_answers(
    tiny_weights: Path,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``grade_images`` runs one photograph per core at once when the grader runs in ONNX Runtime
    (``OnnxForward.concurrent``: a second, one-thread session, built on first use and freed at the end):
    same probabilities, same order, an unreadable file still its own error row in its place, progress
    from the calling thread; a graph file gone since load means one photograph at a time, said."""
    import threading
    import time

    from PIL import Image

    from workbench.reports.audit import LabelledImage, grade_images

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two lanes even on a one-core runner
    images = []
    for i in range(6):
        path = tmp_path / f"eye{i}.png"
        Image.fromarray(make_fundus(i, size=(356, 536), dr_grade=i % 5).image).save(path)
        images.append(LabelledImage(path.stem, path, i % 5, None, i + 2))
    (tmp_path / "eye2.png").write_bytes(b"not a picture")
    model, card = load_model("tiny_grader", tiny_weights)
    onnx = GraderPredictor(model, card, runtime="onnx")
    assert onnx.lanes == 2 and GraderPredictor(model, card, runtime="torch").lanes == 1
    assert GraderPredictor(model, card.with_updates(sha256=""), runtime="onnx").lanes == 1  # no graph file
    one_by_one = grade_images(onnx, images, lanes=1)
    assert onnx.forward._lane_session is None  # one photograph at a time never builds it

    class Watched:  # the lane session, counting the runs in flight
        def __init__(self, session) -> None:
            self.session, self.now, self.most, self.lock = session, 0, 0, threading.Lock()

        def run(self, *args):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(0.05)
            try:
                return self.session.run(*args)
            finally:
                with self.lock:
                    self.now -= 1

    build = onnx.forward._lane_session_or_main
    built: list[Watched] = []
    monkeypatch.setattr(
        onnx.forward, "_lane_session_or_main", lambda: built.append(Watched(build())) or built[-1]
    )
    threads = []
    at_once = grade_images(
        onnx, images, batch=4, progress=lambda *_: threads.append(threading.current_thread())
    )
    assert len(built) == 1 and built[0].most == 2 and onnx.forward._lane_session is None  # overlapped, freed
    assert threads == [threading.current_thread()] * 2
    assert [g.name for g in at_once] == [g.name for g in one_by_one] == [f"eye{i}" for i in range(6)]
    assert at_once[2].p_dr is None and "eye2" in at_once[2].error
    for a, b in zip(at_once, one_by_one, strict=True):
        if b.p_dr is not None:
            assert np.allclose(a.p_dr, b.p_dr, atol=1e-5) and np.allclose(a.p_dme, b.p_dme, atol=1e-5)

    monkeypatch.setattr(onnx.forward, "_lane_session_or_main", build)
    onnx.forward.path.unlink()  # the cache emptied while the app serves: no export mid-audit
    with caplog.at_level("WARNING", logger="workbench.runtime"):
        again = grade_images(onnx, images)
    assert "one photograph at a time" in caplog.text and not onnx.forward.path.exists()
    assert all(
        np.allclose(a.p_dr, b.p_dr, atol=1e-5)
        for a, b in zip(again, one_by_one, strict=True)
        if b.p_dr is not None
    )
