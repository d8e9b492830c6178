"""L2-SP (Li, Grandvalet and Davoine, ICML 2018): full fine-tuning with a penalty that pulls every trained weight
back towards its pretrained value, ``alpha / 2 · Σ ||w − w0||²``. The continual-learning baseline "stay near the
start point": plain weight decay pulls towards zero, which forgets the start point; this pulls towards it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_asr.adapters.base import register, training_only
from lightning_asr.adapters.full_ft import FullFineTuning, FullFineTuningConfig


@dataclass
class L2SPConfig(FullFineTuningConfig):
    name: str = "l2sp"
    # the weight of the squared distance to the pretrained weights, summed over every trained entry; the paper's
    # α, which it tunes in 1e-4…1e-1 (its β, for layers the base lacks, has no use here: nothing new is added)
    alpha: float = training_only(0.01)


@register("l2sp", L2SPConfig)
class L2SP(FullFineTuning):
    """Every weight trains (as ``full_ft``, ``frozen_modules`` aside), with the L2-SP penalty as the training
    loss's regularizer."""

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        if not self.config.alpha >= 0:
            raise ValueError(f"adapter.alpha={self.config.alpha}: the L2-SP penalty weight must be >= 0")
        super().attach(model, for_training)
        # the start point of every trained tensor: the matrices full fine-tuning already keeps, and the vectors
        self.start_point = {}
        if for_training:
            self.start_point = {
                name: self.initial_weights.get(name, p.detach().clone()) for name, p in self.trainable_parameters()
            }
        return model

    def regularizer(self, batch: dict | None = None) -> torch.Tensor:
        if not self.model.training or not self.start_point:
            return super().regularizer()
        current = dict(self.model.named_parameters())
        distance = sum(((current[name].float() - w0.float()) ** 2).sum() for name, w0 in self.start_point.items())
        return 0.5 * self.config.alpha * distance
