"""Turn a faster-whisper (CTranslate2) Whisper directory back into a trainable Hugging Face model.

A CTranslate2 Whisper directory holds ``model.bin`` (the weights in CTranslate2's own binary format),
``config.json`` (decoding settings: ``lang_ids``, ``suppress_ids``, ``suppress_ids_begin``,
``alignment_heads``), ``tokenizer.json`` and/or ``vocabulary.json|txt``, and sometimes
``preprocessor_config.json``. ``model.bin`` is parsed here with ``struct`` and NumPy, so importing needs
neither the ``ctranslate2`` package nor the model hub.

``model.bin`` (binary versions 4 to 6 share this layout), little-endian::

    u32 binary_version; string spec_name; u32 spec_revision     # string = u16 length incl. NUL, bytes, NUL
    u32 n_variables, then per variable: string name; u8 rank; u32 dims[rank]; u8 dtype_id; u32 nbytes; bytes
    u32 n_aliases, then per alias: string alias; string target  # a variable stored once under several names

Variables and their Hugging Face counterparts (``L`` = ``model.encoder.layers.i`` / ``model.decoder.layers.i``):

============================================================  =====================================================
``encoder/conv1``, ``encoder/conv2`` ``{weight,bias}``        ``model.encoder.conv1``, ``conv2``
``encoder/position_encodings/encodings`` (S x d)              ``model.encoder.embed_positions.weight``
``{encoder,decoder}/layer_i/self_attention/linear_0`` (3d)    ``L.self_attn.{q,k,v}_proj``, split in three
``.../self_attention/linear_1``, ``.../layer_norm``           ``L.self_attn.out_proj``, ``L.self_attn_layer_norm``
``decoder/layer_i/attention/linear_0``                        ``L.encoder_attn.q_proj``
``decoder/layer_i/attention/linear_1`` (2d)                   ``L.encoder_attn.{k,v}_proj``, split in two
``decoder/layer_i/attention/linear_2``, ``.../layer_norm``    ``L.encoder_attn.out_proj``, ``L.encoder_attn_layer_norm``
``.../ffn/linear_0``, ``linear_1``, ``layer_norm``            ``L.fc1``, ``L.fc2``, ``L.final_layer_norm``
``{encoder,decoder}/layer_norm``                              ``model.{encoder,decoder}.layer_norm``
``decoder/embeddings/weight``                                 ``model.decoder.embed_tokens.weight``
``decoder/position_encodings/encodings`` (448 x d)            ``model.decoder.embed_positions.weight``
``decoder/projection/weight`` (usually an alias)              ``proj_out.weight`` (tied when equal)
============================================================  =====================================================

Layer norms store ``gamma``/``beta`` (``weight``/``bias`` in Hugging Face). The fused key bias is dropped:
Hugging Face's ``k_proj`` has none, CTranslate2's converter stores zeros there, and a key bias adds the
same amount to every score of a query, which the softmax cancels, so dropping it is exact either way.
Integer scalars give the head counts (``encoder/num_heads``, ``decoder/num_heads``) and are checked
against Whisper's architecture (``decoder/activation`` GELU, ``decoder/pre_norm``); every other size is read
from tensor shapes. Float32, float16 and bfloat16 weights are read; int8/int16-quantised weights are
refused, because their rounding cannot be undone.

Command line::

    python -m lightning_asr.models.import_ct2 faster-whisper-base --out whisper-base-hf [--force] [--dtype float32]

``load_base_model`` accepts a CTranslate2 directory directly: it is converted once into
``ct2_cache_dir()/<name>-<digest>`` (digest of ``model.bin`` and the small files beside it) and reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_asr.models import ModelSpecError
from lightning_asr.tokenizer import VOCAB_SIZE, bytes_to_unicode, cache_dir, validate_tokenizer, vocab_and_merges

# Bumped whenever the conversion changes, so cached conversions made by older code are not reused.
IMPORTER_REVISION = 1
# CTranslate2's own loader parses every version from 4 on with the layout above; the later bumps (5: how
# int8 values were rounded) did not change the file structure.
SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
WHISPER_SPEC_REVISION = 3
ENGLISH_ONLY_VOCAB_SIZE = 51864
DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
NUMPY_DTYPES = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2", "bfloat16": "<u2"}
GELU = 3  # CTranslate2's Activation enum: RELU 0, GELUTanh 1, SWISH 2, GELU 3
# Keys that only CTranslate2's Whisper config.json has; a Hugging Face config.json has model_type instead.
CT2_CONFIG_KEYS = {"lang_ids", "suppress_ids", "suppress_ids_begin", "alignment_heads"}
SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt", "preprocessor_config.json")


class CT2ImportError(ModelSpecError):
    """The directory is not a CTranslate2 Whisper model this importer can turn into a Hugging Face one."""


@dataclass
class CT2Model:
    """The parsed contents of a CTranslate2 ``model.bin``: aliases already resolved to their targets."""

    path: Path
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, buffer, path: Path):
        self.buffer, self.path, self.offset = buffer, path, 0

    def take(self, count: int):
        end = self.offset + count
        if end > len(self.buffer):
            raise CT2ImportError(
                f"{self.path} ends early at byte {len(self.buffer)} (needed {end}): the file is "
                "truncated or not a CTranslate2 model — fix: copy or convert it again"
            )
        chunk = self.buffer[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        if not raw.endswith(b"\0"):
            raise CT2ImportError(f"{self.path}: malformed string at byte {self.offset} — not a CTranslate2 model.bin")
        return raw[:-1].decode("utf-8")


def read_model_bin(path: str | os.PathLike) -> CT2Model:
    """Parse ``model.bin``; arrays are views into a read-only memory map of the file."""
    path = Path(path)
    if not path.is_file():
        raise CT2ImportError(
            f"{path} not found — a CTranslate2 model directory holds model.bin, config.json and "
            "tokenizer.json or vocabulary.json"
        )
    if path.stat().st_size < 4:
        raise CT2ImportError(f"{path} is empty or truncated — not a CTranslate2 model.bin")
    buffer = np.memmap(path, dtype=np.uint8, mode="r")
    reader = _Reader(buffer, path)
    version = reader.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CT2ImportError(
            f"{path} has CTranslate2 binary version {version}; this importer reads versions "
            f"{SUPPORTED_BINARY_VERSIONS[0]}-{SUPPORTED_BINARY_VERSIONS[-1]} — fix: check that the "
            "file is a CTranslate2 model.bin, or convert the model again with a current ctranslate2"
        )
    model = CT2Model(path, version, reader.string(), reader.unpack("I"))
    if model.spec_name != "WhisperSpec":
        raise CT2ImportError(f"{path} holds a CTranslate2 {model.spec_name!r} model, not Whisper (WhisperSpec)")
    if model.spec_revision > WHISPER_SPEC_REVISION:
        raise CT2ImportError(
            f"{path} has WhisperSpec revision {model.spec_revision}, newer than the "
            f"{WHISPER_SPEC_REVISION} this importer knows"
        )
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
        type_id = reader.unpack("B")
        if type_id not in DTYPES:
            raise CT2ImportError(f"{path}: variable {name} has unknown dtype id {type_id}")
        dtype = DTYPES[type_id]
        nbytes = reader.unpack("I")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(NUMPY_DTYPES[dtype]).itemsize
        if nbytes != expected:
            raise CT2ImportError(
                f"{path}: variable {name} {dtype}{list(shape)} should take {expected} bytes, the file says {nbytes}"
            )
        start = reader.offset
        reader.take(nbytes)
        array = np.frombuffer(
            buffer, dtype=NUMPY_DTYPES[dtype], count=nbytes // np.dtype(NUMPY_DTYPES[dtype]).itemsize, offset=start
        )
        model.variables[name] = array.reshape(shape)
        model.dtypes[name] = dtype
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        model.aliases[alias] = target
    for alias in model.aliases:
        target, seen = alias, set()
        while target in model.aliases and target not in seen:  # aliases may point at aliases
            seen.add(target)
            target = model.aliases[target]
        if target not in model.variables:
            raise CT2ImportError(f"{path}: alias {alias} -> {model.aliases[alias]} names no variable")
        model.variables[alias] = model.variables[target]
        model.dtypes[alias] = model.dtypes[target]
    return model


def _scalar(model: CT2Model, name: str, default=None):
    if name not in model.variables:
        return default
    value = model.variables[name]
    if value.shape != ():
        raise CT2ImportError(f"{model.path}: {name} should be a scalar, has shape {list(value.shape)}")
    return value.item()


def refuse_quantised(model: CT2Model) -> None:
    quantised = sorted(
        {
            model.dtypes[name]
            for name, value in model.variables.items()
            if value.ndim > 0 and model.dtypes[name] in ("int8", "int16", "int32")
        }
    )
    scales = [name for name in model.variables if name.endswith("_scale")]
    if quantised or scales:
        kinds = ", ".join(quantised) or "scaled"
        raise CT2ImportError(
            f"{model.path} holds {kinds}-quantised weights (e.g. {scales[0] if scales else 'integer matrices'}). "
            "Quantisation rounds every weight and the float values cannot be recovered — the model must be "
            "converted without quantisation: ct2-transformers-converter --quantization float16 (or float32, "
            "bfloat16, or no --quantization), e.g. from the original openai/whisper-* checkpoint"
        )


# ------------------------------------------------------------------------------------ weights and config


def _tensor(model: CT2Model, name: str, used: set[str]):
    import torch

    if name not in model.variables:
        raise CT2ImportError(f"{model.path} has no variable {name} — not a complete CTranslate2 Whisper model")
    used.add(name)
    array = model.variables[name]
    if model.dtypes[name] == "bfloat16":
        # NumPy has no bfloat16: the raw 16-bit words are reinterpreted by torch.
        return torch.from_numpy(np.array(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))  # a writable copy, off the memory map


def _shape(model: CT2Model, name: str) -> tuple[int, ...]:
    if name not in model.variables:
        raise CT2ImportError(f"{model.path} has no variable {name} — not a complete CTranslate2 Whisper model")
    return model.variables[name].shape


def _layer_count(model: CT2Model, stack: str) -> int:
    indices = {int(m.group(1)) for name in model.variables if (m := re.match(rf"{stack}/layer_(\d+)/", name))}
    if not indices:
        raise CT2ImportError(f"{model.path} has no {stack}/layer_0 variables — not a CTranslate2 Whisper model")
    if indices != set(range(len(indices))):
        raise CT2ImportError(f"{model.path}: {stack} layers are not numbered 0..{len(indices) - 1}: {sorted(indices)}")
    return len(indices)


def _linear(model, source, target, state, used):
    state[f"{target}.weight"] = _tensor(model, f"{source}/weight", used)
    state[f"{target}.bias"] = _tensor(model, f"{source}/bias", used)


def _layer_norm(model, source, target, state, used):
    state[f"{target}.weight"] = _tensor(model, f"{source}/gamma", used)
    state[f"{target}.bias"] = _tensor(model, f"{source}/beta", used)


def _split_linear(model, source, targets, state, used, d_model, keyless=("k_proj",)):
    """Split a fused projection (rows stacked target after target) into the Hugging Face ones."""
    weight = _tensor(model, f"{source}/weight", used)
    bias = _tensor(model, f"{source}/bias", used)
    if weight.shape[0] != d_model * len(targets) or bias.shape[0] != weight.shape[0]:
        fused = "|".join(target.rsplit(".", 1)[1] for target in targets)
        raise CT2ImportError(
            f"{model.path}: {source} has shape {list(weight.shape)}, expected "
            f"[{d_model * len(targets)}, {d_model}] (fused {fused})"
        )
    for index, target in enumerate(targets):
        rows = slice(index * d_model, (index + 1) * d_model)
        state[f"{target}.weight"] = weight[rows].clone()
        if not target.endswith(keyless):
            state[f"{target}.bias"] = bias[rows].clone()


def whisper_state_dict(model: CT2Model) -> tuple[dict, dict]:
    """The Hugging Face state dict and the architecture sizes (``WhisperConfig`` arguments) of ``model``."""
    used: set[str] = set()
    state: dict = {}
    embeddings = _tensor(model, "decoder/embeddings/weight", used)
    vocab_size, d_model = embeddings.shape
    conv1 = _tensor(model, "encoder/conv1/weight", used)
    encoder_positions = _tensor(model, "encoder/position_encodings/encodings", used)
    decoder_positions = _tensor(model, "decoder/position_encodings/encodings", used)
    sizes = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        num_mel_bins=conv1.shape[1],
        encoder_layers=_layer_count(model, "encoder"),
        decoder_layers=_layer_count(model, "decoder"),
        encoder_ffn_dim=_shape(model, "encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_ffn_dim=_shape(model, "decoder/layer_0/ffn/linear_0/weight")[0],
        # The encoder's window: 2 mel frames per position. Fine-tuned models may use fewer than 1500.
        max_source_positions=encoder_positions.shape[0],
        max_target_positions=decoder_positions.shape[0],
    )
    for stack in ("encoder", "decoder"):
        # Whisper's heads are 64 wide; older files without the scalar follow that rule.
        heads = int(_scalar(model, f"{stack}/num_heads", d_model // 64))
        used.add(f"{stack}/num_heads")
        if heads <= 0 or d_model % heads:
            raise CT2ImportError(f"{model.path}: {stack}/num_heads {heads} does not divide d_model {d_model}")
        sizes[f"{stack}_attention_heads"] = heads
    activation = _scalar(model, "decoder/activation", GELU)
    if activation != GELU:
        raise CT2ImportError(f"{model.path}: decoder/activation is {activation}, Whisper uses GELU ({GELU})")
    if not _scalar(model, "decoder/pre_norm", 1):
        raise CT2ImportError(f"{model.path}: decoder/pre_norm is off; Whisper's layers are pre-norm")
    for name in ("decoder/alibi", "decoder/start_from_zero_embedding"):
        if _scalar(model, name, 0):
            raise CT2ImportError(f"{model.path}: {name} is set, which Whisper never uses")
    # A boolean (scale by sqrt(d_model) or not) or, from some converters, the float multiplier itself.
    scale = _scalar(model, "decoder/scale_embeddings", 0)
    if model.dtypes.get("decoder/scale_embeddings", "int8").startswith("float"):
        sizes["scale_embedding"] = abs(scale - 1.0) > 1e-6
        if sizes["scale_embedding"] and abs(scale - d_model**0.5) > 1e-3:
            raise CT2ImportError(f"{model.path}: decoder/scale_embeddings is {scale}, neither 1 nor sqrt(d_model)")
    else:
        sizes["scale_embedding"] = bool(scale)
    # Scalars whose values are irrelevant to Whisper's forward pass (guided-alignment and ALiBi settings).
    used.update(
        {
            "decoder/activation",
            "decoder/pre_norm",
            "decoder/alibi",
            "decoder/start_from_zero_embedding",
            "decoder/scale_embeddings",
            "decoder/alibi_use_positive_positions",
            "decoder/scale_alibi",
            "decoder/alignment_heads",
            "decoder/alignment_layer",
        }
    )

    state["model.encoder.conv1.weight"] = conv1
    state["model.encoder.conv1.bias"] = _tensor(model, "encoder/conv1/bias", used)
    _linear(model, "encoder/conv2", "model.encoder.conv2", state, used)
    state["model.encoder.embed_positions.weight"] = encoder_positions
    state["model.decoder.embed_tokens.weight"] = embeddings
    state["model.decoder.embed_positions.weight"] = decoder_positions
    for stack, count in (("encoder", sizes["encoder_layers"]), ("decoder", sizes["decoder_layers"])):
        for i in range(count):
            src, dst = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            _split_linear(
                model,
                f"{src}/self_attention/linear_0",
                [f"{dst}.self_attn.q_proj", f"{dst}.self_attn.k_proj", f"{dst}.self_attn.v_proj"],
                state,
                used,
                d_model,
            )
            _linear(model, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", state, used)
            _layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", state, used)
            if stack == "decoder":
                _linear(model, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", state, used)
                _split_linear(
                    model,
                    f"{src}/attention/linear_1",
                    [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"],
                    state,
                    used,
                    d_model,
                )
                _linear(model, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", state, used)
                _layer_norm(model, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", state, used)
            _linear(model, f"{src}/ffn/linear_0", f"{dst}.fc1", state, used)
            _linear(model, f"{src}/ffn/linear_1", f"{dst}.fc2", state, used)
            _layer_norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", state, used)
        _layer_norm(model, f"{stack}/layer_norm", f"model.{stack}.layer_norm", state, used)

    projection = embeddings
    if "decoder/projection/weight" in model.variables:  # usually an alias of the embeddings
        projection = _tensor(model, "decoder/projection/weight", used)
    sizes["tie_word_embeddings"] = projection.shape == embeddings.shape and bool((projection == embeddings).all())
    state["proj_out.weight"] = embeddings if sizes["tie_word_embeddings"] else projection
    if "decoder/projection/bias" in model.variables:
        if _tensor(model, "decoder/projection/bias", used).float().abs().max() > 0:
            raise CT2ImportError(
                f"{model.path}: decoder/projection/bias is non-zero; Whisper's output layer has no bias"
            )

    unused = sorted(name for name in model.variables if name not in used)
    unused_tensors = [name for name in unused if model.variables[name].ndim > 0]
    if unused_tensors:
        raise CT2ImportError(
            f"{model.path} has variables this importer does not map (they would be lost): "
            f"{', '.join(unused_tensors[:8])}{' ...' if len(unused_tensors) > 8 else ''}"
        )
    if unused:
        warnings.warn(f"{model.path}: ignoring scalar settings {', '.join(unused)}", stacklevel=2)
    return state, sizes


# ----------------------------------------------------------------------------------- tokenizer and config


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CT2ImportError(f"{path}: cannot read {what} ({err})") from err


def read_vocabulary(directory: Path) -> list[str] | None:
    """Token strings in id order from ``vocabulary.json`` (a JSON list) or ``vocabulary.txt`` (one a line)."""
    if (directory / "vocabulary.json").exists():
        tokens = _read_json(directory / "vocabulary.json", "the vocabulary")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise CT2ImportError(f"{directory / 'vocabulary.json'} should be a JSON list of token strings")
        return tokens
    if (directory / "vocabulary.txt").exists():
        # Byte-level tokens never contain a raw newline (GPT-2's table maps it to "Ċ"); empty lines are tokens.
        return (directory / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1] or None
    return None


def _is_timestamp(token: str) -> bool:
    return re.fullmatch(r"<\|\d+\.\d\d\|>", token) is not None


def tokenizer_from_vocabulary(tokens: list[str], origin: Path):
    """Rebuild the byte-level BPE tokenizer from the vocabulary alone: token ids are BPE ranks, so the merges
    are recovered by re-running BPE on each token with only the lower ranks (as the built-in tokenizer does)."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    if "<|endoftext|>" not in tokens:
        raise CT2ImportError(f"{origin} has no <|endoftext|> token — not a Whisper vocabulary")
    n_bpe = tokens.index("<|endoftext|>")
    char_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    try:
        ranks = {bytes(char_to_byte[c] for c in token): rank for rank, token in enumerate(tokens[:n_bpe])}
        vocab, merges = vocab_and_merges(ranks)
    except (KeyError, RuntimeError) as err:
        raise CT2ImportError(
            f"{origin}: the BPE merges cannot be recovered from the vocabulary ({err}) — fix: put "
            "the model's tokenizer.json beside model.bin"
        ) from err
    vocab["<|endoftext|>"] = n_bpe
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    tokenizer.add_tokens(
        [AddedToken(t, special=not _is_timestamp(t), normalized=False) for t in tokens[n_bpe + 1 :]],
        special_tokens=True,
    )
    return tokenizer


