"""Full fine-tuning (every weight trains) and ``frozen`` (nothing trains: the base model, for evaluation)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_asr.adapters.base import AdapterStrategy, matches_any, register


@register("full_ft")
class FullFineTuning(AdapterStrategy):
    """All parameters train, except names matching ``config.frozen_modules`` (regular expressions)."""

    def attach(self, model: nn.Module) -> nn.Module:
        super().attach(model)
        frozen = list(self.config.frozen_modules or [])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not matches_any(name, frozen))
        # W0, to measure the change full fine-tuning makes (sparsity of W - W0)
        self.initial_weights = {n: p.detach().clone() for n, p in self.trainable_parameters() if p.ndim >= 2}
        return model

    def delta_weights(self) -> dict[str, torch.Tensor]:
        current = dict(self.model.named_parameters())
        return {name.removesuffix(".weight"): current[name].detach() - w0 for name, w0 in self.initial_weights.items()}


@register("frozen")
class Frozen(AdapterStrategy):
    """Nothing trains: evaluates the base model through the same code path as every strategy."""
