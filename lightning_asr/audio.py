"""Audio I/O with soundfile (torchaudio 2.11 has no I/O of its own without FFmpeg) and resampling to 16 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
# Rates outside this range are almost certainly a corrupt header; resampling from them is refused.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 192000


class AudioError(ValueError):
    """Audio that cannot be read or converted; the message names the file and the fix."""


def read_audio(path: str | Path, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Read mono float32 samples at 16 kHz; ``offset``/``duration`` (s) select a segment without reading the rest."""
    try:
        info = sf.info(str(path))
    except Exception as err:
        raise AudioError(
            f"{path}: unreadable audio ({err}) — fix: re-encode it as WAV/FLAC or remove the utterance"
        ) from err
    rate = info.samplerate
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {rate} Hz cannot be resampled — fix: re-encode it at 16000 Hz")
    start = int(round(offset * rate))
    stop = None if duration is None else start + int(round(duration * rate))
    try:
        samples, _ = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(
            f"{path}: unreadable audio ({err}) — fix: re-encode it as WAV/FLAC or remove the utterance"
        ) from err
    samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        samples = torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(samples, dtype=np.float32)


def audio_duration(path: str | Path) -> tuple[float, int]:
    """Duration in seconds and sample rate from the header alone."""
    info = sf.info(str(path))
    return info.frames / info.samplerate, info.samplerate


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM WAV atomically: a crash never leaves a truncated file under the final name."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    sf.write(str(partial), samples, sample_rate, subtype="PCM_16", format="WAV")
    partial.replace(path)
