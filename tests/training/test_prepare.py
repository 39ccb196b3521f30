"""Prepared cache: crops and soft masks written once, centres carried in crop pixels, reruns skip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.constants import LESION_CODES
from training.prepare import load_index, prepare
from workbench.io.idrid import IDRiD


def test_grading_and_localization_cache(synthetic_idrid: Path, tmp_path: Path) -> None:
    folder = prepare(synthetic_idrid, tmp_path, "localization", size=128, workers=1)
    entries = load_index(folder)
    assert len(entries) == 10
    truth = {r.name: r for r in IDRiD(synthetic_idrid).localization()}
    for entry in entries:
        crop = cv2.imread(str(folder / entry.file))
        assert crop.shape == (128, 128, 3)
        assert 0 <= entry.od_xy[0] < 128 and 0 <= entry.fovea_xy[1] < 128
        matrix = np.asarray(entry.matrix)
        od = np.asarray(truth[entry.name].od_xy)
        assert np.allclose(matrix[:, :2] @ od + matrix[:, 2], entry.od_xy)
    grading = load_index(prepare(synthetic_idrid, tmp_path, "grading", size=128, workers=1))
    assert [e.dr_grade for e in grading[:5]] == [0, 1, 2, 3, 4]


def test_segmentation_cache_and_rerun(synthetic_idrid: Path, tmp_path: Path) -> None:
    folder = prepare(synthetic_idrid, tmp_path, "segmentation", size=256, workers=1)
    entries = {e.name: e for e in load_index(folder)}
    assert "SE" not in entries["IDRiD_02"].annotated
    with np.load(folder / "IDRiD_01.masks.npz", allow_pickle=False) as data:
        masks = data["masks"]
    assert masks.shape == (len(LESION_CODES), 256, 256) and masks.dtype == np.uint8
    assert masks[LESION_CODES.index("OD")].max() == 255 and masks[LESION_CODES.index("MA")].max() > 0
    stamp = (folder / "IDRiD_01.png").stat().st_mtime_ns
    prepare(synthetic_idrid, tmp_path, "segmentation", size=256, workers=1)
    assert (folder / "IDRiD_01.png").stat().st_mtime_ns == stamp
