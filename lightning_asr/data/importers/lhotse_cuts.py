"""Lhotse manifests in and out: every Lhotse recipe (LibriSpeech, AISHELL, FLEURS, GigaSpeech, KsponSpeech, ...)
becomes a source, and our manifests become CutSets for toolkits that read Lhotse.

In: ``python -m lightning_asr.data.import lhotse --cuts cuts.jsonl.gz --out DIR [--split NAME]``, or
``--recordings recordings.jsonl.gz --supervisions supervisions.jsonl.gz`` instead of ``--cuts``. Each
supervision becomes one manifest line: the recording's audio file, the supervision's start (plus the cut's,
for cuts) as ``offset`` and its duration, its text, language and speaker. A supervision covering a whole
file is written as the whole file. Nothing is dropped silently: a supervision without text, without a
language (and no ``--lang``), in a language we cannot name, or whose audio is not a file on disk (URL,
command, in-memory) is skipped with the reason, and ``--strict`` makes any skip an error. Language names
(``English``, ``Korean``, ``Mandarin``) map to codes (``en``, ``ko``, ``zh``); codes pass through.

Out: ``manifest_to_cutset(manifest, path)`` (``python -m lightning_asr.data.import lhotse --to-lhotse
MANIFEST --out cuts.jsonl.gz``) writes one cut per manifest line, its supervision spanning the cut.

Lhotse is an optional extra (``pip install 'lightning-asr[lhotse]'``).
"""

from __future__ import annotations

from pathlib import Path

from lightning_asr.data.importers.common import Collection, Importer, ImporterError, check_lang, tidy

LANGUAGE_NAMES = {
    "english": "en",
    "korean": "ko",
    "mandarin": "zh",
    "chinese": "zh",
    "cantonese": "yue",
    "japanese": "ja",
    "spanish": "es",
    "french": "fr",
    "german": "de",
}


def lhotse():
    try:
        import lhotse as module
    except ImportError as err:
        raise ImporterError(
            "Lhotse is not installed — fix: pip install 'lightning-asr[lhotse]' (or pip install lhotse)"
        ) from err
    return module


def language_code(language: str | None, fallback: str) -> str | None:
    if not language:
        return fallback or None
    name = language.strip().lower()
    if name in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[name]
    return name if (2 <= len(name) <= 3 and name.isalpha()) or "-" in name else None


def audio_file(recording) -> tuple[Path | None, str]:
    """The recording's file on disk, or None and the reason."""
    sources = list(recording.sources)
    if len(sources) != 1 or sources[0].type != "file":
        kinds = ", ".join(sorted({s.type for s in sources})) or "none"
        return None, f"audio not one file on disk (sources: {kinds})"
    path = Path(sources[0].source)
    if not path.is_file():
        return None, "transcript without audio"
    return path.resolve(), ""


def add_supervision(split, recording, supervision, start: float, lang: str, where: str) -> None:
    text = tidy(supervision.text or "")
    if not text:
        split.skip("empty transcript", where)
        return
    code = language_code(supervision.language, lang)
    try:
        code = check_lang(code) if code else None
    except ImporterError:
        code = None
    if code is None:
        reason = "no language (fix: --lang)" if not supervision.language else f"language {supervision.language!r}"
        split.skip(reason, where)
        return
    path, problem = audio_file(recording)
    if path is None:
        split.skip(problem, f"{where}: {recording.id}")
        return
    from lightning_asr.data.importers.common import Entry

    whole = start <= 1e-6 and abs(supervision.duration - recording.duration) <= 1e-3
    split.entries.append(
        Entry(path, supervision.duration, text, code, supervision.speaker or "", None if whole else start)
    )


def collect(
    collection: Collection,
    root: Path,
    *,
    cuts: Path | None = None,
    recordings: Path | None = None,
    supervisions: Path | None = None,
    split: str = "",
    lang: str = "",
    to_lhotse: Path | None = None,
) -> None:
    module = lhotse()
    if to_lhotse is not None:
        raise ImporterError("--to-lhotse writes a CutSet, not manifests: it is handled by the command line")
    if cuts is None and not (recordings and supervisions):
        raise ImporterError("give --cuts, or --recordings and --supervisions — fix: point at Lhotse manifests")
    source = cuts or supervisions
    name = split or Path(source).name.split(".")[0].removesuffix("_cuts").removesuffix("_supervisions") or "lhotse"
    target = collection.split(name)
    if cuts is not None:
        for cut in module.CutSet.from_file(cuts):
            if not isinstance(cut, module.MonoCut) or not cut.has_recording:
                # a MixedCut (padded or mixed) is several tracks, not one span of one file
                target.skip("not a single-recording cut (fix: import the cuts before padding or mixing)", cut.id)
                continue
            for supervision in cut.supervisions:
                add_supervision(target, cut.recording, supervision, cut.start + supervision.start, lang, supervision.id)
        return
    by_id = {recording.id: recording for recording in module.RecordingSet.from_file(recordings)}
    for supervision in module.SupervisionSet.from_file(supervisions):
        if supervision.recording_id not in by_id:
            target.skip("supervision of an unknown recording", supervision.id)
            continue
        add_supervision(target, by_id[supervision.recording_id], supervision, supervision.start, lang, supervision.id)


def manifest_to_cutset(manifest: str | Path, out: str | Path) -> int:
    """Write a manifest as a Lhotse CutSet (``.jsonl.gz``); return the number of cuts."""
    module = lhotse()
    from lightning_asr.data.manifest import read_manifest

    cuts = []
    recordings = {}
    for utterance in read_manifest(manifest):
        if utterance.audio_filepath not in recordings:
            recordings[utterance.audio_filepath] = module.Recording.from_file(
                utterance.audio_filepath, recording_id=f"rec-{len(recordings):06d}"
            )
        recording = recordings[utterance.audio_filepath]
        cut_id = f"{Path(manifest).stem}-{utterance.line:06d}"
        supervision = module.SupervisionSegment(
            id=cut_id,
            recording_id=recording.id,
            start=0.0,
            duration=utterance.duration,
            channel=0,
            text=utterance.text,
            language=utterance.lang,
            speaker=utterance.speaker or None,
        )
        cuts.append(
            module.MonoCut(
                id=cut_id,
                start=utterance.offset,
                duration=utterance.duration,
                channel=0,
                recording=recording,
                supervisions=[supervision],
            )
        )
    module.CutSet.from_cuts(cuts).to_file(out)
    return len(cuts)


def add_arguments(parser) -> None:
    parser.add_argument("--cuts", type=Path, help="a Lhotse CutSet (cuts.jsonl.gz)")
    parser.add_argument("--recordings", type=Path, help="a Lhotse RecordingSet, with --supervisions")
    parser.add_argument("--supervisions", type=Path, help="a Lhotse SupervisionSet, with --recordings")
    parser.add_argument("--split", default="", help="the manifest's name (default: from the file name)")
    parser.add_argument("--lang", default="", help="language code for supervisions without one")
    parser.add_argument("--to-lhotse", type=Path, metavar="MANIFEST", help="write MANIFEST as a CutSet at --out")


IMPORTER = Importer(
    "lhotse",
    "Lhotse CutSet, or RecordingSet + SupervisionSet, to manifests (and manifests to a CutSet)",
    collect,
    add_arguments,
    "Lhotse manifests (--cuts, or --recordings and --supervisions); ROOT is not needed",
    needs_root=False,
)
