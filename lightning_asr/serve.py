"""Serving with weight separation: one base model in memory, each user's adapter swapped in per request.

``python -m lightning_asr serve --base SPEC --adapters DIR`` loads the base once. ``DIR/<user_id>/`` holds
one adapter directory per user, as ``strategy.save_adapter`` writes it; a device that keeps its adapter
itself sends the files with the audio instead of a user id.

Design:

- **Structures over shared weights.** Each distinct adapter structure (strategy plus the config keys that
  shape its modules) gets one *slot*: a copy of the base's module tree, made with ``copy.deepcopy`` whose
  memo maps every base parameter to itself, so the copy's base weights are the very same tensors; the
  strategy then injects its modules into that copy. Base weights are never duplicated or reloaded, except
  those the strategy owns (``owns_base_parameter``: what it trains and so overwrites with each user's
  tensors, e.g. every weight of full fine-tuning, or ``modules_to_save``): those are the slot's own copies.
- **Hot swap.** An LRU of ``cache_size`` users keeps adapter tensors read from disk (CPU); a swap copies
  them into the slot's adapter parameters (``load_adapter_state_dict``). A slot remembers which adapter
  it holds, so consecutive requests of one user copy nothing.
- **Merged mode** folds a mergeable strategy (``mergeable``) into the shared base weights for the decode and
  then copies back the original weights it kept (``merge_targets``), so the base is restored bit for bit
  (no subtract-after-add drift). A strategy that cannot be folded (input-dependent gates) is served
  unmerged, and the response says why (``not_mergeable_reason``).
- **One lock around the model.** The base and the slots are one mutable object; requests are serialised
  around swap + decode (audio decoding and feature extraction run outside it). Throughput on this design
  comes from batching (long audio is decoded in batches of windows) and a faster device, not from
  concurrent requests.
- **Keys and limits** (``ServiceLimits``, ``create_app``): ``--api-key`` turns on bearer-token
  authorisation for every route but ``/health`` (401 without a key, 403 with a wrong one). A user's
  directory may hold ``access_key.sha256`` (the hex SHA-256 of that user's key): requests for that user
  then need the key in ``X-User-Key``; ``--require-user-keys`` makes a key file compulsory for every user
  and makes an uploaded adapter name its user and carry that user's key. Uploads, adapter files, audio
  seconds and waiting requests are bounded (413, or 503 with ``Retry-After``). Nothing is unpickled: adapter
  files are safetensors and JSON, and user ids are validated before they touch a path.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import itertools
import json
import logging
import re
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from starlette.requests import Request  # at module level: FastAPI resolves the endpoints' annotations here
from torch import nn

from lightning_asr.adapters import AdapterStrategy, adapter_config, build_strategy, inference_settings
from lightning_asr.adapters.export import (
    PEFT_CONFIG,
    PEFT_TENSORS,
    SIDE_JSON,
    SIDE_TENSORS,
    AdapterFileError,
    base_fingerprint,
    fingerprint_mismatch,
    read_adapter_tensors,
    read_side_file,
)
from lightning_asr.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE
from lightning_asr.config import ConfigError, DecodeConfig, ModelConfig, structured
from lightning_asr.models import backbone_for

ADAPTER_FILES = (SIDE_JSON, SIDE_TENSORS, PEFT_CONFIG, PEFT_TENSORS)
USER_KEY_FILE = "access_key.sha256"  # in a user's adapter directory: the hex SHA-256 of the user's key
USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")  # fullmatch: "$" would let a final newline in
MODES = ("merged", "unmerged")
WINDOWS_PER_BATCH = 16  # long audio: windows decoded together, in batches of at most this many (bounded memory)
log = logging.getLogger(__name__)


class ServeError(Exception):
    """A request that cannot be served; ``status`` is the HTTP status, the message names problem and fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---- audio ----------------------------------------------------------------------------------------------------
def decode_audio_bytes(data: bytes) -> np.ndarray:
    """Mono float32 samples at 16 kHz from WAV/FLAC (anything soundfile reads) bytes."""
    if not data:
        raise ServeError(
            400, "the request holds no audio — fix: send WAV or FLAC bytes as the body (or the 'audio' part)"
        )
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as err:
        raise ServeError(400, f"unreadable audio ({err}) — fix: send WAV or FLAC bytes") from err
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ServeError(400, f"sample rate {rate} Hz cannot be resampled — fix: re-encode the audio at 16000 Hz")
    if samples.shape[0] == 0:
        raise ServeError(400, "the audio holds no samples — fix: send a non-empty recording")
    samples = samples.mean(axis=1)
    if not np.isfinite(samples).all():
        raise ServeError(400, "the audio holds NaN or infinite samples — fix: re-encode it as PCM WAV or FLAC")
    if rate != SAMPLE_RATE:
        import torchaudio

        samples = torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(samples, dtype=np.float32)


# ---- keys and limits ------------------------------------------------------------------------------------------
@dataclass
class ServiceLimits:
    """What one request may carry and how many may wait; every bound is refused with the fix."""

    max_upload_bytes: int = 25 * 2**20  # the whole request body
    max_adapter_bytes: int = 64 * 2**20  # the uploaded adapter files together
    max_audio_seconds: float = 600.0  # audio length per request
    max_queue: int = 16  # requests waiting for the model beyond the one being decoded (then 503)
    retry_after_seconds: int = 2
    # up to max_batch_size requests are decoded together; while the model is idle a batch waits at most
    # batch_timeout_ms after its first request (1: each request alone, as it comes; see RequestBatcher)
    max_batch_size: int = 1
    batch_timeout_ms: float = 25.0


