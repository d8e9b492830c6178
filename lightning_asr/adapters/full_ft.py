"""Full fine-tuning (every weight trains) and ``frozen`` (nothing trains: the base model, for evaluation)."""

from __future__ import annotations

from torch import nn

from lightning_asr.adapters.base import AdapterStrategy, matches_any, register


@register("full_ft")
class FullFineTuning(AdapterStrategy):
    """All parameters train, except names matching ``config.frozen_modules`` (regular expressions)."""

    def attach(self, model: nn.Module) -> nn.Module:
        self.model = model
        frozen = list(self.config.frozen_modules or [])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not matches_any(name, frozen))
        return model


@register("frozen")
class Frozen(AdapterStrategy):
    """Nothing trains: evaluates the base model through the same code path as every strategy."""
