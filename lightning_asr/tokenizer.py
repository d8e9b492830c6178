"""Whisper's multilingual tokenizer, built offline from the official BPE ranks.

No model hub is needed: the ``openai-whisper`` source distribution on PyPI carries
``whisper/assets/multilingual.tiktoken`` (50,257 byte-level BPE ranks). From it we rebuild a
Hugging Face ``WhisperTokenizer`` with exactly the ids of multilingual whisper-tiny/base/small:
the vocabulary is each rank's bytes through GPT-2's byte-to-unicode table, the merges are
recovered by re-running BPE on every token with only the ranks below its own, and the special
tokens follow in Whisper's order (``<|endoftext|>`` 50257, ``<|startoftranscript|>`` 50258,
99 language tokens, task tokens, ``<|notimestamps|>`` 50363, then 1,501 timestamps).

Hugging Face silently returns an *empty* tokenizer when files are missing ("hello" -> [0, 0, 0]);
every tokenizer this module returns is checked to have 51,865 entries and the known special ids.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
from transformers.models.whisper.tokenization_whisper import LANGUAGES

WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_SDIST_FILE = "openai_whisper-20250625.tar.gz"
WHISPER_SDIST_SHA256 = "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96"
RANKS_MEMBER = "openai_whisper-20250625/whisper/assets/multilingual.tiktoken"
# the spelling map of Whisper's EnglishTextNormalizer (British -> American spellings), for scoring.english
ENGLISH_SPELLING_MEMBER = "openai_whisper-20250625/whisper/normalizers/english.json"

VOCAB_SIZE = 51865
N_BPE_RANKS = 50257
# The multilingual v1/v2 models know 99 languages; large-v3 added Cantonese as the 100th.
WHISPER_LANGUAGES = [code for code in LANGUAGES if code != "yue"][:99]
KNOWN_IDS = {
    "<|endoftext|>": 50257,
    "<|startoftranscript|>": 50258,
    "<|en|>": 50259,
    "<|zh|>": 50260,
    "<|ko|>": 50264,
    "<|transcribe|>": 50359,
    "<|notimestamps|>": 50363,
    "<|0.00|>": 50364,
}


class TokenizerError(RuntimeError):
    """The tokenizer could not be built, or is not Whisper's multilingual tokenizer."""


