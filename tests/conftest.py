"""Shared fixtures: synthetic fundi and IDRiD-layout folders, and the real-data location.

No patient data ships with the tests; real IDRiD is read from ../shared when present, else skipped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import workbench  # noqa: F401  (offline environment before anything else)
from workbench.io.synthetic import SyntheticFundus, make_fundus, write_idrid_folder

# The test process holds every model any test loaded (well over a server's 2 GB); without this, the
# explanation budget (workbench.explain.explainers.budget) would shrink to its floor in every in-process test.
# The memory-ceiling tests run their Compare in a fresh process without it.
os.environ.setdefault("DRWB_PROCESS_MEMORY_MB", "16384")
# "auto" precision (workbench.precision) runs the lesion and landmark networks in bf16 on a CPU with bf16
# units, so outputs would differ between machines; the tests pin fp32 (the reference every card's figures
# are measured in) and the precision tests choose their own.
os.environ.setdefault("DRWB_PRECISION", "fp32")
# ONNX exports of the graders (workbench.runtime, the default "auto") go to a folder of this test session,
# not to the user's ~/.cache; the app servers the tests start inherit it and reuse the exports.
if "DRWB_CACHE" not in os.environ:
    os.environ["DRWB_CACHE"] = tempfile.mkdtemp(prefix="drwb-tests-")
    atexit.register(shutil.rmtree, os.environ["DRWB_CACHE"], ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_IDRID = Path(os.environ.get("DRWB_IDRID", REPO_ROOT.parent / "shared" / "data" / "idrid-lite"))


def _real_data_present() -> bool:
    return (SHARED_IDRID / "B. Disease Grading").is_dir()


requires_real_data = pytest.mark.skipif(
    not _real_data_present(), reason=f"real IDRiD not found at {SHARED_IDRID} (set DRWB_IDRID)"
)


@pytest.fixture(scope="session")
def real_idrid() -> Path:
    if not _real_data_present():
        pytest.skip(f"real IDRiD not found at {SHARED_IDRID}")
    return SHARED_IDRID


@pytest.fixture(scope="session")
def synthetic_fundus() -> SyntheticFundus:
    """A moderate NPDR, macular-risk synthetic fundus at IDRiD's reduced grading size."""
    return make_fundus(seed=11, size=(712, 1072), dr_grade=3, dme_grade=2)


@pytest.fixture(scope="session")
def synthetic_idrid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic IDRiD-layout training folder (4 segmentation, 10 grading images)."""
    return write_idrid_folder(tmp_path_factory.mktemp("idrid"), n_segmentation=4, n_grading=10)


def write_tiny_weights(folder: Path) -> Path:
    """Tiny random grader, segmenter, localizer and landmark refiners saved as shipped models."""
    import torch

    from models.classifier import grader_card
    from models.localizer import localizer_card
    from models.refiners import disc_card, fovea_card
    from models.registry import build_model, save_model
    from models.segmenter import segmenter_card

    cards = {
        "tiny_grader": grader_card("test_convnext", 64, name="test_tiny_cls"),
        "tiny_segmenter": segmenter_card(
            input_size=128, name="test_tiny_seg", tile=64, overlap=16
        ).with_updates(target_layer="encoder.model.blocks.2"),
        "tiny_localizer": localizer_card(input_size=64, name="test_tiny_loc"),
        "tiny_disc": disc_card(input_size=64, name="test_tiny_disc"),
        "tiny_fovea": fovea_card(input_size=64, name="test_tiny_fovea"),
    }
    for stem, card in cards.items():
        torch.manual_seed(0)
        model = build_model(card)
        if card.arch == "fovea":
            # a random heatmap peaks near its initial 0.1, the "found" threshold itself: pushed well below,
            # the tiny fovea refiner finds nothing and every analysis keeps the localizer's fovea
            model.segmentation_head[0].bias.data.fill_(-6.0)
        card = card.with_updates(weights=f"{stem}.safetensors", training={"validation": {"score": 0.0}})
        save_model(model, card, folder, half=False)
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def tiny_workbench(tiny_weights: Path):
    from workbench.analysis import Workbench

    return Workbench(weights_dir=tiny_weights)
