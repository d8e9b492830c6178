"""GLoRA: gated LoRA (Kim et al. 2024, arXiv 2406.02562), types 1-4.

LoRA plus a gated linear unit ``GLU(h) = (W_a h + b_a) * sigmoid(W_g h + b_g)`` (or a sigmoid gate) in the
adapter path. The paper names where a gate may sit but its exact equations were not available to us; this
table is our documented reading, kept in this one place (``GLORA_TYPES``) so it can be corrected against the
paper. With ``z = A x`` and ``s = alpha / r``:

====  ===========================  ==============================================  ===============================
type  gate on                      delta(x)                                        extra parameters per layer
====  ===========================  ==============================================  ===============================
1     low-rank features            s * B [(W_a z + b_a) * sigmoid(W_g z + b_g)]    2 r^2 + 2 r
2     input hidden features        s * B A [x * sigmoid(U V x + b)]                2 r d_in + d_in
3     output hidden features       s * (B z) * sigmoid(C z + c)                    r d_out + d_out
4     low-rank and output (1 + 3)  s * (B g) * sigmoid(C z + c), g = GLU_1(z)      2 r^2 + 2 r + r d_out + d_out
====  ===========================  ==============================================  ===============================

B starts at zero, so every type equals the base model at step 0. W_a starts as the identity, W_g, U, C and
b_a at zero, V Kaiming-uniform, and the gates' biases at ``gate_init``: 0 opens every gate at
sigmoid(0) = 0.5, so types 1-3 start as LoRA at half its scale and type 4 at a quarter; ``gate_init: 4``
opens them at sigmoid(4) = 0.98, LoRA's scale, which separates what gating does from a smaller step. Whether a gate sits in self- or cross-attention
is chosen by ``target_modules`` presets (``self_attn``, ``cross_attn``, ...), for any type. The gates depend
on the input, so GLoRA cannot be folded into W0: it stays a separate module (weight separation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lightning_asr.adapters.base import register, training_only
from lightning_asr.adapters.lora import LoRA, LoRALinear, LowRankConfig

GLORA_TYPES = {
    1: {"gate_on": "low-rank features", "extra_parameters": lambda r, d_in, d_out: 2 * r * r + 2 * r},
    2: {"gate_on": "input hidden features", "extra_parameters": lambda r, d_in, d_out: 2 * r * d_in + d_in},
    3: {"gate_on": "output hidden features", "extra_parameters": lambda r, d_in, d_out: r * d_out + d_out},
    4: {
        "gate_on": "low-rank and output features",
        "extra_parameters": lambda r, d_in, d_out: 2 * r * r + 2 * r + r * d_out + d_out,
    },
}


@dataclass
class GLoRAConfig(LowRankConfig):
    name: str = "glora"
    type: int = 1  # 1-4: where the gate sits (GLORA_TYPES)
    gate_init: float = training_only(0.0)  # the gates' bias at step 0: sigmoid(gate_init) is how open they start


NOT_MERGEABLE = (
    "GLoRA's gates depend on the input, so it cannot be folded into the base weights; it runs as a separate module"
)


class GLoRALinear(LoRALinear):
    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        glora_type: int = 1,
        gate_init: float = 0.0,
    ):
        if glora_type not in GLORA_TYPES:
            raise ValueError(f"GLoRA type {glora_type} does not exist; choose 1, 2, 3 or 4")
        self.glora_type = glora_type
        super().__init__(base_layer, rank, alpha, dropout)
        r, d_in, d_out = rank, self.in_features, self.out_features
        if glora_type in (1, 4):  # GLU on the low-rank features
            self.glu_value = nn.Linear(r, r)
            self.glu_gate = nn.Linear(r, r)
            with torch.no_grad():
                self.glu_value.weight.copy_(torch.eye(r))
                self.glu_value.bias.zero_()
                self.glu_gate.weight.zero_()
                self.glu_gate.bias.fill_(gate_init)
        if glora_type == 2:  # sigmoid(U V x + b) on the input features
            self.input_gate_down = nn.Linear(d_in, r, bias=False)  # V
            self.input_gate_up = nn.Linear(r, d_in)  # U, b
            nn.init.kaiming_uniform_(self.input_gate_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.input_gate_up.weight)
            nn.init.constant_(self.input_gate_up.bias, gate_init)
        if glora_type in (3, 4):  # sigmoid(C z + c) on the output features
            self.output_gate = nn.Linear(r, d_out)
            nn.init.zeros_(self.output_gate.weight)
            nn.init.constant_(self.output_gate.bias, gate_init)

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lora_dropout(x)
        if self.glora_type == 2:
            x = x * torch.sigmoid(self.input_gate_up(self.input_gate_down(x)))
        z = self.lora_A(x)
        hidden = z
        if self.glora_type in (1, 4):
            hidden = self.glu_value(z) * torch.sigmoid(self.glu_gate(z))
        out = self.lora_B(hidden)
        if self.glora_type in (3, 4):
            out = out * torch.sigmoid(self.output_gate(z))
        return out * self.scaling

    def merge(self) -> None:
        raise NotImplementedError(self.not_mergeable_reason)

    def extra_parameter_count(self) -> int:
        return GLORA_TYPES[self.glora_type]["extra_parameters"](self.rank, self.in_features, self.out_features)


@register("glora", GLoRAConfig)
class GLoRA(LoRA):
    mergeable = False
    not_mergeable_reason = NOT_MERGEABLE
    # PEFT would load A and B and silently drop the gates, giving another model: no PEFT files, and a
    # directory without the side file is refused.
    peft_exports_factors = False
    imports_plain_peft = False

    def make_layer(self, linear: nn.Linear) -> GLoRALinear:
        c = self.config
        return GLoRALinear(linear, c.rank, c.alpha, c.dropout, c.type, c.gate_init)

    def merge(self) -> None:
        raise NotImplementedError(self.not_mergeable_reason)
