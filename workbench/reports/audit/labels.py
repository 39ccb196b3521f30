"""Labels CSV for an audit: which image has which ground truth, checked before any image is read.

Four formats are recognised by their header:

    ours      image, dr_grade[, dme_grade]
    IDRiD     Image name, Retinopathy grade[, Risk of macular edema]  (the grading CSV as distributed)
    APTOS     id_code, diagnosis
    EyePACS   image, level

``image`` names a file in the folder, with or without its suffix. Problems that make the labels
unusable (missing columns, a grade out of range or not a number, duplicate rows, no row naming a file in
the folder) raise ``LabelsError`` listing the offending rows (a few, then a count). Images in the folder
without a row, and rows naming files that are not in it (a master labels file audited against a sample of
its photographs), are not errors: they are returned as ``unlabelled`` and ``without_image`` so the report
can say so.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from workbench.io.image_io import is_image_file

__all__ = ["FORMATS", "LabelledImage", "Labels", "LabelsError", "read_labels"]

# format name -> (image column, DR column, DME column or None)
FORMATS: dict[str, tuple[str, str, str | None]] = {
    "drwb": ("image", "dr_grade", "dme_grade"),
    "idrid": ("image name", "retinopathy grade", "risk of macular edema"),
    "aptos": ("id_code", "diagnosis", None),
    "eyepacs": ("image", "level", None),
}
_SHOWN = 5
_HEADER_SHOWN = 3  # columns an unknown header's one-line message names (each cut to 16 characters)


class LabelsError(ValueError):
    """The labels CSV cannot be used; the message names the offending rows. ``brief``: the same in one
    line short enough for a narrow upload box (the Audit tab's validator shows it)."""

    def __init__(self, message: str, brief: str | None = None) -> None:
        super().__init__(message)
        self.brief = brief or message


@dataclass(frozen=True)
class LabelledImage:
    name: str
    path: Path
    dr_grade: int
    dme_grade: int | None
    row: int  # 1-based line number in the CSV (header = line 1)


@dataclass(frozen=True)
class Labels:
    images: tuple[LabelledImage, ...]
    format: str
    unlabelled: tuple[str, ...]  # image files in the folder without a row
    # rows naming no file in the folder ("line 12: IDRiD_012"): a master labels file audited against a
    # sample of its photographs; ignored and reported, an error only when no row names a photograph
    without_image: tuple[str, ...] = ()


def _listing(problems: list[str]) -> str:
    shown = "; ".join(problems[:_SHOWN])
    more = len(problems) - _SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _detect(header: list[str], path: Path) -> str:
    columns = {c.strip().lower() for c in header}
    if {"image", "dr_grade"} <= columns:
        return "drwb"
    if {"image name", "retinopathy grade"} <= columns:
        return "idrid"
    if {"id_code", "diagnosis"} <= columns:
        return "aptos"
    if {"image", "level"} <= columns:
        return "eyepacs"
    names = [c if len(c) <= 16 else c[:15] + "…" for c in header[:_HEADER_SHOWN]]
    shown = ",".join(names) + (f",... ({len(header)} columns)" if len(header) > _HEADER_SHOWN else "")
    raise LabelsError(
        f"{path.name}: no recognised label columns in header {header}. Expected one of: "
        "image,dr_grade[,dme_grade] (ours); Image name,Retinopathy grade[,Risk of macular edema] (IDRiD); "
        "id_code,diagnosis (APTOS); image,level (EyePACS)",
        brief=f"{path.name}: columns {shown} are not a label format (ours, IDRiD, APTOS or EyePACS).",
    )


def _grade(text: str, low: int, high: int) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and low <= value <= high else None


def _index_folder(folder: Path) -> dict[str, Path]:
    """name and stem -> file, for every image file in ``folder`` (not recursive)."""
    index: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if is_image_file(file):
            index.setdefault(file.name, file)
            index.setdefault(file.stem, file)
    return index


def _not_utf8(csv_path: Path, exc: Exception) -> LabelsError:
    return LabelsError(
        f"{csv_path.name} is not a UTF-8 CSV text file ({exc}); save it as CSV UTF-8 and try again",
        brief=f"{csv_path.name} is not UTF-8 text: save it as CSV UTF-8",  # the upload box's one line
    )


def labels_format(csv_path: Path) -> str:
    """The format of the labels CSV from its header alone ("drwb", "idrid", "aptos", "eyepacs"): a quick check
    before any image is unpacked. Raises ``LabelsError`` (empty file, unknown header) or OSError."""
    try:
        with Path(csv_path).open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _not_utf8(Path(csv_path), exc) from exc
    if not header:
        raise LabelsError(f"{Path(csv_path).name} is empty")
    return _detect([c.strip() for c in header], Path(csv_path))


def read_labels(csv_path: Path, folder: Path, where: str | None = None) -> Labels:
    """Read and check ``csv_path`` against the images in ``folder`` (``where``: how messages name it, for
    a folder the user never saw, such as an upload unpacked on the server).

    Raises:
        LabelsError: unusable labels (see module docstring); FileNotFoundError for a missing CSV/folder.
    """
    csv_path, folder = Path(csv_path), Path(folder)
    if csv_path.is_dir():
        raise LabelsError(f"labels file {csv_path} is a folder; give the CSV file inside it")
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels file {csv_path} does not exist")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _not_utf8(csv_path, exc) from exc
    if not rows:
        raise LabelsError(f"{csv_path.name} is empty")
    header = [c.strip() for c in rows[0]]
    kind = _detect(header, csv_path)
    lower = [c.lower() for c in header]
    image_col, dr_col, dme_col = FORMATS[kind]
    i_image, i_dr = lower.index(image_col), lower.index(dr_col)
    i_dme = lower.index(dme_col) if dme_col and dme_col in lower else None
    files = _index_folder(folder)
    bad, missing, seen, images = [], [], {}, []
    duplicates = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        cells = row + [""] * (len(header) - len(row))
        name = cells[i_image].strip()
        dr = _grade(cells[i_dr].strip(), 0, 4)
        dme_text = cells[i_dme].strip() if i_dme is not None else ""
        dme = _grade(dme_text, 0, 2) if dme_text else None
        if not name:
            bad.append(f"line {line}: no image name")
            continue
        if dr is None:
            bad.append(f"line {line} ({name}): DR grade {cells[i_dr].strip()!r} is not 0-4")
            continue
        if dme_text and dme is None:
            bad.append(f"line {line} ({name}): DME grade {dme_text!r} is not 0-2")
            continue
        path = files.get(name) or files.get(Path(name).stem)
        if path is None:
            missing.append(f"line {line}: {name}")
            continue
        if path in seen:
            duplicates.append(f"line {line}: {name} (also line {seen[path]})")
            continue
        seen[path] = line
        images.append(LabelledImage(Path(path).stem, path, dr, dme, line))
    problems = []
    if bad:
        problems.append(f"{len(bad)} row(s) with invalid grades: {_listing(bad)}")
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate row(s): {_listing(duplicates)}")
    if missing and not images and not problems:
        problems.append(
            f"{len(missing)} row(s) name files not in {where or folder}, and no row names a photograph "
            f"there: {_listing(missing)}"
        )
    if problems:
        raise LabelsError(f"{csv_path.name}: " + " | ".join(problems))
    if not images:
        raise LabelsError(f"{csv_path.name}: no labelled rows")
    labelled = {im.path for im in images}
    unlabelled = tuple(sorted({p.name for p in files.values() if p not in labelled}))
    return Labels(tuple(images), kind, unlabelled, tuple(missing))
