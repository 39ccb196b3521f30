"""Which eye a photograph shows, read from its landmarks, and checked against what the file says.

A fundus photograph is stored as the camera sees the retina, not mirrored: the optic disc lies on the
nasal side of the fovea, which is the image's right for a right eye and its left for a left eye (images
stored as seen through an indirect ophthalmoscope's lens are inverted, and read as the other eye). So:

1. a doubtful disc decides nothing (the fovea is checked against it);
2. with a trusted fovea, the eye is the side of the fovea the disc lies on. The fovea check
   (``workbench.landmarks.placement.fovea_doubts``) only trusts a fovea on the side of the disc that faces
   the field's centre, so this is also the disc's side of the centre: the fovea confirms the disc;
3. with a doubtful fovea, the disc's side of the field's centre decides, if the disc lies at least
   ``MIN_OFFSET`` of the field's radius off centre (a macula-centred photograph puts it about half a
   radius off), unless the fovea was doubted for lying on the disc's nasal side (the two landmarks then
   point to different eyes); a disc-centred photograph leaves the eye undetermined.

What the file says: a DICOM photograph's ImageLaterality (else its series' Laterality) tag, else a file
name holding the word "left" or "right" as a word of its own (the EyePACS "10_left.jpeg" convention;
"RightEye.jpg" or "OD"/"OS" are not read: "OD" also names optic-disc files). When the file and the
landmarks disagree, the file is mislabelled, the image mirrored or inverted, or the disc misplaced; the
faces say so (``Laterality.sentence``) rather than choosing one silently.

Measured on the IDRiD validation photographs against the side their annotated disc and fovea imply:
README "Faces", "Which eye".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from models.fov import FieldOfView
from workbench.landmarks.placement import NASAL_SIDE

__all__ = ["Laterality", "eye_from_landmarks", "laterality_from_name", "read_laterality"]

MIN_OFFSET = 0.2  # disc offset from the field's centre (fraction of its radius) that decides without a fovea
EYES = ("right", "left")
NO_LABEL = "the file names no eye: no DICOM laterality tag, no left / right in its name"
_NAME_WORD = re.compile(r"(?<![a-z0-9])(left|right)(?![a-z0-9])")


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
        """What every face prints after "Eye:": for example "right (the disc lies right of the fovea; the
        file says right too: DICOM ImageLaterality R)", or one starting "MISMATCH: the landmarks show a
        right eye" when the file names the other eye."""
        told = f"{self.file_says} ({self.file_source})" if self.file_says else ""
        if self.agrees is False:
            return (
                f"MISMATCH: the landmarks show a {self.eye} eye ({self.basis}) but the file says {told}: the "
                "file may be mislabelled, the image mirrored or inverted, or the disc misplaced"
            )
        if self.agrees:
            return f"{self.eye} ({self.basis}; the file says {self.file_says} too: {self.file_source})"
        told = f"the file says {told}" if told else NO_LABEL
        return f"{self.eye or 'undetermined'} ({self.basis}; {told})"

    @property
    def cell(self) -> str:
        """The tables' short form: "right", "undetermined", "left (the file says left)", or "MISMATCH:
        right, the file says left" (the word a reader scans for first)."""
        text = self.eye or "undetermined"
        if self.agrees is False:
            return f"MISMATCH: {text}, the file says {self.file_says}"
        return f"{text} (the file says {self.file_says})" if self.file_says else text

    def as_dict(self) -> dict[str, object]:
        """The report's ``laterality`` entry (``from_dict`` reads it back)."""
        return {
            "eye": self.eye,
            "basis": self.basis,
            "file_says": self.file_says,
            "file_source": self.file_source,
            "agrees_with_file": self.agrees,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Laterality:
        return cls(data["eye"], data["basis"], data.get("file_says"), data.get("file_source"))


def eye_from_landmarks(
    od_xy: tuple[float, float],
    fovea_xy: tuple[float, float],
    fov: FieldOfView,
    fovea_doubt: str | None = None,
    od_doubt: str | None = None,
) -> tuple[str | None, str]:
    """(eye, basis) from the disc and fovea in original pixels (module docstring, 1-3); the basis says
    what decided, or why nothing did."""
    if od_doubt is not None:
        return None, "the disc is doubtful"
    if fovea_doubt is None and od_xy[0] != fovea_xy[0]:
        right = od_xy[0] > fovea_xy[0]
        return EYES[not right], f"the disc lies {'right' if right else 'left'} of the fovea"
    if fovea_doubt is not None and NASAL_SIDE in fovea_doubt:
        return None, "the disc and the fovea point to different eyes"
    offset = (od_xy[0] - fov.cx) / max(fov.radius, 1e-6)
    if abs(offset) < MIN_OFFSET:
        return None, "the fovea is doubtful and the disc lies near the field's centre"
    right = offset > 0
    return EYES[not right], f"the disc lies {'right' if right else 'left'} of the field's centre"


def laterality_from_name(name: str) -> str | None:
    """The eye a file name gives: "right" or "left" when the name (without folders or suffix) holds exactly
    one of those words as a token of its own ("10_left.jpeg", "patient 3 Right.png"), else None
    ("bright.png" holds neither)."""
    found = set(_NAME_WORD.findall(Path(name).stem.lower()))
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
    named = {"R": "right", "L": "left"}.get((dicom_laterality or "").rpartition(" ")[2])
    if named is not None:
        return Laterality(eye, basis, named, f"DICOM {dicom_laterality}")
    from_name = laterality_from_name(name)
    return Laterality(eye, basis, from_name, "file name" if from_name else None)
