"""Hugging Face datasets stored locally, read with pyarrow (no ``datasets`` package, no hub): ASCEND and HiKE.

Two layouts under ROOT:

- parquet files (``**/*.parquet``), as on the hub: ``data/train-00000-of-00001.parquet`` gives split ``train``;
  a file named like ``0000.parquet`` takes its folder's name (``default/test/0000.parquet`` -> ``test``);
- ``Dataset.save_to_disk`` folders: ``dataset_dict.json`` with one folder per split, or a single split's folder
  (``state.json``, ``dataset_info.json``, ``data-*.arrow``; the split named by ``state.json``'s ``_split``).

The audio column holds ``{bytes, path}``. Each clip's bytes are written unchanged (no decoding, no re-encoding)
to ``<out>/audio/<split>/<id>.<ext>``, the extension taken from the stored path or the bytes' signature, and
the manifests ``<out>/<split>.jsonl`` point at them relative to ``<out>``. A row without bytes whose stored
path is an existing file (absolute, or relative to ROOT) is used in place. Durations come from the written
file's header.

Columns (change with ``--text-column`` etc.): ASCEND (CAiRE/ASCEND card) ``transcription``, ``language``
(``zh``/``en``/``mixed`` -> lang ``zh``/``en``/``zh-en``), ``original_speaker_id``, ``id``; HiKE
(thetaone-ai/HiKE card: a test split only) ``text`` (not ``text_normalized``), ``sample_id``, no speaker,
lang ``ko-en``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from lightning_asr.data.importers.common import (
    AUDIO_SUFFIXES,
    Collection,
    Entry,
    Importer,
    ImporterError,
    add_lang_argument,
    check_lang,
    probe_audio,
    tidy,
)

LAYOUT = (
    "A saved Hugging Face dataset's layout is *.parquet files (e.g. data/train-00000-of-00001.parquet) or "
    "a save_to_disk folder (dataset_dict.json, or state.json + dataset_info.json + data-*.arrow) under ROOT"
)
ASCEND_LANGS = {"zh": "zh", "en": "en", "mixed": "zh-en"}
ASCEND_COLUMNS = {
    "lang": "auto",
    "text_column": "transcription",
    "id_column": "id",
    "speaker_column": "original_speaker_id",
    "lang_column": "language",
}
HIKE_COLUMNS = {
    "lang": "ko-en",
    "text_column": "text",
    "id_column": "sample_id",
    "speaker_column": "",
    "lang_column": "",
}
BATCH_ROWS = 64
_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SIGNATURES = {
    b"RIFF": ".wav",
    b"fLaC": ".flac",
    b"OggS": ".ogg",
    b"ID3": ".mp3",
    b"\xff\xfb": ".mp3",
    b"\xff\xf3": ".mp3",
}


def find_tables(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """Split name -> its (format, file) list, format ``parquet`` or ``arrow``."""
    tables: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(root.rglob("*.parquet")):
        shard = _SHARD.match(path.name)
        split = shard["split"] if shard else path.parent.name if path.stem.isdigit() else path.stem
        tables.setdefault(split, []).append(("parquet", path))
    if tables:
        return tables
    if (root / "dataset_dict.json").is_file():
        folders = [root / name for name in json.loads((root / "dataset_dict.json").read_text()).get("splits", [])]
    else:
        folders = [root] if (root / "state.json").is_file() else []
    for folder in folders:
        state_path = folder / "state.json"
        if not state_path.is_file():
            raise ImporterError(
                f"{state_path}: missing — fix: save the dataset again with save_to_disk, or convert it to parquet"
            )
        state = json.loads(state_path.read_text())
        split = state.get("_split") or folder.name
        tables[split] = [("arrow", folder / f["filename"]) for f in state.get("_data_files", [])]
    return tables


def iter_rows(fmt: str, path: Path, columns: list[str]) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=[c for c in columns if c in names])
    else:
        source = pa.memory_map(str(path))
        try:  # datasets writes the Arrow IPC stream format; accept the file format too
            reader = pa.ipc.open_stream(source)
            batches = reader
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        names = reader.schema.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ImporterError(
            f"{path}: no column(s) {', '.join(missing)} (it has {', '.join(names)}) — fix: name the "
            "columns with --text-column, --audio-column, --id-column, --speaker-column or --lang-column"
        )
    for batch in batches:
        yield from batch.select(columns).to_pylist() if fmt != "parquet" else batch.to_pylist()


def _suffix(stored_path: str, data: bytes) -> str:
    suffix = Path(stored_path or "").suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        return suffix
    return next((ext for magic, ext in _SIGNATURES.items() if data.startswith(magic)), ".wav")


def _audio_file(value, root: Path, target: Path) -> Path | None:
    """The clip as a file: its bytes written unchanged under ``target`` (suffix added), or its existing path."""
    if isinstance(value, dict):
        data, stored = value.get("bytes"), value.get("path") or ""
    else:
        data, stored = (value, "") if isinstance(value, bytes) else (None, value or "")
    if data:
        path = target.with_name(target.name + _suffix(stored, data))  # ids may hold dots: never with_suffix
        partial_path = path.with_name(path.name + ".partial")
        partial_path.write_bytes(data)
        partial_path.replace(path)
        return path
    for candidate in (Path(stored), root / stored) if stored else ():
        if candidate.is_file():
            return candidate
    return None


def collect(
    collection: Collection,
    root: Path,
    *,
    lang: str,
    text_column: str,
    audio_column: str = "audio",
    id_column: str = "",
    speaker_column: str = "",
    lang_column: str = "",
    lang_map: dict | None = None,
) -> None:
    lang = check_lang(lang, allow_auto=bool(lang_column))
    tables = find_tables(root)
    if not tables:
        raise ImporterError(f"{root}: no parquet or arrow data — {LAYOUT}")
    splits = {name: collection.split(name) for name in tables}  # refuses existing manifests before writing audio
    use_lang_column = lang == "auto"
    wanted = (text_column, audio_column, id_column, speaker_column, lang_column if use_lang_column else "")
    columns = [c for c in wanted if c]
    for name, files in tables.items():
        split, folder, ids = splits[name], collection.out / "audio" / name, set()
        folder.mkdir(parents=True, exist_ok=True)
        index = 0
        for fmt, path in files:
            for number, row in enumerate(iter_rows(fmt, path, columns)):
                where = f"{path} row {number}"
                clip_id = _UNSAFE.sub("_", str(row[id_column])) if id_column else f"{index:06d}"
                index += 1
                if clip_id in ids:
                    split.skip("duplicate id", f"{where}: {clip_id}")
                    continue
                ids.add(clip_id)
                text = tidy(str(row[text_column] or ""))
                if not text:
                    split.skip("empty transcript", where)
                    continue
                row_lang = lang
                if use_lang_column:
                    row_lang = (lang_map or {}).get(str(row[lang_column]).strip().lower(), "")
                    if not row_lang:
                        split.skip(f"unknown {lang_column} value", f"{where}: {row[lang_column]!r}")
                        continue
                audio = _audio_file(row[audio_column], root, folder / clip_id)
                if audio is None:
                    split.skip("no audio bytes and no such file", where)
                    continue
                duration, problem = probe_audio(audio)
                if problem:
                    split.skip(problem, f"{where}: {audio}")
                    continue
                speaker = str(row[speaker_column]) if speaker_column and row[speaker_column] is not None else ""
                split.entries.append(Entry(audio.resolve(), duration, text, row_lang, speaker))


def _add_column_arguments(parser, defaults: dict, lang_help: str) -> None:
    add_lang_argument(parser, defaults["lang"], lang_help)
    parser.add_argument(
        "--text-column", default=defaults["text_column"], help="transcript column (default %(default)s)"
    )
    parser.add_argument("--audio-column", default="audio", help="audio column, {bytes, path} (default %(default)s)")
    parser.add_argument(
        "--id-column",
        default=defaults["id_column"],
        help="clip id column, names the written files (default %(default)s; '' numbers them)",
    )
    parser.add_argument(
        "--speaker-column", default=defaults["speaker_column"], help="speaker column ('' for none; default %(default)r)"
    )
    parser.add_argument(
        "--lang-column",
        default=defaults["lang_column"],
        help="language column read by --lang auto (default %(default)r)",
    )


ASCEND = Importer(
    "ascend",
    "Mandarin-English ASCEND (CAiRE/ASCEND), parquet or save_to_disk",
    partial(collect, **ASCEND_COLUMNS, lang_map=ASCEND_LANGS),
    partial(
        _add_column_arguments,
        defaults=ASCEND_COLUMNS,
        lang_help="; auto: from the language column, zh/en/mixed -> zh/en/zh-en",
    ),
    LAYOUT,
)
HIKE = Importer(
    "hike",
    "Korean-English HiKE (thetaone-ai/HiKE), parquet or save_to_disk",
    partial(collect, **HIKE_COLUMNS),
    partial(_add_column_arguments, defaults=HIKE_COLUMNS, lang_help=""),
    LAYOUT,
)