def load_ct2_tokenizer(directory: Path, vocab_size: int):
    """The model's tokenizer from ``tokenizer.json``, else rebuilt from ``vocabulary.json|txt``; checked
    against the vocabulary and the embedding size."""
    from transformers import WhisperTokenizer

    tokens = read_vocabulary(directory)
    if (directory / "tokenizer.json").exists():
        tokenizer = WhisperTokenizer(tokenizer_file=str(directory / "tokenizer.json"))
        origin = directory / "tokenizer.json"
    elif tokens is not None:
        origin = directory / ("vocabulary.json" if (directory / "vocabulary.json").exists() else "vocabulary.txt")
        tokenizer = tokenizer_from_vocabulary(tokens, origin)
    else:
        raise CT2ImportError(
            f"{directory} has no tokenizer.json, vocabulary.json or vocabulary.txt — fix: copy the "
            "tokenizer files that came with model.bin into the directory"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    if len(tokenizer) < vocab_size:
        # The hub's tokenizer.json of openai/whisper-* stops before the 1,501 timestamp tokens; CTranslate2's
        # converter appends them to the vocabulary, and so does this (in the same order, not special).
        from tokenizers import AddedToken

        start = len(tokenizer)
        missing = tokens[start:] if tokens is not None else [f"<|{i * 0.02:.2f}|>" for i in range(vocab_size - start)]
        other = [token for token in missing if not _is_timestamp(token)]
        if other:
            raise CT2ImportError(
                f"{origin} has {start} tokens, model.bin's embedding {vocab_size}, and the missing "
                f"ones are not all timestamps (e.g. {other[0]!r})"
            )
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in missing])
    # The prefix template (<|startoftranscript|> ...) was fixed at construction: rebuild it from the final vocabulary.
    tokenizer.set_prefix_tokens()
    if len(tokenizer) != vocab_size:
        raise CT2ImportError(f"{origin} has {len(tokenizer)} tokens but model.bin's embedding has {vocab_size} rows")
    if tokens is not None:
        if len(tokens) != vocab_size:
            raise CT2ImportError(f"the vocabulary in {directory} has {len(tokens)} tokens, model.bin {vocab_size}")
        mismatched = [
            i for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(vocab_size)))) if token != tokens[i]
        ]
        if mismatched:
            i = mismatched[0]
            raise CT2ImportError(
                f"{origin} and the vocabulary file disagree on {len(mismatched)} ids, e.g. id {i}: "
                f"{tokenizer.convert_ids_to_tokens(i)!r} vs {tokens[i]!r}"
            )
    if vocab_size == VOCAB_SIZE:
        validate_tokenizer(tokenizer, str(origin))
    return tokenizer


