"""wav2vec2-CTC bases: a hub id, a local directory, or a random tiny preset; a character vocabulary.

A CTC model predicts one output unit per 20 ms frame, so its vocabulary is small and closed: characters
(Hangul syllables, Han characters, Latin letters) or, with ``model.ctc_unit: jamo``, Korean as conjoining
jamo plus Latin letters: 67 jamo cover every Hangul syllable, so code-switched Korean never meets an unseen
unit (the GLoRA seed's token normalisation, applied to the output units). Targets are the scoring
normaliser's text (``lightning_asr.text``: lower case, no punctuation); jamo output is recomposed into
syllables (NFC) when decoded.

A directory with its own ``vocab.json`` keeps it (and its trained output layer). Otherwise the vocabulary is
built from the run's training and validation manifests, kept in the run config (``model.ctc_tokens``) so a
checkpoint rebuilds the same one, and the output layer (``lm_head``) is new: it then trains under every
strategy and is exported with the adapter (``adapter.modules_to_save``).

``wav2vec2-tiny-random``
    hidden 64, 2 transformer layers, 4 heads, FFN 128, a 7-layer convolutional feature encoder of 32
    channels (the standard 320x downsampling: 50 frames per second); for tests and CI.
``wav2vec2-toy``
    the size of the Whisper toy's encoder (hidden 192, 3 layers, 4 heads, FFN 768) over a 128-channel
    feature encoder, with wav2vec2's default dropout and time masking; for comparisons on a CPU.
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_asr.models.backbone import IGNORE_INDEX, Backbone
from lightning_asr.text import TextNormalizer, map_compatibility_jamo

PAD, UNK, WORD_DELIMITER = "<pad>", "<unk>", "|"
CTC_PRESETS = {
    "wav2vec2-tiny-random": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        mask_time_prob=0.0,
    ),
    "wav2vec2-toy": dict(
        hidden_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=768,
        conv_dim=(128,) * 7,
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
    ),
}
CTC_MODEL_TYPES = ("wav2vec2",)
CTC_UNITS = ("chars", "jamo")


def ctc_target(text: str, lang: str, jamo: bool) -> str:
    """What a CTC model is trained to emit for ``text``: normalised, Korean as conjoining jamo if ``jamo``."""
    text = TextNormalizer(lang)(text)
    return unicodedata.normalize("NFD", map_compatibility_jamo(text)) if jamo else text


def build_ctc_tokens(texts_and_langs, unit: str) -> list[str]:
    """The sorted output units of ``(text, lang)`` pairs (spaces become the word delimiter)."""
    if unit not in CTC_UNITS:
        raise ValueError(f"model.ctc_unit={unit!r}: choose {' or '.join(CTC_UNITS)}")
    units = {c for text, lang in texts_and_langs for c in ctc_target(text, lang, unit == "jamo") if not c.isspace()}
    return sorted(units)


def ctc_tokenizer(tokens: list[str]):
    """A ``Wav2Vec2CTCTokenizer`` over ``<pad>`` (the CTC blank, id 0), ``<unk>``, ``|`` and ``tokens``."""
    from transformers import Wav2Vec2CTCTokenizer

    vocab = {PAD: 0, UNK: 1, WORD_DELIMITER: 2, **{t: i + 3 for i, t in enumerate(tokens)}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab, ensure_ascii=False))
        return Wav2Vec2CTCTokenizer(
            str(path),
            unk_token=UNK,
            pad_token=PAD,
            word_delimiter_token=WORD_DELIMITER,
            bos_token=None,
            eos_token=None,
            do_lower_case=False,
        )


def uses_jamo(tokenizer) -> bool:
    return any("\u1100" <= t[0] <= "\u11ff" for t in tokenizer.get_vocab() if t)


def ctc_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )


def load_ctc_model_processor(spec: str | os.PathLike, tokens: list[str] | None, seed: int = 0):
    """Model, processor, and whether the output layer is new (no vocabulary of its own came with it)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

    spec = str(spec)
    own_vocabulary = Path(spec, "vocab.json").exists()
    if own_vocabulary:
        processor = Wav2Vec2Processor.from_pretrained(spec)
    else:
        if not tokens:
            raise ValueError(
                f"{spec} has no vocab.json and no model.ctc_tokens were given — fix: give training "
                "manifests (the vocabulary is built from them) or a model directory with its vocabulary"
            )
        processor = Wav2Vec2Processor(feature_extractor=ctc_feature_extractor(), tokenizer=ctc_tokenizer(tokens))
    vocab_size = len(processor.tokenizer)
    common = dict(
        vocab_size=vocab_size,
        pad_token_id=processor.tokenizer.pad_token_id,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if spec in CTC_PRESETS:
            model = Wav2Vec2ForCTC(Wav2Vec2Config(**CTC_PRESETS[spec], **common))
            model.config.name_or_path = spec
        else:
            model = Wav2Vec2ForCTC.from_pretrained(
                spec, **({} if own_vocabulary else common), ignore_mismatched_sizes=not own_vocabulary
            )
    # token-mean loss like the Whisper path (the library default sums over the batch); no inf on short audio
    model.config.ctc_loss_reduction, model.config.ctc_zero_infinity = "mean", True
    return model, processor, not own_vocabulary


OUTPUT_LAYER = r"^lm_head\."  # the CTC output layer, new when the vocabulary is built from manifests


@dataclass
class CTCCollator:
    """Batches utterances into normalised waveforms with an attention mask, and CTC targets (the scoring
    normaliser's text; Korean as jamo when the vocabulary is jamo). SpecAugment-style masking for wav2vec2
    lives in the model (``mask_time_prob``), not here."""

    feature_extractor: object
    tokenizer: object

    def __post_init__(self):
        self.jamo = uses_jamo(self.tokenizer)

    def __call__(self, items: list[tuple[object, np.ndarray]]) -> dict:
        utterances = [u for u, _ in items]
        inputs = self.feature_extractor(
            [a for _, a in items], sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        labels = [self.tokenizer(ctc_target(u.text, u.lang, self.jamo)).input_ids for u in utterances]
        padded = torch.full((len(labels), max(1, max(map(len, labels)))), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(labels):
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {
            "input_values": inputs.input_values,
            "attention_mask": inputs.attention_mask,
            "labels": padded,
            "texts": [u.text for u in utterances],
            "langs": [u.lang for u in utterances],
            "speakers": [u.speaker for u in utterances],
            "lines": [u.line for u in utterances],
        }


_ATTENTION = r"(q_proj|k_proj|v_proj|out_proj)$"


class Wav2Vec2Backbone(Backbone):
    name = "wav2vec2"
    # wav2vec2 names its self-attention blocks attention, its feed-forward layers
    # feed_forward.intermediate_dense/output_dense; it has no cross-attention
    target_presets = {
        "default": [r"\.attention\.(q_proj|v_proj)$"],
        "self_attn": [r"\.attention\." + _ATTENTION],
        "attn": [r"\.attention\." + _ATTENTION],
        "all-linear": [r"\.attention\." + _ATTENTION, r"\.feed_forward\.(intermediate_dense|output_dense)$"],
        "attention_output": [r"\.attention\.out_proj$"],
        "feed_forward_output": [r"\.feed_forward\.output_dense$"],
    }
    output_layer = "lm_head"

    def handles_spec(self, spec) -> bool:
        """A CTC preset, or a local directory whose ``config.json`` names a CTC model type."""
        spec = str(spec)
        if spec in CTC_PRESETS:
            return True
        config = Path(spec) / "config.json"
        if config.exists():
            return json.loads(config.read_text()).get("model_type") in CTC_MODEL_TYPES
        return "wav2vec2" in spec.lower()  # hub ids such as facebook/wav2vec2-base-960h

    def handles_model(self, model: nn.Module) -> bool:
        return getattr(model.config, "model_type", None) in CTC_MODEL_TYPES

    def derive_from_data(self, config, utterances) -> dict:
        """Without a vocabulary of its own, one is built from the training (and validation) manifests and kept
        in the config, so checkpoints rebuild it; the new output layer then trains under every strategy."""
        model = config.model
        if Path(model.spec, "vocab.json").exists():
            return {}
        updates = {}
        if not model.ctc_tokens:
            updates["model.ctc_tokens"] = build_ctc_tokens(
                [(u.text, u.lang) for u in utterances.train + utterances.val], model.ctc_unit
            )
        to_save = list(config.adapter.modules_to_save)
        if OUTPUT_LAYER not in to_save:  # the output layer is new: it trains under every strategy
            updates["adapter.modules_to_save"] = to_save + [OUTPUT_LAYER]
        return updates

    def output_units(self, model_config, utterances: list) -> set[str]:
        return set(build_ctc_tokens([(u.text, u.lang) for u in utterances], model_config.ctc_unit))

    def label_count(self, model_config, utterances: list) -> int:
        # one unit per character (or jamo), the word delimiter included
        jamo = model_config.ctc_unit == "jamo"
        return sum(len(ctc_target(u.text, u.lang, jamo)) for u in utterances)

    def load(self, model_config):
        model, processor, _ = load_ctc_model_processor(
            model_config.spec, list(model_config.ctc_tokens or []), model_config.init_seed
        )
        return model, processor

    def collator(self, processor, augment=None) -> CTCCollator:
        return CTCCollator(processor.feature_extractor, processor.tokenizer)

    def audio_inputs(self, processor, samples: list) -> dict[str, torch.Tensor]:
        inputs = processor.feature_extractor(
            samples, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        return {"input_values": inputs.input_values, "attention_mask": inputs.attention_mask}

    def loss(self, model, batch: dict, auxiliary=None, input_dropout: float = 0.0) -> tuple[torch.Tensor, int]:
        if input_dropout > 0:
            raise ValueError(
                "model.decoder_input_dropout is set, but a CTC model has no decoder inputs — fix: leave it at 0"
            )
        labels = batch["labels"]
        out = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"], labels=labels)
        return out.loss, int((labels != IGNORE_INDEX).sum())

    def utterance_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        logits = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
        frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).long()
        mask = labels != IGNORE_INDEX
        log_probs = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        nats = torch.nn.functional.ctc_loss(
            log_probs,
            labels[mask],
            frames,
            mask.sum(-1),
            blank=model.config.pad_token_id,
            reduction="none",
            zero_infinity=True,
        )
        return nats, mask.sum(dim=1)

    def decode(self, model, tokenizer, inputs, languages, decode_config) -> tuple[list[str], int]:
        """Greedy CTC decoding: the best unit per frame, repeats merged, blanks dropped; jamo recomposed. It
        never hits a cap, and has no language control."""
        logits = model(input_values=inputs["input_values"], attention_mask=inputs["attention_mask"]).logits
        texts = tokenizer.batch_decode(logits.argmax(dim=-1))
        return [unicodedata.normalize("NFC", text) for text in texts], 0

    def checkpointing_entries(self, model) -> list[nn.Module]:
        return [model.wav2vec2.feature_extractor]