def cache_dir() -> Path:
    """Where downloaded assets and built tokenizers live: ``$LIGHTNING_ASR_CACHE``, else ``.cache`` in a
    source checkout, else ``~/.cache/lightning_asr``."""
    if os.environ.get("LIGHTNING_ASR_CACHE"):
        return Path(os.environ["LIGHTNING_ASR_CACHE"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "setup.cfg").exists():
        return checkout / ".cache"
    return Path.home() / ".cache" / "lightning_asr"


def fetch_bpe_ranks(cache: Path | None = None) -> Path:
    """Return the path of ``multilingual.tiktoken``, fetching the pinned sdist with pip once if needed."""
    return fetch_whisper_asset(RANKS_MEMBER, cache)


def fetch_english_spelling(cache: Path | None = None) -> Path:
    """Return the path of Whisper's ``english.json`` spelling map, from the same pinned sdist."""
    return fetch_whisper_asset(ENGLISH_SPELLING_MEMBER, cache)


def fetch_whisper_asset(member_name: str, cache: Path | None = None) -> Path:
    """One file of the pinned ``openai-whisper`` sdist, cached under ``whisper-assets/`` (downloaded with pip
    and checked against its sha256 on first use)."""
    cache = cache or cache_dir()
    target = cache / "whisper-assets" / Path(member_name).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            tmp,
            WHISPER_SDIST,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        sdist = Path(tmp) / WHISPER_SDIST_FILE
        if result.returncode != 0 or not sdist.exists():
            raise TokenizerError(
                f"could not download {WHISPER_SDIST} with pip ({result.stderr.strip()[-400:]}). "
                f"Fix: make the package index reachable, or place {target.name} at {target}."
            )
        from lightning_asr.adapters.export import file_sha256

        if file_sha256(sdist) != WHISPER_SDIST_SHA256:
            raise TokenizerError(f"{WHISPER_SDIST_FILE} does not have the expected sha256 {WHISPER_SDIST_SHA256}")
        with tarfile.open(sdist) as archive:
            member = archive.extractfile(member_name)
            if member is None:
                raise TokenizerError(f"{member_name} is missing from {WHISPER_SDIST_FILE}")
            partial = target.with_suffix(".partial")
            partial.write_bytes(member.read())
            partial.replace(target)
    return target


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for _line_number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line:
            continue
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != N_BPE_RANKS:
        raise TokenizerError(f"{path}: expected {N_BPE_RANKS} BPE ranks, found {len(ranks)}")
    return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Apply byte-level BPE to ``token`` using only merges ranked below ``max_rank``."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_index, best_rank = -1, max_rank
        for index in range(len(parts) - 1):
            rank = ranks.get(parts[index] + parts[index + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = index, rank
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE vocabularies use it)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_to_char = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {as_text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:  # single bytes, and rank 50256, which is the empty string
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise TokenizerError(f"BPE rank {rank} cannot be split into one merge: {parts}")
        merges.append((as_text(parts[0]), as_text(parts[1])))
    return vocab, merges


def special_tokens() -> list[str]:
    return (
        ["<|startoftranscript|>"]
        + [f"<|{code}|>" for code in WHISPER_LANGUAGES]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    )


def timestamp_tokens() -> list[str]:
    return [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def build_tokenizer_from_ranks(path: Path) -> WhisperTokenizer:
    from tokenizers import AddedToken

    vocab, merges = vocab_and_merges(read_bpe_ranks(path))
    vocab["<|endoftext|>"] = N_BPE_RANKS
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamp_tokens()])
    return tokenizer


def validate_tokenizer(tokenizer, origin: str) -> None:
    """Refuse anything that is not Whisper's 51,865-token multilingual tokenizer (HF builds empty ones silently)."""
    size = len(tokenizer)
    if size != VOCAB_SIZE:
        raise TokenizerError(
            f"tokenizer from {origin} has {size} tokens, expected {VOCAB_SIZE} (multilingual Whisper). "
            "Hugging Face returns an empty tokenizer when its files are missing; "
            "fix: point to a directory with tokenizer files, or use the built-in tokenizer (spec 'builtin')."
        )
    for token, expected in KNOWN_IDS.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected:
            raise TokenizerError(f"tokenizer from {origin}: {token} has id {got}, expected {expected}")
    if tokenizer.encode("hello", add_special_tokens=False) == [0]:
        raise TokenizerError(f"tokenizer from {origin} maps 'hello' to id 0: it has no BPE vocabulary")


_BUILT_IN: dict[Path, WhisperTokenizer] = {}  # the built-in tokenizer, read once per process and cache folder


def load_tokenizer(spec: str | os.PathLike | None = None) -> WhisperTokenizer:
    """Whisper's tokenizer: ``None``/``"builtin"`` builds it from the official BPE ranks (cached after the
    first build); a directory or hub id loads it with ``from_pretrained``. Always validated.

    The built-in tokenizer is read once per process and shared by every caller (reading it costs ~0.6 s):
    code that changes a tokenizer (new tokens, prefix tokens) changes a ``copy.deepcopy`` of it."""
    if spec is None or str(spec) == "builtin":
        built = cache_dir() / "whisper-tokenizer"
        if built in _BUILT_IN:
            return _BUILT_IN[built]
        if not (built / "tokenizer_config.json").exists():
            tokenizer = build_tokenizer_from_ranks(fetch_bpe_ranks())
            validate_tokenizer(tokenizer, "the built-in BPE ranks")
            built.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=built.parent))
            tokenizer.save_pretrained(staging)
            try:
                os.replace(staging, built)  # atomic: a concurrent build leaves one complete copy
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        tokenizer = WhisperTokenizer.from_pretrained(str(built))
        validate_tokenizer(tokenizer, str(built))
        return _BUILT_IN.setdefault(built, tokenizer)
    tokenizer = WhisperTokenizer.from_pretrained(str(spec))
    validate_tokenizer(tokenizer, str(spec))
    return tokenizer


def load_processor(spec: str | os.PathLike | None = None, chunk_length: int = 30) -> WhisperProcessor:
    """Feature extractor (80 log-mel bins, 16 kHz, ``chunk_length`` s windows) plus the validated tokenizer."""
    feature_extractor = WhisperFeatureExtractor(chunk_length=chunk_length)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=load_tokenizer(spec))


if __name__ == "__main__":
    built = load_tokenizer()
    fetch_english_spelling()  # scoring.english: whisper
    print(f"Whisper tokenizer ready: {len(built)} tokens, cached under {cache_dir()}")
