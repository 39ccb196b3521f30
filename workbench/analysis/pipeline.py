"""``Workbench.analyze(image) -> Analysis``: the one call the apps and the command line make.

A ``Workbench`` loads the shipped grader, segmenter and localizer once. ``analyze`` runs, in order:
load (reduced JPEG decoding) -> field-of-view crop -> quality verdict -> grading -> lesions -> landmarks
-> anatomy (ETDRS grid, DME rule) -> the requested explanations, timing each stage. Ungradeable images
stop after the quality verdict unless ``force=True``: a screening tool must not silently grade what it
cannot see. Everything spatial in the result is in the original image's pixel frame (or carries the
transform to it).

Thread safety: inference runs under ``torch.inference_mode`` and is safe to call concurrently;
explainers add hooks to the shared modules, so explanations are serialised by a lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.preprocess import normalise, resize_crop
from models.registry import WeightsError, default_model, load_model
from models.registry import weights_dir as configured_weights_dir
from workbench.analysis.lesion_maps import inside_field, lesions_by_region, one_disc, summarise_lesions
from workbench.analysis.lesion_trust import (
    lesion_reliability,
    lesion_thresholds,
    reliable_types,
    segmenter_figures,
)
from workbench.analysis.result import Analysis
from workbench.anatomy import dme_rule, etdrs_grid
from workbench.explain.explainers import ExplainableModel, Heatmap, get_explainer
from workbench.explain.explainers.budget import release_freed_memory
from workbench.fundus import prepare_fundus
from workbench.inference import model_lock
from workbench.io.image_io import LoadedImage, load_image
from workbench.landmarks import place_landmarks, read_laterality
from workbench.landmarks.disc import DiscRefiner, load_disc_refiner
from workbench.landmarks.fovea import FoveaRefiner, load_fovea_refiner
from workbench.predictors import GRADING_CROP, GraderPredictor, LocalizerPredictor, load_segmenter
from workbench.targets import GradeTarget, Target

__all__ = ["FAST_SEGMENT_SIZE", "PROFILES", "Workbench", "profile_from_env", "profile_grader"]

FAST_SEGMENT_SIZE = 640  # px of the field-of-view crop the fast profile segments, in one tile

# Analysis profiles: "quality" grades with the best shipped grader, whatever it costs, and segments with
# the best shipped segmenter at its own resolution; "fast" grades with the best grader of at most two
# forward passes a photograph (``models.registry.forward_passes``: two networks without the mirror view,
# or one network) and segments with the low-resolution segmenter on a smaller crop, one tile, to stay
# within about a second on two cores (README "Speed and memory" has the measured figures). DRWB_PROFILE
# picks one for the apps.
PROFILES: dict[str, dict[str, str | int | None]] = {
    "quality": {"segmenter": None, "segment_size": None, "max_passes": None},
    "fast": {"segmenter": "segmenter_lite0", "segment_size": FAST_SEGMENT_SIZE, "max_passes": 2},
}


def _optional_int(value: str | int | None) -> int | None:
    return None if value is None else int(value)


def profile_from_env() -> str:
    """The profile named by ``DRWB_PROFILE`` (default "quality"); an unknown name raises."""
    name = os.environ.get("DRWB_PROFILE", "quality")
    if name not in PROFILES:
        raise ValueError(f"DRWB_PROFILE={name!r}: valid profiles are {', '.join(PROFILES)}")
    return name


def profile_grader(profile: str = "quality", weights_dir: Path | None = None) -> str:
    """The grader a profile grades with when none is named (the best shipped within its forward passes)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    folder = Path(weights_dir) if weights_dir else configured_weights_dir()
    return default_model("grader", folder, max_passes=_optional_int(PROFILES[profile]["max_passes"]))


