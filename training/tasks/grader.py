"""The grader task: DR and DME heads, class-balanced sampling, attention supervision, distillation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from models.card import ModelCard
from models.classifier import NUM_DR, grader_card
from models.registry import weights_dir
from training.augment import AugmentConfig
from training.data import GradingData
from training.distill import HintDistiller, distillation_loss, load_run_model
from training.guides import load_guides, load_teacher, seg_to_grading
from training.losses import attention_loss, ordinal_loss
from training.prepare import load_index
from training.tasks._base import TrainTask, register_task
from workbench.metrics import grading_metrics

__all__ = ["GraderTask"]


@register_task("grader")
class GraderTask(TrainTask):
    """DR and DME heads on one backbone: cross-entropy + ordinal term, class-balanced sampling, and
    optionally attention supervision and distillation (cached soft targets or an online teacher)."""

    def card(self) -> ModelCard:
        lite = self.cfg.backbone.startswith("tf_efficientnet_lite")
        return grader_card(
            self.cfg.backbone,
            self.cfg.input_size or 384,
            name=self.cfg.model_name or "grader",
            imagenet_init=lite and not self.cfg.no_pretrained,
            **({"layer_scale_init": self.cfg.layer_scale_init} if self.cfg.layer_scale_init else {}),
            **({"neck_channels": self._teacher_channels()} if self.cfg.reuse_teacher_head else {}),
            **({"fine_attention": {"stride": self.cfg.fine_attention}} if self.cfg.fine_attention else {}),
        )

    def _teacher_source(self) -> Path:
        """The teacher run folder of this fold (fold k's student learns from fold k's teacher)."""
        source = self.cfg.teacher_model
        if "{fold}" in source:
            if self.cfg.fold < 0:
                raise ValueError(f"--teacher-model {source} names a teacher per fold: train with --fold K")
            source = source.format(fold=self.cfg.fold)
        return Path(source)

    def _teacher_channels(self) -> int:
        """Channels of the teacher's final feature map (what its pools and heads read), from the shape of
        its DR head in the weights file (nothing loaded)."""
        if not self.cfg.teacher_model:
            raise ValueError("--reuse-teacher-head needs --teacher-model")
        path = self._teacher_source() / "best.safetensors"
        if not path.is_file():  # a shipped model's card stem (training.distill.load_run_model)
            card = ModelCard.read(weights_dir() / f"{self._teacher_source()}.json")
            path = weights_dir() / card.weights
        with safe_open(str(path), "pt") as weights:
            return int(weights.get_slice("dr_head.weight").get_shape()[1])

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
                "stride-8, -16 and -32 feature maps (learnt 1x1 projections) and the teacher's",
                "teacher": "online: the frozen teacher grades the same augmented batch as the student; "
                "fold k's student learns from fold k's teacher, which never saw fold k",
                "teacher_model": cfg.teacher_model,
                "distill_weight": cfg.distill_weight,
                "temperature": cfg.distill_temperature,
                "hint_weight": cfg.hint_weight,
            }
            if cfg.reuse_teacher_head:
                start = (
                    f"the neck, attention pools and heads continue from {cfg.init_from}"
                    if cfg.init_from
                    else "the attention pools and heads start from the teacher's"
                )
                out["distillation"]["simkd"] = (
                    f"a neck (layer norm, 1x1 conv, ReLU6) into the teacher's final feature space; {start}; "
                    "+ feature weight x MSE between the neck's output and the teacher's final feature map "
                    "(Chen et al., CVPR 2022)"
                )
                out["distillation"]["feature_weight"] = cfg.feature_weight
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
        if cfg.layer_scale_init or cfg.no_norm_decay:
            out["from_scratch"] = (
                f"layer scale starts at {cfg.layer_scale_init or 'timm default'}; "
                + ("no weight decay on biases, norms and layer scales" if cfg.no_norm_decay else "")
            ).strip("; ")
        if cfg.fine_attention:
            out["fine_attention"] = (
                f"attention at stride {cfg.fine_attention} as well (models.classifier.FineAttention): the "
                "score of the fine features plus the coarse pool's score, softmax over the fine grid; it "
                "pools the final features per coarse cell and a projection of the fine features, and both "
                "feed the heads"
            )
        if cfg.freeze_backbone:
            out["frozen_backbone"] = (
                f"the backbone{' of ' + cfg.init_from if cfg.init_from else ''} stays as it was: only the "
                "attention pools and heads train"
            )
        if cfg.unlabelled:
            out["unlabelled_inputs"] = (
                "segmentation-only IDRiD photographs (no grade): teacher and guide only"
            )
        return out

    def prepare_model(self, model: nn.Module) -> None:
        for module in self._frozen(model):
            module.requires_grad_(False)

    def _frozen(self, model: nn.Module) -> list[nn.Module]:
        if self.cfg.freeze_backbone:
            return [model.backbone, model.neck]
        return _frozen_modules(model, self.cfg.freeze_blocks)

    def attach(self, model: nn.Module, device: torch.device) -> nn.Module | None:
        """With ``--teacher-model``: the frozen online teacher of this fold and the hint projections."""
        self.distiller = None
        if not self.cfg.teacher_model:
            return None
        if self.cfg.teacher:
            raise ValueError(
                "give one teacher: --teacher (cached logits) or --teacher-model (online), not both"
            )
        teacher, teacher_card = load_run_model(self._teacher_source())
        if self.cfg.reuse_teacher_head and not self.cfg.init_from:
            # SimKD (Chen et al. 2022): start from the teacher's pools and heads; a student continued from
            # its own weights (--init-from) keeps the pools and heads it has learnt
            for part in ("dr_pool", "dme_pool", "dr_head", "dme_head"):
                getattr(model, part).load_state_dict(getattr(teacher, part).state_dict())
        self.distiller = HintDistiller(
            model, self.card(), teacher.to(device), teacher_card, final=self.cfg.reuse_teacher_head
        ).to(device)
        return self.distiller.projections

    def detach(self) -> None:
        if getattr(self, "distiller", None) is not None:
            self.distiller.close()

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        for module in self._frozen(model):
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
            teacher, hints, final = distiller.teach(images)
            rows = torch.ones(len(images), dtype=torch.bool, device=images.device)
            total = total + cfg.hint_weight * hints + cfg.feature_weight * final
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


def _frozen_modules(model: nn.Module, blocks: int) -> list[nn.Module]:
    """Stem and first ``blocks`` stages of an EfficientNet-style backbone (none when ``blocks`` is 0)."""
    if blocks <= 0:
        return []
    backbone = model.backbone
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "conv_stem"):
        raise ValueError(f"freeze_blocks needs an EfficientNet-style backbone, not {type(backbone).__name__}")
    return [backbone.conv_stem, backbone.bn1, *list(backbone.blocks)[:blocks]]
