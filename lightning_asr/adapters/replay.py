"""Experience replay: full fine-tuning on the new data with a small buffer of the old data rehearsed at every step.
CL-MASR's strongest practical baseline (Della Libera et al., 2023: Whisper's AWER 50.8 with replay against 98.5
for plain fine-tuning).

The buffer is the first ``source_utterances`` of each source training set (``source_manifests``; the benchmark
fills in its base's source sets), read before the first step. Every training step draws ``replay_per_step``
utterances from it and adds ``weight`` times their loss (the backbone's training loss, token-mean
cross-entropy for Whisper) to the step's: with ``weight`` 1 the rehearsed utterances count as much as the
step's target batch. The draw uses the global generator, which training seeds from each batch's place, so a
resumed run rehearses what the uninterrupted one did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_asr.adapters.base import register, training_only
from lightning_asr.adapters.full_ft import FullFineTuning, FullFineTuningConfig


@dataclass
class ReplayConfig(FullFineTuningConfig):
    name: str = "replay"
    # the buffer: the first this many utterances of each source training set (k of CL-MASR's replay)
    source_utterances: int = training_only(32)
    source_manifests: list[str] = training_only(default_factory=list)
    replay_per_step: int = training_only(4)  # buffer utterances rehearsed at every step
    weight: float = training_only(1.0)  # of the rehearsed loss against the step's own


@register("replay", ReplayConfig)
class Replay(FullFineTuning):
    """Every weight trains (as ``full_ft``, ``frozen_modules`` aside), rehearsing a buffer of source utterances."""

    reads_source_data = True

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        for key in ("source_utterances", "replay_per_step"):
            if self.config[key] < 1:
                raise ValueError(f"adapter.{key}={self.config[key]}: give at least 1")
        if not self.config.weight >= 0:
            raise ValueError(f"adapter.weight={self.config.weight}: the replay weight must be >= 0")
        self.buffer: list = []
        return super().attach(model, for_training)

    def prepare(self, module) -> None:
        purpose = "rehearses the source sets' training data"
        self.buffer = self.read_source_utterances(module, purpose, self.config.source_utterances)
        self.collate = module.backbone.collator(module.processor)
        self.backbone = module.backbone

    def regularizer(self, batch: dict | None = None) -> torch.Tensor:
        if not self.model.training or not self.buffer:
            return super().regularizer(batch)
        chosen = torch.randperm(len(self.buffer))[: self.config.replay_per_step].tolist()
        device = next(self.model.parameters()).device
        rehearsed = self.collate([self.buffer[i] for i in chosen])
        rehearsed = {k: v.to(device) if torch.is_tensor(v) else v for k, v in rehearsed.items()}
        loss, _ = self.backbone.loss(self.model, rehearsed)
        return self.config.weight * loss
