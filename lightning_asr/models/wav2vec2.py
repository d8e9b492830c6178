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
from pathlib import Path

import torch

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


def is_ctc_spec(spec: str | os.PathLike) -> bool:
    """A CTC preset, or a local directory whose ``config.json`` names a CTC model type."""
    spec = str(spec)
    if spec in CTC_PRESETS:
        return True
    config = Path(spec) / "config.json"
    if config.exists():
        return json.loads(config.read_text()).get("model_type") in CTC_MODEL_TYPES
    return "wav2vec2" in spec.lower()  # hub ids such as facebook/wav2vec2-base-960h


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
