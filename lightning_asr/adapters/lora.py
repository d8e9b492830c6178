"""LoRA (Hu et al. 2021): ``W0 x + (alpha / r) * B A dropout(x)`` on selected linear layers.

A is ``r x d_in`` (Kaiming-uniform), B is ``d_out x r`` (zero), so the adapted model equals the base at
step 0. The layer keeps PEFT's names (``base_layer``, ``lora_A``, ``lora_B``), so exported adapters load in
``peft.PeftModel.from_pretrained``. GLoRA and BLoRA subclass the config, the layer and the strategy here.

``target_modules`` are regular expressions over module names, or presets that the backbone defines
(``default``, ``self_attn``, ``cross_attn``, ``attn``, ``all-linear``: ``lightning_asr/models/``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_asr.adapters.base import AdapterStrategy, StrategyConfig, register, training_only


@dataclass
class LowRankConfig(StrategyConfig):
    """The keys every low-rank strategy shares; equal values make two of them comparable."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = training_only(0.0)  # on the adapter's input (the BLoRA authors': 0.05)
    # the adapter matrices' weight decay (the BLoRA authors': 5e-4); unset: optim.weight_decay
    weight_decay: float | None = training_only(None)
    # presets of the backbone (default, self_attn, cross_attn, attn, all-linear) or regular expressions
    target_modules: list[str] = field(default_factory=lambda: ["default"])
    # added to the run's seed for the initial draws: 0 gives each module the draws every strategy gets at the same
    # seed (common random numbers); another value draws them independently (what sharing buys can be measured)
    init_offset: int = training_only(0)


@dataclass
class LoRAConfig(LowRankConfig):
    name: str = "lora"


def resolve_targets(patterns: list[str], model: nn.Module) -> list[str]:
    """Presets of the model's backbone expand to their patterns; anything else is a regular expression."""
    from lightning_asr.models import backbone_of

    presets = backbone_of(model).target_presets
    resolved = []
    for pattern in patterns:
        resolved += presets.get(pattern, [pattern])
    return resolved


def module_seed(run_seed: int, name: str) -> int:
    """The seed of one module's adapter initialisation, from the run's seed and the module's name alone."""
    digest = hashlib.sha256(f"{run_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def wrap_linear_layers(
    model: nn.Module, patterns: list[str], make_layer, key: str = "target_modules", init_offset: int = 0
) -> list[str]:
    """Replace every ``nn.Linear`` whose name matches ``patterns`` (presets of the backbone or regular
    expressions; never the output layer) with ``make_layer(linear)``; return the wrapped names.

    Each layer is made under its own random stream, seeded by the run's seed (``torch.initial_seed()``, which
    ``seed_everything`` sets) and the module's name, and the global stream is left as it was: the same module
    gets the same initial draws at the same seed whatever the strategy draws for other modules (common random
    numbers, so a comparison of strategies at one seed is paired in its initialisation as in its data order).
    ``init_offset`` shifts the run's seed for these draws only: the data order stays the run's."""
    from lightning_asr.models import backbone_of

    resolved = resolve_targets(patterns, model)
    excluded = backbone_of(model).output_layer
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not name.startswith(excluded) and any(re.search(p, name) for p in resolved)
    ]
    if not targets:
        presets = ", ".join(backbone_of(model).target_presets)
        raise ValueError(
            f"adapter.{key} {patterns} match no linear layer of {model.__class__.__name__} — fix: use a preset "
            f"({presets}) or a pattern such as 'self_attn\\.q_proj$'"
        )
    run_seed = torch.initial_seed() + init_offset
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(module_seed(run_seed, name))
            layer = make_layer(getattr(parent, child))
        setattr(parent, child, layer)
    return targets


