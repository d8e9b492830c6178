"""The engine: one base model in memory, each user's adapter applied per request, many users in one pass.

- **Structures over shared weights** (``serving/slots.py``): one injected copy of the base per adapter
  structure, its base weights the base's own tensors.
- **One request path.** ``transcribe`` is ``transcribe_many`` of one request. Requests whose strategies declare
  a bank (``AdapterStrategy.bank_modules``, checked by ``serving.bank.bankable``) and whose layers say what
  they add (``adapter_output``) share one batched pass over the base with the base rows, whatever their
  structures, each row with exactly its own adapter; a bank alone shares a pass among one structure's users;
  the others are decoded one at a time in their slot after a swap, and the response says why.
- **Hot swap.** A slot remembers which adapter its parameters hold, so consecutive requests of one user copy
  nothing; a copy that fails halfway leaves the slot marked empty.
- **Merged mode** folds a mergeable strategy into the shared base weights for the decode and then copies back
  the original weights it kept, so the base is restored bit for bit.
- **One lock around the model.** Audio decoding and feature extraction run outside it.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch

from lightning_asr.adapters.export import AdapterFileError, base_fingerprint, check_fit
from lightning_asr.audio import SAMPLE_RATE
from lightning_asr.config import DecodeConfig, ModelConfig, structured
from lightning_asr.models import backbone_for
from lightning_asr.serving.audio import decode_audio_bytes
from lightning_asr.serving.bank import row_banked
from lightning_asr.serving.errors import ServeError
from lightning_asr.serving.keys import check_request
from lightning_asr.serving.limits import ServiceLimits
from lightning_asr.serving.slots import Slot, Structures
from lightning_asr.serving.store import AdapterStore, StoredAdapter

MODES = ("merged", "unmerged")
WINDOWS_PER_BATCH = 16  # windows decoded together, in batches of at most this many (bounded memory)
STAGES = ("audio", "queue", "adapter_load", "swap", "merge", "decode")


@contextmanager
def slot_bank(slot: Slot, assignment: list[tuple]):
    """A slot's own model, row r with ``assignment[r]``'s tensors (a pass of one structure's users)."""
    with row_banked(slot.strategy, [tensors for _, tensors in assignment], list(range(len(assignment)))):
        yield slot.model


@dataclass
class Row:
    """One request on its way through the engine."""

    index: int
    request: dict
    started: float
    features: list = field(default_factory=list)  # model inputs, in batches of at most WINDOWS_PER_BATCH windows
    seconds: float = 0.0
    language: str | None = None  # forced; None: detected on the first window
    adapter: StoredAdapter | None = None
    slot: Slot | None = None
    cache_hit: bool = False
    detected: bool = False  # the language was detected, not given
    swapped: bool = False  # the slot's parameters were loaded with this row's adapter
    timings: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


class AdapterServer:
    """Base, slots, adapter store and decoding. ``transcribe`` and ``transcribe_many`` are thread-safe."""

    def __init__(
        self,
        base: str,
        adapters,
        mode: str = "unmerged",
        cache_size: int = 8,
        language: str = "auto",
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        device: str = "cpu",
        max_structures: int = 8,
        require_user_keys: bool = False,
        limits: ServiceLimits | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose merged or unmerged")
        self.base_spec, self.mode = str(base), mode
        self.limits = limits or ServiceLimits()
        self.require_user_keys = require_user_keys
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
        self.store = AdapterStore(adapters, self.fingerprint, self.base_spec, cache_size)
        languages = getattr(getattr(self.base, "generation_config", None), "lang_to_id", None) or {}
        self.language_codes = {token[2:-2] for token in languages}  # none: the model has no language control
        try:
            self.default_language = self.parse_language(language)
        except ServeError as err:
            raise ValueError(err.message) from None
        window = self.backbone.window_seconds(self.processor)
        self.window_samples = int(window * SAMPLE_RATE) if window else None
        self.lock = threading.Lock()
        self.structures = Structures(self.base, self.processor.tokenizer, self.store, max_structures)
        self.slots = self.structures.slots  # by structure key, least recently used first
        self.slot = self.structures.slot
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
        samples = decode_audio_bytes(audio, self.limits.max_audio_seconds)
        step = self.window_samples or len(samples)
        windows = [samples[i : i + step] for i in range(0, len(samples), step)]
        batches = [
            self.backbone.audio_inputs(self.processor, windows[start : start + WINDOWS_PER_BATCH])
            for start in range(0, len(windows), WINDOWS_PER_BATCH)
        ]
        return batches, len(samples) / SAMPLE_RATE

    def transcribe(self, audio: bytes, user=None, adapter_files=None, language=None, user_key=None) -> dict:
        """Decode ``audio`` with the adapter of ``user`` (from the store), the uploaded ``adapter_files`` (which,
        where user keys are required, name their ``user`` and carry the key), or neither (the base)."""
        request = {"audio": audio, "user": user, "adapter_files": adapter_files, "language": language}
        (result,) = self.transcribe_many([{**request, "user_key": user_key}])
        if isinstance(result, ServeError):
            raise result
        return result

    def transcribe_many(self, requests: list[dict]) -> list[dict | ServeError]:
        """Decode several requests (``transcribe``'s keyword arguments each, ``audio`` included) together. A
        request refused (bad audio, unknown user) gets its ``ServeError`` in its place; the others are still
        answered."""
        results: list = [None] * len(requests)
        rows = []
        for index, request in enumerate(requests):
            row = Row(index, request, time.perf_counter())
            try:
                user, files = request.get("user"), request.get("adapter_files")
                if request.get("adapter_id") is not None:  # a registered upload: checked as an upload
                    if files is not None:
                        raise ServeError(400, "give either the adapter's files or its registered id, not both")
                    files = {}
                check_request(self.store.root, user, files, request.get("user_key"), self.require_user_keys)
                language = request.get("language")
                row.language = self.default_language if language is None else self.parse_language(language)
                row.detected = row.language is None
                row.features, row.seconds = self.features(request["audio"])
                row.timings["audio"] = (time.perf_counter() - row.started) * 1000
                rows.append(row)
            except ServeError as err:
                results[index] = err
        with self.lock:
            try:
                locked = time.perf_counter()
                for row in rows:
                    row.timings["queue"] = (locked - row.started) * 1000 - row.timings["audio"]
                ready = []
                for row in rows:
                    try:
                        self.resolve(row)
                        ready.append(row)
                    except ServeError as err:
                        results[row.index] = err
                for row, result in self.decode_rows(ready):
                    results[row.index] = result
                self.served += sum(1 for r in results if isinstance(r, dict))
            finally:
                self.snapshot = self.take_snapshot()
        return results

    def register_adapter(self, files: dict[str, bytes], user: str | None = None, user_key: str | None = None) -> dict:
        """Check an uploaded adapter and keep it under its fingerprint, which later requests name instead of
        sending the files (``adapter_id``)."""
        check_request(self.store.root, user, files, user_key, self.require_user_keys)
        with self.lock:
            adapter_id, adapter = self.store.register(files, user)
        return {"adapter_id": adapter_id, "strategy": adapter.strategy, "bytes": sum(map(len, files.values()))}

    def resolve(self, row: Row) -> None:
        """The row's adapter (read, registered, or from the store's cache) and its slot, the tensors checked
        against it."""
        user, files, named = row.request.get("user"), row.request.get("adapter_files"), row.request.get("adapter_id")
        if user is None and files is None and named is None:
            return
        started = time.perf_counter()
        if named is not None:
            row.adapter, row.cache_hit = self.store.named(named, user, self.require_user_keys), True
            read_ms = 0.0
        elif files is not None:
            row.adapter = self.store.upload(files)
            read_ms = (time.perf_counter() - started) * 1000
        else:
            row.adapter, row.cache_hit, read_ms = self.store.user(user)
        what = f"user {user!r}" if files is None and named is None else "the uploaded adapter"
        started, structures = time.perf_counter(), len(self.slots)
        row.slot = self.slot(row.adapter.side, what, row.adapter.key)
        checked = id(row.slot) in row.adapter.fits
        if not checked:  # once per adapter and slot: a load must not fail halfway
            try:
                check_fit(row.slot.strategy, what, row.adapter.side, row.adapter.tensors)
            except AdapterFileError as err:
                raise ServeError(422, str(err)) from err
            row.adapter.fits.add(id(row.slot))
        # reading the files, and injecting a new structure or checking the tensors against it (not cached)
        built = len(self.slots) != structures or not checked
        row.timings["adapter_load"] = read_ms + ((time.perf_counter() - started) * 1000 if built else 0.0)

    # ---- decoding --------------------------------------------------------------------------------------------
    def decode_rows(self, rows: list[Row]):
        """(row, response) for every row: one shared pass for the rows that can share one, the rest alone."""
        shared, own_bank, alone = [], {}, []
        for row in rows:
            if row.adapter is None:
                shared.append(row)
            elif self.mode == "merged" and row.slot.strategy.mergeable:
                alone.append((row, "merged mode folds one adapter at a time"))
            elif row.slot.mixes:
                shared.append(row)
            elif row.slot.alone_reason is None:  # a bank, but no adapter_output: a pass of its own
                own_bank.setdefault(row.slot.key, []).append(row)
            else:
                alone.append((row, row.slot.alone_reason))
        if len(shared) == 1 and shared[0].adapter is not None:  # one user: the slot's own forward, no gathering
            alone.append((shared.pop(), None))
        if shared:
            mixed = self.structures.mixed_model({row.slot.key: row.slot for row in shared if row.slot is not None})
            yield from self.decode_shared(shared, mixed.rows)
        for group in own_bank.values():
            if len(group) == 1:
                alone.append((group[0], None))
            else:
                yield from self.decode_shared(group, partial(slot_bank, group[0].slot))
        for row, reason in alone:
            yield row, self.decode_alone(row, reason)

    def decode_alone(self, row: Row, reason: str | None) -> dict:
        slot = row.slot
        started = time.perf_counter()
        row.swapped = self.load_into(slot, row.adapter)
        row.timings["swap"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        with self.merged(slot) as merge:
            texts, language, cap_hits = self.decode_windows(slot.model, slot.tokenizer, row.features, row.language)
        row.timings["merge"] = merge["ms"]
        row.timings["decode"] = (time.perf_counter() - started) * 1000 - merge["ms"]
        note = merge["note"] or (f"decoded alone: {reason}" if reason else None)
        return self.response(row, texts, language, cap_hits, "merged" if merge["merged"] else "unmerged", 1, note)

    @staticmethod
    def load_into(slot: Slot, adapter: StoredAdapter) -> bool:
        """Copy the adapter's tensors into the slot's parameters unless they hold them already."""
        if slot.loaded == adapter.token:
            return False
        slot.loaded = None  # a copy that fails halfway must not be taken for a loaded adapter
        slot.strategy.load_adapter_state_dict(adapter.tensors, strict=True)
        slot.loaded = adapter.token
        return True

    def decode_windows(self, model, tokenizer, batches: list[dict], language: str | None):
        """One request's windows through ``model``; ``auto`` detects the language of the first window and
        forces it on every window."""
        texts, cap_hits = [], 0
        with torch.no_grad():
            for index, batch in enumerate(batches):
                inputs = {k: v.to(self.device) for k, v in batch.items()}
                if language is None and index == 0:
                    language = self.backbone.detect_language(model, inputs)
                count = next(iter(inputs.values())).shape[0]
                languages = None if language is None else [language] * count
                batch_texts, hits = self.backbone.decode(model, tokenizer, inputs, languages, self.decode_config)
                texts += batch_texts
                cap_hits += hits
        return texts, language, cap_hits

    def decode_shared(self, rows: list[Row], routed):
        """Every window of ``rows`` in batches of at most ``WINDOWS_PER_BATCH``, each window with its
        request's adapter: ``routed(assignment)`` opens the model whose row r uses ``assignment[r]``
        ((structure key, tensors), or (None, None): the base)."""
        assignment = [(row.slot.key, row.adapter.tensors) if row.adapter else (None, None) for row in rows]
        with torch.no_grad():
            for position, row in enumerate(rows):  # detect per request, on its first window, with its adapter
                if row.language is None:
                    first = {k: v[:1].to(self.device) for k, v in row.features[0].items()}
                    with routed([assignment[position]]) as model:
                        row.language = self.backbone.detect_language(model, first)
        windows = []  # (row position, model inputs of one window)
        for position, row in enumerate(rows):
            for batch in row.features:
                count = next(iter(batch.values())).shape[0]
                windows += [(position, {k: v[i : i + 1] for k, v in batch.items()}) for i in range(count)]
        by_shape: dict[tuple, list] = {}  # windows of one shape share a batch (wav2vec2's differ in length)
        for window in windows:
            by_shape.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(window[1].items())), []).append(window)
        chunks = [g[i : i + WINDOWS_PER_BATCH] for g in by_shape.values() for i in range(0, len(g), WINDOWS_PER_BATCH)]
        texts: dict[int, list[str]] = {position: [] for position in range(len(rows))}
        decode_started = time.perf_counter()
        with torch.no_grad():
            for chunk in chunks:
                positions = [position for position, _ in chunk]
                inputs = {k: torch.cat([w[k] for _, w in chunk]).to(self.device) for k in chunk[0][1]}
                languages = [rows[position].language for position in positions]
                with routed([assignment[p] for p in positions]) as model:
                    chunk_texts, _ = self.backbone.decode(
                        model,
                        self.processor.tokenizer,
                        inputs,
                        None if None in languages else languages,
                        self.decode_config,
                    )
                for position, text in zip(positions, chunk_texts):
                    texts[position].append(text)
        decode_ms = (time.perf_counter() - decode_started) * 1000
        for position, row in enumerate(rows):
            row.timings["decode"] = decode_ms
            # cap hits are counted per batch, not per row: not reported for a shared pass
            yield row, self.response(row, texts[position], row.language, None, "unmerged", len(rows), None)

    def response(self, row, texts, language, cap_hits, mode, batch_rows, note) -> dict:
        request, adapter = row.request, row.adapter
        timings = {**row.timings, "total": (time.perf_counter() - row.started) * 1000}
        response = {
            "text": "".join(texts),
            "language": language,
            "language_detected": row.detected,
            "user": request.get("user"),
            "adapter_source": None
            if adapter is None
            else "registered"
            if request.get("adapter_id")
            else "upload"
            if request.get("adapter_files")
            else "store",
            "strategy": adapter.strategy if adapter is not None else "base",
            "mode": mode,
            "cache_hit": row.cache_hit,
            "swapped": row.swapped,
            "batch_rows": batch_rows,
            "windows": len(texts),
            "audio_seconds": round(row.seconds, 3),
            "cap_hits": cap_hits,
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "note": note,
        }
        return response

    @contextmanager
    def merged(self, slot: Slot):
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
            try:
                slot.strategy.unmerge()
            finally:  # subtracting back leaves rounding residue, or fails: the kept weights are exact
                with torch.no_grad():
                    for target, weight in zip(targets, originals):
                        target.copy_(weight)
            state["ms"] += (time.perf_counter() - restore) * 1000

    def preload_structures(self) -> int:
        """Build the slots of the structures found in the store now, so first requests don't pay for it."""
        with self.lock:
            for user, side in self.store.sides():
                if len(self.slots) >= self.structures.max_structures:
                    break
                try:
                    self.slot(side, f"user {user!r}")
                except ServeError:  # reported when its user is requested
                    continue
            self.snapshot = self.take_snapshot()
        return len(self.slots)

    # ---- introspection ---------------------------------------------------------------------------------------
    def take_snapshot(self) -> tuple:
        cache = self.store.cache
        return tuple(cache), tuple(self.slots), sum(a.nbytes for a in cache.values())

    def users(self) -> list[dict]:
        cached = set(self.snapshot[0])
        return [{**row, "cached": row["user"] in cached} for row in self.store.users()]

    def health(self) -> dict:
        return {
            "status": "ok",
            "base": self.base_spec,
            "base_weights_sha256": self.fingerprint["weights_sha256"],
            "mode": self.mode,
            "device": str(self.device),
            "window_seconds": self.backbone.window_seconds(self.processor),
            "cache_size": self.store.cache_size,
            "cached_users": list(self.snapshot[0]),
            "cached_bytes": self.snapshot[2],
            "structures": list(self.snapshot[1]),
            "requests_served": self.served,
        }
