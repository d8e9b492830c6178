"""Model inputs of a fixed corpus computed once and kept beside its manifests (``data.feature_cache``).

A Whisper batch spends a few hundredths of a second reading WAV files and computing log-mel windows, every
step of every epoch, for inputs that never change. The cache holds them for one manifest as one float16
array ``<manifest folder>/.features/<manifest stem>.<key>.npy`` (rows in the order the data module reads
the utterances), memory-mapped when read. The key is a hash of the manifest's bytes, the lines read from it,
the size and modification time of each audio file, and the feature extractor's settings: an edited manifest,
a rewritten audio file or another window gets a file of its own, so a stale file is not read. Where the
manifest's folder cannot be written, the inputs are kept in memory for the run instead. SpecAugment masks
cached features like computed ones (``data.spec_augment``). float16 keeps log-mel values (about -1.5 to 2.5
after Whisper's scaling) to within 1e-3.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

CACHE_VERSION = 1
CHUNK = 64  # utterances whose inputs are computed together


def cache_path(manifest: str | Path, utterances: list, signature: dict) -> Path:
    manifest = Path(manifest)
    digest = hashlib.sha256(manifest.read_bytes())
    audio = {}
    for u in utterances:
        if u.audio_filepath not in audio:
            stat = os.stat(u.audio_filepath)
            audio[u.audio_filepath] = (stat.st_size, stat.st_mtime_ns)
    digest.update(
        json.dumps(
            {
                "lines": [u.line for u in utterances],
                "audio": sorted(audio.values()),
                "features": signature,
                "version": CACHE_VERSION,
            },
            sort_keys=True,
        ).encode()
    )
    return manifest.parent / ".features" / f"{manifest.stem}.{digest.hexdigest()[:16]}.npy"


def compute(utterances: list, backbone, processor, name: str, out) -> None:
    """Fill ``out`` (an array or a memory-mapped file) with each utterance's input, a chunk at a time."""
    for start in range(0, len(utterances), CHUNK):
        chunk = utterances[start : start + CHUNK]
        out[start : start + len(chunk)] = backbone.audio_inputs(processor, [u.samples() for u in chunk])[name].numpy()


def cached_inputs(manifest: str | Path, utterances: list, backbone, processor) -> np.ndarray | None:
    """The backbone's cacheable input of every utterance (read, or computed and written once); None where the
    backbone has no fixed-shape input to cache (wav2vec2 takes raw waveforms of any length)."""
    name = backbone.cached_input
    if name is None or not utterances:
        return None
    path = cache_path(manifest, utterances, backbone.input_signature(processor))
    if path.exists():
        array = np.load(path, mmap_mode="r")
        if array.shape[0] == len(utterances):
            return array
    shape = (len(utterances), *backbone.audio_inputs(processor, [utterances[0].samples()])[name].shape[1:])
    # each process writes its own partial file (data-parallel ranks build the cache at the same time) and
    # renames it into place: a killed build never leaves half a file, and any finished one is complete
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
    except OSError as err:  # a read-only corpus: the run keeps the inputs in memory
        print(
            f"{manifest}: cannot write the feature cache beside it ({err.strerror}); inputs kept in memory",
            file=sys.stderr,
        )
        out = np.empty(shape, dtype=np.float16)
        compute(utterances, backbone, processor, name, out)
        return out
    compute(utterances, backbone, processor, name, out)
    out.flush()
    del out
    os.replace(partial, path)
    return np.load(path, mmap_mode="r")
