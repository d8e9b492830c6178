"""LoRA (Hu et al. 2021): ``W0 x + (alpha / r) * B A dropout(x)`` on selected linear layers.

A is ``r x d_in`` (Kaiming-uniform), B is ``d_out x r`` (zero), so the adapted model equals the base at
step 0. The layer keeps PEFT's names (``base_layer``, ``lora_A``, ``lora_B``), so exported adapters load in
``peft.PeftModel.from_pretrained``. GLoRA and BLoRA subclass the layer and the strategy in this file.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from lightning_asr.adapters.base import AdapterStrategy, register

# Target presets over Whisper's module names (regular expressions, matched with re.search).
_ATTENTION = r"(q_proj|k_proj|v_proj|out_proj)$"
# Whisper names its attention blocks self_attn/encoder_attn and its feed-forward fc1/fc2; wav2vec2 names
# them attention (self-attention only) and feed_forward.intermediate_dense/output_dense.
TARGET_PRESETS = {
    "default": [r"(self_attn|encoder_attn|\.attention)\.(q_proj|v_proj)$"],  # q, v of every attention block
    "self_attn": [r"(self_attn|\.attention)\." + _ATTENTION],  # q, k, v, out of self-attention
    "cross_attn": [r"encoder_attn\." + _ATTENTION],  # q, k, v, out of decoder cross-attention (Whisper)
    "attn": [r"(self_attn|encoder_attn|\.attention)\." + _ATTENTION],
    "all-linear": [
        r"(self_attn|encoder_attn|\.attention)\." + _ATTENTION,
        r"\.(fc1|fc2)$",
        r"\.feed_forward\.(intermediate_dense|output_dense)$",
    ],
}


def resolve_targets(patterns: list[str]) -> list[str]:
    """Presets expand to their patterns; anything else is a regular expression over module names."""
    resolved = []
    for pattern in patterns:
        resolved += TARGET_PRESETS.get(pattern, [pattern])
    return resolved


class LoRALinear(nn.Module):
    """``base_layer(x) + scaling * lora_B(lora_A(dropout(x)))`` (PEFT's LoRA ``Linear``, one adapter)."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.rank, self.scaling = rank, alpha / rank
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.make_factors()
        self.merged = False

    def make_factors(self) -> None:
        self.lora_A = nn.Linear(self.in_features, self.rank, bias=False)
        self.lora_B = nn.Linear(self.rank, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        return result + self.adapter_delta(x.to(self.lora_A.weight.dtype)).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense ``d_out x d_in`` change this adapter makes to W0 (as merged)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def factors(self) -> dict[str, torch.Tensor]:
        """The adapter's own tensors, by name, for sparsity statistics."""
        return {name: p.detach() for name, p in self.named_parameters() if not name.startswith("base_layer.")}

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False


@register("lora")
class LoRA(AdapterStrategy):
    """Wraps every ``nn.Linear`` whose name matches ``config.target_modules`` with ``make_layer``'s layer."""

    peft_exports_factors = True  # A and B alone reproduce the adapted model, so PEFT files are written
    imports_plain_peft = True  # a directory PEFT wrote (no side file) holds everything a LoRA needs

    def make_layer(self, linear: nn.Linear) -> LoRALinear:
        return LoRALinear(linear, self.config.rank, self.config.alpha, self.config.dropout)

    def attach(self, model: nn.Module) -> nn.Module:
        super().attach(model)  # freezes everything
        patterns = resolve_targets(list(self.config.target_modules))
        targets = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
            and not name.startswith("proj_out")
            and any(re.search(p, name) for p in patterns)
        ]
        if not targets:
            raise ValueError(
                f"adapter.target_modules {list(self.config.target_modules)} match no linear layer of "
                f"{model.__class__.__name__} — fix: use a preset ({', '.join(TARGET_PRESETS)}) or a "
                "pattern such as 'self_attn\\.q_proj$'"
            )
        for name in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, self.make_layer(getattr(parent, child)))
        self.target_names = targets
        return model

    def layers(self) -> dict[str, LoRALinear]:
        return {name: self.model.get_submodule(name) for name in self.target_names}

    def factor_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            name: {k: v for k, v in layer.factors().items() if not k.endswith("rho")}
            for name, layer in self.layers().items()
        }

    def delta_weights(self) -> dict[str, torch.Tensor]:
        return {name: layer.delta_weight().detach() for name, layer in self.layers().items()}

    def merge(self) -> None:
        for layer in self.layers().values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.layers().values():
            layer.unmerge()
