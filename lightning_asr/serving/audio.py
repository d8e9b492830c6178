"""Request audio: bytes to 16 kHz mono samples, refused with the fix when unreadable or too long."""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf
import torch

from lightning_asr.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE
from lightning_asr.serving.errors import ServeError


def decode_audio_bytes(data: bytes, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 samples at 16 kHz from WAV/FLAC (anything soundfile reads) bytes."""
    if not data:
        raise ServeError(
            400, "the request holds no audio — fix: send WAV or FLAC bytes as the body (or the 'audio' part)"
        )
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile names its file object: '<_io.BytesIO object at 0x...>'
        reason = re.sub(r"\s*<[^>]*>", "", str(err)).strip(" :")
        raise ServeError(400, f"unreadable audio ({reason}) — fix: send WAV or FLAC bytes") from err
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ServeError(400, f"sample rate {rate} Hz cannot be resampled — fix: re-encode the audio at 16000 Hz")
    if samples.shape[0] == 0:
        raise ServeError(400, "the audio holds no samples — fix: send a non-empty recording")
    seconds = samples.shape[0] / rate
    if max_seconds is not None and seconds > max_seconds:
        raise ServeError(
            413,
            f"{seconds:.1f} s of audio is longer than this server's {max_seconds:g} s per request — "
            "fix: split it, or start the server with a larger --max-audio-seconds",
        )
    samples = samples.mean(axis=1)
    if not np.isfinite(samples).all():
        raise ServeError(400, "the audio holds NaN or infinite samples — fix: re-encode it as PCM WAV or FLAC")
    if rate != SAMPLE_RATE:
        import torchaudio

        samples = torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(samples, dtype=np.float32)
