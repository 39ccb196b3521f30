"""Knowledge distillation for graders: soft targets and feature hints from a frozen teacher.

Two ways to learn from a teacher grader:

- soft targets cached once (``drwb prepare-teacher``, ``--teacher``): the teacher's logits on the plain
  image, whatever augmentation the student sees;
- an online teacher (``--teacher-model``): the frozen teacher grades the very batch the student sees,
  augmentation included ("consistent teaching", Beyer et al. 2022), and its feature maps at strides 8, 16
  and 32 are hints (FitNets, Romero et al. 2015) that the student's own maps, through a learnt 1x1
  projection, must point the same way (cosine per feature cell). A from-scratch ConvNeXt on 400
  photographs learns little from one label per image; a hint gives it a target at every cell.
- with ``--reuse-teacher-head`` (SimKD, Chen et al. 2022) the student also gets a 1x1 neck into the
  teacher's final feature space, starts from the teacher's attention pools and heads, and matches the
  teacher's final feature map by mean squared error: once its features match, it grades as the teacher.

The projections exist only in training (saved with the run's state, never shipped).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.card import ModelCard
from models.registry import load_model, load_run

__all__ = ["HintDistiller", "distillation_loss", "hint_loss", "load_run_model"]

HINT_STRIDES = (8, 16, 32)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) soft-target loss: T^2 KL(softmax(teacher / T) || softmax(student / T)).

    The T^2 factor keeps its gradients on the scale of the hard-label loss whatever T is.
    """
    log_student = F.log_softmax(student / temperature, dim=1)
    soft_teacher = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_student, soft_teacher, reduction="batchmean") * temperature**2


def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between projected student and teacher feature vectors, averaged over cells.

    The teacher's map is area-resampled to the student's grid when their input sizes differ. Scale-free:
    the student matches the direction of each cell's features, not the teacher's activation range.
    """
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()


def load_run_model(folder: Path) -> tuple[nn.Module, ModelCard]:
    """The ``best`` weights of a training run folder (``best.json`` + ``best.safetensors``), in eval mode;
    a name that is no such folder is a shipped grader's card stem (for example a grader that teaches its
    own new head to keep what it says), loaded hash-checked and with its temperature set to 1, so that it
    gives the raw logits a run's model gives (temperatures are fitted after training)."""
    folder = Path(folder)
    if not (folder / "best.json").is_file():
        model, card = load_model(str(folder))
        if "members" in card.extra:
            raise ValueError(f"{folder} is an ensemble: a teacher model is one network")
        model.temperature.fill_(1.0)
        return model.float().eval(), card
    return load_run(folder)


def _hint_modules(backbone: nn.Module) -> dict[int, nn.Module]:
    """{stride: module} at ``HINT_STRIDES`` from a timm backbone's ``feature_info``."""
    modules = dict(backbone.named_modules())
    found = {}
    for info in backbone.feature_info:
        if info["reduction"] in HINT_STRIDES:
            found[info["reduction"]] = modules[info["module"]]
    missing = set(HINT_STRIDES) - set(found)
    if missing:
        raise ValueError(f"{type(backbone).__name__} has no feature map at stride {sorted(missing)}")
    return found


class HintDistiller:
    """A frozen teacher grader and the student's hint projections.

    ``attach`` hooks the student's maps at ``HINT_STRIDES``; after each student forward, ``teach`` runs
    the teacher on the same batch (converted to its normalisation and input size) and returns its logits
    and the summed hint loss.
    """

    def __init__(
        self,
        student: nn.Module,
        student_card: ModelCard,
        teacher: nn.Module,
        teacher_card: ModelCard,
        final: bool = False,
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.student_card, self.teacher_card = student_card, teacher_card
        self._student_maps: dict[int, torch.Tensor] = {}
        self._teacher_maps: dict[int, torch.Tensor] = {}
        self._hooks = []
        for stride, module in _hint_modules(student.backbone).items():
            self._hooks.append(module.register_forward_hook(self._keep(self._student_maps, stride)))
        for stride, module in _hint_modules(self.teacher.backbone).items():
            self._hooks.append(module.register_forward_hook(self._keep(self._teacher_maps, stride)))
        self.final = final  # also match the student's final (neck) features to the teacher's, by MSE
        if final:
            if isinstance(student.neck, nn.Identity):
                raise ValueError("matching the teacher's final features needs a student with a neck")
            self._hooks.append(student.neck.register_forward_hook(self._keep(self._student_maps, 0)))
        channels = self._channels(student, student_card, teacher, teacher_card)
        self.projections = nn.ModuleDict(
            {str(s): nn.Conv2d(channels[s][0], channels[s][1], kernel_size=1) for s in HINT_STRIDES}
        )

    @staticmethod
    def _keep(store: dict[int, torch.Tensor], stride: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            store[stride] = output

        return hook

    def close(self) -> None:
        """Remove the hooks (training is over) and drop the kept feature maps."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._student_maps.clear()
        self._teacher_maps.clear()

    def _channels(
        self, student: nn.Module, student_card: ModelCard, teacher: nn.Module, teacher_card: ModelCard
    ) -> dict[int, tuple[int, int]]:
        was_training = student.training
        student.eval()  # a probe: no batch-norm statistics updated
        with torch.no_grad():
            device = next(student.parameters()).device
            student.forward_features(torch.zeros(1, 3, 64, 64, device=device))
            teacher.forward_features(torch.zeros(1, 3, 64, 64, device=device))
        student.train(was_training)
        return {s: (self._student_maps[s].shape[1], self._teacher_maps[s].shape[1]) for s in HINT_STRIDES}

    def to(self, device: torch.device) -> HintDistiller:
        self.teacher.to(device, memory_format=torch.channels_last)
        self.projections.to(device, memory_format=torch.channels_last)
        return self

    def _teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """Student-normalised images -> the teacher's normalisation and input size."""
        s, t = self.student_card, self.teacher_card

        def stats(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, device=images.device, dtype=images.dtype)[None, :, None, None]

        raw = images * stats(s.std) + stats(s.mean)
        out = (raw - stats(t.mean)) / stats(t.std)
        if t.input_size != images.shape[-1]:
            out = F.interpolate(out, size=(t.input_size, t.input_size), mode="bilinear", align_corners=False)
        return out.contiguous(memory_format=torch.channels_last)

    def teach(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(teacher logits (B, 8), hint loss (mean over strides), final-feature loss) for the batch the
        student has just seen.

        The final-feature loss (0 unless ``final``) is the mean squared difference between the student's
        neck output and the teacher's final feature map, area-resampled to the student's grid (SimKD).
        """
        with torch.no_grad():
            features, fine = self.teacher.backbone_features(self._teacher_input(images))
            logits = self.teacher.forward_head(features, fine=fine).float()
        losses = [
            hint_loss(self.projections[str(s)](self._student_maps[s]), self._teacher_maps[s])
            for s in HINT_STRIDES
        ]
        final = torch.zeros((), device=images.device)
        if self.final:
            student = self._student_maps[0].float()
            final = F.mse_loss(student, F.adaptive_avg_pool2d(features.float(), student.shape[-2:]))
        return logits, torch.stack(losses).mean(), final
