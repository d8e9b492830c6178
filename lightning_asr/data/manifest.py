"""NeMo-compatible JSONL manifests: one utterance a line, every line checked.

Fields: ``audio_filepath`` (relative to the manifest's folder, or absolute), ``duration`` (s), ``text``,
``lang`` (``en``, ``ko``, ``zh``, ... or ``ko-en``/``zh-en`` for code-switched speech, the matrix language
first), optional ``speaker`` and ``offset`` (s, for segments of a longer recording).

Every problem is reported as ``path:line: problem — fix``. Nothing is dropped silently: by default any bad
line is an error listing all bad lines; ``skip_bad_lines=True`` keeps the good ones and reports which it skipped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

from lightning_asr.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

DURATION_TOLERANCE_S = 0.1
REQUIRED_FIELDS = ("audio_filepath", "duration", "text", "lang")


class ManifestError(ValueError):
    """One or more manifest lines are invalid; ``problems`` holds one ``path:line: problem — fix`` per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else "")
        super().__init__(f"{len(problems)} invalid manifest line(s):\n{shown}")


@dataclass(frozen=True)
class Utterance:
    audio_filepath: str  # resolved, absolute
    duration: float
    text: str
    lang: str
    speaker: str = ""
    offset: float = 0.0
    manifest: str = ""
    line: int = 0

    @property
    def language(self) -> str:
        """The matrix language: the decoder's language token for ``ko-en`` is ``ko``."""
        return self.lang.split("-")[0]

    def to_json(self, relative_to: Path | None = None) -> str:
        record = asdict(self)
        del record["manifest"], record["line"]
        if relative_to is not None:
            record["audio_filepath"] = str(Path(self.audio_filepath).relative_to(relative_to))
        if not record["offset"]:
            record.pop("offset")
        return json.dumps(record, ensure_ascii=False)


def _check_line(raw: str, where: str, folder: Path, known_languages: set[str] | None) -> Utterance:
    """Parse and check one line; raise ValueError with ``problem — fix`` (without the location)."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg} at column {err.colno}) — fix: write one JSON object per line") from err
    if not isinstance(record, dict):
        raise ValueError("the line is not a JSON object — fix: write one JSON object per line")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)} — fix: every line needs {', '.join(REQUIRED_FIELDS)}")
    text = record["text"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty transcript — fix: give the utterance its text, or remove the line")
    lang = record["lang"]
    if not isinstance(lang, str) or not lang:
        raise ValueError("empty 'lang' — fix: use a language code such as en, ko, zh, ko-en, zh-en")
    if known_languages is not None and any(part not in known_languages for part in lang.split("-")):
        raise ValueError(f"unknown language {lang!r} — fix: use Whisper language codes, e.g. en, ko, zh, ko-en")
    try:
        duration = float(record["duration"])
        offset = float(record.get("offset", 0.0) or 0.0)
    except (TypeError, ValueError) as err:
        raise ValueError("'duration' and 'offset' must be numbers (seconds) — fix: write them as numbers") from err
    if duration <= 0 or offset < 0:
        raise ValueError(f"duration {duration} / offset {offset} out of range — fix: duration > 0, offset >= 0")
    path = Path(str(record["audio_filepath"]))
    if not path.is_absolute():
        path = folder / path
    if not path.exists():
        raise ValueError(f"audio file {path} does not exist — fix: correct 'audio_filepath' (relative to the manifest's folder)")
    try:
        info = sf.info(str(path))
    except Exception as err:
        raise ValueError(f"audio file {path} is unreadable ({err}) — fix: re-encode it as WAV or FLAC") from err
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise ValueError(f"audio file {path} has sample rate {info.samplerate} Hz, which cannot be resampled — fix: re-encode at 16000 Hz")
    file_duration = info.frames / info.samplerate
    if "offset" in record:
        if offset + duration > file_duration + DURATION_TOLERANCE_S:
            raise ValueError(f"segment {offset:.2f}+{duration:.2f} s runs past the end of {path} ({file_duration:.2f} s) — fix: correct offset/duration")
    elif abs(file_duration - duration) > DURATION_TOLERANCE_S:
        raise ValueError(f"duration {duration:.2f} s disagrees with the file ({file_duration:.2f} s) — fix: set duration to {file_duration:.3f}")
    return Utterance(str(path.resolve()), duration, text.strip(), lang, str(record.get("speaker", "")),
                     offset, where.rsplit(":", 1)[0], int(where.rsplit(":", 1)[1]))


def read_manifest(path: str | Path, skip_bad_lines: bool = False, known_languages: set[str] | None = None) -> list[Utterance]:
    """Read and check every line of a manifest. Raise ``ManifestError`` listing every bad line, unless
    ``skip_bad_lines``, which keeps the good lines and prints how many and which were skipped."""
    path = Path(path)
    if not path.exists():
        raise ManifestError([f"{path}: the manifest does not exist — fix: build it (see data_manifests/) or correct the path"])
    utterances, problems = [], []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                utterances.append(_check_line(raw, where, path.parent, known_languages))
            except ValueError as err:
                problems.append(f"{where}: {err}")
    if problems and not skip_bad_lines:
        raise ManifestError(problems)
    if problems:
        print(f"{path}: skipped {len(problems)} bad line(s):", *problems, sep="\n  ", file=sys.stderr)
    if not utterances:
        raise ManifestError([f"{path}: no valid utterance — fix: the manifest must hold at least one good line"])
    return utterances


def write_manifest(path: str | Path, utterances: list[Utterance]) -> None:
    """Write a manifest with audio paths relative to its folder, atomically."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for utterance in utterances:
            handle.write(utterance.to_json(relative_to=path.parent.resolve()) + "\n")
    partial.replace(path)
