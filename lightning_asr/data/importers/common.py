"""What every corpus importer shares: the manifest being built, the skipped-line report, audio probing, writing.

An importer walks a corpus and fills a ``Collection``: one ``Split`` per output manifest (``<out>/<name>.jsonl``),
each holding its entries and, by reason, every line or file it skipped. Items that belong to no manifest (a
transcript line whose audio is missing from every split, say) go to ``Collection.unassigned``. Nothing is
dropped silently: ``Collection.write`` prints one summary line per manifest with the skipped items by reason,
and with ``strict`` any skipped item is an error and no manifest is written.

Manifests point at the original audio files: absolute paths, except for files under the output folder
(audio bytes extracted from parquet/arrow), which are written relative to the manifest's folder. Segments of
longer recordings carry ``offset`` (always, even at 0.0, so that they are checked as segments).
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from lightning_asr.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
EXAMPLES_SHOWN = 3
WHISPER_WINDOW_S = 30.0
_LANG = re.compile(r"^[a-z]{2,3}(-[a-z]{2,3})?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")
_HAS_CJK = re.compile(rf"[{_CJK}]")
_HAS_LATIN = re.compile(r"[A-Za-z]")


class ImporterError(ValueError):
    """A layout an importer does not recognise, a manifest it must not overwrite, or ``--strict`` problems."""


@dataclass(frozen=True)
class Entry:
    """One manifest line. ``offset`` None: the whole file; a number (0.0 included): a segment of it."""

    audio: Path
    duration: float
    text: str
    lang: str
    speaker: str = ""
    offset: float | None = None

    def to_json(self, folder: Path) -> str:
        # Written here rather than with Utterance.to_json, which drops a zero offset: a segment starting at
        # 0.0 would then be checked as a whole file and fail.
        audio = self.audio.relative_to(folder) if self.audio.is_relative_to(folder) else self.audio
        record = {
            "audio_filepath": str(audio),
            "duration": round(self.duration, 3),
            "text": self.text,
            "lang": self.lang,
        }
        if self.speaker:
            record["speaker"] = self.speaker
        if self.offset is not None:
            record["offset"] = round(self.offset, 3)
        return json.dumps(record, ensure_ascii=False)


@dataclass
class Split:
    """The entries of one output manifest and what was skipped, by reason (each item names a file[:line])."""

    name: str
    entries: list[Entry] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, item: str) -> None:
        self.skipped.setdefault(reason, []).append(item)

    def add_file(self, audio: Path, text: str, lang: str, speaker: str = "", where: str = "") -> None:
        """Add a whole audio file, or skip it (empty transcript, missing or unusable audio) with the reason;
        ``where`` names the transcript line."""
        item = f"{where}: {audio}" if where else str(audio)
        if not text:
            self.skip("empty transcript", where or str(audio))
        elif not audio.is_file():
            self.skip("transcript without audio", item)
        else:
            duration, problem = probe_audio(audio)
            if problem:
                self.skip(problem, item)
            else:
                self.entries.append(Entry(audio.resolve(), duration, text, lang, speaker))

    def summary(self, path: Path | str) -> str:
        hours = sum(e.duration for e in self.entries) / 3600
        line = f"{path}: {len(self.entries)} utterances, {hours:.2f} h"
        if not self.entries:
            line += " (nothing to write: manifest not written)"
        long = sum(e.duration > WHISPER_WINDOW_S for e in self.entries)
        if long:
            line += f", {long} longer than Whisper's {WHISPER_WINDOW_S:.0f} s window (the data module refuses those)"
        return line + "; " + describe_skipped(self.skipped)


def describe_skipped(skipped: dict[str, list[str]], shown: int = EXAMPLES_SHOWN) -> str:
    if not skipped:
        return "skipped 0"
    parts = []
    for reason, items in skipped.items():
        more = f", ... {len(items) - shown} more" if len(items) > shown else ""
        parts.append(f"{reason}: {len(items)} ({', '.join(items[:shown])}{more})")
    return f"skipped {sum(len(i) for i in skipped.values())}: " + "; ".join(parts)


class Collection:
    """The manifests an import writes, by name, plus the skipped items that belong to none of them."""

    def __init__(self, root: Path, out: Path, force: bool = False):
        self.root, self.out, self.force = root, out, force
        self.splits: dict[str, Split] = {}
        self.unassigned = Split("")

    def manifest_path(self, name: str) -> Path:
        return self.out / f"{name}.jsonl"

    def split(self, name: str) -> Split:
        """The split ``name``, created on first use; refuses at once to overwrite an existing manifest."""
        if name not in self.splits:
            if not _NAME.match(name):
                raise ImporterError(f"{name!r} cannot name a manifest — fix: use letters, digits, '.', '_' or '-'")
            path = self.manifest_path(name)
            if path.exists() and not self.force:
                raise ImporterError(
                    f"{path} already exists — fix: pass --force to overwrite it, or choose another --out"
                )
            self.splits[name] = Split(name)
        return self.splits[name]

    def summary_lines(self) -> list[str]:
        lines = [split.summary(self.manifest_path(name)) for name, split in self.splits.items()]
        if self.unassigned.skipped:
            lines.append(f"{self.root} (in no manifest): " + describe_skipped(self.unassigned.skipped))
        return lines

    def write(self, strict: bool = False, verbose: bool = True) -> list[Path]:
        """Write every non-empty manifest atomically and print the summary; with ``strict``, any skipped item
        (or empty split) is an error instead and nothing is written."""
        problems = [
            (name or str(self.root), reason, items)
            for name, split in [*self.splits.items(), ("", self.unassigned)]
            for reason, items in split.skipped.items()
        ]
        problems += [
            (name, "no utterance", [str(self.manifest_path(name))])
            for name, split in self.splits.items()
            if not split.entries
        ]
        if strict and problems:
            listed = "\n".join(
                f"  {where}: {reason}: {len(items)} ({', '.join(items[:20])}{' ...' if len(items) > 20 else ''})"
                for where, reason, items in problems
            )
            raise ImporterError(
                f"--strict: {sum(len(p[2]) for p in problems)} problem(s), no manifest written:\n{listed}\n— fix: "
                "correct the corpus, or drop --strict to write the good lines and list the skipped ones"
            )
        if not any(split.entries for split in self.splits.values()):
            found = "; ".join(self.summary_lines()) or "nothing matched the layout"
            raise ImporterError(
                f"{self.root}: no utterance to write ({found}) — fix: check --root and the corpus layout"
            )
        written = []
        for name, split in self.splits.items():
            if split.entries:
                written.append(write_jsonl(self.manifest_path(name), split.entries))
        if verbose:
            print(*self.summary_lines(), sep="\n")
        return written


def write_jsonl(path: Path, entries: list[Entry]) -> Path:
    """Write entries atomically: a crash leaves the old manifest (or none), never a truncated one."""
    folder = path.parent.resolve()
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(entry.to_json(folder) + "\n")
    partial.replace(path)
    return path


def probe_audio(path: Path) -> tuple[float, str]:
    """Duration (s) from the header alone, or 0 and why the file cannot be used (the reason a manifest check
    would give)."""
    try:
        info = sf.info(str(path))
    except Exception:
        return 0.0, "unreadable audio"
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        return 0.0, f"sample rate outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
    if info.frames <= 0:
        return 0.0, "empty audio"
    return info.frames / info.samplerate, ""


def tidy(text: str) -> str:
    """Unicode NFC (never NFKD: it splits Hangul into jamo) and single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def join_cjk(text: str) -> str:
    """Remove spaces between two Chinese characters (word-segmented transcripts); keep them around Latin words."""
    return _SPACE_BETWEEN_CJK.sub("", text)