class Workbench:
    """Holds the models; ``analyze`` and ``explain`` are what the faces call.

    Args:
        grader, segmenter, localizer: shipped model names; the best of each family when None.
        disc, fovea: the landmark refiners (``workbench.landmarks.disc``, ``.fovea``); the best shipped
            one when None, none when "" or when none is shipped (the coarse disc and fovea stand then).
        weights_dir: where the cards and weights live.
        segment: run the lesion segmenter (the slowest stage) in ``analyze``.
        profile: "quality" or "fast" (``PROFILES``); an explicit ``segmenter`` wins over the profile's.
    """

    def __init__(
        self,
        grader: str | None = None,
        segmenter: str | None = None,
        localizer: str | None = None,
        weights_dir: Path | None = None,
        segment: bool = True,
        profile: str = "quality",
        disc: str | None = None,
        fovea: str | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
        self.weights_dir = Path(weights_dir) if weights_dir else configured_weights_dir()
        self.profile = profile
        chosen = PROFILES[profile]
        if segmenter is None and chosen["segmenter"] is not None:
            available = {p.stem for p in self.weights_dir.glob("*.json")}
            segmenter = str(chosen["segmenter"]) if chosen["segmenter"] in available else None
        names = {
            "grader": grader or profile_grader(profile, self.weights_dir),
            "segmenter": segmenter or default_model("segmenter", self.weights_dir),
            "localizer": localizer or default_model("localizer", self.weights_dir),
        }
        self.model_names = names
        self._graders: dict[str, GraderPredictor] = {}
        self._graders_lock = threading.Lock()  # two requests for a new grader build it once
        self.grader = self.grader_predictor(names["grader"])
        size = chosen["segment_size"]
        self.segmenter = load_segmenter(names["segmenter"], self.weights_dir, int(size) if size else None)
        self.localizer = LocalizerPredictor(*load_model(names["localizer"], self.weights_dir))
        # the landmark refiners are optional: without one shipped, the coarse disc and fovea stand
        disc = self._optional("disc", disc) if segment else ""  # it refines the lesion maps' disc
        fovea = self._optional("fovea", fovea)
        self.disc: DiscRefiner | None = load_disc_refiner(disc, self.weights_dir) if disc else None
        self.fovea: FoveaRefiner | None = load_fovea_refiner(fovea, self.weights_dir) if fovea else None
        self.segment = segment
        self._explain_lock = threading.Lock()

    def _optional(self, arch: str, name: str | None) -> str:
        """``name``, else the best shipped model of ``arch``, else "" (none shipped); noted in
        ``model_names`` when there is one."""
        if name is None:
            try:
                name = default_model(arch, self.weights_dir)
            except WeightsError:
                name = ""
        if name:
            self.model_names[arch] = name
        return name

    def grader_predictor(self, name: str) -> GraderPredictor:
        """A (cached) predictor for any shipped grader, so two backbones can be compared. The first call
        for a grader loads it (and exports its ONNX graph once per weights file: ``workbench.runtime``)."""
        with self._graders_lock:
            if name not in self._graders:
                self._graders[name] = GraderPredictor(*load_model(name, self.weights_dir))
            return self._graders[name]

    # -- analysis ------------------------------------------------------------------------------------
    def analyze(
        self,
        source: str | Path | bytes | LoadedImage,
        explain: Sequence[str] = (),
        target: Target | None = None,
        force: bool = False,
        name: str | None = None,
    ) -> Analysis:
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + (now - clock) * 1000
            clock = now

        side = self.segmenter.decode_side if self.segment else GRADING_CROP
        image = source if isinstance(source, LoadedImage) else load_image(source, min_side=side, name=name)
        lap("load")
        prepared = prepare_fundus(image, GRADING_CROP)
        lap("quality")
        base = {
            "name": image.name,
            "original_size": image.original_size,
            "source_format": image.source_format,
            "source_mode": image.source_mode,
            "quality": prepared.quality,
            "fov": prepared.fov,
            "crop": prepared.crop,
            "crop_transform": prepared.transform,
            "models": dict(self.model_names),
            "profile": self.profile,
            "runtimes": {
                "grader": self.grader.runtime,
                "localizer": self.localizer.runtime,
                **({"segmenter": self.segmenter.runtime} if self.segment else {}),
                **({"disc": self.disc.runtime} if self.disc is not None else {}),
                **({"fovea": self.fovea.runtime} if self.fovea is not None else {}),
            },
        }
        if not prepared.quality.gradeable and not force:
            return Analysis(graded=False, timings_ms=timings, **base)
        dr, dme = self.grader.predict([prepared.crop])
        lap("grading")
        marks = self.localizer.predict_crops([prepared.crop], [prepared.transform])[0]
        fovea_refined = None
        if self.fovea is not None:
            # the fovea found again around the localizer's (workbench.landmarks.fovea), if it is there
            refined = self.fovea.refine(image, marks.fovea_xy, prepared.fov)
            marks = replace(marks, fovea_xy=refined) if refined is not None else marks
            fovea_refined = refined is not None
        lap("landmarks")
        lesions, lesion_transform, disc_refined, trust = {}, None, None, {}
        if self.segment:
            maps = self.segmenter.predict(image)
            lesion_transform = maps.transform
            if self.disc is not None:  # the disc segmented again around the detected disc
                disc_refined = self.disc.refine(maps, image, marks.od_xy, prepared.fov)
            measured = self._measured()
            trust = lesion_reliability(measured, prepared.quality.gradeable)
            lesions = summarise_lesions(
                inside_field(maps.probabilities, maps.transform, prepared.fov),
                maps.transform,
                self._thresholds(),
                reliable=reliable_types(measured),  # the card's figures decide, photograph quality aside
            )
            lap("lesions")
        placed = place_landmarks(
            prepared.fov,
            marks.od_xy,
            marks.fovea_xy,
            marks.fovea_confidence,
            od_mask=lesions["OD"].mask if "OD" in lesions else None,
            transform=lesion_transform,
            prior=self.localizer.prior,
            image_size=image.original_size,
        )
        if "OD" in lesions:
            lesions["OD"] = one_disc(lesions["OD"], placed.od_mask, lesion_transform)
        fovea_doubt, od_doubt = placed.fovea.doubt, placed.od_doubt
        laterality = read_laterality(
            placed.od_xy, placed.fovea.xy, prepared.fov, fovea_doubt, od_doubt, image.name, image.laterality
        )
        lap("landmarks")
        od_radius, fovea = placed.od_radius_px, placed.fovea
        grid, check, by_region = None, None, {}
        if fovea.doubt is None:  # a doubtful fovea places no grid, no regions and no rule check
            grid = etdrs_grid(fovea.xy, placed.od_xy, od_radius)
            if "EX" in lesions:
                ys, xs = np.nonzero(lesions["EX"].mask)
                exudates = (
                    lesion_transform.to_original(np.stack([xs, ys], 1)) if xs.size else np.zeros((0, 2))
                )
                check = dme_rule(exudates, fovea.xy, od_radius, int(np.argmax(dme[0])))
                by_region = lesions_by_region(grid, lesions)
        lap("anatomy")
        heatmaps = {}
        if explain:
            chosen = target or GradeTarget(int(np.argmax(dr[0])))
            heatmaps = self.explain(prepared.crop, explain, chosen)
            lap("explanations")
        return Analysis(
            graded=True,
            dr_probabilities=dr[0],
            dme_probabilities=dme[0],
            lesions=lesions,
            lesion_transform=lesion_transform,
            od_xy=placed.od_xy,
            od_radius_px=od_radius,
            od_confidence=marks.od_confidence,
            od_doubt=placed.od_doubt,
            fovea_xy=fovea.xy,
            fovea_confidence=marks.fovea_confidence,
            fovea_doubt=fovea.doubt,
            fovea_refined=fovea_refined,
            disc_outline_refined=disc_refined,
            laterality=laterality,
            etdrs=grid,
            dme_check=check,
            lesions_by_region=by_region,
            heatmaps=heatmaps,
            lesion_reliability=trust,
            timings_ms=timings,
            **base,
        )

    def explain(
        self, crop512: np.ndarray, methods: Sequence[str], target: Target, grader: str | None = None
    ) -> dict[str, Heatmap]:
        """Heatmaps (model-input frame) of each method for ``target`` on the grader or the segmenter."""
        member = ""
        if target.arch == "segmenter":
            card = self.segmenter.card
            model = ExplainableModel(self.segmenter.model, card)
            tensor = torch.from_numpy(normalise(resize_crop(crop512, GRADING_CROP), card.mean, card.std))[
                None
            ]
        else:
            predictor = self.grader_predictor(grader) if grader else self.grader
            module, card, member = predictor.explained(crop512)  # an ensemble: one member (the note)
            model = ExplainableModel(module, card)
            tensor = predictor.input_tensor(crop512, card)  # at the explained network's own input size
        out = {}
        # one explanation at a time (memory), and none while another session runs the same module
        with self._explain_lock, model_lock(model.module):
            for method in methods:
                heatmap = get_explainer(method).explain(model, tensor, target)
                if member:
                    heatmap = replace(heatmap, model=member)
                out[method] = heatmap
                release_freed_memory()
        return out

    # -- helpers -------------------------------------------------------------------------------------
    def _measured(self) -> dict:
        """The segmenter's validation figures at the crop this profile segments: ``evaluation.val_fast``
        for the fast profile's smaller crop when the card has it, else ``evaluation.val`` (original
        resolution, exact masks, `drwb evaluate --write-card`), else the training loop's. With a disc
        refiner, the disc's figures (AUPR, threshold) are the refiner's (`drwb evaluate --task disc`)."""
        measured = segmenter_figures(self.segmenter.card.training, self.profile)
        if self.disc is not None:
            # only a product-pipeline measurement of the refiner replaces the segmenter's disc figures: its
            # training loop scored windows centred on the annotated disc (optimistic)
            evaluation = self.disc.card.training.get("evaluation", {})
            own = evaluation.get(f"val_{self.profile}") or evaluation.get("val") or {}
            measured = {**measured, **{k: v for k, v in own.items() if k.endswith("_OD")}}
        return measured

    def _thresholds(self) -> dict[str, float]:
        # Best-Dice thresholds of the same measurement the reliability comes from
        return lesion_thresholds(self._measured())
