"""Run each shipped model on a loaded image and return results in the original image's pixel frame.

One class per model family, each owning its crop size (from the card) and its post-processing:

- ``GraderPredictor``: DR (5) and DME (3) probabilities; batches many images for throughput.
- ``SegmenterPredictor``: five lesion probability maps on the card's crop (tiled), plus the transform;
  ``load_segmenter`` also loads the models a card takes some channels from (``extra.channels_from``).
- ``LocalizerPredictor``: optic-disc and fovea centres with confidences, mapped to original pixels.

All inference runs under ``torch.inference_mode`` on fp32 weights loaded in channels_last (``load_model``).
The forward pass is ``workbench.runtime.forward_for``'s: the graders in ONNX Runtime (fp32), the lesion
and landmark networks in PyTorch, under bf16 autocast where the CPU has bf16 units and bf16 agrees with
fp32 (``workbench.precision``: 1.4-1.9x faster on this project's AMX CPU, validated AUPR within 0.01;
10-100x *slower* on a CPU without them, where it stays fp32).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from models.card import ModelCard
from models.ensemble import GraderEnsemble
from models.localizer import LandmarkPrior, decode_landmarks
from models.preprocess import CropTransform, crop_to_fov, normalise, resize_crop
from models.registry import load_model
from workbench.inference import model_lock, predict_tiles
from workbench.io.image_io import LoadedImage
from workbench.runtime import OnnxForward, forward_for, parallel_lanes, runtime_name

__all__ = [
    "GraderPredictor",
    "LesionMaps",
    "Landmarks",
    "LocalizerPredictor",
    "SegmenterPredictor",
    "crop_for",
    "load_segmenter",
]

# Grader and localizer read the same 512-px field-of-view crop the training cache holds, then resize.
GRADING_CROP = 512


def crop_for(image: LoadedImage, size: int) -> tuple[np.ndarray, CropTransform]:
    crop, transform, _ = crop_to_fov(image.rgb, size, image.original_size)
    return crop, transform


def _batch(crops: list[np.ndarray], card: ModelCard) -> torch.Tensor:
    return torch.from_numpy(
        np.stack([normalise(resize_crop(c, card.input_size), card.mean, card.std) for c in crops])
    )


@contextmanager
def _locked(model: nn.Module) -> Iterator[None]:
    """Hold ``model``'s lock and, for an ensemble, each member's (explainers hook one member: a forward
    pass through the ensemble must not run that member meanwhile). Ensemble first, then members in order,
    the one order every caller takes, so two callers never wait on each other."""
    with ExitStack() as stack:
        for module in [model, *(model.members if isinstance(model, GraderEnsemble) else [])]:
            stack.enter_context(model_lock(module))
        yield


class GraderPredictor:
    """DR / DME probabilities from 512-px field-of-view crops."""

    def __init__(self, model: nn.Module, card: ModelCard, runtime: str | None = None) -> None:
        self.model, self.card = model.eval(), card
        self.forward = forward_for(self.model, card, runtime)  # explainers use self.model (PyTorch)
        self.runtime = runtime_name(self.forward)
        self.lanes = parallel_lanes(self.forward)  # photographs ``predict(..., concurrent=True)`` can take
        # an ensemble's explained member per photograph (crop digest -> member index), the latest 32
        self._chosen: OrderedDict[str, int] = OrderedDict()
        self._chosen_lock = threading.Lock()

    def input_tensor(self, crop512: np.ndarray, card: ModelCard | None = None) -> torch.Tensor:
        """(1, 3, S, S) normalised model input for one 512-px crop (used by explainers too); ``card``:
        the input of the network ``explained`` returned (an ensemble's member may take a smaller one)."""
        return _batch([crop512], card or self.card)

    @torch.inference_mode()
    def explained(self, crop512: np.ndarray) -> tuple[nn.Module, ModelCard, str]:
        """The network an explanation of this grader looks into, its card, and a note for the maps.

        A single grader explains itself (no note). An ensemble (``models.ensemble``) is explained through
        the member whose DR probabilities on this image are nearest (L1) to the ensemble's: explaining
        every member would multiply the slowest methods' time by the members and views, and an average of
        maps from different networks is nobody's reasoning. The note names the member, so no reader takes
        the map for the ensemble's own.
        """
        if not isinstance(self.model, GraderEnsemble):
            return self.model, self.card, ""
        key = hashlib.sha1(np.ascontiguousarray(crop512).tobytes()).hexdigest()
        with self._chosen_lock:
            k = self._chosen.get(key)
        if k is None:  # the choice costs every member and view: made once per photograph (a Compare asks
            # once per method, and scoring asks again)
            tensor = self.input_tensor(crop512)
            with _locked(self.model):
                logits = self.model.member_logits(tensor).float()
            members, ensemble = (
                logits[:, 0, : self.card.num_classes],
                self.model.combine(logits)[0, : self.card.num_classes],
            )
            distance = (torch.softmax(members, 1) - torch.softmax(ensemble, 0)).abs().sum(1)
            k = int(distance.argmin())
            with self._chosen_lock:
                self._chosen[key] = k
                while len(self._chosen) > 32:
                    self._chosen.popitem(last=False)
        name = self.model.member_names[k] if self.model.member_names else f"member {k}"
        note = f"via {name}, the member nearest the ensemble"
        return self.model.members[k], self.model.member_cards[k], note

    def grading_lanes(self) -> AbstractContextManager:
        """Where ``predict(..., concurrent=True)`` may run (``OnnxForward.lanes``; nothing to hold for a
        grader in PyTorch)."""
        return self.forward.lanes() if isinstance(self.forward, OnnxForward) else nullcontext()

    @torch.inference_mode()
    def predict(self, crops512: list[np.ndarray], concurrent: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(N, 5) DR and (N, 3) DME probabilities.

        One image per forward: on this project's CPUs a batch of 16 at 448 px costs 2.3x more per image
        than single images (measured: 176 vs 75 ms), the activations no longer fitting in cache.
        ``concurrent``: the caller is one of ``self.lanes`` threads grading at once (``grade_images``);
        the same probabilities, from a forward that leaves the other cores to the other threads.
        """
        forward = self.forward
        if concurrent and isinstance(forward, OnnxForward):
            forward = forward.concurrent
        # explainers hook the PyTorch module (workbench.inference.model_lock); a forward in ONNX Runtime
        # never touches it, so it need not wait for an explanation to finish
        with _locked(self.model) if self.forward is self.model else nullcontext():
            logits = torch.cat([forward(_batch([crop], self.card)) for crop in crops512]).float()
        num_dr = self.card.num_classes
        return torch.softmax(logits[:, :num_dr], 1).numpy(), torch.softmax(logits[:, num_dr:], 1).numpy()


@dataclass(frozen=True)
class LesionMaps:
    """(5, S, S) float32 probabilities on the segmenter's crop, and that crop's transform."""

    probabilities: np.ndarray
    transform: CropTransform


def _with_mirror(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward``'s logits averaged over the input and its horizontal mirror (mirrored back); per-pixel
    outputs (B, C, H, W) only."""

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return (forward(x) + forward(x.flip(-1)).flip(-1)) / 2

    return mirrored


class SegmenterPredictor:
    """Lesion probabilities on the field-of-view crop, by tiles.

    ``input_size`` overrides the card's crop side (the fast profile segments a smaller crop in one
    tile); None keeps the card's, the resolution its validation figures were measured at. At the card's
    own crop, a card with ``extra.tta`` = "hflip" averages each tile's logits with those of its mirror
    image (twice the time; measured gains in the card's ``training.mirror_tiles``).
    """

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        input_size: int | None = None,
        donors: Sequence[tuple[SegmenterPredictor, Sequence[str], Sequence[str]]] = (),
        runtime: str | None = None,
        precision: str | None = None,
    ) -> None:
        self.model, self.card = model.eval(), card
        self.forward = forward_for(self.model, card, runtime, precision)
        self.runtime = runtime_name(self.forward)
        if input_size is None and card.extra.get("tta") == "hflip":
            self.forward = _with_mirror(self.forward)
        self.input_size = int(input_size or card.input_size)
        # at the card's own crop: its inference tiling when measured apart from the training tile
        # (``extra.inference_tile`` / ``inference_overlap``; the card's ``training.inference_tiling``)
        tile = card.extra.get("inference_tile", card.extra.get("tile", 512))
        overlap = card.extra.get("inference_overlap", card.extra.get("overlap", 64))
        self.tile = int(tile) if input_size is None else self.input_size
        self.overlap = int(overlap)
        self.donors = [(donor, tuple(codes), tuple(averaged)) for donor, codes, averaged in donors]

    @property
    def decode_side(self) -> int:
        """The shorter side to decode a JPEG at for this predictor (``load_image(min_side=...)``): as the
        training cache decoded this model's photographs (``training/prepare.py``: ``min_side`` = the card's
        input size), and never below the crop. A 4288-px IDRiD photograph then decodes at 1/2 scale for
        ``segmenter_lite0`` whether it reads its 1024-px crop or the fast profile's 640-px one, and at full
        size for the 2048-px segmenter. Measured on the 11 validation photographs (README "Models"): the
        640-px crop from a 1/4-scale decode (the crop's own size) lost haemorrhage AUPR, 0.331 -> 0.306; the
        1024-px crop from a full-size decode lost it too, 0.348 -> 0.324.
        """
        return max(self.input_size, self.card.input_size)

    @torch.inference_mode()
    def predict(self, image: LoadedImage) -> LesionMaps:
        # donors first, keeping only their channels: their small passes do not stack on this model's peak
        taken, averaged = {}, set()
        for donor, codes, mean in self.donors:
            averaged |= set(mean)
            theirs = donor.predict(image).probabilities
            taken |= {code: theirs[donor.card.label_names.index(code)].copy() for code in codes}
            del theirs
        crop, transform = crop_for(image, self.input_size)
        tensor = torch.from_numpy(normalise(crop, self.card.mean, self.card.std))
        del crop
        with model_lock(self.model):  # lesion targets are explained on this module
            probs = predict_tiles(self.forward, tensor, self.tile, self.overlap)
        for code, channel in taken.items():
            # the donor segmented the same field-of-view square at its own size: resize onto this crop
            theirs = cv2.resize(channel, probs.shape[:0:-1], interpolation=cv2.INTER_LINEAR)
            index = self.card.label_names.index(code)
            probs[index] = (probs[index] + theirs) / 2 if code in averaged else theirs
        return LesionMaps(probabilities=probs, transform=transform)


def load_segmenter(
    name: str, weights_dir: Path | None = None, input_size: int | None = None
) -> SegmenterPredictor:
    """A shipped segmenter with the channels its card takes from other shipped segmenters.

    ``extra.channels_from`` lists ``{"model", "input_size", "channels"}``: those channels come from that
    model run at that crop size (measured better there; the card's validation figures are of the whole);
    those also listed under ``"averaged"`` are the mean of both models' probabilities instead.
    An ``input_size`` override (the fast profile) runs the model alone, at that size.
    """
    model, card = load_model(name, weights_dir)
    donors = []
    if input_size is None:
        for entry in card.extra.get("channels_from", []):
            donor = SegmenterPredictor(
                *load_model(entry["model"], weights_dir), input_size=entry.get("input_size")
            )
            donors.append((donor, entry["channels"], entry.get("averaged", [])))
    return SegmenterPredictor(model, card, input_size, donors)


@dataclass(frozen=True)
class Landmarks:
    """Centres (x, y) in original pixels, with peak-heatmap confidences in [0, 1]."""

    od_xy: tuple[float, float]
    fovea_xy: tuple[float, float]
    od_confidence: float
    fovea_confidence: float


class LocalizerPredictor:
    """Optic disc and fovea; ``anatomical_prior`` chooses the fovea with anatomy (the card's landmark
    prior, else an annulus around the disc: ``models.localizer.decode_landmarks``); the card's
    ``extra.anatomical_prior`` sets it. ``prior`` is also what ``workbench.landmarks`` checks against."""

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        anatomical_prior: bool | None = None,
        runtime: str | None = None,
    ) -> None:
        self.model, self.card = model.eval(), card
        self.forward = forward_for(self.model, card, runtime)
        self.runtime = runtime_name(self.forward)
        use = card.extra.get("anatomical_prior", True) if anatomical_prior is None else anatomical_prior
        self.anatomical_prior = bool(use)
        self.prior: LandmarkPrior | None = LandmarkPrior.from_card(card) if self.anatomical_prior else None

    @torch.inference_mode()
    def predict_crops(self, crops512: list[np.ndarray], transforms: list[CropTransform]) -> list[Landmarks]:
        logits = self.forward(_batch(crops512, self.card))
        centres, peaks = decode_landmarks(logits, self.anatomical_prior, self.prior)
        factor = GRADING_CROP / self.card.input_size
        out = []
        for centre, peak, transform in zip(centres.numpy(), peaks.numpy(), transforms, strict=True):
            in_crop = (centre + 0.5) * factor - 0.5  # input px -> 512-crop px (edges aligned)
            od, fovea = transform.to_original(in_crop)
            out.append(
                Landmarks(tuple(map(float, od)), tuple(map(float, fovea)), float(peak[0]), float(peak[1]))
            )
        return out
