"""KECS (Korean-English code-switching speech). It is not publicly distributed, so two generic layouts are read:

1. transcript tables: ``*.csv`` / ``*.tsv`` files directly under ROOT (or the ``--transcripts`` files) with a
   header row ``path,text[,speaker]``; ``path`` is relative to ROOT (or absolute). Each table becomes
   ``<out>/<table stem>.jsonl`` (``train.tsv`` -> ``train.jsonl``). Audio files under ROOT that no table names
   are listed as 'audio without transcript'.
2. per-file transcripts: ``NAME.txt`` (UTF-8, the whole file is the transcript) beside each audio file
   ``NAME.wav`` / ``.flac`` / ``.ogg`` / ``.mp3`` anywhere under ROOT; all become ``<out>/<--name>.jsonl``.
   ``.txt`` files without an audio file of the same name are listed as 'transcript without audio'.

Tables take precedence when both are present. Texts are kept as written (NFC, single spaces).
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_asr.data.importers.common import (
    Collection,
    Importer,
    ImporterError,
    add_lang_argument,
    audio_files,
    check_lang,
    tidy,
)

LAYOUTS = (
    "KECS layouts: (1) a transcript table ROOT/*.csv or ROOT/*.tsv with header path,text[,speaker] "
    "(path relative to ROOT), or (2) NAME.txt transcripts beside NAME.wav/.flac audio files"
)


def _read_table(collection: Collection, root: Path, table: Path, lang: str) -> set[Path]:
    """Add the rows of one table to the split named after it; return the audio files it names."""
    split = collection.split(table.stem)
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    named: set[Path] = set()
    with open(table, encoding="utf-8-sig", newline="") as handle:
        # TSV fields are taken literally (quotes are text); CSV follows the usual quoting rules.
        reader = csv.reader(
            handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        )
        header = [column.strip().lower() for column in next(reader, [])]
        if "path" not in header or "text" not in header:
            raise ImporterError(
                f"{table}:1: header {header or '(empty file)'} lacks path and text — fix: start the "
                "table with the header row path,text[,speaker] (comma-separated .csv or tab-separated .tsv)"
            )
        columns = {name: header.index(name) for name in ("path", "text", "speaker") if name in header}
        for row in reader:
            where = f"{table}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                split.skip("malformed row", f"{where} ({len(row)} of {len(header)} fields)")
                continue
            audio = Path(row[columns["path"]].strip())
            audio = (audio if audio.is_absolute() else root / audio).resolve()
            if audio in named:
                split.skip("duplicate audio", f"{where}: {audio}")
                continue
            named.add(audio)
            speaker = row[columns["speaker"]].strip() if "speaker" in columns else ""
            split.add_file(audio, tidy(row[columns["text"]]), lang, speaker, where)
    return named


def collect(
    collection: Collection, root: Path, *, lang: str = "ko-en", transcripts: list[str] | None = None, name: str = "all"
) -> None:
    lang = check_lang(lang)
    if transcripts:
        tables = [Path(t) if Path(t).is_absolute() else root / t for t in transcripts]
        missing = [str(t) for t in tables if not t.is_file()]
        if missing:
            raise ImporterError(
                f"--transcripts {', '.join(missing)}: no such file — fix: give tables relative to --root, or absolute"
            )
    else:
        tables = sorted(p for p in root.iterdir() if p.suffix.lower() in (".csv", ".tsv") and p.is_file())
    if tables:
        named = set().union(*(_read_table(collection, root, table, lang) for table in tables))
        for audio in audio_files(root):
            if audio.resolve() not in named:
                collection.unassigned.skip("audio without transcript", str(audio))
        return
    audios = audio_files(root)
    paired = [a for a in audios if a.with_suffix(".txt").is_file()]
    if not paired:
        raise ImporterError(
            f"{root}: no transcript table and no NAME.txt beside any audio file "
            f"({len(audios)} audio files found) — {LAYOUTS}"
        )
    split = collection.split(name)
    for audio in audios:
        transcript = audio.with_suffix(".txt")
        if not transcript.is_file():
            split.skip("audio without transcript", str(audio))
            continue
        split.add_file(audio, tidy(transcript.read_text(encoding="utf-8-sig")), lang, "", str(transcript))
    stems = {a.with_suffix("") for a in audios}
    for transcript in sorted(root.rglob("*.txt")):
        if transcript.with_suffix("") not in stems:
            split.skip("transcript without audio", str(transcript))


def add_arguments(parser) -> None:
    add_lang_argument(parser, "ko-en")
    parser.add_argument(
        "--transcripts",
        nargs="+",
        metavar="TABLE",
        help="transcript tables to read (relative to --root); default: every *.csv and *.tsv directly under --root",
    )
    parser.add_argument("--name", default="all", help="manifest name for the per-file .txt layout (default all)")


IMPORTER = Importer("kecs", "Korean-English code-switching (KECS)", collect, add_arguments, LAYOUTS)
