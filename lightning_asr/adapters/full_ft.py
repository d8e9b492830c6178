"""Full fine-tuning (every weight trains) and ``frozen`` (nothing trains: the base model, for evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_asr.adapters.base import AdapterStrategy, StrategyConfig, matches_any, register

FULL_WEIGHTS_NOTE = "full fine-tuning has no separate adapter: its weights are its own, nothing to fold into a base"


@dataclass
class FullFineTuningConfig(StrategyConfig):
    name: str = "full_ft"
    frozen_modules: list[str] = field(default_factory=list)  # parameter-name patterns kept frozen (and shared)


@dataclass
class FrozenConfig(StrategyConfig):
    name: str = "frozen"


@register("full_ft", FullFineTuningConfig)
class FullFineTuning(AdapterStrategy):
    """All parameters train, except names matching ``config.frozen_modules`` (regular expressions)."""

    not_mergeable_reason = FULL_WEIGHTS_NOTE

    def owns_base_parameter(self, name: str) -> bool:
        return not matches_any(name, list(self.config.frozen_modules or []))

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        super().attach(model, for_training)
        # W0, to measure the change full fine-tuning makes (sparsity of W - W0): a whole extra model, so
        # only where training statistics are wanted
        self.initial_weights = {}
        if for_training:
            self.initial_weights = {n: p.detach().clone() for n, p in self.trainable_parameters() if p.ndim >= 2}
        return model

    def delta_weights(self) -> dict[str, torch.Tensor]:
        current = dict(self.model.named_parameters())
        return {name.removesuffix(".weight"): current[name].detach() - w0 for name, w0 in self.initial_weights.items()}

    def base_weights(self) -> dict[str, torch.Tensor]:
        return {name.removesuffix(".weight"): w0 for name, w0 in self.initial_weights.items()}


@register("frozen", FrozenConfig)
class Frozen(AdapterStrategy):
    """Nothing of the base trains (``modules_to_save`` aside): evaluates the base model through the same code
    path as every strategy."""

    unadapted = True
