"""LwF, learning without forgetting (Li and Hoiem, ECCV 2016 / TPAMI 2018): full fine-tuning on the new data while
the model's outputs on that same data are distilled towards the outputs the base gave before adaptation,
``weight · T² · KL(softmax(teacher / T) ‖ softmax(student / T))`` per output position. It needs no source data:
the old task is kept through how the base answered the new inputs.

The teacher is a frozen copy of the base, taken before the first step (``prepare``). The student's logits are the
ones its training loss already computed (read from the output layer as it runs), so only the teacher's forward
pass is added to a step. The positions are the backbone's label positions (``Backbone.distillation_logits``):
for Whisper the decoder's, fed the target transcript; a backbone that does not declare them is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_asr.adapters.base import register, training_only
from lightning_asr.adapters.full_ft import FullFineTuning, FullFineTuningConfig


@dataclass
class LwFConfig(FullFineTuningConfig):
    name: str = "lwf"
    weight: float = training_only(1.0)  # λ_o of the paper, which uses 1
    temperature: float = training_only(2.0)  # T of the paper, which uses 2 (Hinton et al.'s distillation)


@register("lwf", LwFConfig)
class LwF(FullFineTuning):
    """Every weight trains (as ``full_ft``, ``frozen_modules`` aside), distilled towards the base's outputs."""

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        if not self.config.weight >= 0:
            raise ValueError(f"adapter.weight={self.config.weight}: the distillation weight must be >= 0")
        if not self.config.temperature > 0:
            raise ValueError(f"adapter.temperature={self.config.temperature}: the temperature must be > 0")
        self.teacher: nn.Module | None = None
        self.student_logits: torch.Tensor | None = None
        return super().attach(model, for_training)

    def prepare(self, module) -> None:
        from lightning_asr.models.backbone import Backbone

        backbone = module.backbone
        if type(backbone).distillation_logits is Backbone.distillation_logits:
            raise ValueError(
                f"adapter.name=lwf: the {type(backbone).__name__} backbone does not declare the positions its "
                "outputs are distilled at (Backbone.distillation_logits) — fix: use another strategy on it"
            )
        self.backbone = backbone
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        output_layer = self.model.get_submodule(backbone.output_layer)
        output_layer.register_forward_hook(self.keep_student_logits)

    def keep_student_logits(self, _layer, _inputs, output: torch.Tensor) -> None:
        self.student_logits = output if self.model.training else None

    def regularizer(self, batch: dict | None = None) -> torch.Tensor:
        student = self.student_logits
        if not self.model.training or self.teacher is None or batch is None or student is None:
            return super().regularizer(batch)
        self.student_logits = None  # one step's logits are used once
        device = student.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher = self.backbone.distillation_logits(self.teacher, batch)
        if teacher.shape != student.shape:
            raise RuntimeError(
                f"LwF: the teacher's logits {tuple(teacher.shape)} do not match the student's {tuple(student.shape)}"
            )
        t = self.config.temperature
        distillation = F.kl_div(
            F.log_softmax(student.float() / t, dim=-1),
            F.log_softmax(teacher.float() / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return self.config.weight * t * t * distillation
