"""IDRiD reader on a synthetic layout (always) and on real IDRiD (when ../shared is present)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.constants import LESION_CODES
from workbench.io.idrid import IDRiD, IDRiDLabelsError, IDRiDLayoutError, load_mask


def test_grading_reads_labels_and_skips_trailing_columns(synthetic_idrid: Path) -> None:
    records = IDRiD(synthetic_idrid).grading("train")
    assert len(records) == 10
    assert [r.dr_grade for r in records[:5]] == [0, 1, 2, 3, 4]
    assert all(0 <= r.dme_grade <= 2 for r in records)
    assert all(r.image_path.is_file() for r in records)


def test_segmentation_reports_missing_annotation_as_none(synthetic_idrid: Path) -> None:
    records = {r.name: r for r in IDRiD(synthetic_idrid).segmentation("train")}
    assert records["IDRiD_02"].mask_paths["SE"] is None
    assert "SE" not in records["IDRiD_02"].annotated
    assert records["IDRiD_01"].annotated == LESION_CODES


def test_annotated_empty_mask_differs_from_missing(synthetic_idrid: Path) -> None:
    record = IDRiD(synthetic_idrid).segmentation("train")[0]
    for code in LESION_CODES:
        mask = load_mask(record.mask_paths[code])
        assert mask.dtype == np.bool_
    assert load_mask(record.mask_paths["OD"]).any()


def test_rgba_mask_uses_colour_channels_only(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[2, 3, 0] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.tif")
    mask = load_mask(tmp_path / "m.tif")
    assert mask.sum() == 1 and mask[2, 3]


def test_localization_centres_match_synthetic_truth(synthetic_idrid: Path) -> None:
    records = IDRiD(synthetic_idrid).localization("train")
    assert len(records) == 10
    for record in records:
        with Image.open(record.image_path) as image:
            width, height = image.size
        assert 0 <= record.od_xy[0] < width and 0 <= record.od_xy[1] < height
        assert 0 <= record.fovea_xy[0] < width and 0 <= record.fovea_xy[1] < height


def test_missing_root_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(IDRiDLayoutError, match="does not exist"):
        IDRiD(tmp_path / "nowhere")
    with pytest.raises(IDRiDLayoutError, match="is it the IDRiD root"):
        IDRiD(tmp_path)


def test_partial_folder_names_the_missing_part(synthetic_idrid: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(synthetic_idrid / "B. Disease Grading", partial / "B. Disease Grading")
    dataset = IDRiD(partial)
    assert len(dataset.grading()) == 10
    with pytest.raises(
        IDRiDLayoutError, match=r"missing A\. Segmentation/1\. Original Images/a\. Training Set"
    ):
        dataset.segmentation()
    with pytest.raises(IDRiDLayoutError, match="Testing"):
        (partial / "B. Disease Grading/1. Original Images/b. Testing Set").mkdir()
        dataset.grading("test")


def test_label_row_without_image_is_named(synthetic_idrid: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_idrid / "B. Disease Grading", copy / "B. Disease Grading")
    (copy / "B. Disease Grading/1. Original Images/a. Training Set/IDRiD_003.jpg").unlink()
    with pytest.raises(IDRiDLayoutError, match="lists IDRiD_003"):
        IDRiD(copy).grading()


def test_bad_grades_are_listed_before_anything_uses_them(synthetic_idrid: Path, tmp_path: Path) -> None:
    """A grade out of range or not a number, and a CSV that is not UTF-8, name the file, line and image
    (a 9 used to be cached by `drwb prepare` and to crash `drwb evaluate`)."""
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_idrid / "B. Disease Grading", copy / "B. Disease Grading")
    (labels,) = (copy / "B. Disease Grading/2. Groundtruths").glob("*Training*.csv")
    lines = labels.read_text().splitlines()
    name, *_ = lines[3].split(",")
    lines[3] = f"{name},9,0"
    lines[5] = lines[5].split(",")[0] + ",x,2.5"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(IDRiDLabelsError, match="2 row\\(s\\) with bad labels") as raised:
        IDRiD(copy).grading()
    message = str(raised.value)
    assert f"line 4 ({name}): Retinopathy grade '9' is not 0-4" in message
    assert "Retinopathy grade 'x' is not 0-4, Risk of macular edema '2.5' is not 0-2" in message  # one row
    assert not isinstance(raised.value, IDRiDLayoutError)  # bad labels, not "not an IDRiD folder"
    labels.write_bytes(lines[0].encode() + b"\nIDRiD_001,1,0,caf\xe9\n")
    with pytest.raises(IDRiDLabelsError, match="not a readable UTF-8 CSV"):
        IDRiD(copy).grading()


def test_unknown_split() -> None:
    dataset = IDRiD.__new__(IDRiD)
    dataset.root = Path(".")
    with pytest.raises(ValueError, match="valid splits: train, test"):
        dataset.grading("validation")


@pytest.mark.realdata
def test_real_idrid_counts_and_labels(real_idrid: Path) -> None:
    dataset = IDRiD(real_idrid)
    grading = dataset.grading("train")
    assert len(grading) == 413
    assert Counter(r.dr_grade for r in grading) == {0: 134, 1: 20, 2: 136, 3: 74, 4: 49}
    assert Counter(r.dme_grade for r in grading) == {0: 177, 1: 41, 2: 195}
    segmentation = dataset.segmentation("train")
    assert len(segmentation) == 54
    counts = Counter(code for r in segmentation for code in r.annotated)
    assert counts == {"MA": 54, "HE": 53, "EX": 54, "SE": 26, "OD": 54}


@pytest.mark.realdata
def test_real_idrid_masks_nonempty_and_centres_inside(real_idrid: Path) -> None:
    dataset = IDRiD(real_idrid)
    for record in dataset.segmentation("train")[:3]:
        for code in record.annotated:
            assert load_mask(record.mask_paths[code]).any(), (record.name, code)
    for record in dataset.localization("train"):
        with Image.open(record.image_path) as image:
            width, height = image.size
        for x, y in (record.od_xy, record.fovea_xy):
            assert 0 <= x < width and 0 <= y < height, record.name
