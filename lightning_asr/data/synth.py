"""Synthetic speech corpora spoken by libespeak-ng: the embedded default's data.

    python -m lightning_asr.data.synth --out data_manifests/synth [--seed 0] [--train 800 --dev 50 --test 50]

writes 16 kHz WAV files and manifests ``<out>/<set>/{train,dev,test}.jsonl`` for the source-domain sets
``en``, ``ko``, ``zh`` and the code-switched target sets ``ko-en`` (KECS-like), ``zh-en`` (SEAME-like) and
``ko-en-mixed`` (half monolingual Korean, English in varied places).
Each set has 12 synthetic speakers (voice variants with their own rate, pitch and pitch range).
Sentences are drawn without replacement from template pools (``text_pools``), so no test or dev sentence
occurs in training. The same seed and sizes give byte-identical files; a folder already built with the
same parameters is kept as it is. A test set larger than 50 utterances holds the 50-utterance one as its first
lines, and leaves the training and dev files as they were.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import torch
import torchaudio

from lightning_asr.audio import SAMPLE_RATE, write_wav
from lightning_asr.data.espeak import Voice, synthesize
from lightning_asr.data.manifest import Utterance, write_manifest
from lightning_asr.data.text_pools import SENTENCE_MAKERS

GENERATOR_VERSION = 1
SOURCE_SETS = ("en", "ko", "zh")
TARGET_SETS = ("ko-en", "zh-en", "ko-en-mixed")
ESPEAK_VOICE = {"en": "en-us", "ko": "ko", "zh": "cmn"}
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "klatt2", "klatt4"]
SPLITS = ("train", "dev", "test")


@dataclass
class CorpusSpec:
    seed: int = 0
    train: int = 800
    dev: int = 50
    test: int = 50
    target_train: int = 400
    sets: list[str] = field(default_factory=lambda: list(SOURCE_SETS + TARGET_SETS))

    def sizes(self, name: str) -> dict[str, int]:
        return {"train": self.target_train if name in TARGET_SETS else self.train, "dev": self.dev, "test": self.test}


def speakers(name: str, seed: int) -> list[tuple[str, Voice]]:
    """Twelve speakers per set: a voice variant with its own rate, pitch and pitch range."""
    rng = random.Random(f"speakers-{seed}-{name}")
    base = ESPEAK_VOICE[name.split("-")[0]]
    return [
        (
            f"{name}-{variant}",
            Voice(f"{base}+{variant}", rng.randint(150, 190), rng.randint(30, 70), rng.randint(30, 80)),
        )
        for variant in VARIANTS
    ]


def _spoken_form(segments: list[tuple[str, str]], matrix: str, use_ssml: bool) -> str:
    """Plain text (the matrix voice reads Latin words by itself), or SSML switching voice for English parts."""
    if not use_ssml:
        return "".join(text for _, text in segments)
    parts = [
        escape(text) if lang == matrix else f'<voice xml:lang="{lang}">{escape(text)}</voice>'
        for lang, text in segments
    ]
    return "<speak>" + "".join(parts) + "</speak>"


def _speak(text: str, voice: Voice, seed: int, ssml: bool) -> np.ndarray:
    samples, rate = synthesize(text, voice, seed=seed, ssml=ssml)
    if samples.size == 0:
        raise RuntimeError(f"espeak produced no audio for {text!r} with voice {voice.name}")
    audio = torch.from_numpy(samples.astype(np.float32) / 32768.0)
    audio = torchaudio.functional.resample(audio, rate, SAMPLE_RATE)
    return (audio.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()


def utterance_language(segments: list[tuple[str, str]], matrix: str) -> str:
    """The matrix language alone for a monolingual utterance, ``<matrix>-<other>`` for a switched one."""
    others = sorted({lang for lang, _ in segments} - {matrix})
    return f"{matrix}-{others[0]}" if others else matrix


# Test sets grow by extension: the first CORE_TEST test utterances are drawn with the training and dev splits,
# the rest from a stream of their own afterwards, so a larger test set keeps every other file (and a base
# pretrained on them) byte-identical and holds the smaller test set as its first lines.
CORE_TEST = 50


def _distinct_sentences(make, rng: random.Random, wanted: int, taken: set[str], name: str) -> list:
    """``wanted`` distinct sentences not in ``taken``, deduplicated while drawing."""
    sentences: dict[str, list[tuple[str, str]]] = {}
    for _ in range(wanted * 50):
        if len(sentences) == wanted:
            break
        text, segments = make(rng)
        if text not in taken:
            sentences.setdefault(text, segments)
    if len(sentences) < wanted:
        raise ValueError(
            f"the {name} pool holds fewer than {wanted + len(taken)} distinct sentences; ask for smaller splits"
        )
    return list(sentences.items())


def _speak_split(items: list, split: str, first: int, name: str, spec: CorpusSpec, set_dir: Path, rng) -> list:
    """Synthesise ``items`` as utterances ``first``, ``first + 1``, ... of ``split``."""
    voices = speakers(name, spec.seed)
    matrix = name.split("-")[0]
    utterances = []
    for index, (text, segments) in enumerate(items, start=first):
        speaker, voice = voices[rng.randrange(len(voices))]
        voice = Voice(voice.name, voice.rate + rng.randint(-10, 10), voice.pitch, voice.pitch_range)
        use_ssml = name in TARGET_SETS and rng.random() < 0.5
        samples = _speak(_spoken_form(segments, matrix, use_ssml), voice, rng.randrange(1 << 30), use_ssml)
        wav = set_dir / "audio" / f"{split}_{index:05d}.wav"
        write_wav(wav, samples)
        lang = utterance_language(segments, matrix)
        utterances.append(Utterance(str(wav.resolve()), round(len(samples) / SAMPLE_RATE, 3), text, lang, speaker))
    return utterances


def build_set(name: str, spec: CorpusSpec, out: Path) -> dict[str, int]:
    """Synthesise one set's splits into ``out/name``; return the number of utterances per split."""
    sizes = spec.sizes(name)
    core = {**sizes, "test": min(sizes["test"], CORE_TEST)}
    rng = random.Random(f"sentences-{spec.seed}-{name}")
    make = SENTENCE_MAKERS[name]
    items = _distinct_sentences(make, rng, sum(core.values()), set(), name)
    rng.shuffle(items)
    extension_rng = random.Random(f"test-extension-{spec.seed}-{name}")
    extension = _distinct_sentences(make, extension_rng, sizes["test"] - core["test"], {t for t, _ in items}, name)
    set_dir = out / name
    (set_dir / "audio").mkdir(parents=True, exist_ok=True)
    start = 0
    for split in SPLITS:
        utterances = _speak_split(items[start : start + core[split]], split, 0, name, spec, set_dir, rng)
        if split == "test" and extension:
            utterances += _speak_split(extension, split, core[split], name, spec, set_dir, extension_rng)
        write_manifest(set_dir / f"{split}.jsonl", utterances)
        start += core[split]
    return sizes


