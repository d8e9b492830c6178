"""Deterministic speech synthesis with libespeak-ng, through ctypes.

The library comes from the PyPI package ``espeakng-loader`` (the ``synth`` extra), which ships
libespeak-ng 1.52 and its voice data. espeak-ng is GPL-3.0-or-later: it is used only to *generate*
the embedded corpora, never on the library's training or inference path.

libespeak-ng keeps static DSP state between calls (pitch flutter, AGC) and seeds some voice variants
from the clock, so the same call twice gives different samples. To make synthesis byte-identical
across calls and processes we load the shared library afresh for each utterance (dlclose, then dlopen)
and seed its random generator right after loading. One synthesis at a time per process: the library
is global state.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_SSML = 0x10
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Voice:
    """An espeak voice name with a variant (``ko+m3``), speaking rate (words/min), pitch and range (0-100)."""

    name: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "speech synthesis needs the 'synth' extra: pip install -e '.[synth]' (package espeakng-loader)"
        ) from err
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _dlclose(handle: int) -> None:
    libdl = ctypes.CDLL(None)
    libdl.dlclose.argtypes = [ctypes.c_void_p]
    libdl.dlclose(ctypes.c_void_p(handle))


def synthesize(text: str, voice: Voice, seed: int, ssml: bool = False) -> tuple[np.ndarray, int]:
    """Speak ``text`` and return ``(int16 samples, sample_rate)``; the same arguments give the same bytes."""
    library_path, data_path = _paths()
    with _LOCK:
        lib = ctypes.CDLL(library_path, mode=ctypes.RTLD_LOCAL)
        try:
            sample_rate = lib.espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), ESPEAK_INITIALIZE_DONT_EXIT
            )
            if sample_rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed with data at {data_path}")
            chunks: list[np.ndarray] = []

            def collect(wav, n_samples, _events):
                if n_samples > 0 and wav:
                    chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
                return 0

            callback = _SYNTH_CALLBACK(collect)  # kept alive until synthesis is over
            lib.espeak_SetSynthCallback(callback)
            lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"espeak voice {voice.name!r} does not exist")
            # The voice resets the parameters, so they are set after it.
            lib.espeak_SetParameter(PARAM_RATE, voice.rate, 0)
            lib.espeak_SetParameter(PARAM_PITCH, voice.pitch, 0)
            lib.espeak_SetParameter(PARAM_RANGE, voice.pitch_range, 0)
            data = text.encode("utf-8")
            flags = ESPEAK_CHARS_UTF8 | (ESPEAK_SSML if ssml else 0)
            status = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, flags, None, None)
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed ({status}) on {text!r}")
            lib.espeak_Synchronize()
            lib.espeak_Terminate()
            del callback
        finally:
            _dlclose(lib._handle)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return audio.astype(np.int16), int(sample_rate)
