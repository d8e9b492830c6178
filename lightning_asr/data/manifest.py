"""NeMo-compatible JSONL manifests: one utterance a line, every line checked.

Fields: ``audio_filepath`` (relative to the manifest's folder, or absolute), ``duration`` (s), ``text``,
``lang`` (``en``, ``ko``, ``zh``, ... or ``ko-en``/``zh-en`` for code-switched speech, the matrix language
first), optional ``speaker`` and ``offset`` (s, for segments of a longer recording).

Every problem is reported as ``path:line: problem — fix``. Nothing is dropped silently: by default any bad
line is an error listing all bad lines; ``skip_bad_lines=True`` keeps the good ones and reports which it skipped.
"""

from __future__ import annotations

import json
import math
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

    def samples(self):
        """The utterance's audio: mono float32 at 16 kHz, the segment alone where it has an offset."""
        from lightning_asr.audio import read_audio

        return read_audio(self.audio_filepath, self.offset, self.duration if self.offset else None)

    def to_json(self, relative_to: Path | None = None) -> str:
        record = asdict(self)
        del record["manifest"], record["line"]
        if relative_to is not None:
            record["audio_filepath"] = str(Path(self.audio_filepath).relative_to(relative_to))
        if not record["offset"]:
            record.pop("offset")
        return json.dumps(record, ensure_ascii=False)


def _number(record: dict, key: str, default: float | None = None) -> float:
    """A finite number of seconds: JSON numbers only (``true`` and ``"1.5"`` are not seconds)."""
    value = record.get(key, default)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' is {json.dumps(value)[:40]}, not a number — fix: write it as a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # a JSON integer beyond float range
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"'{key}' is {str(value)[:40]}, not a finite number — fix: write a finite number of seconds")
    return seconds


def _check_line(raw: str, where: str, folder: Path, known_languages: set[str] | None) -> Utterance:
    """Parse and check one line; raise ValueError with ``problem — fix`` (without the location)."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"invalid JSON ({err.msg} at column {err.colno}) — fix: write one JSON object per line"
        ) from err
    except (ValueError, RecursionError) as err:  # e.g. nested too deeply, an integer of thousands of digits
        raise ValueError(f"invalid JSON ({str(err)[:80]}) — fix: write one flat JSON object per line") from err
    if not isinstance(record, dict):
        raise ValueError("the line is not a JSON object — fix: write one JSON object per line")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)} — fix: every line needs {', '.join(REQUIRED_FIELDS)}")
    text = record["text"]
    if not isinstance(text, str):
        raise ValueError(f"'text' is {type(text).__name__}, not a string — fix: write the transcript as a JSON string")
    if not text.strip():
        raise ValueError("empty transcript — fix: give the utterance its text, or remove the line")
    lang = record["lang"]
    if not isinstance(lang, str):
        raise ValueError(
            f"'lang' is {type(lang).__name__}, not a string — fix: use a language code such as en, ko, zh, ko-en, zh-en"
        )
    if not lang:
        raise ValueError("empty 'lang' — fix: use a language code such as en, ko, zh, ko-en, zh-en")
    if known_languages is not None and any(part not in known_languages for part in lang.split("-")):
        raise ValueError(f"unknown language {lang!r} — fix: use Whisper language codes, e.g. en, ko, zh, ko-en")
    duration = _number(record, "duration")
    offset = _number(record, "offset", 0.0)
    if duration <= 0 or offset < 0:
        raise ValueError(f"duration {duration} / offset {offset} out of range — fix: duration > 0, offset >= 0")
    audio = record["audio_filepath"]
    if not isinstance(audio, str) or not audio.strip() or "\0" in audio:
        raise ValueError(
            f"'audio_filepath' is {json.dumps(audio)[:60]}, not a file path — fix: write the audio "
            "file's path as a string (relative to the manifest's folder)"
        )
    path = Path(audio)
    if not path.is_absolute():
        path = folder / path
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as err:  # e.g. a name longer than the file system allows
        raise ValueError(
            f"audio file {str(path)[:200]} cannot be looked up ({err.strerror}) — fix: correct 'audio_filepath'"
        ) from err
    if not exists:
        raise ValueError(
            f"audio file {path} does not exist — fix: correct 'audio_filepath' (relative to the manifest's folder)"
        )
    if not is_file:
        raise ValueError(
            f"audio file {path} is not a regular file (a directory?) — fix: point 'audio_filepath' at a WAV or FLAC file"
        )
    try:
        info = sf.info(str(path))
    except Exception as err:
        raise ValueError(f"audio file {path} is unreadable ({err}) — fix: re-encode it as WAV or FLAC") from err
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"audio file {path} has sample rate {info.samplerate} Hz, which cannot be resampled — fix: re-encode at 16000 Hz"
        )
    if info.frames <= 0:
        raise ValueError(
            f"audio file {path} holds no samples (empty or cut off after its header) — fix: re-export the audio, or remove the line"
        )
    file_duration = info.frames / info.samplerate
    if "offset" in record:
        if offset + duration > file_duration + DURATION_TOLERANCE_S:
            raise ValueError(
                f"segment {offset:.2f}+{duration:.2f} s runs past the end of {path} ({file_duration:.2f} s) — fix: correct offset/duration"
            )
    elif abs(file_duration - duration) > DURATION_TOLERANCE_S:
        raise ValueError(
            f"duration {duration:.2f} s disagrees with the file ({file_duration:.2f} s) — fix: set duration to {file_duration:.3f}"
        )
    return Utterance(
        str(path.resolve()),
        duration,
        text.strip(),
        lang,
        str(record.get("speaker", "")),
        offset,
        where.rsplit(":", 1)[0],
        int(where.rsplit(":", 1)[1]),
    )


def read_manifest(
    path: str | Path, skip_bad_lines: bool = False, known_languages: set[str] | None = None
) -> list[Utterance]:
    """Read and check every line of a manifest. Raise ``ManifestError`` listing every bad line, unless
    ``skip_bad_lines``, which keeps the good lines and prints how many and which were skipped."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(
            [f"{path}: the manifest does not exist — fix: build it (see data_manifests/) or correct the path"]
        )
    if not path.is_file():
        raise ManifestError([f"{path}: the manifest is not a file — fix: point to the .jsonl file, not its folder"])
    utterances, problems = [], []
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise ManifestError(
            [f"{path}: the manifest cannot be opened ({err.strerror}) — fix: check its permissions"]
        ) from err
    # Lines are split at "\n" only, as editors and ``wc -l`` count them, so every line number is the editor's.
    with handle:
        for number, data in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(
                    f"{where}: not UTF-8 text (byte {err.start + 1} of the line) — fix: save the manifest as UTF-8"
                )
                continue
            if number == 1:
                raw = raw.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not raw.strip():
                continue
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