class LoRALinear(nn.Module):
    """``base_layer(x) + scaling * lora_B(lora_A(dropout(x)))`` (PEFT's LoRA ``Linear``, one adapter)."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.rank, self.scaling = rank, alpha / rank
        self.trained_scaling = self.scaling  # alpha / rank; ``scaling`` is a share of it under scale_adaptation
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.make_factors()
        self.merged = False

    def initial_a(self) -> torch.Tensor:
        """A's initial values (PEFT's: Kaiming-uniform), drawn first from the layer's stream, so every low-rank
        strategy starts the same module from the same A at the same seed."""
        return nn.init.kaiming_uniform_(torch.empty(self.rank, self.in_features), a=math.sqrt(5))

    def make_factors(self) -> None:
        initial_a = self.initial_a()
        self.lora_A = nn.Linear(self.in_features, self.rank, bias=False)
        self.lora_B = nn.Linear(self.rank, self.out_features, bias=False)
        with torch.no_grad():
            self.lora_A.weight.copy_(initial_a)
        nn.init.zeros_(self.lora_B.weight)

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def adapter_output(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        """What this layer adds to ``base_layer(x)`` (unmerged)."""
        return self.adapter_delta(x.to(self.lora_A.weight.dtype)).to(base_output.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        return result + self.adapter_output(x, result)

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


@register("lora", LoRAConfig)
class LoRA(AdapterStrategy):
    """Wraps every ``nn.Linear`` whose name matches ``config.target_modules`` with ``make_layer``'s layer."""

    mergeable = True
    peft_exports_factors = True
    imports_plain_peft = True
    scalable = True  # the factor B is the last map of every low-rank layer's branch: its output scales exactly

    def scale_adaptation(self, factor: float) -> None:
        for name, layer in self.layers().items():
            if layer.merged:
                raise ValueError(f"{name} is merged into the base weights: unmerge before scaling the adaptation")
            layer.scaling = factor * layer.trained_scaling

    def make_layer(self, linear: nn.Linear) -> LoRALinear:
        return LoRALinear(linear, self.config.rank, self.config.alpha, self.config.dropout)

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        super().attach(model, for_training)  # freezes everything the strategy does not own
        self.target_names = wrap_linear_layers(
            model, list(self.config.target_modules), self.make_layer, init_offset=self.config.init_offset
        )
        return model

    def layers(self) -> dict[str, LoRALinear]:
        return {name: self.model.get_submodule(name) for name in self.target_names}

    def bank_modules(self) -> dict[str, nn.Module]:
        # every map of the low-rank branch (A, B, and GLoRA's gates) is linear in its input
        return {
            f"{layer_name}.{name}": module
            for layer_name, layer in self.layers().items()
            for name, module in layer.named_children()
            if name != "base_layer" and hasattr(module, "weight")
        }

    def settings_mismatch(self, saved: dict) -> list[str]:
        # alpha / rank scales every update; the targets decide which layers the tensors belong to
        differ = super().settings_mismatch(saved)
        return differ + (["alpha"] if "alpha" in saved and saved["alpha"] != self.config.alpha else [])

    def is_peft_tensor(self, name: str) -> bool:
        return name.endswith((".lora_A.weight", ".lora_B.weight"))

    def peft_adapter_config(self) -> dict:
        """PEFT's LoraConfig keys only: targets as one regular expression that fullmatches the exact modules."""
        c = self.config
        return {
            "peft_type": "LORA",
            "task_type": None,
            "r": c.rank,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": "^(" + "|".join(n.replace(".", r"\.") for n in self.target_names) + ")$",
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": False,
            "base_model_name_or_path": getattr(self.model.config, "name_or_path", None),
        }

    def factor_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: layer.factors() for name, layer in self.layers().items()}

    def delta_weights(self) -> dict[str, torch.Tensor]:
        return {name: layer.delta_weight().detach() for name, layer in self.layers().items()}

    def base_weights(self) -> dict[str, torch.Tensor]:
        # unmerged, the wrapped layer's weight is W0 itself
        return {name: layer.base_layer.weight.detach() for name, layer in self.layers().items() if not layer.merged}

    def merge(self) -> None:
        for layer in self.layers().values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.layers().values():
            layer.unmerge()

    def is_merged(self) -> bool:
        return any(layer.merged for layer in self.layers().values())

    def merge_targets(self) -> list[torch.Tensor]:
        return [layer.base_layer.weight for layer in self.layers().values()]
