"""A strategy that lives outside the package, served through ``--plugin ia3_scaling``: IA3's learned
per-channel scale of a layer's output (Liu et al. 2022), held as a bare ``nn.Parameter`` on its wrapper.

It declares no bank modules, so a server must decode each of its users alone: a bank that gathered only the
wrapper's sub-modules would leave every row with whatever scale the slot last held.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_asr.adapters import AdapterStrategy, StrategyConfig, register
from lightning_asr.adapters.lora import wrap_linear_layers


@dataclass
class IA3ScalingConfig(StrategyConfig):
    name: str = "ia3-scaling"
    target_modules: list[str] = field(default_factory=lambda: [r"\.fc1$"])


class ScaledOutput(nn.Module):
    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.scale = nn.Parameter(torch.ones(base_layer.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.scale


@register("ia3-scaling", IA3ScalingConfig)
class IA3Scaling(AdapterStrategy):
    def attach(self, model, for_training=True):
        super().attach(model, for_training)
        self.target_names = wrap_linear_layers(model, list(self.config.target_modules), ScaledOutput)
        return model

    def layers(self) -> dict[str, ScaledOutput]:
        return {name: self.model.get_submodule(name) for name in self.target_names}