class RequestBatcher:
    """Collects requests for ``AdapterServer.transcribe_many``, one batch in flight at a time. While the model
    is idle, a batch is sent when ``max_batch_size`` requests wait or ``timeout_ms`` after the first one
    arrived; while it decodes, arrivals wait, and the moment it is done they go as the next batch (they have
    waited a whole decode already). Batches sent as soon as their window closes would instead queue on the
    model lock in small pieces, each costing a full decode."""

    def __init__(self, server: AdapterServer, max_batch_size: int, timeout_ms: float):
        self.server, self.max_batch_size, self.timeout = server, max_batch_size, timeout_ms / 1000
        self.pending: list = []
        self.timer = None
        self.busy = False

    async def submit(self, request: dict) -> dict:
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((request, future))
        if not self.busy:
            if len(self.pending) >= self.max_batch_size:
                self.flush()
            elif self.timer is None:
                self.timer = loop.call_later(self.timeout, self.flush)
        result = await future
        if isinstance(result, ServeError):
            raise result
        return result

    def flush(self) -> None:
        import asyncio

        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.busy or not self.pending:
            return
        batch, self.pending = self.pending[: self.max_batch_size], self.pending[self.max_batch_size :]
        self.busy = True
        asyncio.get_running_loop().create_task(self.run(batch))

    async def run(self, batch: list) -> None:
        from starlette.concurrency import run_in_threadpool

        try:
            results = await run_in_threadpool(self.server.transcribe_many, [request for request, _ in batch])
        except Exception as err:  # the engine stays consistent; every request of the batch learns why
            log.exception("batched transcription failed")
            results = [ServeError(500, f"internal error: {err.__class__.__name__}: {err}")] * len(batch)
        finally:
            self.busy = False
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
        self.flush()


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def write_user_key(user_directory: str | Path, key: str) -> Path:
    """Store ``key``'s digest in a user's adapter directory (the server never keeps the key itself)."""
    path = Path(user_directory) / USER_KEY_FILE
    path.write_text(key_digest(key) + "\n")
    return path


def check_user_key(directory: Path, user: str, key: str | None, required: bool) -> None:
    """401 when a key is needed and missing, 403 when it is wrong; nothing when the user has no key file and
    keys are not required."""
    path = directory / USER_KEY_FILE
    if not path.is_file():
        if required:
            raise ServeError(
                403,
                f"user {user!r} has no access key and the server requires one — fix: store one with "
                f"lightning_asr.serve.write_user_key({str(directory)!r}, KEY)",
            )
        return
    if not key:
        raise ServeError(401, f"user {user!r} needs an access key — fix: send it in the X-User-Key header")
    if not hmac.compare_digest(path.read_text().strip(), key_digest(key)):
        raise ServeError(403, f"wrong access key for user {user!r}")


# ---- engine ---------------------------------------------------------------------------------------------------
@dataclass
class Slot:
    """One injected copy of the base for one adapter structure; its base weights are the base's tensors."""

    key: str
    strategy: AdapterStrategy
    model: nn.Module
    tokenizer: object  # the base's, or a copy extended with the adapter's new tokens
    loaded: int | None = None  # token of the adapter whose tensors the slot's parameters hold


@dataclass
class ReadyAdapter:
    """An adapter's tensors read and checked, ready to copy into its slot."""

    key: str
    strategy: str
    tensors: dict[str, torch.Tensor]
    signature: tuple = ()
    token: int = 0
    nbytes: int = 0


def structure_key(side: dict) -> str:
    """Adapters whose configs differ only in training-only settings (``adapters.training_only``) share one
    injected structure."""
    config = inference_settings(adapter_config(side["config"], "adapter config", lenient=True))
    return f"{side['strategy']}:{json.dumps(config, sort_keys=True)}"


def file_signature(directory: Path) -> tuple:
    """Size and modification time of each adapter file: a re-exported adapter invalidates its cache entry."""
    signature = []
    for name in ADAPTER_FILES:
        path = directory / name
        if path.exists():
            stat = path.stat()
            signature.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


