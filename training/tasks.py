"""What differs between the three models: card, data, loss and validation metrics, one class per task.

``TASKS`` maps the name used on the command line (``drwb train grader``) to its task class, so the
training loop in ``training/train.py`` stays free of if-chains over model kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from models.card import ModelCard
from models.classifier import NUM_DR, grader_card
from models.constants import LESION_CODES
from models.localizer import LandmarkPrior, decode_landmarks, localizer_card
from models.segmenter import segmenter_card
from training.augment import AugmentConfig
from training.data import GradingData, LocalizationData, SegmentationData
from training.distill import HintDistiller, distillation_loss, load_run_model
from training.guides import load_guides, load_teacher, seg_to_grading
from training.landmark_prior import fit_landmark_prior
from training.prepare import load_index, prepare
from workbench.io.idrid import IDRiD
from workbench.io.splits import assign_folds, split_names, split_train_val
from workbench.metrics import PixelCurve, grading_metrics, localization_metrics, segmentation_metrics

__all__ = ["TASKS", "TrainTask", "register_task"]

TASKS: dict[str, type[TrainTask]] = {}


def register_task(name: str) -> Callable[[type[TrainTask]], type[TrainTask]]:
    def decorator(cls: type[TrainTask]) -> type[TrainTask]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = cls
        return cls

    return decorator


@dataclass
class TrainTask:
    """Base: subclasses fill in the five hooks. ``cfg`` is the ``TrainConfig`` of the run."""

    cfg: Any

    def card(self) -> ModelCard:
        raise NotImplementedError

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def epoch_indices(self, train: Dataset, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(train))

    def prepare_model(self, model: nn.Module) -> None:
        """Called once after the model is built (before the optimiser sees its parameters)."""

    def attach(self, model: nn.Module, device: torch.device) -> nn.Module | None:
        """Called once with the model on ``device``; returns trainable modules that only training uses
        (optimised and saved with the run's state, never shipped), or None."""
        return None

    def train_mode(self, model: nn.Module) -> None:
        """Put the model in training mode at the start of each epoch."""
        model.train()

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        raise NotImplementedError

    def recipe(self) -> dict[str, Any]:
        """What the card should say about how this model learnt, beyond the config (none by default)."""
        return {}

    # shared helpers ---------------------------------------------------------------------------------
    def _cache(self, part: str, size: int) -> Path:
        return prepare(Path(self.cfg.data), Path(self.cfg.cache), part, "train", size, self.cfg.workers)

    def _grading_split(self) -> tuple[set[str], set[str]]:
        """(train names, held-out names): the refit (all, none), fold ``cfg.fold``, or the val split."""
        records = IDRiD(self.cfg.data).grading("train")
        if self.cfg.refit:
            return {r.name for r in records}, set()
        if self.cfg.fold >= 0:
            folds = assign_folds(records, self.cfg.folds, self.cfg.seed)
            held = {name for name, fold in folds.items() if fold == self.cfg.fold}
            return set(folds) - held, held
        split = split_train_val(records, self.cfg.val_fraction, self.cfg.seed)
        return set(split.train), set(split.val)

    def _limit(self, entries: list) -> list:
        return entries[: self.cfg.limit] if self.cfg.limit else entries


@register_task("grader")
class GraderTask(TrainTask):
    def card(self) -> ModelCard:
        lite = self.cfg.backbone.startswith("tf_efficientnet_lite")
        return grader_card(
            self.cfg.backbone,
            self.cfg.input_size or 384,
            name=self.cfg.model_name or "grader",
            imagenet_init=lite and not self.cfg.no_pretrained,
        )

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        folder = self._cache("grading", 512)
        train_names, val_names = self._grading_split()
        entries = load_index(folder)
        train = self._limit([e for e in entries if e.name in train_names])
        val = self._limit([e for e in entries if e.name in val_names])
        cfg, folders = self.cfg, {}
        if cfg.unlabelled:  # segmentation-only photographs: no grade, but teacher targets and lesion guides
            seg = self._cache("segmentation", 512)
            in_grading = set(seg_to_grading(Path(cfg.data)))
            extra = [e for e in load_index(seg) if e.name not in in_grading]
            folders = {e.name: seg for e in extra}
            train = train + self._limit(extra)
        guides = load_guides(Path(cfg.guides)) if cfg.guides and cfg.attention_weight > 0 else None
        teacher = None
        if cfg.teacher and cfg.distill_weight > 0:
            # fold k's student learns from fold k's teacher (never saw fold k); a refit from all teachers
            teacher = load_teacher(Path(cfg.teacher), -1 if cfg.refit or cfg.fold < 0 else cfg.fold)
        return (
            GradingData(
                folder,
                train,
                card,
                AugmentConfig(),
                cfg.seed,
                guides=guides,
                teacher=teacher,
                folders=folders,
            ),
            GradingData(folder, val, card, None, cfg.seed),
        )

    def epoch_indices(self, train: Dataset, rng: np.random.Generator) -> np.ndarray:
        grades = np.array([-1 if e.dr_grade is None else e.dr_grade for e in train.entries])
        labelled = grades >= 0
        if self.cfg.sampling == "sqrt":
            # Class-balanced by 1/sqrt(n): grade 1 (5% of IDRiD) is drawn about twice as often as its
            # share, without the over-fitting of full balancing on 16 mild images. Epoch length = images.
            # Unlabelled images are drawn at the mean rate of the labelled ones.
            counts = np.bincount(grades[labelled], minlength=NUM_DR).astype(float)
            weights = np.ones(len(grades))
            weights[labelled] = 1.0 / np.sqrt(np.maximum(counts[grades[labelled]], 1))
            weights[~labelled] = weights[labelled].mean() if labelled.any() else 1.0
            return rng.choice(len(train), size=len(train), replace=True, p=weights / weights.sum())
        if self.cfg.sampling != "mild3":
            raise ValueError(f"sampling must be 'mild3' or 'sqrt', got {self.cfg.sampling!r}")
        # Grade 1 (mild) is 5% of IDRiD: show each mild image three times per epoch.
        extra = np.repeat(np.nonzero(grades == 1)[0], 2)
        return rng.permutation(np.concatenate([np.arange(len(train)), extra]))

    def recipe(self) -> dict[str, Any]:
        cfg, out = self.cfg, {}
        if cfg.attention_weight > 0 and cfg.guides:
            out["attention_supervision"] = {
                "loss": "-log(attention mass on lesion cells), DR head on MA/HE/EX/SE, DME head on hard "
                "exudates within 2 disc diameters of the fovea; images graded 0 are not supervised",
                "weight": cfg.attention_weight,
                "guides": "ground-truth masks on the IDRiD segmentation images; HE and EX pseudo-labels "
                "of the shipped segmenter elsewhere (drwb prepare-guides)",
                "file": Path(cfg.guides).name,
            }
        if cfg.teacher_model:
            out["distillation"] = {
                "loss": "hard-label cross-entropy + ordinal term + distill weight x T^2 KL(teacher || "
                "student) on the DR and DME heads + hint weight x (1 - cosine) between the student's "
                "stride-16 and stride-32 feature maps (learnt 1x1 projections) and the teacher's",
                "teacher": "online: the frozen teacher grades the same augmented batch as the student; "
                "fold k's student learns from fold k's teacher, which never saw fold k",
                "teacher_model": cfg.teacher_model,
                "distill_weight": cfg.distill_weight,
                "temperature": cfg.distill_temperature,
                "hint_weight": cfg.hint_weight,
            }
        elif cfg.distill_weight > 0 and cfg.teacher:
            out["distillation"] = {
                "loss": "hard-label cross-entropy + ordinal term + weight x T^2 KL(teacher || student) "
                "on the DR and DME heads",
                "weight": cfg.distill_weight,
                "temperature": cfg.distill_temperature,
                "teacher": "fold k's student learns from fold k's teacher (never saw fold k); the refit "
                "from the mean of all teachers (drwb prepare-teacher)",
                "file": Path(cfg.teacher).name,
            }
        if cfg.unlabelled:
            out["unlabelled_inputs"] = (
                "segmentation-only IDRiD photographs (no grade): teacher and guide only"
            )
        return out

    def prepare_model(self, model: nn.Module) -> None:
        for module in _frozen_modules(model, self.cfg.freeze_blocks):
            module.requires_grad_(False)

    def attach(self, model: nn.Module, device: torch.device) -> nn.Module | None:
        """With ``--teacher-model``: the frozen online teacher of this fold and the hint projections."""
        self.distiller = None
        if not self.cfg.teacher_model:
            return None
        # fold k's student learns from fold k's teacher, which never saw fold k
        source = self.cfg.teacher_model
        if "{fold}" in source:
            if self.cfg.fold < 0:
                raise ValueError(f"--teacher-model {source} names a teacher per fold: train with --fold K")
            source = source.format(fold=self.cfg.fold)
        teacher, teacher_card = load_run_model(Path(source))
        self.distiller = HintDistiller(model, self.card(), teacher.to(device), teacher_card).to(device)
        return self.distiller.projections

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        for module in _frozen_modules(model, self.cfg.freeze_blocks):
            module.eval()  # frozen batch norms keep their ImageNet statistics

    def _weights(self) -> torch.Tensor:
        counts = torch.tensor([134.0, 20.0, 136.0, 74.0, 49.0])  # IDRiD's grades
        if self.cfg.sampling == "sqrt":
            # the sampler already balances by 1/sqrt(n); a 1/n^0.25 weight completes a gentle balance
            weights = (counts.sum() / counts) ** 0.25
        else:
            # sqrt inverse frequency: softens the rare-grade imbalance
            weights = (counts.sum() / counts).sqrt()
        return weights / weights.mean()

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, dr, dme = batch[:3]
        distiller = getattr(self, "distiller", None)
        if len(batch) == 3 and distiller is None:
            return self._label_loss(model(images).float(), dr, dme)
        logits, dr_attention, dme_attention = model(images, with_attention=True)
        logits = logits.float()
        total = self._label_loss(logits, dr, dme)
        cfg = self.cfg
        if len(batch) > 3 and cfg.attention_weight > 0:
            guide, has_guide = batch[3:5]
            # no lesion can be pointed at on an image graded "no DR" / "no DME risk"
            total = total + cfg.attention_weight * (
                attention_loss(dr_attention, guide[:, 0], has_guide & (dr != 0))
                + attention_loss(dme_attention, guide[:, 1], has_guide & (dme != 0))
            )
        if distiller is not None:  # the online teacher grades this very batch
            teacher, hints = distiller.teach(images)
            rows = torch.ones(len(images), dtype=torch.bool, device=images.device)
            total = total + cfg.hint_weight * hints
        elif len(batch) > 3:
            teacher, rows = batch[5].float(), batch[6]
        else:
            rows = None
        if cfg.distill_weight > 0 and rows is not None and bool(rows.any()):
            temp = cfg.distill_temperature
            total = total + cfg.distill_weight * (
                distillation_loss(logits[rows, :NUM_DR], teacher[rows, :NUM_DR], temp)
                + distillation_loss(logits[rows, NUM_DR:], teacher[rows, NUM_DR:], temp)
            )
        return total

    def _label_loss(self, logits: torch.Tensor, dr: torch.Tensor, dme: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on both heads plus the ordinal term, over labelled rows (grade -1: unlabelled)."""
        labelled = dr >= 0
        if not bool(labelled.any()):
            return logits.sum() * 0
        logits, dr, dme = logits[labelled], dr[labelled], dme[labelled]
        dr_logits = logits[:, :NUM_DR]
        weights = self._weights().to(logits.device)
        dr_loss = F.cross_entropy(dr_logits, dr, weight=weights, label_smoothing=0.05)
        dme_loss = F.cross_entropy(logits[:, NUM_DR:], dme, label_smoothing=0.05)
        return dr_loss + dme_loss + self.cfg.ordinal_weight * ordinal_loss(dr_logits, dr)

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        probs_dr, probs_dme, true_dr, true_dme = [], [], [], []
        for batch in batches:
            images, dr, dme = batch[:3]
            logits = model(images).float()
            probs_dr.append(torch.softmax(logits[:, :NUM_DR], 1).cpu())
            probs_dme.append(torch.softmax(logits[:, NUM_DR:], 1).cpu())
            true_dr.append(dr.cpu())
            true_dme.append(dme.cpu())
        return grading_metrics(
            torch.cat(probs_dr).numpy(),
            torch.cat(probs_dme).numpy(),
            torch.cat(true_dr).numpy(),
            torch.cat(true_dme).numpy(),
        )


@register_task("localizer")
class LocalizerTask(TrainTask):
    def card(self) -> ModelCard:
        return localizer_card(
            self.cfg.backbone,
            self.cfg.input_size or 256,
            name=self.cfg.model_name or "localizer",
            imagenet_init=not self.cfg.no_pretrained,
            landmark_prior=self._prior.to_dict(),
        )

    @cached_property
    def _prior(self) -> LandmarkPrior:
        """Fitted on this run's training images' annotations only (training.landmark_prior)."""
        train_names, _ = self._grading_split()
        return fit_landmark_prior(self.cfg.data, train_names, self.cfg.val_fraction, self.cfg.seed)

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        folder = self._cache("localization", 512)
        train_names, val_names = self._grading_split()  # same 413 images as grading: same split
        entries = load_index(folder)
        train = self._limit([e for e in entries if e.name in train_names])
        val = self._limit([e for e in entries if e.name in val_names])
        return (
            LocalizationData(folder, train, card, AugmentConfig(scale_range=(0.9, 1.1)), self.cfg.seed),
            LocalizationData(folder, val, card, None, self.cfg.seed),
        )

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, heat, _, _ = batch
        return centernet_focal_loss(model(images).float(), heat)

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        errors = []
        use_prior = bool(self.card().extra.get("anatomical_prior", True))
        for images, _, points, challenge_px in batches:
            # the same decoder as inference and `drwb evaluate` (the landmark prior for the fovea)
            centres, _ = decode_landmarks(model(images), use_prior, self._prior)
            # input px -> px of a 4288-wide original, per image (IDRiD challenge frame)
            errors.append((centres - points).norm(dim=-1) * challenge_px[:, None])
        err = torch.cat(errors).float().cpu().numpy()
        return localization_metrics(err[:, 0], err[:, 1])


def parse_rates(text: str) -> dict[str, float]:
    """ "MA:0.3,SE:0.2" -> {"MA": 0.3, "SE": 0.2} (empty text: {})."""
    rates = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        code, _, value = part.partition(":")
        if code not in LESION_CODES or not value:
            raise ValueError(
                f"lesion rate {part!r}: expected CODE:RATE with CODE one of {', '.join(LESION_CODES)}"
            )
        rates[code] = float(value)
    return rates


def ordinal_loss(dr_logits: torch.Tensor, grade: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the expected grade under the softmax and the true grade.

    Cross-entropy treats "predicted 4 for a 0" and "predicted 1 for a 0" alike; this term charges by
    distance, the same ordering QWK rewards.
    """
    levels = torch.arange(dr_logits.shape[1], dtype=dr_logits.dtype, device=dr_logits.device)
    expected = (torch.softmax(dr_logits, dim=1) * levels).sum(dim=1)
    return F.smooth_l1_loss(expected, grade.to(dr_logits.dtype))


def attention_loss(attention: torch.Tensor, guide: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass on guided cells, averaged over the rows ``use`` that have any.

    Args:
        attention: (B, h, w) softmax attention (sums to 1 per image).
        guide: (B, g, g) lesion guide in [0, 1] at any resolution; a feature cell is "lesion" when any
            guide cell inside it is (max pooling: a microaneurysm must not vanish in a 32-px cell).
        use: (B,) bool, rows that have a guide worth following.

    Minimising it raises the share of attention on lesions (the relevance mass the explanation
    benchmark scores) without fixing how it is spread among them.
    """
    region = F.adaptive_max_pool2d(guide[:, None].float(), attention.shape[-2:])[:, 0] > 0.25
    rows = use & region.flatten(1).any(dim=1)
    if not bool(rows.any()):
        return attention.sum() * 0
    mass = (attention.float() * region).flatten(1).sum(dim=1)[rows]
    return -torch.log(mass.clamp_min(1e-4)).mean()


def _frozen_modules(model: nn.Module, blocks: int) -> list[nn.Module]:
    """Stem and first ``blocks`` stages of an EfficientNet-style backbone (none when ``blocks`` is 0)."""
    if blocks <= 0:
        return []
    backbone = model.backbone
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "conv_stem"):
        raise ValueError(f"freeze_blocks needs an EfficientNet-style backbone, not {type(backbone).__name__}")
    return [backbone.conv_stem, backbone.bn1, *list(backbone.blocks)[:blocks]]


def centernet_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2, beta: float = 4
) -> torch.Tensor:
    """Penalty-reduced focal loss on Gaussian heatmaps (CenterNet, Zhou et al. 2019)."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.ge(0.99).float()
    pos_loss = -torch.log(prob) * (1 - prob) ** alpha * positive
    neg_loss = -torch.log(1 - prob) * prob**alpha * (1 - target) ** beta * (1 - positive)
    return (pos_loss.sum() + neg_loss.sum()) / positive.sum().clamp_min(1)


@register_task("segmenter")
class SegmenterTask(TrainTask):
    def recipe(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "tiles": f"{cfg.tile} px windows of the {cfg.input_size or 1024}-px field-of-view crop, "
            f"{cfg.tiles_per_image} per image per epoch, centred on lesions at rates "
            f"{cfg.lesion_rates or 'union of lesions half of the time'}, elsewhere at random",
            "loss": (f"focal (gamma {cfg.focal_gamma}) " if cfg.focal_gamma else "")
            + "BCE + soft Dice per lesion type, on annotated types only",
        }

    def card(self) -> ModelCard:
        return segmenter_card(
            self.cfg.backbone,
            self.cfg.input_size or 1024,
            name=self.cfg.model_name or "segmenter",
            imagenet_init=not self.cfg.no_pretrained,
        )

    def datasets(self, card: ModelCard) -> tuple[Dataset, Dataset]:
        folder = self._cache("segmentation", card.input_size)
        entries = load_index(folder)
        split = split_names([e.name for e in entries], self.cfg.val_fraction, self.cfg.seed)
        train = self._limit([e for e in entries if e.name in set(split.train)])
        val = self._limit([e for e in entries if e.name in set(split.val)])
        tile, rates = self.cfg.tile, parse_rates(self.cfg.lesion_rates)
        return (
            SegmentationData(
                folder, train, card, AugmentConfig(), self.cfg.seed, tile=tile, lesion_rates=rates
            ),
            SegmentationData(folder, val, card, None, self.cfg.seed, tile=tile),
        )

    def epoch_indices(self, train: Dataset, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(np.tile(np.arange(len(train)), self.cfg.tiles_per_image))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, masks, annotated = batch
        logits = model(images).float()
        valid = annotated[:, :, None, None].float()
        bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
        prob = torch.sigmoid(logits)
        if self.cfg.focal_gamma > 0:
            # focal weighting (Lin et al. 2017): easy background pixels, the vast majority, count little
            p_true = prob * masks + (1 - prob) * (1 - masks)
            bce = bce * (1 - p_true).pow(self.cfg.focal_gamma)
        bce = (bce * valid).sum() / valid.expand_as(bce).sum().clamp_min(1)
        inter = (prob * masks * valid).sum(dim=(0, 2, 3))
        union = ((prob + masks) * valid).sum(dim=(0, 2, 3))
        dice = 1 - (2 * inter + 1) / (union + 1)
        return bce + dice.mean()

    def validate(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
        from workbench.inference import predict_tiles

        curves = {code: PixelCurve() for code in LESION_CODES}
        for images, masks, annotated in batches:
            for image, mask, flags in zip(images, masks, annotated, strict=True):
                prob = predict_tiles(model, image, self.cfg.tile, 64)
                for c, code in enumerate(LESION_CODES):
                    if flags[c]:
                        # soft masks hold area fractions: half a pixel or more is lesion (area-preserving)
                        curves[code].add(prob[c], mask[c].cpu().numpy() >= 0.5)
        # Best-Dice thresholds travel in the card; the workbench binarises lesion maps with them.
        return segmentation_metrics(curves)
