"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021): a small serial module after a sub-block.

After the last projection of the chosen sub-blocks (attention and/or feed-forward), inside the residual
branch: ``h + up(act(down(dropout(h))))`` with ``down``: d -> ``bottleneck`` and ``up``: ``bottleneck`` -> d.
``up`` starts at zero, so the adapted model equals the base at step 0.

``placement``: ``attention`` (self- and cross-attention outputs) and/or ``feed_forward``; both is Houlsby's
layout, ``feed_forward`` alone Pfeiffer's. Trainable parameters per adapted module:
``2 * d * bottleneck + bottleneck + d``.

The nonlinearity between the two projections means the adapter cannot be folded into W0: like GLoRA it runs
as a separate module (weight separation), and it has no dense delta W, so its sparsity figures are of its
own matrices only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_asr.adapters.base import AdapterStrategy, StrategyConfig, register, training_only
from lightning_asr.adapters.lora import wrap_linear_layers

# placement -> the backbone's preset of the linear layers an adapter follows (lightning_asr/models/)
PLACEMENTS = {"attention": "attention_output", "feed_forward": "feed_forward_output"}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
NOT_MERGEABLE = (
    "a bottleneck adapter has a nonlinearity between its projections, so it cannot be folded into the base "
    "weights; it runs as a separate module"
)


@dataclass
class BottleneckConfig(StrategyConfig):
    name: str = "bottleneck"
    bottleneck: int = 16  # the adapter's inner width
    placement: list[str] = field(default_factory=lambda: ["attention", "feed_forward"])  # Houlsby; Pfeiffer: ffn
    activation: str = "relu"
    dropout: float = training_only(0.0)
    weight_decay: float | None = training_only(None)  # the adapter matrices'; unset: optim.weight_decay
    # added to the run's seed for the initial draws (0: shared with every strategy at the seed; see LowRankConfig)
    init_offset: int = training_only(0)


class BottleneckAdapterLinear(nn.Module):
    """``y + up(act(down(dropout(y))))`` with ``y = base_layer(x)``."""

    def __init__(self, base_layer: nn.Linear, bottleneck: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        width = base_layer.out_features
        self.adapter_down = nn.Linear(width, bottleneck)
        self.adapter_up = nn.Linear(bottleneck, width)
        self.activation = ACTIVATIONS[activation]()
        self.adapter_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.adapter_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        self.output_scale = 1.0  # scale_adaptation's share of the adapter's output

    def adapter_output(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """What this layer adds to ``base_layer(x)``: a function of the base layer's output."""
        hidden = self.adapter_dropout(base_output.to(self.adapter_down.weight.dtype))
        added = self.adapter_up(self.activation(self.adapter_down(hidden))).to(base_output.dtype)
        return added if self.output_scale == 1.0 else self.output_scale * added

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter_output(x, y)

    def factors(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if not name.startswith("base_layer.")}


@register("bottleneck", BottleneckConfig)
class BottleneckAdapter(AdapterStrategy):
    not_mergeable_reason = NOT_MERGEABLE
    scalable = True  # the up-projection's output is what the adapter adds: it scales exactly

    def __init__(self, config):
        super().__init__(config)
        unknown = [p for p in self.config.placement if p not in PLACEMENTS]
        if unknown or not self.config.placement:
            raise ValueError(
                f"adapter.placement {list(self.config.placement)} — fix: choose one or both of {', '.join(PLACEMENTS)}"
            )
        if self.config.activation not in ACTIVATIONS:
            raise ValueError(f"adapter.activation={self.config.activation!r} — fix: choose {', '.join(ACTIVATIONS)}")
        if self.config.bottleneck < 1:
            raise ValueError(f"adapter.bottleneck={self.config.bottleneck} — fix: give a width of at least 1")

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        super().attach(model, for_training)
        c = self.config
        presets = [PLACEMENTS[p] for p in c.placement]
        self.target_names = wrap_linear_layers(
            model,
            presets,
            lambda linear: BottleneckAdapterLinear(linear, c.bottleneck, c.activation, c.dropout),
            key="placement",
            init_offset=c.init_offset,
        )
        return model

    def layers(self) -> dict[str, BottleneckAdapterLinear]:
        return {name: self.model.get_submodule(name) for name in self.target_names}

    def bank_modules(self) -> dict[str, nn.Module]:
        return {
            f"{name}.{part}": getattr(layer, part)
            for name, layer in self.layers().items()
            for part in ("adapter_down", "adapter_up")
        }

    def scale_adaptation(self, factor: float) -> None:
        for layer in self.layers().values():
            layer.output_scale = factor

    def settings_mismatch(self, saved: dict) -> list[str]:
        differ = super().settings_mismatch(saved)
        return differ + (["activation"] if saved.get("activation", "relu") != self.config.activation else [])

    def factor_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: layer.factors() for name, layer in self.layers().items()}