def build_corpus(spec: CorpusSpec, out: Path, verbose: bool = True) -> Path:
    """Build every set of ``spec`` under ``out``; keep a folder already built with the same parameters."""
    out = Path(out)
    stamp = out / "corpus.json"
    wanted = {"generator_version": GENERATOR_VERSION, **asdict(spec)}
    kept: list[str] = []  # sets already built with these parameters: each set is drawn on its own
    if stamp.exists():
        built = json.loads(stamp.read_text()).get("spec", {})
        same = {k: v for k, v in built.items() if k != "sets"} == {k: v for k, v in wanted.items() if k != "sets"}
        if same and set(spec.sets) <= set(built.get("sets", [])) and all((out / n).is_dir() for n in spec.sets):
            if verbose:
                print(f"{out}: synthetic corpus already built with these parameters")
            return out
        if same:
            kept = [name for name in built.get("sets", []) if (out / name).is_dir()]
    if out.exists():
        for name in spec.sets:
            if name not in kept:
                shutil.rmtree(out / name, ignore_errors=True)
        stamp.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = {}
    for name in spec.sets:
        if name not in SENTENCE_MAKERS:
            raise ValueError(f"unknown set {name!r}; choose from {', '.join(SENTENCE_MAKERS)}")
        if name in kept:
            counts[name] = spec.sizes(name)
            continue
        set_started = time.perf_counter()
        counts[name] = build_set(name, spec, out)
        if verbose:
            print(f"  {name}: {counts[name]} in {time.perf_counter() - set_started:.1f} s", flush=True)
    checksum = hashlib.sha256()
    for manifest in sorted(out.glob("*/*.jsonl")):
        checksum.update(manifest.read_bytes())
    partial = stamp.with_suffix(".partial")
    partial.write_text(
        json.dumps(
            {
                "spec": {**wanted, "sets": sorted(set(wanted["sets"]) | set(kept))},
                "counts": counts,
                "manifest_sha256": checksum.hexdigest(),
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    partial.replace(stamp)
    if verbose:
        print(
            f"{out}: built {sum(sum(c.values()) for n, c in counts.items() if n not in kept)} utterances in "
            f"{time.perf_counter() - started:.1f} s" + (f" (kept {', '.join(kept)})" if kept else "")
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_asr.data.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data_manifests/synth"))
    defaults = CorpusSpec()
    for name in ("seed", "train", "dev", "test", "target_train"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument(
        "--sets", default=",".join(defaults.sets), help="comma-separated: en,ko,zh,ko-en,zh-en,ko-en-mixed"
    )
    args = parser.parse_args(argv)
    spec = CorpusSpec(args.seed, args.train, args.dev, args.test, args.target_train, args.sets.split(","))
    build_corpus(spec, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