class AdapterServer:
    """The model side of the service: base, slots, adapter LRU, decoding. ``transcribe`` is thread-safe."""

    def __init__(
        self,
        base: str,
        adapters: str | Path,
        mode: str = "unmerged",
        cache_size: int = 8,
        language: str = "auto",
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        device: str = "cpu",
        max_structures: int = 8,
        require_user_keys: bool = False,
        max_audio_seconds: float | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose merged or unmerged")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.base_spec, self.adapters_dir, self.mode, self.cache_size = str(base), Path(adapters), mode, cache_size
        self.max_structures = max(1, max_structures)
        self.require_user_keys, self.max_audio_seconds = require_user_keys, max_audio_seconds
        defaults = DecodeConfig()
        self.decode_config = structured(
            DecodeConfig,
            {"num_beams": num_beams or defaults.num_beams, "max_new_tokens": max_new_tokens or defaults.max_new_tokens},
        )
        self.device = torch.device(device)
        self.backbone = backbone_for(base)
        model, self.processor = self.backbone.load(structured(ModelConfig, {"spec": str(base)}))
        self.base = model.to(self.device).eval()
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.fingerprint = base_fingerprint(self.base)
        languages = getattr(getattr(self.base, "generation_config", None), "lang_to_id", None) or {}
        self.language_codes = {token[2:-2] for token in languages}  # none: the model has no language control
        try:
            self.default_language = self.parse_language(language)
        except ServeError as err:
            raise ValueError(err.message) from None
        window = self.backbone.window_seconds(self.processor)
        self.window_samples = int(window * SAMPLE_RATE) if window else None
        self.lock = threading.Lock()
        self.slots: OrderedDict[str, Slot] = OrderedDict()
        self.cache: OrderedDict[str, ReadyAdapter] = OrderedDict()
        self.tokens = itertools.count(1)
        self.served = 0
        # (cached users, structures, cached bytes), replaced whole under the lock: health reads it without waiting
        self.snapshot: tuple[tuple[str, ...], tuple[str, ...], int] = ((), (), 0)

    # ---- requests --------------------------------------------------------------------------------------------
    def parse_language(self, language: str | None) -> str | None:
        """``auto`` (detected per request) -> None; a code, or a code-switching pair such as ``zh-en``, whose
        first language is forced, as offline decoding does with manifest languages."""
        if language is None or language == "auto" or not self.language_codes:
            return None
        code = language.split("-")[0]
        if code not in self.language_codes:
            raise ServeError(
                422, f"unknown language {language!r} — fix: use 'auto' or a Whisper language code such as 'en'"
            )
        return code

    def features(self, audio: bytes) -> tuple[list[dict], float]:
        """Model inputs of the audio cut into encoder windows (one piece where the encoder takes any length),
        in batches of at most ``WINDOWS_PER_BATCH`` windows, and the audio's length in seconds."""
        samples = decode_audio_bytes(audio)
        seconds = len(samples) / SAMPLE_RATE
        if self.max_audio_seconds is not None and seconds > self.max_audio_seconds:
            raise ServeError(
                413,
                f"{seconds:.1f} s of audio is longer than this server's {self.max_audio_seconds:g} s per request — "
                "fix: split it, or start the server with a larger --max-audio-seconds",
            )
        step = self.window_samples or len(samples)
        windows = [samples[i : i + step] for i in range(0, len(samples), step)]
        batches = [
            self.backbone.audio_inputs(self.processor, windows[start : start + WINDOWS_PER_BATCH])
            for start in range(0, len(windows), WINDOWS_PER_BATCH)
        ]
        return batches, len(samples) / SAMPLE_RATE

    def transcribe(
        self,
        audio: bytes,
        user: str | None = None,
        adapter_files: dict[str, bytes] | None = None,
        language: str | None = None,
        user_key: str | None = None,
    ) -> dict:
        """Decode ``audio`` with the adapter of ``user`` (from the store) or the uploaded ``adapter_files``
        (which, where user keys are required, name their ``user`` and carry the key)."""
        started = time.perf_counter()
        if user is None and adapter_files is None:
            raise ServeError(400, "give either a user id or the adapter files")
        self._check_request(user, adapter_files, user_key)
        forced = self.default_language if language is None else self.parse_language(language)
        features, seconds = self.features(audio)
        audio_ms = (time.perf_counter() - started) * 1000
        with self.lock:
            try:
                locked = time.perf_counter()
                if adapter_files is None:
                    adapter, cache_hit, load_ms = self._user_adapter(user)
                else:
                    adapter, cache_hit, load_ms = self._uploaded_adapter(adapter_files), False, None
                loaded = time.perf_counter()
                slot = self.slots[adapter.key]
                self.slots.move_to_end(adapter.key)
                swapped = self._swap(slot, adapter)
                swap_done = time.perf_counter()
                with self._merged(slot) as merge:
                    texts, detected, cap_hits = self._decode(slot, features, forced)
                decoded = time.perf_counter()
                self.served += 1
            finally:
                self.snapshot = self._snapshot()
        merged, merge_ms, note = merge["merged"], merge["ms"], merge["note"]
        decode_ms = (decoded - swap_done) * 1000 - merge_ms
        response = {
            "text": "".join(texts),
            "language": forced or detected,
            "language_detected": forced is None,
            "user": user,
            "adapter_source": "store" if adapter_files is None else "upload",
            "strategy": adapter.strategy,
            "mode": "merged" if merged else "unmerged",
            "cache_hit": cache_hit,
            "swapped": swapped,
            "windows": len(texts),
            "audio_seconds": round(seconds, 3),
            "cap_hits": cap_hits,
            "timings_ms": {
                "audio": audio_ms,
                "queue": (locked - started) * 1000 - audio_ms,
                "adapter_load": load_ms if load_ms is not None else (loaded - locked) * 1000,
                "swap": (swap_done - loaded) * 1000,
                "merge": merge_ms,
                "decode": decode_ms,
                "total": (time.perf_counter() - started) * 1000,
            },
        }
        response["timings_ms"] = {k: round(v, 3) for k, v in response["timings_ms"].items()}
        if note:
            response["note"] = note
        return response

    def transcribe_many(self, requests: list[dict]) -> list[dict | ServeError]:
        """Decode several requests (``transcribe``'s keyword arguments each, ``audio`` included) together: the
        requests whose adapters share a structure that can be banked (``lightning_asr.batching``) go through
        one batched pass over the shared base, each row with its own user's adapter; the others are decoded
        one by one. A request refused (bad audio, unknown user) gets its ``ServeError`` in its place; the
        others are still answered. A request with ``user=None`` and no files is decoded by the base."""
        from lightning_asr.batching import bankable, row_banked

        started = time.perf_counter()
        results: list = [None] * len(requests)
        hits: dict[int, bool] = {}  # request index: its user's adapter was in the LRU
        prepared = []  # (index, request, features, seconds, forced language)
        for index, request in enumerate(requests):
            try:
                user, files = request.get("user"), request.get("adapter_files")
                if user is not None or files is not None:
                    self._check_request(user, files, request.get("user_key"))
                elif self.require_user_keys:
                    raise ServeError(401, "this server requires a user and the user's key for every request")
                language = request.get("language")
                forced = self.default_language if language is None else self.parse_language(language)
                features, seconds = self.features(request["audio"])
                prepared.append((index, request, features, seconds, forced))
            except ServeError as err:
                results[index] = err
        with self.lock:
            try:
                # by structure: the Slot itself (loading a later request's structure may evict it from
                # self.slots, and this batch still decodes through it)
                groups: dict[str, tuple[Slot | None, list]] = {}
                for index, request, features, seconds, forced in prepared:
                    user, files = request.get("user"), request.get("adapter_files")
                    if user is None and files is None:
                        groups.setdefault("", (None, []))[1].append((index, None, features, seconds, forced))
                        continue
                    try:
                        if files is not None:
                            adapter = self._uploaded_adapter(files)
                        else:
                            adapter, hits[index], _ = self._user_adapter(user)
                    except ServeError as err:
                        results[index] = err
                        continue
                    slot = self.slots[adapter.key]
                    self.slots.move_to_end(adapter.key)
                    groups.setdefault(adapter.key, (slot, []))[1].append((index, adapter, features, seconds, forced))
                _, base_rows = groups.pop("", (None, []))
                if base_rows:  # the base alone: a bankable slot with all-zero adapters
                    key = next((k for k, (slot, _) in groups.items() if bankable(slot.strategy) is None), None)
                    if key is None:
                        key = next((k for k, slot in self.slots.items() if bankable(slot.strategy) is None), None)
                        if key is not None:
                            groups[key] = (self.slots[key], [])
                    if key is None:
                        for index, *_ in base_rows:
                            results[index] = ServeError(
                                409, "no adapter structure is loaded to decode the base through — fix: send a user"
                            )
                    else:
                        groups[key][1].extend(base_rows)
                for slot, rows in groups.values():
                    reason = bankable(slot.strategy)
                    if reason is None:
                        # merged mode folds one adapter at a time: its rows with an adapter decode alone, the
                        # base rows still go through the bank (all-zero entries), never through a folded slot
                        folded = self.mode == "merged"
                        alone = [r for r in rows if folded and r[1] is not None]
                        banked = [r for r in rows if not (folded and r[1] is not None)]
                        if len(banked) == 1 and banked[0][1] is not None:  # one row: the slot's own path
                            alone.append(banked[0])
                        elif banked:
                            self._decode_banked(slot, banked, results, started, row_banked)
                    else:
                        alone = rows
                    for index, adapter, features, seconds, forced in alone:  # one at a time, as transcribe does
                        note = (
                            f"decoded alone: {reason}"
                            if reason
                            else "decoded alone: merged mode folds one adapter"
                            if self.mode == "merged"
                            else None
                        )
                        results[index] = self._decode_one(slot, adapter, features, seconds, forced, started, note)
                self.served += sum(1 for r in results if isinstance(r, dict))
            finally:
                self.snapshot = self._snapshot()
        for index, (request, result) in enumerate(zip(requests, results)):
            if isinstance(result, dict):
                files = request.get("adapter_files")
                result.update(
                    user=request.get("user"),
                    adapter_source="upload" if files is not None else "store",
                    cache_hit=hits.get(index, False),
                )
        return results

    def _check_request(self, user, files, user_key) -> None:
        if user is not None and files is not None and not self.require_user_keys:
            raise ServeError(400, "give either a user id or the adapter files, not both")
        if user is not None and not USER_ID.fullmatch(user):
            raise ServeError(400, f"invalid user id {user!r:.140} — fix: letters, digits and _ . @ - only, at most 128")
        if files is not None and self.require_user_keys and user is None:
            raise ServeError(
                401,
                "this server requires an uploaded adapter to name its user and carry the user's key — fix: "
                "send the user field and the X-User-Key header with the files",
            )
        if user is not None:
            check_user_key(self.adapters_dir / user, user, user_key, self.require_user_keys)

    def _decode_one(self, slot, adapter, features, seconds, forced, started, note) -> dict:
        if adapter is not None:
            self._swap(slot, adapter)
        with self._merged(slot) as merge:
            texts, detected, cap_hits = self._decode(slot, features, forced)
        response = self._batched_response(
            adapter, texts, forced or detected, forced is None, seconds, cap_hits, started
        )
        response.update(mode="merged" if merge["merged"] else "unmerged", batch_rows=1)
        if merge["note"] or note:
            response["note"] = merge["note"] or note
        return response

    def _decode_banked(self, slot, rows, results, started, row_banked) -> None:
        """One batched pass of every window of ``rows`` (at most ``WINDOWS_PER_BATCH`` windows at a time), each
        window with its request's adapter."""
        adapters = [adapter.tensors if adapter is not None else None for _, adapter, *_ in rows]
        languages = []
        for position, (_, _, features, _, forced) in enumerate(rows):
            if forced is None:  # detect per request, on its first window, with its own adapter
                first = {k: v[:1].to(self.device) for k, v in features[0].items()}
                with torch.no_grad(), row_banked(slot.strategy, [adapters[position]], [0]):
                    forced = self.backbone.detect_language(slot.model, first)
                languages.append((forced, True))
            else:
                languages.append((forced, False))
        windows = []  # (row position, model inputs of one window)
        for position, (_, _, features, _, _) in enumerate(rows):
            for batch in features:
                count = next(iter(batch.values())).shape[0]
                windows += [(position, {k: v[i : i + 1] for k, v in batch.items()}) for i in range(count)]
        texts: dict[int, list[str]] = {position: [] for position in range(len(rows))}
        by_shape: dict[tuple, list] = {}  # windows of one shape share a batch (wav2vec2's differ in length)
        for window in windows:
            by_shape.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(window[1].items())), []).append(window)
        chunks = [
            group[i : i + WINDOWS_PER_BATCH]
            for group in by_shape.values()
            for i in range(0, len(group), WINDOWS_PER_BATCH)
        ]
        with torch.no_grad():
            for chunk in chunks:
                positions = [position for position, _ in chunk]
                inputs = {k: torch.cat([w[k] for _, w in chunk]).to(self.device) for k in chunk[0][1]}
                forced_languages = [languages[position][0] for position in positions]
                if all(language is None for language in forced_languages):
                    forced_languages = None
                with row_banked(slot.strategy, adapters, positions):
                    chunk_texts, _ = self.backbone.decode(
                        slot.model, slot.tokenizer, inputs, forced_languages, self.decode_config
                    )
                for position, text in zip(positions, chunk_texts):
                    texts[position].append(text)
        for position, (index, adapter, _, seconds, _) in enumerate(rows):
            language, detected = languages[position]
            # cap hits are counted per batch, not per row: not reported for a shared pass
            response = self._batched_response(adapter, texts[position], language, detected, seconds, None, started)
            response.update(mode="unmerged", batch_rows=len(rows))
            results[index] = response

    def _batched_response(self, adapter, texts, language, detected, seconds, cap_hits, started) -> dict:
        return {
            "text": "".join(texts),
            "language": language,
            "language_detected": detected,
            "strategy": adapter.strategy if adapter is not None else "base",
            "windows": len(texts),
            "audio_seconds": round(seconds, 3),
            "cap_hits": cap_hits,
            "timings_ms": {"total": round((time.perf_counter() - started) * 1000, 3)},
        }

    # ---- adapters --------------------------------------------------------------------------------------------
    def _user_adapter(self, user: str) -> tuple[ReadyAdapter, bool, float]:
        directory = self.adapters_dir / user
        if not directory.is_dir():
            self.cache.pop(user, None)
            raise ServeError(
                404,
                f"no adapter for user {user!r} (no directory {directory}) — fix: export one "
                "there with strategy.save_adapter, or send the adapter files with the request",
            )
        signature = file_signature(directory)
        cached = self.cache.get(user)
        if cached is not None and cached.signature == signature and cached.key in self.slots:
            self.cache.move_to_end(user)
            return cached, True, 0.0
        started = time.perf_counter()
        adapter = self._read_adapter(directory, f"user {user!r}")
        adapter.signature = signature
        self.cache[user] = adapter
        self.cache.move_to_end(user)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return adapter, False, (time.perf_counter() - started) * 1000

    def _uploaded_adapter(self, files: dict[str, bytes]) -> ReadyAdapter:
        unknown = sorted(set(files) - set(ADAPTER_FILES))
        if unknown:
            raise ServeError(422, f"unexpected adapter file(s) {unknown} — fix: send only {', '.join(ADAPTER_FILES)}")
        with tempfile.TemporaryDirectory(prefix="lightning-asr-upload-") as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            return self._read_adapter(Path(tmp), "the uploaded adapter")

    def _read_adapter(self, directory: Path, what: str) -> ReadyAdapter:
        """Read and check an adapter directory, creating the slot for its structure when it is new."""
        try:
            side = read_side_file(directory)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ServeError(422, f"{what}: {SIDE_JSON} is not valid JSON ({err})") from err
        except AdapterFileError as err:
            raise ServeError(422, f"{what}: {err}") from err
        if side is None:
            raise ServeError(
                422,
                f"{what} has no {SIDE_JSON} (strategy, config and base fingerprint) — fix: "
                "export it with strategy.save_adapter, which writes it",
            )
        if not (
            isinstance(side, dict)
            and {"strategy", "config", "fingerprint"} <= set(side)
            and isinstance(side["config"], dict)
            and isinstance(side["fingerprint"], dict)
        ):
            raise ServeError(422, f"{what}: {SIDE_JSON} lacks strategy, config or fingerprint")
        problem = fingerprint_mismatch(side["fingerprint"], self.fingerprint)
        if problem:
            raise ServeError(
                409,
                f"{what} was exported for another base model: {problem} — fix: serve it with "
                f"the base it was trained on, or retrain it on {self.base_spec}",
            )
        slot = self._slot(side, what)
        try:
            tensors = read_adapter_tensors(slot.strategy, directory)
        except AdapterFileError as err:
            raise ServeError(422, f"{what}: {err}") from err
        except Exception as err:  # safetensors' own errors: truncated or corrupt files
            raise ServeError(422, f"{what}: unreadable adapter tensors ({err}) — fix: export it again") from err
        own = dict(slot.strategy.trainable_parameters())
        unknown, missing = sorted(set(tensors) - set(own)), sorted(set(own) - set(tensors))
        wrong = sorted(n for n in set(tensors) & set(own) if tuple(tensors[n].shape) != tuple(own[n].shape))
        if unknown or missing or wrong:
            raise ServeError(
                422,
                f"{what} does not fit its {side['strategy']} config: unknown {unknown[:3]}, "
                f"missing {missing[:3]}, wrong shape {wrong[:3]}",
            )
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return ReadyAdapter(slot.key, side["strategy"], tensors, token=next(self.tokens), nbytes=nbytes)

    def _slot(self, side: dict, what: str) -> Slot:
        key = structure_key(side)
        if key in self.slots:
            return self.slots[key]
        try:
            strategy = build_strategy(adapter_config(side["config"], "adapter config", lenient=True))
        except (ConfigError, ValueError, TypeError) as err:
            raise ServeError(422, f"{what}: its adapter config cannot be built here ({err})") from err
        model = copy.deepcopy(self.base, self._shared_memo(strategy))
        try:
            strategy.attach(model, for_training=False)
        except ValueError as err:
            raise ServeError(422, f"{what}: {err}") from err
        if not strategy.trainable_parameters():
            raise ServeError(422, f"{what} is a {strategy.name!r} export: it trains nothing, so it holds no adapter")
        targets = side.get("target_modules")
        if targets is not None and list(targets) != list(strategy.target_names or targets):
            raise ServeError(
                422,
                f"{what} adapts {len(targets)} modules, but its target patterns select "
                f"{len(strategy.target_names)} on this base — fix: export it from this base",
            )
        tokenizer = self.processor.tokenizer
        new_tokens = list(strategy.config.new_tokens or [])
        if new_tokens:  # their embedding rows come with the adapter's tensors; the ids need the words
            from lightning_asr.vocabulary import extend_tokenizer

            tokenizer = copy.deepcopy(tokenizer)
            try:
                extend_tokenizer(tokenizer, new_tokens)
            except ValueError as err:
                raise ServeError(422, f"{what}: {err}") from err
        model.eval()
        slot = Slot(key, strategy, model, tokenizer)
        self.slots[key] = slot
        while len(self.slots) > self.max_structures:
            evicted, _ = self.slots.popitem(last=False)
            for user in [u for u, a in self.cache.items() if a.key == evicted]:
                del self.cache[user]
        return slot

    def _shared_memo(self, strategy: AdapterStrategy) -> dict:
        """``deepcopy`` memo that makes the copy reuse the base's parameters and buffers instead of copying
        them, except those the strategy owns (trains, and so overwrites with each user's tensors: every
        weight of full fine-tuning, ``modules_to_save``): those are the slot's own copies, so no user's
        weights reach the base that every slot shares."""
        memo = {}
        for name, parameter in self.base.named_parameters(remove_duplicate=False):
            if not strategy.owns_base_parameter(name):
                memo[id(parameter)] = parameter
        for buffer in self.base.buffers():
            memo[id(buffer)] = buffer
        return memo

    @staticmethod
    def _swap(slot: Slot, adapter: ReadyAdapter) -> bool:
        if slot.loaded == adapter.token:
            return False
        slot.loaded = None  # a copy that fails halfway must not be taken for a loaded adapter
        slot.strategy.load_adapter_state_dict(adapter.tensors, strict=True)
        slot.loaded = adapter.token
        return True

    @contextmanager
    def _merged(self, slot: Slot):
        """Yields ``{"merged", "ms", "note"}``; ``ms`` (merge + restore) is final once the block exits. Merging
        writes into the shared base weights: the original target weights are kept and copied back
        afterwards, whatever the decode did, so the base is restored bit for bit."""
        state = {"merged": False, "ms": 0.0, "note": None}
        if self.mode != "merged":
            yield state
            return
        if not slot.strategy.mergeable:
            state["note"] = f"served unmerged: {slot.strategy.not_mergeable_reason}"
            yield state
            return
        started = time.perf_counter()
        targets = slot.strategy.merge_targets()
        originals = [target.detach().clone() for target in targets]
        try:
            slot.strategy.merge()
            state["merged"] = True
            state["ms"] = (time.perf_counter() - started) * 1000
            yield state
        finally:
            restore = time.perf_counter()
            slot.strategy.unmerge()
            with torch.no_grad():  # subtracting back leaves rounding residue: the kept weights are exact
                for target, weight in zip(targets, originals):
                    target.copy_(weight)
            state["ms"] += (time.perf_counter() - restore) * 1000

    def _decode(self, slot: Slot, batches: list[dict], language: str | None) -> tuple[list[str], str | None, int]:
        """Decoding through the backbone, as ``ASRModule.transcribe`` does it; ``auto`` detects the language
        of the first window and forces it on every window."""
        texts, cap_hits = [], 0
        with torch.no_grad():
            for index, batch in enumerate(batches):
                inputs = {k: v.to(self.device) for k, v in batch.items()}
                if language is None and index == 0:
                    language = self.backbone.detect_language(slot.model, inputs)
                rows = next(iter(inputs.values())).shape[0]
                languages = None if language is None else [language] * rows
                batch_texts, hits = self.backbone.decode(
                    slot.model, slot.tokenizer, inputs, languages, self.decode_config
                )
                texts += batch_texts
                cap_hits += hits
        return texts, language, cap_hits

    # ---- introspection ---------------------------------------------------------------------------------------
    def _snapshot(self) -> tuple:
        return tuple(self.cache), tuple(self.slots), sum(a.nbytes for a in self.cache.values())

    def users(self) -> list[dict]:
        """The store's users with the strategy of each adapter (or the problem that makes it unusable)."""
        rows = []
        if not self.adapters_dir.is_dir():
            return rows
        for directory in sorted(p for p in self.adapters_dir.iterdir() if p.is_dir() and USER_ID.fullmatch(p.name)):
            row = {"user": directory.name, "cached": directory.name in self.snapshot[0]}
            try:
                side = read_side_file(directory)
                if side is None:
                    row["problem"] = f"no {SIDE_JSON}"
                else:
                    row["strategy"] = side.get("strategy")
                    problem = fingerprint_mismatch(side.get("fingerprint") or {}, self.fingerprint)
                    if problem:
                        row["problem"] = f"exported for another base model: {problem}"
            except Exception as err:
                row["problem"] = str(err)
            rows.append(row)
        return rows

    def health(self) -> dict:
        return {
            "status": "ok",
            "base": self.base_spec,
            "base_weights_sha256": self.fingerprint["weights_sha256"],
            "mode": self.mode,
            "device": str(self.device),
            "window_seconds": self.backbone.window_seconds(self.processor),
            "cache_size": self.cache_size,
            "cached_users": list(self.snapshot[0]),
            "cached_bytes": self.snapshot[2],
            "structures": list(self.snapshot[1]),
            "requests_served": self.served,
        }

    def preload_structures(self) -> int:
        """Build the slots of the structures found in the store now, so first requests don't pay for it."""
        if not self.adapters_dir.is_dir():
            return 0
        with self.lock:
            for directory in sorted(self.adapters_dir.iterdir()):
                if len(self.slots) >= self.max_structures:
                    break
                try:
                    side = read_side_file(directory) if directory.is_dir() else None
                    if side and not fingerprint_mismatch(side.get("fingerprint") or {}, self.fingerprint):
                        self._slot(side, directory.name)
                except Exception:  # an unusable entry is reported when its user is requested
                    continue
            self.snapshot = self._snapshot()
        return len(self.slots)


