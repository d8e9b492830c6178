"""The adapter store: reads and checks a user's adapter directory or an uploaded one, and keeps the most
recently used users' tensors in memory. It builds no model state: which slot an adapter goes into, and
whether its tensors fit that slot, is the engine's business.

``DIR/<user_id>/`` holds one adapter directory per user, as ``strategy.save_adapter`` writes it. Nothing is
unpickled: adapter files are safetensors and JSON, and user ids are validated before they touch a path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightning_asr.adapters import adapter_config, inference_settings
from lightning_asr.adapters.export import (
    PEFT_CONFIG,
    PEFT_TENSORS,
    SIDE_JSON,
    SIDE_TENSORS,
    AdapterFileError,
    fingerprint_mismatch,
    read_side_file,
    read_tensor_files,
)
from lightning_asr.config import ConfigError
from lightning_asr.serving.errors import ServeError
from lightning_asr.serving.keys import USER_ID

ADAPTER_FILES = (SIDE_JSON, SIDE_TENSORS, PEFT_CONFIG, PEFT_TENSORS)


@dataclass
class StoredAdapter:
    """An adapter read and checked against the base: its side file, tensors and structure key."""

    key: str  # the structure: adapters with one key share one injected copy of the base
    strategy: str
    side: dict
    tensors: dict[str, torch.Tensor]
    token: int  # unique per read: a slot remembers which adapter its parameters hold
    nbytes: int
    signature: tuple = ()
    fits: set = field(default_factory=set)  # slots (by id) whose parameters these tensors were checked against


def structure_key(side: dict) -> str:
    """Adapters whose configs differ only in training-only settings (``adapters.training_only``) share one
    injected structure."""
    try:
        config = inference_settings(adapter_config(side["config"], "adapter config", lenient=True))
    except (ConfigError, ValueError, TypeError) as err:
        raise ServeError(422, f"its adapter config cannot be built here ({err})") from err
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


class AdapterStore:
    """Users' adapters under ``root`` for the base whose fingerprint is ``fingerprint``, with an LRU of
    ``cache_size`` users' tensors."""

    def __init__(self, root: str | Path, fingerprint: dict, base_spec: str, cache_size: int = 8):
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.root, self.fingerprint, self.base_spec, self.cache_size = Path(root), fingerprint, base_spec, cache_size
        self.cache: OrderedDict[str, StoredAdapter] = OrderedDict()
        self.registered: OrderedDict[str, tuple[StoredAdapter, str | None]] = OrderedDict()  # id: (adapter, owner)
        self.tokens = itertools.count(1)

    def user(self, user: str) -> tuple[StoredAdapter, bool, float]:
        """``user``'s adapter, whether it came from the cache, and the milliseconds reading it took."""
        directory = self.root / user
        if not directory.is_dir():
            self.cache.pop(user, None)
            raise ServeError(
                404,
                f"no adapter for user {user!r} (no directory {directory}) — fix: export one "
                "there with strategy.save_adapter, or send the adapter files with the request",
            )
        signature = file_signature(directory)
        cached = self.cache.get(user)
        if cached is not None and cached.signature == signature:
            self.cache.move_to_end(user)
            return cached, True, 0.0
        started = time.perf_counter()
        adapter = self.read(directory, f"user {user!r}")
        adapter.signature = signature
        self.cache[user] = adapter
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return adapter, False, (time.perf_counter() - started) * 1000

    def upload(self, files: dict[str, bytes]) -> StoredAdapter:
        """An adapter sent with the request (its files by name); never cached."""
        unknown = sorted(set(files) - set(ADAPTER_FILES))
        if unknown:
            raise ServeError(422, f"unexpected adapter file(s) {unknown} — fix: send only {', '.join(ADAPTER_FILES)}")
        with tempfile.TemporaryDirectory(prefix="lightning-asr-upload-") as tmp:
            for name, content in files.items():
                (Path(tmp) / name).write_bytes(content)
            return self.read(Path(tmp), "the uploaded adapter")

    def register(self, files: dict[str, bytes], owner: str | None) -> tuple[str, StoredAdapter]:
        """An uploaded adapter kept under its fingerprint (the SHA-256 of its files), so a device uploads it
        once and then names it; the ``cache_size`` most recently used are kept. ``owner``: the user it was
        registered for (where user keys are required, only that user may name it)."""
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        adapter_id = digest.hexdigest()
        if adapter_id not in self.registered:
            self.registered[adapter_id] = (self.upload(files), owner)
        self.registered.move_to_end(adapter_id)
        while len(self.registered) > self.cache_size:
            self.registered.popitem(last=False)
        return adapter_id, self.registered[adapter_id][0]

    def named(self, adapter_id: str, user: str | None, keys_required: bool) -> StoredAdapter:
        """The adapter registered under ``adapter_id``."""
        if adapter_id not in self.registered:
            raise ServeError(
                404,
                f"no adapter registered as {adapter_id[:16]!r}... (or it was evicted) — fix: upload it again with "
                "POST /v1/adapters, or send its files with the request",
            )
        adapter, owner = self.registered[adapter_id]
        if keys_required and owner != user:
            raise ServeError(403, "this adapter was registered for another user — fix: register it for yours")
        self.registered.move_to_end(adapter_id)
        return adapter

    def side(self, directory: Path, what: str) -> dict:
        """The side file, checked for this base."""
        try:
            side = read_side_file(directory)
        except AdapterFileError as err:
            raise ServeError(422, f"{what}: {err}") from err
        if side is None:
            raise ServeError(
                422,
                f"{what} has no {SIDE_JSON} (strategy, config and base fingerprint) — fix: "
                "export it with strategy.save_adapter, which writes it",
            )
        problem = fingerprint_mismatch(side["fingerprint"], self.fingerprint)
        if problem:
            raise ServeError(
                409,
                f"{what} was exported for another base model: {problem} — fix: serve it with "
                f"the base it was trained on, or retrain it on {self.base_spec}",
            )
        return side

    def read(self, directory: Path, what: str) -> StoredAdapter:
        side = self.side(directory, what)
        key = structure_key(side)
        try:
            tensors = read_tensor_files(directory, side)
        except AdapterFileError as err:
            raise ServeError(422, f"{what}: {err}") from err
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return StoredAdapter(key, side["strategy"], side, tensors, next(self.tokens), nbytes)

    def forget_structure(self, key: str) -> None:
        """Drop the cached users of a structure whose slot was evicted."""
        for user in [u for u, a in self.cache.items() if a.key == key]:
            del self.cache[user]

    def sides(self) -> list[tuple[str, dict]]:
        """(user, side file) of every usable entry of the store, for building slots before the first request."""
        found = []
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            try:
                found.append((directory.name, self.side(directory, directory.name)))
            except ServeError:  # an unusable entry is reported when its user is requested
                continue
        return found

    def users(self) -> list[dict]:
        """The store's users with the strategy of each adapter (or the problem that makes it unusable)."""
        rows = []
        if not self.root.is_dir():
            return rows
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir() and USER_ID.fullmatch(p.name)):
            row = {"user": directory.name}
            try:
                row["strategy"] = self.side(directory, directory.name)["strategy"]
            except ServeError as err:
                row["problem"] = err.message
            rows.append(row)
        return rows
