"""Reader for the official IDRiD folder layout, used by training, evaluation and the apps alike.

    <root>/A. Segmentation/1. Original Images/{a. Training Set, b. Testing Set}/IDRiD_01.jpg
    <root>/A. Segmentation/2. All Segmentation Groundtruths/<split>/<n. Lesion folder>/IDRiD_01_MA.tif
    <root>/B. Disease Grading/1. Original Images/<split>/IDRiD_001.jpg
    <root>/B. Disease Grading/2. Groundtruths/{a,b}. IDRiD_Disease Grading_{Training,Testing} Labels.csv
    <root>/C. Localization/1. Original Images/<split>/IDRiD_001.jpg
    <root>/C. Localization/2. Groundtruths/{1. Optic Disc,2. Fovea} Center Location/*{Training,Testing}*.csv

Works at whatever resolution the images have: coordinates are returned in the pixel frame of the image
file next to them, never in an assumed 4288x2848 frame. A missing lesion mask file means "not
annotated" (``None``), which callers must keep apart from "annotated, no lesion" (an all-zero mask).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.constants import LESIONS

__all__ = [
    "seg_to_grading",
    "GradingRecord",
    "IDRiD",
    "IDRiDLabelsError",
    "IDRiDLayoutError",
    "LocalizationRecord",
    "SPLIT_FOLDERS",
    "SegmentationRecord",
    "load_mask",
]

SPLIT_FOLDERS: dict[str, str] = {"train": "a. Training Set", "test": "b. Testing Set"}
_CSV_WORD: dict[str, str] = {"train": "Training", "test": "Testing"}
_SEG, _GRADE, _LOC = "A. Segmentation", "B. Disease Grading", "C. Localization"
_IMAGES, _GT = "1. Original Images", "2. Groundtruths"
_SEG_GT = "2. All Segmentation Groundtruths"
_CENTRE_FOLDERS = {"od": "1. Optic Disc Center Location", "fovea": "2. Fovea Center Location"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

EXPECTED_LAYOUT = __doc__.split("\n\n")[1]


class IDRiDLayoutError(FileNotFoundError):
    """The folder does not have the IDRiD layout; the message names what is missing and what is expected."""


class IDRiDLabelsError(ValueError):
    """The folder has the IDRiD layout but a labels CSV is unusable (not UTF-8 text, a grade outside its
    range or not a number); the message names the file, the lines and the images. Not a layout error: a
    caller that falls back to "not an IDRiD folder" on ``IDRiDLayoutError`` must not swallow this one."""


@dataclass(frozen=True)
class GradingRecord:
    """One ``B. Disease Grading`` image with its DR grade (0-4) and DME risk (0-2)."""

    name: str
    image_path: Path
    dr_grade: int
    dme_grade: int


@dataclass(frozen=True)
class SegmentationRecord:
    """One ``A. Segmentation`` image; ``mask_paths[code]`` is None when that lesion was not annotated."""

    name: str
    image_path: Path
    mask_paths: dict[str, Path | None]

    @property
    def annotated(self) -> tuple[str, ...]:
        return tuple(code for code, path in self.mask_paths.items() if path is not None)


@dataclass(frozen=True)
class LocalizationRecord:
    """One ``C. Localization`` image with optic-disc and fovea centres (x, y) in its own pixel frame."""

    name: str
    image_path: Path
    od_xy: tuple[float, float] | None
    fovea_xy: tuple[float, float] | None


def load_mask(path: Path) -> np.ndarray:
    """Read an IDRiD ground-truth mask as a boolean (H, W) array.

    The official files are 1-bit palette TIFFs (index 1 = lesion) with one RGBA exception
    (``IDRiD_81_EX.tif``). Any value above zero in any colour channel is lesion; an alpha channel is
    ignored because it is opaque everywhere and would otherwise mark the whole image.
    """
    with Image.open(path) as image:
        mode = image.mode
        array = np.asarray(image)
    if array.ndim == 3:
        colour_channels = 1 if mode == "LA" else 3
        return np.any(array[..., :colour_channels] > 0, axis=2)
    return array > 0


def _require_dir(path: Path, root: Path) -> Path:
    if not path.is_dir():
        raise IDRiDLayoutError(
            f"IDRiD folder {root} is missing {path.relative_to(root)!s}/. Expected layout:\n{EXPECTED_LAYOUT}"
        )
    return path


def _find_csv(folder: Path, split: str, root: Path) -> Path:
    word = _CSV_WORD[split]
    matches = sorted(p for p in _require_dir(folder, root).glob("*.csv") if word.lower() in p.name.lower())
    if not matches:
        raise IDRiDLayoutError(
            f"IDRiD folder {root}: no CSV with '{word}' in its name in {folder.relative_to(root)!s}/. "
            f"Expected layout:\n{EXPECTED_LAYOUT}"
        )
    return matches[0]


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of a CSV's rows after the header, trailing empty cells and blank lines dropped
    (the official files have both)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [[cell.strip() for cell in row] for row in csv.reader(handle)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise IDRiDLabelsError(f"{path}: not a readable UTF-8 CSV text file ({exc})") from exc
    cleaned = []
    for line, row in enumerate(rows, start=1):
        while row and not row[-1]:
            row.pop()
        if row:
            cleaned.append((line, row))
    return cleaned[1:]  # drop the header


def _label(value: str, top: int) -> int | None:
    """``value`` as a grade 0..``top`` ("2" or "2.0"), else None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number <= top else None


