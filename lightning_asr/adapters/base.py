"""The interface every adaptation strategy implements, and the registry that selects one by name.

A strategy owns one decision: which weights change and how. ``attach`` injects its modules into the base
model and freezes what it does not train; the rest of the framework only talks to this interface.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from lightning_asr.adapters.export import base_fingerprint, read_adapter_tensors, save_adapter
from lightning_asr.adapters.sparsity import sparsity_report

STRATEGIES: dict[str, type[AdapterStrategy]] = {}


def register(name: str) -> Callable[[type], type]:
    def decorator(cls: type) -> type:
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorator


def build_strategy(config) -> AdapterStrategy:
    """The strategy named by ``config.name`` (``adapter.name`` in a run config), built from ``config``."""
    if config.name not in STRATEGIES:
        raise ValueError(f"unknown adapter strategy {config.name!r}; choose from {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[config.name](config)


def matches_any(name: str, patterns: list[str]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


class AdapterStrategy:
    """Base class: no adapter modules, no regulariser. Subclasses override what they change."""

    name = "base"

    def __init__(self, config):
        self.config = config
        self.model: nn.Module | None = None

    def attach(self, model: nn.Module) -> nn.Module:
        """Inject this strategy's modules into ``model`` and set ``requires_grad``; return the model.
        The base is fingerprinted first, so adapters saved later refuse to load onto another base."""
        self.model = model
        self.base_fingerprint = base_fingerprint(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        to_save = list(getattr(self.config, "modules_to_save", None) or [])
        for name, parameter in model.named_parameters():
            if to_save and matches_any(name, to_save):
                parameter.requires_grad_(True)
        new_tokens = list(getattr(self.config, "new_tokens", None) or [])
        if new_tokens:  # rows for added tokens train under every strategy (lightning_asr/vocabulary.py)
            from lightning_asr.vocabulary import extend_model_vocabulary

            extend_model_vocabulary(model, len(new_tokens)).requires_grad_(True)
        return model

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def regularizer(self) -> torch.Tensor:
        """Added to the training loss (BLoRA's KL term); zero for strategies without one."""
        return torch.zeros((), device=next(self.model.parameters()).device)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that differ from the base model: all a device needs besides the shared base."""
        return {n: p.detach().clone() for n, p in self.trainable_parameters()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        own = dict(self.model.named_parameters())
        unknown = sorted(set(state) - set(own))
        missing = sorted(set(n for n, _ in self.trainable_parameters()) - set(state))
        if strict and (unknown or missing):
            raise KeyError(
                f"adapter state does not fit this {self.name} strategy: unknown {unknown[:5]}, missing {missing[:5]}"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if name in own:
                    own[name].copy_(tensor)

    def merge(self) -> None:
        """Fold the adaptation into the base weights for inference (no-op where the weights are the base's)."""

    def unmerge(self) -> None:
        """Undo ``merge``."""

    def save_adapter(self, directory, overwrite: bool = False):
        """Adapter-only export (safetensors + JSON; PEFT files for LoRA and BLoRA). See ``adapters.export``."""
        return save_adapter(self, directory, overwrite)

    def load_adapter(self, directory, ignore_fingerprint: bool = False) -> None:
        """Load an exported adapter; refuses another strategy, another base model or missing files."""
        self.load_adapter_state_dict(read_adapter_tensors(self, directory, ignore_fingerprint), strict=True)

    def factor_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The adapter's own tensors per adapted module (none for strategies without adapter modules)."""
        return {}

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """The effective change of each adapted weight matrix, by module name."""
        return {}

    def sparsity_stats(self) -> dict:
        """Histograms of |entries| and fractions below 1e-1 ... 1e-6, per module and overall."""
        with torch.no_grad():
            return sparsity_report(self.factor_tensors(), self.delta_weights())

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for _, p in self.trainable_parameters())
        return {"trainable": trainable, "total": total}
