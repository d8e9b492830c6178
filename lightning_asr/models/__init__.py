"""Base models: a hub id, a local Hugging Face directory, or a named preset with random weights.

Presets use the real 51,865-token multilingual vocabulary and Whisper's special-token ids, so a preset,
once trained, decodes with the same tokenizer and generation code as openai/whisper-*:

``whisper-tiny-random``
    d_model 64, 2+2 layers, 4 heads, FFN 256; for tests and CI.
``whisper-toy``
    The embedded default's architecture, pretrained by the framework on synthetic source-domain speech:
    d_model 192, 3+3 layers, 4 heads, FFN 768 (13.3 M parameters, 10 M of them the tied token embedding).
    A first guess of d_model 256 with 4+4 layers ran at 1.65 s per batch-16 step on two CPU cores, too slow
    to pretrain within minutes; this size runs at ~1 step/s and reaches 4 % English WER after 1500 steps.

Both presets set ``max_source_positions`` to 300, so the encoder sees 6 s windows (600 mel frames) rather
than Whisper's 30 s: the synthetic clips are all shorter than 6 s and the encoder cost falls five-fold.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

from lightning_asr.tokenizer import KNOWN_IDS, VOCAB_SIZE, WHISPER_LANGUAGES, load_processor

PRESETS = {
    "whisper-tiny-random": dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_source_positions=300,
    ),
    "whisper-toy": dict(
        d_model=192,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=768,
        decoder_ffn_dim=768,
        max_source_positions=300,
    ),
}


class ModelSpecError(ValueError):
    """The model spec names nothing that can be loaded."""


def whisper_generation_config() -> GenerationConfig:
    """Generation settings of the multilingual Whisper checkpoints (language and task maps, special ids)."""
    return GenerationConfig(
        decoder_start_token_id=KNOWN_IDS["<|startoftranscript|>"],
        bos_token_id=KNOWN_IDS["<|endoftext|>"],
        eos_token_id=KNOWN_IDS["<|endoftext|>"],
        pad_token_id=KNOWN_IDS["<|endoftext|>"],
        max_length=448,
        is_multilingual=True,
        lang_to_id={
            f"<|{code}|>": KNOWN_IDS["<|startoftranscript|>"] + 1 + i for i, code in enumerate(WHISPER_LANGUAGES)
        },
        task_to_id={"translate": 50358, "transcribe": 50359},
        no_timestamps_token_id=KNOWN_IDS["<|notimestamps|>"],
        begin_suppress_tokens=[220, KNOWN_IDS["<|endoftext|>"]],
    )


def preset_model(name: str, seed: int = 0) -> WhisperForConditionalGeneration:
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE,
        num_mel_bins=80,
        max_target_positions=448,
        decoder_start_token_id=KNOWN_IDS["<|startoftranscript|>"],
        pad_token_id=KNOWN_IDS["<|endoftext|>"],
        bos_token_id=KNOWN_IDS["<|endoftext|>"],
        eos_token_id=KNOWN_IDS["<|endoftext|>"],
        **PRESETS[name],
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    model.generation_config = whisper_generation_config()
    model.config.name_or_path = name
    return model


def load_base_model(spec: str | os.PathLike, seed: int = 0) -> WhisperForConditionalGeneration:
    """Load the base model named by ``spec``: a preset name (random weights from ``seed``), a local
    Hugging Face directory (``config.json`` + safetensors), a faster-whisper (CTranslate2) directory
    (converted once into the cache, see ``import_ct2``), or a hub id (needs the hub)."""
    spec = str(spec)
    if spec in PRESETS:
        return preset_model(spec, seed)
    path = Path(spec)
    if path.is_dir():
        from lightning_asr.models import import_ct2

        if import_ct2.is_ct2_dir(path):
            path = import_ct2.converted_model_dir(path)
        if not (path / "config.json").exists():
            raise ModelSpecError(f"{path} has no config.json — fix: point to a directory written by save_pretrained")
        model = WhisperForConditionalGeneration.from_pretrained(str(path), use_safetensors=True)
    elif path.exists() or spec.startswith((".", "/")):
        raise ModelSpecError(
            f"{spec} is not a model directory — fix: give a preset ({', '.join(PRESETS)}), "
            "a directory with config.json, or a hub id"
        )
    else:
        try:
            model = WhisperForConditionalGeneration.from_pretrained(spec)
        except OSError as err:
            raise ModelSpecError(
                f"cannot load {spec!r} from the model hub ({err.__class__.__name__}). Offline, use a preset "
                f"({', '.join(PRESETS)}) or a local directory"
            ) from err
    if not hasattr(model.generation_config, "lang_to_id") and model.config.vocab_size == VOCAB_SIZE:
        model.generation_config = whisper_generation_config()
    return model


def input_seconds(model: WhisperForConditionalGeneration) -> int:
    """The encoder's window in seconds: 2 mel frames per position, 100 frames per second."""
    return model.config.max_source_positions * 2 // 100


def load_model_processor(spec: str | os.PathLike, tokenizer: str | None = None, seed: int = 0):
    """Model and matching processor: the tokenizer from the model directory if it has one, else built in."""
    model = load_base_model(spec, seed)
    path = Path(str(spec))
    from lightning_asr.models import import_ct2

    if import_ct2.is_ct2_dir(path):
        path = import_ct2.converted_model_dir(path)  # the conversion load_base_model wrote or reused
    if tokenizer is None and path.is_dir() and (path / "tokenizer_config.json").exists():
        tokenizer = str(path)
    if tokenizer is not None and (model.config.vocab_size != VOCAB_SIZE or model.config.num_mel_bins != 80):
        # English-only (51,864 tokens) and large-v3 (51,866 tokens, 128 mel bins): the built-in tokenizer and
        # its 51,865-token check do not apply, the checkpoint's own tokenizer does.
        return model, import_ct2.load_checkpoint_processor(tokenizer, model, chunk_length=input_seconds(model))
    return model, load_processor(tokenizer, chunk_length=input_seconds(model))