def _bad_labels(labels: Path, problems: list[str]) -> IDRiDLabelsError:
    """``problems``: one per bad row."""
    shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    return IDRiDLabelsError(f"{labels}: {len(problems)} row(s) with bad labels: {shown}")


def _images_by_name(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES}


class IDRiD:
    """An IDRiD-layout folder. Construction checks only the root; each part is checked when read.

    Args:
        root: the folder that holds ``A. Segmentation``, ``B. Disease Grading``, ``C. Localization``
            (any of them may be absent if you never read that part).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise IDRiDLayoutError(
                f"IDRiD folder {self.root} does not exist. Expected layout:\n{EXPECTED_LAYOUT}"
            )
        parts = [_SEG, _GRADE, _LOC]
        if not any((self.root / part).is_dir() for part in parts):
            raise IDRiDLayoutError(
                f"{self.root} holds none of {', '.join(repr(p) for p in parts)}; is it the IDRiD root? "
                f"Expected layout:\n{EXPECTED_LAYOUT}"
            )

    def _split_folder(self, *parts: str, split: str) -> Path:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_FOLDERS)}")
        return _require_dir(self.root.joinpath(*parts, SPLIT_FOLDERS[split]), self.root)

    def has_split(self, part: str, split: str) -> bool:
        """Whether ``part`` ("segmentation", "grading", "localization") has images for ``split``."""
        folder = {"segmentation": _SEG, "grading": _GRADE, "localization": _LOC}[part]
        return (self.root / folder / _IMAGES / SPLIT_FOLDERS[split]).is_dir()

    def grading(self, split: str = "train") -> list[GradingRecord]:
        """DR grade and DME risk per image, in file-name order."""
        images = _images_by_name(self._split_folder(_GRADE, _IMAGES, split=split))
        labels = _find_csv(self.root / _GRADE / _GT, split, self.root)
        records, problems = [], []
        for line, row in _read_rows(labels):
            if len(row) < 3:
                raise IDRiDLayoutError(
                    f"{labels}: line {line} {row} has fewer than 3 columns (name, DR grade, DME risk)"
                )
            name = row[0]
            if name not in images:
                raise IDRiDLayoutError(
                    f"{labels} lists {name}, but no image {name}.jpg is in {labels.parent.parent}"
                )
            dr, dme = _label(row[1], 4), _label(row[2], 2)
            bad = []
            if dr is None:
                bad.append(f"Retinopathy grade {row[1]!r} is not 0-4")
            if dme is None:
                bad.append(f"Risk of macular edema {row[2]!r} is not 0-2")
            if bad:
                problems.append(f"line {line} ({name}): {', '.join(bad)}")
            else:
                records.append(GradingRecord(name, images[name], dr, dme))
        if problems:  # every bad row at once, before anything trains or is scored on them
            raise _bad_labels(labels, problems)
        return records

    def segmentation(self, split: str = "train") -> list[SegmentationRecord]:
        """Images with the path of each lesion mask, or None where that lesion has no annotation file."""
        images = _images_by_name(self._split_folder(_SEG, _IMAGES, split=split))
        gt = self._split_folder(_SEG, _SEG_GT, split=split)
        folders = {lesion.code: gt / lesion.folder for lesion in LESIONS}
        records = []
        for name, path in images.items():
            masks: dict[str, Path | None] = {}
            for code, folder in folders.items():
                candidate = folder / f"{name}_{code}.tif"
                masks[code] = candidate if candidate.is_file() else None
            records.append(SegmentationRecord(name, path, masks))
        return records

    def localization(self, split: str = "train") -> list[LocalizationRecord]:
        """Optic-disc and fovea centres in the pixel frame of the image files in this folder."""
        images = _images_by_name(self._split_folder(_LOC, _IMAGES, split=split))
        centres: dict[str, dict[str, tuple[float, float]]] = {}
        for key, folder in _CENTRE_FOLDERS.items():
            table = _find_csv(self.root / _LOC / _GT / folder, split, self.root)
            problems = []
            for line, row in _read_rows(table):
                if len(row) >= 3:
                    try:
                        centres.setdefault(row[0], {})[key] = (float(row[1]), float(row[2]))
                    except ValueError:
                        problems.append(f"line {line} ({row[0]}): centre {row[1]!r}, {row[2]!r} is not x, y")
            if problems:
                raise _bad_labels(table, problems)
        return [
            LocalizationRecord(
                name, path, centres.get(name, {}).get("od"), centres.get(name, {}).get("fovea")
            )
            for name, path in images.items()
        ]


def seg_to_grading(data: Path) -> dict[str, str]:
    """{segmentation image name: grading image name} for the photographs IDRiD has in both parts (the
    ``extras`` table of ../shared; empty where a copy of the data has no such table)."""
    table = Path(data) / "extras" / "segmentation_train_in_grading_train.csv"
    if not table.is_file():
        return {}
    with table.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return {row[0]: row[1] for row in rows[1:] if len(row) >= 2}