# ---- HTTP -----------------------------------------------------------------------------------------------------
def create_app(
    server: AdapterServer,
    max_upload_bytes: int | None = None,
    api_keys: list[str] | None = None,
    limits: ServiceLimits | None = None,
):
    """The FastAPI application over ``server``. ``POST /transcribe`` takes either

    - the audio as the raw body, with ``?user=ID`` (and optionally ``&language=xx``), or
    - ``multipart/form-data`` with an ``audio`` file part, and either a ``user`` field or ``adapter`` file
      parts named by their file names (``lightning_asr_adapter.json``, ``lightning_asr_adapter.safetensors``
      and, for LoRA/BLoRA, ``adapter_config.json`` and ``adapter_model.safetensors``).

    ``api_keys``: bearer tokens accepted on every route but ``/health`` (none: no authorisation).
    ``X-User-Key``: a user's own key, where the store holds one for that user.
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    from lightning_asr import __version__

    limits = limits or ServiceLimits()
    if max_upload_bytes is not None:
        limits = ServiceLimits(**{**limits.__dict__, "max_upload_bytes": max_upload_bytes})
    app = FastAPI(title="lightning-asr", version=__version__)
    limit_mb = limits.max_upload_bytes / 2**20
    digests = [key_digest(k) for k in api_keys or []]
    batcher = (
        RequestBatcher(server, limits.max_batch_size, limits.batch_timeout_ms) if limits.max_batch_size > 1 else None
    )
    waiting = {"count": 0}  # requests inside /transcribe (one decodes, the rest wait for the model)

    def problem(err: ServeError) -> JSONResponse:
        headers = {}
        if err.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if err.status == 503:
            headers["Retry-After"] = str(limits.retry_after_seconds)
        return JSONResponse({"detail": err.message, "status": err.status}, status_code=err.status, headers=headers)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return problem(err)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, err: Exception):
        return JSONResponse(
            {"detail": f"internal error: {err.__class__.__name__}: {err}", "status": 500}, status_code=500
        )

    @app.middleware("http")
    async def authorise(request: Request, call_next):
        if digests and request.url.path != "/health":
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return problem(ServeError(401, "this server needs an API key — fix: send 'Authorization: Bearer KEY'"))
            given = key_digest(token.strip())
            if not any(hmac.compare_digest(given, d) for d in digests):
                return problem(ServeError(403, "the API key is not valid for this server"))
        return await call_next(request)

    async def read_body(request: Request) -> bytes:
        too_large = ServeError(
            413,
            f"upload larger than {limit_mb:g} MB — fix: send shorter audio, or start the "
            "server with a larger --max-upload-mb",
        )
        declared = request.headers.get("content-length")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limits.max_upload_bytes:
                chunks.append(chunk)
            elif size > 16 * limits.max_upload_bytes + 2**26:
                break  # drained enough; the connection is closed after the 413
            else:
                chunks = []  # keep reading (discarding) so the client can read the 413 instead of a reset
        if size > limits.max_upload_bytes or (
            declared and declared.isdigit() and int(declared) > limits.max_upload_bytes
        ):
            raise too_large
        return b"".join(chunks)

    async def read_form(request: Request, body: bytes):
        """The multipart form of a body already read (and bounded), parsed by python-multipart."""
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            return await Request(request.scope, replay).form(max_files=1 + len(ADAPTER_FILES), max_fields=8)
        except Exception as err:  # python-multipart's and starlette's parse errors
            raise ServeError(400, f"malformed multipart body: {err}") from None

    @app.get("/health")
    async def health():
        return {**server.health(), "waiting": waiting["count"]}

    @app.get("/users")
    async def users():
        return {"users": await run_in_threadpool(server.users)}

    @app.post("/transcribe")
    async def transcribe(request: Request, user: str | None = None, language: str | None = None):
        if waiting["count"] > limits.max_queue:
            raise ServeError(
                503,
                f"{waiting['count']} requests are waiting for the model already — fix: retry after the "
                f"Retry-After seconds, or start the server with a larger --max-queue",
            )
        waiting["count"] += 1
        try:
            return await transcribe_one(request, user, language)
        finally:
            waiting["count"] -= 1

    async def transcribe_one(request: Request, user: str | None, language: str | None) -> dict:
        body = await read_body(request)
        content_type = request.headers.get("content-type", "")
        adapter_files = None
        if content_type.lower().startswith("multipart/form-data"):
            audio = None
            form = await read_form(request, body)
            for name, value in form.multi_items():
                content = await value.read() if isinstance(value, UploadFile) else str(value).encode("utf-8")
                if name == "audio":
                    audio = content
                elif name == "user":
                    user = content.decode("utf-8", "replace").strip()
                elif name == "language":
                    language = content.decode("utf-8", "replace").strip()
                elif name == "adapter" and isinstance(value, UploadFile):
                    adapter_files = adapter_files or {}
                    key = Path(value.filename or "").name
                    if key not in ADAPTER_FILES or key != (value.filename or ""):
                        raise ServeError(
                            422,
                            f"adapter part with file name {value.filename!r} — fix: send the files of an "
                            f"adapter directory under their own names ({', '.join(ADAPTER_FILES)})",
                        )
                    if key in adapter_files:
                        raise ServeError(422, f"adapter file {key} sent twice — fix: send each file once")
                    adapter_files[key] = content
                else:
                    raise ServeError(422, f"unexpected form field {name!r} — fix: use audio, user, language, adapter")
            await form.close()
            if audio is None:
                raise ServeError(422, "multipart request without an 'audio' part")
            if adapter_files and sum(map(len, adapter_files.values())) > limits.max_adapter_bytes:
                raise ServeError(
                    413,
                    f"adapter files larger than {limits.max_adapter_bytes / 2**20:g} MB together — fix: export a "
                    "smaller adapter, or start the server with a larger --max-adapter-mb",
                )
        else:
            audio = body
        if batcher is not None:
            request_args = {"audio": audio, "user": user, "adapter_files": adapter_files, "language": language}
            return await batcher.submit({**request_args, "user_key": request.headers.get("x-user-key")})
        try:
            return await run_in_threadpool(
                server.transcribe,
                audio,
                user=user,
                adapter_files=adapter_files,
                language=language,
                user_key=request.headers.get("x-user-key"),
            )
        except ServeError:
            raise
        except Exception as err:  # the model and slots are left consistent (see _swap, _merged): keep serving
            log.exception("transcription failed")
            raise ServeError(500, f"internal error: {err.__class__.__name__}: {err}") from err

    return app


class BackgroundServer:
    """uvicorn serving ``app`` from a daemon thread on a loopback port (0: a free one), for tests and
    benchmarks. ``with BackgroundServer(app) as url: ...``"""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def serve(
    base: str,
    adapters: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    mode: str = "unmerged",
    cache_size: int = 8,
    max_upload_mb: float = 25.0,
    language: str = "auto",
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    device: str = "cpu",
    api_keys: list[str] | None = None,
    require_user_keys: bool = False,
    max_audio_seconds: float = 600.0,
    max_adapter_mb: float = 64.0,
    max_queue: int = 16,
    max_batch_size: int = 1,
    batch_timeout_ms: float = 25.0,
) -> None:
    """Load the base once and serve until interrupted (one process, one worker: one shared base)."""
    import uvicorn

    server = AdapterServer(
        base,
        adapters,
        mode=mode,
        cache_size=cache_size,
        language=language,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        device=device,
        require_user_keys=require_user_keys,
        max_audio_seconds=max_audio_seconds,
    )
    limits = ServiceLimits(
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_adapter_bytes=int(max_adapter_mb * 2**20),
        max_audio_seconds=max_audio_seconds,
        max_queue=max_queue,
        max_batch_size=max_batch_size,
        batch_timeout_ms=batch_timeout_ms,
    )
    structures = server.preload_structures()
    print(
        f"serving {base} ({mode}) with adapters from {adapters} ({structures} structure(s) injected) "
        f"on http://{host}:{port}",
        flush=True,
    )
    if not api_keys:
        print("no --api-key: anyone who can reach this port can transcribe and upload adapters", flush=True)
    app = create_app(server, api_keys=api_keys, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level="info", workers=1)
