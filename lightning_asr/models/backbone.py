"""The interface a base-model family implements: load, collate, loss, decode, default target modules, window.

``ASRModule``, the data module and the server call a ``Backbone`` and never ask which family a model is.
Whisper (encoder-decoder, log-mel windows, token cross-entropy, autoregressive decoding) and wav2vec2-CTC
(raw waveforms of any length, CTC loss, frame-wise greedy decoding) each live in one file under
``lightning_asr/models/``; a new family is one more file and one line in ``BACKBONES`` (``models/__init__.py``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

IGNORE_INDEX = -100  # label padding: no loss, no token


class ModelSpecError(ValueError):
    """The model spec names nothing that can be loaded."""


class Backbone:
    """One family of base models. Methods take the model (and its processor) they work on: a backbone holds
    no state, so one instance serves every model of its family."""

    name = "base"
    # target-module presets of the low-rank strategies: name -> regular expressions over module names
    target_presets: dict[str, list[str]] = {}
    output_layer = ""  # the output projection's module name: never wrapped by an adapter
    cached_input: str | None = None  # the fixed-shape model input a corpus's features can be cached as

    def handles_spec(self, spec: str | os.PathLike) -> bool:
        """Whether a ``model.spec`` (preset, local directory or hub id) names a model of this family."""
        raise NotImplementedError

    def handles_model(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def derive_from_data(self, config, utterances) -> dict:
        """Run-config updates (dotted keys) this family takes from the data, e.g. a CTC vocabulary; empty when
        nothing is to be derived. ``utterances.train`` and ``.val`` read the manifests on first use."""
        return {}

    def output_units(self, model_config, utterances: list) -> set[str]:
        """The output units (tokens, characters) the utterances' transcripts are made of."""
        raise NotImplementedError

    def label_count(self, model_config, utterances: list) -> int:
        """The number of target units (what the loss averages over) of these utterances' labels."""
        raise NotImplementedError

    def load(self, model_config) -> tuple[nn.Module, object]:
        """The model and its processor for ``model_config`` (``TrainConfig.model``)."""
        raise NotImplementedError

    def check_decode(self, decode_config) -> None:
        """Refuse decode settings this family cannot honour (with the fix)."""

    def window_seconds(self, processor) -> float | None:
        """The longest input the encoder takes, or None where any length goes."""
        return None

    def collator(self, processor, augment: nn.Module | None = None):
        """A callable that batches ``(Utterance, samples)`` pairs into model inputs, labels and metadata."""
        raise NotImplementedError

    def input_signature(self, processor) -> dict:
        """The settings that decide ``cached_input`` (a cache made under other settings is not read)."""
        return {}

    def audio_inputs(self, processor, samples: list) -> dict[str, torch.Tensor]:
        """Model inputs for 16 kHz mono float arrays, each no longer than the window."""
        raise NotImplementedError

    def auxiliary_loss(self, model: nn.Module, model_config) -> nn.Module | None:
        """A module whose loss training adds (Whisper: the encoder's CTC head), or None."""
        return None

    def loss(
        self, model: nn.Module, batch: dict, auxiliary: nn.Module | None = None, input_dropout: float = 0.0
    ) -> tuple[torch.Tensor, int]:
        """Mean loss per target unit (mixed with ``auxiliary``'s where given), and the number of target units.
        ``input_dropout``: the share of a decoder's text inputs replaced while training
        (``model.decoder_input_dropout``); a family without a decoder rejects a non-zero share."""
        raise NotImplementedError

    def utterance_losses(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per utterance of the batch, the summed negative log-likelihood of its labels (nats: teacher-forced
        cross-entropy for a decoder, the CTC loss for CTC) and its number of target units. Their ratio pooled
        over a set is the set's cross-entropy per unit, a continuous score beside the decoded error rates."""
        raise NotImplementedError(f"{type(self).__name__} does not score utterances by likelihood")

    def distillation_logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The output layer's logits at the positions a training loss reads, as ``(positions, classes)``, in the
        order the training loss computes them (a distillation baseline, LwF, compares two models' there)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare the positions its outputs are distilled at")

    def decode(
        self, model: nn.Module, tokenizer, inputs: dict, languages: list[str] | str | None, decode_config
    ) -> tuple[list[str], int]:
        """Texts of a batch of inputs and how many hit ``max_new_tokens``. ``languages``: one code per row, one
        for every row, or None (detected per row, where the family knows languages)."""
        raise NotImplementedError

    def detect_language(self, model: nn.Module, inputs: dict) -> str | None:
        """The language of the first row, or None where the family has no language control."""
        return None

    def checkpointing_entries(self, model: nn.Module) -> list[nn.Module]:
        """Modules whose outputs must require grad for reentrant gradient checkpointing to reach adapters."""
        return []