def script_lang(text: str, matrix: str = "zh", embedded: str = "en") -> str:
    """``zh`` / ``en`` for a monolingual text, ``zh-en`` when it has both scripts (or neither)."""
    cjk, latin = bool(_HAS_CJK.search(text)), bool(_HAS_LATIN.search(text))
    if cjk != latin:
        return matrix if cjk else embedded
    return f"{matrix}-{embedded}"


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def check_lang(lang: str, allow_auto: bool = False) -> str:
    if (allow_auto and lang == "auto") or _LANG.match(lang):
        return lang
    choices = "a language code (en, ko, zh) or ko-en/zh-en" + (", or auto" if allow_auto else "")
    raise ImporterError(f"--lang {lang!r} is not a manifest language — fix: use {choices}")


def add_lang_argument(parser: argparse.ArgumentParser, default: str, extra_help: str = "") -> None:
    parser.add_argument("--lang", default=default, help=f"the lang field of every line (default {default}){extra_help}")


@dataclass(frozen=True)
class Importer:
    """A registered corpus: ``collect(collection, root, **options)`` fills the collection; ``add_arguments``
    declares the options (their argparse ``dest`` names are ``collect``'s keyword arguments); ``layout`` says
    what the importer expects under ROOT."""

    name: str
    help: str
    collect: Callable[..., None]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    layout: str = ""
    needs_root: bool = True  # False: the importer reads files its own options name (Lhotse manifests)
