"""Base models, one file per family behind one interface (``backbone.Backbone``):

- ``whisper.py``: Whisper (presets with random weights, local or faster-whisper directories, hub ids);
- ``wav2vec2.py``: wav2vec2-CTC (presets, local directories, hub ids; a character or jamo vocabulary);
- ``import_ct2.py``: faster-whisper (CTranslate2) checkpoints turned back into trainable Whisper models.

``backbone_for(spec)`` picks the family of a ``model.spec``, ``backbone_of(model)`` that of a loaded model.
"""

from __future__ import annotations

import os

from torch import nn

from lightning_asr.models.backbone import IGNORE_INDEX, Backbone, ModelSpecError
from lightning_asr.models.wav2vec2 import CTC_PRESETS, Wav2Vec2Backbone
from lightning_asr.models.whisper import (
    PRESETS,
    WhisperBackbone,
    input_seconds,
    load_base_model,
    load_model_processor,
    preset_model,
    whisper_generation_config,
)

# the order decides ambiguous specs: a spec wav2vec2 claims is wav2vec2, every other one Whisper
BACKBONES: list[Backbone] = [Wav2Vec2Backbone(), WhisperBackbone()]


def backbone_for(spec: str | os.PathLike) -> Backbone:
    """The family of a ``model.spec``."""
    return next(backbone for backbone in BACKBONES if backbone.handles_spec(spec))


def backbone_of(model: nn.Module) -> Backbone:
    """The family of a loaded model."""
    for backbone in BACKBONES:
        if backbone.handles_model(model):
            return backbone
    raise ValueError(f"{model.__class__.__name__} is not a model family lightning_asr knows (Whisper, wav2vec2-CTC)")


def is_preset(spec: str | os.PathLike) -> bool:
    """A named architecture with random weights (pretrained by the benchmark, never downloaded)."""
    return str(spec) in PRESETS or str(spec) in CTC_PRESETS


__all__ = [
    "BACKBONES",
    "CTC_PRESETS",
    "IGNORE_INDEX",
    "PRESETS",
    "Backbone",
    "ModelSpecError",
    "backbone_for",
    "backbone_of",
    "input_seconds",
    "is_preset",
    "load_base_model",
    "load_model_processor",
    "preset_model",
    "whisper_generation_config",
]
