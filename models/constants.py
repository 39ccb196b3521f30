"""The one place for label names, lesion classes and their colours.

Every layer imports this module, so it lives at the bottom (``models/``) and imports nothing from the
project. Grade and DME definitions follow the IDRiD challenge (Porwal et al., 2020): the DR grade uses the
International Clinical DR scale, and DME risk is 0 = no hard exudates, 1 = hard exudates outside one disc
diameter of the fovea, 2 = hard exudates within one disc diameter of the fovea.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DME_NAMES",
    "DR_GRADE_NAMES",
    "LESIONS",
    "LESION_CODES",
    "Lesion",
    "REFERABLE_MIN_GRADE",
    "lesion_by_code",
]

DR_GRADE_NAMES: tuple[str, ...] = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")
DME_NAMES: tuple[str, ...] = ("No DME risk", "DME risk 1 (exudates away from macula)", "DME risk 2 (macular)")

# Referable DR: moderate NPDR or worse, the usual screening-programme referral threshold.
REFERABLE_MIN_GRADE: int = 2


@dataclass(frozen=True)
class Lesion:
    """One IDRiD segmentation class.

    Attributes:
        code: the suffix IDRiD uses in mask file names (``IDRiD_01_MA.tif``).
        name: human-readable name.
        folder: the ground-truth folder name in the official IDRiD layout.
        colour: RGB overlay colour, fixed so that every view of the product uses the same one.
    """

    code: str
    name: str
    folder: str
    colour: tuple[int, int, int]


# Order is the channel order of the segmenter's output.
LESIONS: tuple[Lesion, ...] = (
    Lesion("MA", "Microaneurysms", "1. Microaneurysms", (255, 40, 40)),
    Lesion("HE", "Haemorrhages", "2. Haemorrhages", (170, 0, 255)),
    Lesion("EX", "Hard exudates", "3. Hard Exudates", (255, 220, 0)),
    Lesion("SE", "Soft exudates", "4. Soft Exudates", (0, 200, 255)),
    Lesion("OD", "Optic disc", "5. Optic Disc", (60, 255, 60)),
)
LESION_CODES: tuple[str, ...] = tuple(lesion.code for lesion in LESIONS)


def lesion_by_code(code: str) -> Lesion:
    """Return the lesion with IDRiD code ``code`` (``"MA"``, ``"HE"``, ...).

    Raises:
        KeyError: naming the valid codes, when ``code`` is not one of them.
    """
    for lesion in LESIONS:
        if lesion.code == code:
            return lesion
    raise KeyError(f"unknown lesion code {code!r}; valid codes: {', '.join(LESION_CODES)}")