def whisper_generation_config(tokenizer, ct2_config: dict, max_length: int):
    """Decoding settings for Hugging Face ``generate``: special ids from the tokenizer, suppression lists and
    alignment heads from CTranslate2's ``config.json``. English-only models (51,864 tokens) get no
    language/task maps: with them Hugging Face would prompt a language token those models never saw."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    def token_id(token):
        found = tokenizer.convert_tokens_to_ids(token)
        if found is None or found == tokenizer.unk_token_id and token != tokenizer.unk_token:
            raise CT2ImportError(f"the tokenizer has no {token} token — not a Whisper tokenizer")
        return found

    end = token_id("<|endoftext|>")
    settings = dict(
        decoder_start_token_id=token_id("<|startoftranscript|>"),
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
        max_length=max_length,
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        max_initial_timestamp_index=50,
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin") or [token_id("Ġ"), end],
        suppress_tokens=ct2_config.get("suppress_ids") or None,
        is_multilingual=len(tokenizer) > ENGLISH_ONLY_VOCAB_SIZE,
    )
    if ct2_config.get("alignment_heads"):
        settings["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    if settings["is_multilingual"]:
        lang_ids = ct2_config.get("lang_ids")
        if lang_ids:
            lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        else:  # older conversions have no lang_ids: every <|code|> token of a known language
            lang_to_id = {
                f"<|{code}|>": tokenizer.convert_tokens_to_ids(f"<|{code}|>")
                for code in LANGUAGES
                if f"<|{code}|>" in tokenizer.get_vocab()
            }
        settings["lang_to_id"] = dict(sorted(lang_to_id.items(), key=lambda item: item[1]))
        settings["task_to_id"] = {"translate": token_id("<|translate|>"), "transcribe": token_id("<|transcribe|>")}
    return GenerationConfig(**settings)


def feature_extractor_for(directory: Path, num_mel_bins: int, max_source_positions: int):
    """Log-mel settings from ``preprocessor_config.json`` when present, with the mel count taken from the
    weights and the window from the encoder (2 frames per position, 100 frames per second)."""
    from transformers import WhisperFeatureExtractor

    settings = {}
    path = directory / "preprocessor_config.json"
    if path.exists():
        saved = _read_json(path, "the feature extractor settings")
        settings = {k: saved[k] for k in ("sampling_rate", "hop_length", "n_fft", "padding_value") if k in saved}
        if saved.get("feature_size", num_mel_bins) != num_mel_bins:
            raise CT2ImportError(
                f"{path} says feature_size {saved['feature_size']}, but model.bin's first "
                f"convolution takes {num_mel_bins} mel bins"
            )
    hop_length = settings.get("hop_length", 160)
    sampling_rate = settings.get("sampling_rate", 16000)
    chunk_length = max_source_positions * 2 * hop_length // sampling_rate
    return WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=chunk_length, **settings)


# -------------------------------------------------------------------------------------------- conversion


def import_ct2(directory: str | os.PathLike, dtype: str = "float32"):
    """Rebuild ``(WhisperForConditionalGeneration, WhisperProcessor)`` from a CTranslate2 Whisper directory.
    ``dtype`` is the parameters' dtype: float32 (trainable; float16/bfloat16 weights widen exactly),
    float16, bfloat16, or ``"source"`` for the dtype stored in ``model.bin``."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    directory = Path(directory)
    if not directory.is_dir():
        raise CT2ImportError(f"{directory} is not a directory")
    ct2 = read_model_bin(directory / "model.bin")
    refuse_quantised(ct2)
    ct2_config = {}
    if (directory / "config.json").exists():
        ct2_config = _read_json(directory / "config.json", "CTranslate2's config")
    if "model_type" in ct2_config:
        raise CT2ImportError(
            f"{directory / 'config.json'} is a Hugging Face config (model_type "
            f"{ct2_config['model_type']!r}); load the directory with from_pretrained instead"
        )
    state, sizes = whisper_state_dict(ct2)
    tokenizer = load_ct2_tokenizer(directory, sizes["vocab_size"])
    generation_config = whisper_generation_config(tokenizer, ct2_config, sizes["max_target_positions"])

    config = WhisperConfig(
        **sizes,
        activation_function="gelu",
        decoder_start_token_id=generation_config.decoder_start_token_id,
        bos_token_id=generation_config.bos_token_id,
        eos_token_id=generation_config.eos_token_id,
        pad_token_id=generation_config.pad_token_id,
        begin_suppress_tokens=generation_config.begin_suppress_tokens,
        suppress_tokens=generation_config.suppress_tokens,
    )
    # Built on the meta device: no random initialisation of weights that are replaced at once.
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    if set(expected) != set(state):
        missing, extra = sorted(set(expected) - set(state))[:4], sorted(set(state) - set(expected))[:4]
        raise CT2ImportError(
            f"{ct2.path}: the rebuilt weights do not match Whisper's layout (missing {missing}, extra {extra})"
        )
    for name, tensor in state.items():
        wanted = expected[name].shape
        if tensor.shape != wanted:
            raise CT2ImportError(
                f"{ct2.path}: {name} has shape {list(tensor.shape)}, Whisper with these sizes expects {list(wanted)}"
            )
    source_dtypes = {ct2.dtypes[name] for name in ct2.variables if ct2.variables[name].ndim > 0}
    if dtype == "source":
        dtype = "float32" if len(source_dtypes) != 1 else source_dtypes.pop()
    if dtype not in ("float32", "float16", "bfloat16"):
        raise CT2ImportError(f"dtype {dtype!r}: choose float32, float16, bfloat16 or source")
    target = getattr(torch, dtype)
    for name in state:  # one tensor at a time, so a model's weights are never held twice in full
        state[name] = state[name].to(target)
    if sizes["tie_word_embeddings"]:
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if sizes["tie_word_embeddings"]:
        model.tie_weights()
    model.model.encoder.embed_positions.requires_grad_(False)  # fixed sinusoids, as in Whisper
    model.generation_config = generation_config
    model.eval()
    feature_extractor = feature_extractor_for(directory, sizes["num_mel_bins"], sizes["max_source_positions"])
    return model, WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def _staging_dir(parent: Path, name: str) -> Path:
    """An empty directory beside the destination, with the permissions a plain mkdir would give it
    (mkdtemp makes it private)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def _write(directory: Path, target: Path, dtype: str, source_digest: str | None = None) -> None:
    model, processor = import_ct2(directory, dtype=dtype)
    model.save_pretrained(target)  # safetensors
    processor.save_pretrained(target)
    processor.feature_extractor.save_pretrained(target)  # preprocessor_config.json, which other tools read
    provenance = {"source": str(directory.resolve()), "importer_revision": IMPORTER_REVISION, "dtype": dtype}
    if source_digest:
        provenance["digest"] = source_digest
    (target / "ct2_import.json").write_text(json.dumps(provenance, indent=2) + "\n")
    for licence in sorted(directory.glob("LICEN[CS]E*")):  # the weights' licence travels with them
        shutil.copy2(licence, target / licence.name)


def convert(directory: str | os.PathLike, out: str | os.PathLike, force: bool = False, dtype: str = "float32") -> Path:
    """Write the Hugging Face model, tokenizer and feature extractor to ``out``. An existing non-empty ``out``
    is refused unless ``force``; the directory appears complete or not at all (written aside, then renamed)."""
    directory, out = Path(directory), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise CT2ImportError(f"{out} already exists — fix: choose another --out, or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(out.parent, out.name)
    try:
        _write(directory, staging, dtype)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------- cache for load_base_model


def is_ct2_dir(path: str | os.PathLike) -> bool:
    """A CTranslate2 model directory: ``model.bin``, or a config.json with CTranslate2's Whisper keys, and no
    Hugging Face ``model_type``."""
    path = Path(path)
    if not path.is_dir():
        return False
    config = path / "config.json"
    if config.exists():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(data, dict) or "model_type" in data:
            return False
        return (path / "model.bin").exists() or bool(CT2_CONFIG_KEYS & data.keys())
    return (path / "model.bin").exists()


def ct2_cache_dir() -> Path:
    """Where converted CTranslate2 models live: ``ct2/`` under the project's cache
    (``$LIGHTNING_ASR_CACHE``, else ``.cache`` in a source checkout, else ``~/.cache/lightning_asr``)."""
    return cache_dir() / "ct2"


_digests: dict[tuple, str] = {}


def source_digest(directory: Path) -> str:
    """sha256 over ``model.bin``, the small files beside it and the importer revision. Remembered per file
    size and modification time, so a second lookup in one process does not read gigabytes again."""
    files = [directory / "model.bin"] + [directory / name for name in SMALL_FILES if (directory / name).exists()]
    key = (
        str(directory.resolve()),
        IMPORTER_REVISION,
        tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files),
    )
    if key not in _digests:
        digest = hashlib.sha256(f"importer-revision {IMPORTER_REVISION}\n".encode())
        for file in files:
            digest.update(f"{file.name} {file.stat().st_size}\n".encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def converted_model_dir(directory: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The Hugging Face conversion of a CTranslate2 directory, written to the cache on first use (atomically:
    a concurrent conversion leaves one complete copy) and reused while ``model.bin`` is unchanged."""
    directory = Path(directory)
    if not (directory / "model.bin").is_file():
        raise CT2ImportError(
            f"{directory / 'model.bin'} not found: {directory} looks like a CTranslate2 model "
            "directory without its weights"
        )
    digest = source_digest(directory)
    root = Path(cache) if cache is not None else ct2_cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", directory.resolve().name) or "model"
    target = root / f"{name}-{digest[:16]}"
    if (target / "ct2_import.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(root, target.name)
    try:
        _write(directory, staging, "float32", source_digest=digest)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "ct2_import.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_checkpoint_processor(directory: str | os.PathLike, model, chunk_length: int):
    """Processor for checkpoints that are not 51,865-token, 80-mel Whisper (English-only ``*.en``, large-v3):
    the directory's own tokenizer, checked against the model's vocabulary, and log-mel features with the
    model's mel count."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(str(directory))
    if len(tokenizer) != model.config.vocab_size:
        raise ModelSpecError(
            f"tokenizer in {directory} has {len(tokenizer)} tokens, the model "
            f"{model.config.vocab_size}; Hugging Face builds an empty tokenizer when files "
            "are missing"
        )
    feature_extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins, chunk_length=chunk_length)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_asr.models.import_ct2",
        description="Convert a faster-whisper (CTranslate2) Whisper directory into a Hugging Face "
        "WhisperForConditionalGeneration directory (safetensors, tokenizer, feature extractor).",
    )
    parser.add_argument("directory", help="CTranslate2 model directory (model.bin, config.json, tokenizer.json)")
    parser.add_argument("--out", required=True, help="output directory for save_pretrained")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16", "source"],
        help="parameter dtype of the written model (default float32, for training)",
    )
    args = parser.parse_args(argv)
    try:
        out = convert(args.directory, args.out, force=args.force, dtype=args.dtype)
    except CT2ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = json.loads((out / "config.json").read_text())
    print(
        f"wrote {out}: d_model {config['d_model']}, {config['encoder_layers']}+{config['decoder_layers']} layers, "
        f"{config['encoder_attention_heads']} heads, vocabulary {config['vocab_size']}, "
        f"{config['num_mel_bins']} mel bins, {config['max_source_positions'] * 2 // 100} s window, {args.dtype}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
