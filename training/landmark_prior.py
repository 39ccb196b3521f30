"""Fit the landmark prior (``models.localizer.LandmarkPrior``) from IDRiD's own annotations.

The fovea's position relative to the optic-disc centre, and the disc's size, are measured in radii of the
field of view, which makes them independent of the image's resolution: on the 330 training images of the
grading split the fovea lies 0.76 +- 0.05 R temporal and 0.08 +- 0.06 R below the disc centre, and 37
training segmentation masks give a disc diameter of 0.31 R (0.23-0.37), i.e. the fovea is 2.4 disc
diameters from the disc, as the anatomy books say. Only annotations are used, never a model's output, and
only training images: the grading split's held-out images are left out, and so is the disc mask of any
segmentation photograph that IDRiD also has among them (``seg_to_grading``).

``python -m training.landmark_prior --data ../shared/data/idrid-lite --write-card localizer_lite0`` adds
the prior to a shipped localizer's card; ``drwb train localizer`` fits it itself (``LocalizerTask``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from models.card import ModelCard
from models.fov import detect_fov
from models.localizer import LandmarkPrior, fovea_position
from workbench.io.idrid import IDRiD, load_mask, seg_to_grading
from workbench.io.image_io import load_image
from workbench.io.splits import split_names, split_train_val

__all__ = ["fit_landmark_prior", "fovea_offsets", "write_prior_to_card"]

_DECODE_SIDE = 256  # the field of view is found on a small decode; R scales with it


def fovea_offsets(
    od_xy: np.ndarray, fovea_xy: np.ndarray, centre_x: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """(N, 2) fovea positions relative to the disc in field radii: (temporal, downward)."""
    rows = zip(fovea_xy, od_xy, centre_x, radius, strict=True)
    return np.array([fovea_position(tuple(f), tuple(o), float(c), float(r)) for f, o, c, r in rows])


def _field(path: Path) -> tuple[float, float, int]:
    """(centre x, radius) of an image's field of view in its own pixel frame, and the frame's width."""
    image = load_image(path, min_side=_DECODE_SIDE)
    fov = detect_fov(image.rgb)
    scale = image.original_size[1] / image.rgb.shape[1]
    return (fov.cx + 0.5) * scale - 0.5, fov.radius * scale, image.original_size[1]


def _disc_diameters(dataset: IDRiD, names: Iterable[str], excluded_photographs: set[str]) -> np.ndarray:
    """Disc diameters in field radii from the OD masks of the segmentation images ``names``, leaving out
    those whose photograph is also a grading image in ``excluded_photographs`` (held-out images)."""
    keep, copies, out = set(names), seg_to_grading(dataset.root), []
    for record in dataset.segmentation("train"):
        path = record.mask_paths.get("OD")
        if record.name not in keep or path is None or copies.get(record.name) in excluded_photographs:
            continue
        mask = load_mask(path)
        _, radius, width = _field(record.image_path)
        scale = width / mask.shape[1]
        out.append(2 * np.sqrt(mask.sum() * scale**2 / np.pi) / radius)
    return np.asarray(out, float)


def fit_landmark_prior(
    data: Path, train_names: set[str] | None = None, val_fraction: float = 0.2, seed: int = 0
) -> LandmarkPrior:
    """The prior from the localization annotations of ``train_names`` (default: the grading split's
    training images) and the disc masks of the segmentation split's training images."""
    dataset = IDRiD(data)
    if train_names is None:
        train_names = set(split_train_val(dataset.grading("train"), val_fraction, seed).train)
    records = [r for r in dataset.localization("train") if r.name in train_names and r.od_xy and r.fovea_xy]
    if len(records) < 2:
        raise ValueError(f"{data}: fewer than two annotated localization images to fit a landmark prior")
    fields = np.array([_field(r.image_path)[:2] for r in records])
    od, fovea = np.array([r.od_xy for r in records]), np.array([r.fovea_xy for r in records])
    offsets = fovea_offsets(od, fovea, fields[:, 0], fields[:, 1])
    seg_names = [r.name for r in dataset.segmentation("train")]
    held_out = {r.name for r in dataset.grading("train")} - set(train_names)
    seg_train = split_names(seg_names, val_fraction, seed).train if seg_names else ()
    discs = _disc_diameters(dataset, seg_train, held_out)
    if len(discs) == 0:  # no disc masks: the textbook 1/2.5 of the disc-fovea distance
        discs = np.array([float(np.hypot(*offsets.mean(axis=0))) / 2.5])
    return LandmarkPrior(
        fovea_offset=tuple(float(v) for v in offsets.mean(axis=0)),
        fovea_spread=tuple(float(v) for v in np.maximum(offsets.std(axis=0), 1e-3)),
        disc_diameter=float(discs.mean()),
        disc_range=(float(discs.min()), float(discs.max())),
        source=f"annotated centres of {len(records)} training localization images and "
        f"{len(discs)} training disc masks (training.landmark_prior)",
    )


def write_prior_to_card(card_path: Path, prior: LandmarkPrior) -> None:
    """Add (or replace) ``extra.landmark_prior`` in a card file; the weights and their hash are untouched."""
    card = ModelCard.read(card_path)
    updated = card.with_updates(extra={**card.extra, "landmark_prior": prior.to_dict()})
    card_path.write_text(updated.to_json() + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--write-card", metavar="MODEL", help="a shipped localizer's card stem")
    parser.add_argument("--weights-dir", type=Path, default=Path("models/weights"))
    args = parser.parse_args(argv)
    prior = fit_landmark_prior(args.data)
    print(json.dumps(prior.to_dict(), indent=2))
    if args.write_card:
        write_prior_to_card(args.weights_dir / f"{args.write_card}.json", prior)


if __name__ == "__main__":
    main()
