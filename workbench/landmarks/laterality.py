"""Which eye a photograph shows, read from its landmarks, and checked against what the file says.

A fundus photograph is stored as the camera sees the retina, not mirrored: the optic disc lies on the
nasal side of the fovea, which is the image's right for a right eye and its left for a left eye. So:

1. with a trusted fovea, the eye is the side of the fovea the disc lies on (the fovea check,
   ``workbench.landmarks.placement.fovea_doubts``, already refuses a fovea on the disc's nasal side);
2. with a doubtful fovea, the disc's side of the field's centre decides, if the disc lies at least
   ``MIN_OFFSET`` of the field's radius off centre (a macula-centred photograph puts it about half a
   radius off); a disc-centred photograph, or a doubtful disc, leaves the eye undetermined.

What the file says: a DICOM photograph's ImageLaterality (or its series' Laterality) tag, else a file
name holding the word "left" or "right" as its own token (the EyePACS "10_left.jpeg" convention). When
the file and the landmarks disagree, the photograph is mislabelled or mirrored, or the disc was
misplaced; the faces say so (``Laterality.warning``) rather than choosing one silently.

Measured on the IDRiD validation images against the side implied by their annotated disc and fovea:
README "Models", localization.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from models.fov import FieldOfView

__all__ = ["Laterality", "eye_cell", "eye_from_landmarks", "laterality_from_name", "read_laterality"]

MIN_OFFSET = 0.2  # disc offset from the field's centre (fraction of its radius) that decides without a fovea
EYES = ("right", "left")
_NAME_TOKEN = re.compile(r"(?:^|[^a-z0-9])(left|right)(?:$|[^a-z0-9])")


def eye_cell(eye: str | None, file_says: str | None, agrees: bool | None) -> str:
    """A table cell: "right", "undetermined", "left (the file says left)", "right (the file says left:
    MISMATCH)"."""
    text = eye or "undetermined"
    if not file_says:
        return text
    return f"{text} (the file says {file_says}{': MISMATCH' if agrees is False else ''})"


@dataclass(frozen=True)
class Laterality:
    """The eye a photograph shows and how that was decided.

    Attributes:
        eye: "right", "left", or None when the landmarks cannot tell.
        basis: what decided it, in words ("the disc lies right of the fovea"...), or why nothing did.
        file_says: "right" / "left" from the file itself, or None when it says nothing.
        file_source: where ``file_says`` comes from ("DICOM ImageLaterality R", "file name"), or None.
    """

    eye: str | None
    basis: str
    file_says: str | None = None
    file_source: str | None = None

    @property
    def agrees(self) -> bool | None:
        """Whether the file and the landmarks name the same eye; None when either says nothing."""
        if self.eye is None or self.file_says is None:
            return None
        return self.eye == self.file_says

    @property
    def sentence(self) -> str:
        """What the faces print: the eye, why, and what the file says ("right eye (the disc lies right
        of the fovea; the file says so too: DICOM ImageLaterality R)")."""
        if self.eye is None:
            told = f"; the file says {self.file_says} ({self.file_source})" if self.file_says else ""
            return f"eye {self.basis}{told}"
        if self.agrees is False:
            return f"{self.eye} eye by the landmarks; {self.warning}"
        told = f"; the file says so too: {self.file_source}" if self.agrees else ""
        return f"{self.eye} eye ({self.basis}{told})"

    @property
    def cell(self) -> str:
        """The tables' short form (``eye_cell``)."""
        return eye_cell(self.eye, self.file_says, self.agrees)

    def as_dict(self) -> dict[str, object]:
        """The report's ``laterality`` entry."""
        return {
            "eye": self.eye,
            "basis": self.basis,
            "file_says": self.file_says,
            "file_source": self.file_source,
            "agrees_with_file": self.agrees,
        }

    @property
    def warning(self) -> str | None:
        """One sentence when the file and the landmarks disagree, else None."""
        if self.agrees is not False:
            return None
        return (
            f"the file says {self.file_says} eye ({self.file_source}) but {self.basis}, as in a {self.eye} "
            "eye: the file may be mislabelled or the image mirrored"
        )


def eye_from_landmarks(
    od_xy: tuple[float, float],
    fovea_xy: tuple[float, float],
    fov: FieldOfView,
    fovea_doubt: str | None = None,
    od_doubt: str | None = None,
) -> tuple[str | None, str]:
    """(eye, basis) from the disc and fovea in original pixels (module docstring, 1-2)."""
    if fovea_doubt is None and od_xy[0] != fovea_xy[0]:
        right = od_xy[0] > fovea_xy[0]
        return EYES[not right], f"the disc lies {'right' if right else 'left'} of the fovea"
    if od_doubt is not None:
        return None, "undetermined: the disc and the fovea are both doubtful"
    offset = (od_xy[0] - fov.cx) / max(fov.radius, 1e-6)
    if abs(offset) < MIN_OFFSET:
        return None, "undetermined: the fovea is doubtful and the disc lies near the field's centre"
    right = offset > 0
    return EYES[not right], f"the disc lies {'right' if right else 'left'} of the field's centre"


def laterality_from_name(name: str) -> str | None:
    """The eye a file name gives: "right" or "left" when the name (without folders or suffix) holds exactly
    one of those words as a token of its own ("10_left.jpeg", "patient 3 Right.png"), else None
    ("bright.png" holds neither)."""
    found = set(_NAME_TOKEN.findall(Path(name).stem.lower()))
    return found.pop() if len(found) == 1 else None


def read_laterality(
    od_xy: tuple[float, float],
    fovea_xy: tuple[float, float],
    fov: FieldOfView,
    fovea_doubt: str | None,
    od_doubt: str | None,
    name: str,
    dicom_laterality: str | None = None,
) -> Laterality:
    """The eye from the landmarks and what the file says of it.

    Args:
        dicom_laterality: the DICOM tag's value and its name, e.g. "ImageLaterality R"
            (``workbench.io.image_io.LoadedImage.laterality``), or None.
    """
    eye, basis = eye_from_landmarks(od_xy, fovea_xy, fov, fovea_doubt, od_doubt)
    if dicom_laterality is not None:
        code = dicom_laterality.split()[-1]
        return Laterality(eye, basis, {"R": "right", "L": "left"}[code], f"DICOM {dicom_laterality}")
    from_name = laterality_from_name(name)
    return Laterality(eye, basis, from_name, "file name" if from_name else None)
