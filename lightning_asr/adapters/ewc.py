"""EWC, elastic weight consolidation (Kirkpatrick et al., PNAS 2017): full fine-tuning with a penalty that keeps
each weight near its pretrained value in proportion to how much the source data's likelihood depends on it,
``strength / 2 · Σ F_i (w_i − w0_i)²``. L2-SP is the same penalty with every F_i equal.

F is the diagonal empirical Fisher information at the pretrained weights, estimated once before the first step
on the first ``source_utterances`` of each source training set, one utterance at a time: the mean over utterances
of the squared gradient of the utterance's loss (the backbone's training loss: token-mean cross-entropy for
Whisper). It is then scaled so that its mean over all trained entries is 1: ``strength`` reads on L2-SP's
``alpha`` scale (EWC with a flat Fisher would be L2-SP with alpha = strength), and what EWC adds is where the
pull goes, not how strong it is overall.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_asr.adapters.base import register, training_only
from lightning_asr.adapters.full_ft import FullFineTuning, FullFineTuningConfig


@dataclass
class EWCConfig(FullFineTuningConfig):
    name: str = "ewc"
    strength: float = training_only(0.01)  # the penalty's weight, on L2-SP's alpha scale (see above)
    # the source sets' training manifests the Fisher information is estimated on (the benchmark fills in its
    # base's source sets where this is empty) and how many utterances of each it reads
    source_manifests: list[str] = training_only(default_factory=list)
    source_utterances: int = training_only(32)


@register("ewc", EWCConfig)
class EWC(FullFineTuning):
    """Every weight trains (as ``full_ft``, ``frozen_modules`` aside), pulled towards the base's weights by
    the source data's Fisher information."""

    reads_source_data = True

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        if not self.config.strength >= 0:
            raise ValueError(f"adapter.strength={self.config.strength}: the EWC penalty weight must be >= 0")
        if self.config.source_utterances < 1:
            raise ValueError(f"adapter.source_utterances={self.config.source_utterances}: give at least 1")
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        return super().attach(model, for_training)

    def prepare(self, module) -> None:
        purpose = "estimates its Fisher information on the source sets' training data"
        utterances = self.read_source_utterances(module, purpose, self.config.source_utterances)
        self.anchor = {name: p.detach().clone() for name, p in self.trainable_parameters()}
        self.fisher = source_fisher(module, utterances)

    def regularizer(self, batch: dict | None = None) -> torch.Tensor:
        if not self.model.training or not self.fisher:
            return super().regularizer(batch)
        current = dict(self.model.named_parameters())
        penalty = sum(
            (self.fisher[name] * (current[name].float() - anchor.float()) ** 2).sum()
            for name, anchor in self.anchor.items()
        )
        return 0.5 * self.config.strength * penalty


def source_fisher(module, utterances: list) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher information of ``module``'s trainable weights on ``utterances`` (dataset
    items, one per backward pass), scaled to mean 1 over all entries."""
    collate = module.backbone.collator(module.processor)
    model = module.model
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in trained}
    device = next(model.parameters()).device
    was_training, count = model.training, 0
    model.eval()  # no dropout: the information of the pretrained model as it is
    try:
        for item in utterances:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate([item]).items()}
            model.zero_grad(set_to_none=True)
            loss, _ = module.backbone.loss(model, batch)
            loss.backward()
            for name, p in trained:
                if p.grad is not None:
                    sums[name] += p.grad.detach().float() ** 2
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    total = sum(float(s.sum()) for s in sums.values())
    entries = sum(s.numel() for s in sums.values())
    if count == 0 or total <= 0:
        raise ValueError("no source utterance gave a gradient: the Fisher information is 0")
    scale = entries / total  # mean 1 over every trained entry (the 1/count cancels)
    return {name: s * scale for name, s in sums.items()}
