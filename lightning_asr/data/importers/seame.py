"""SEAME (LDC2015S04), Mandarin-English conversational and interview speech, as ESPnet's recipe reads it.

Layout: ``DATA/{conversation,interview}/audio/*.flac`` (long recordings) and
``DATA/{conversation,interview}/transcript/phaseII/*.txt``, where DATA is ROOT, ROOT/data, or the two LDC discs
ROOT/seame_d1/data and ROOT/seame_d2/data. Each transcript line is tab-separated:
``recording  start_ms  end_ms  language(ZH/EN/CS)  text`` (phase II) or without the language field (phase I,
``--phase I``). Every line becomes one manifest line: ``offset``/``duration`` into the original recording.

Text, following ESPnet's ``egs2/seame/asr1/local/preprocess.py`` (its ``text.clean``): lower case; noise
markers ``(ppl)`` ``(ppc)`` ``(ppb)`` ``(ppo)`` (any ``(pp...)`` / ``<pp...>``), the bare words ``ppl ppc ppb
ppo``, ``<noise>``, ``<v-noise>`` and unknown-word markers ``<unk>`` ``<unl>`` ``< unk >`` ``<unk...>`` removed;
the characters ``()[]{}.,?·@，。、「」＃"~-—#%_`｀×*（）［］&【】～ｌ\\`` replaced by spaces (so the words
inside brackets are kept, as ESPnet keeps them); control characters other than tabs and line breaks removed;
full-width Latin letters and ``é`` to ASCII. Two differences: ``<v-noise>`` is removed before ``-`` becomes a
space (ESPnet maps ``-`` first, so its ``<v-noise>`` rule never fires), and spaces between Chinese characters
are removed rather than inserted (ESPnet spaces every character for its character units; Whisper is trained
on unspaced Chinese). Any other ``<...>`` tag is kept, as in ESPnet. Lines empty after this, and segments of
10 ms or less, are skipped.

Speaker, as ESPnet: conversation recordings ``01NC01FBX_0101`` -> ``nc01f``; interviews ``NI01MAX_0101`` ->
``ni01m``. lang: ``zh-en`` for every line (one code-switched set, scored by mixed error rate); ``--lang auto``
gives monolingual lines ``zh`` or ``en`` by the scripts left in their text.

Splits: SEAME has no official split in the LDC release; ESPnet takes ``train`` / ``dev_man`` / ``dev_sge`` from
https://github.com/zengzp0912/SEAME-dev-set. With ``--dev-sets DIR`` (a copy of that repository) the lines go
to ``train.jsonl`` (recordings in ``train/wav_file.txt``), ``dev_man.jsonl`` and ``dev_sge.jsonl`` (lines
within 30 ms of a segment in ``dev_*/segments``, as ESPnet matches them); other lines are listed as in no
manifest. ESPnet's random 5% validation subset of train is not made. Without ``--dev-sets``: ``all.jsonl``.
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning_asr.data.importers.common import (
    Collection,
    Entry,
    Importer,
    ImporterError,
    add_lang_argument,
    check_lang,
    join_cjk,
    probe_audio,
    script_lang,
)

LAYOUT = (
    "SEAME's layout is DATA/{conversation,interview}/audio/*.flac with "
    "DATA/{conversation,interview}/transcript/phaseII/*.txt, DATA being ROOT, ROOT/data, or ROOT/seame_d1/data "
    "and ROOT/seame_d2/data"
)
DEV_SETS = ("dev_man", "dev_sge")
MATCH_TOLERANCE_S = 0.03
MIN_SEGMENT_S = 0.01

_PUNCTUATION = '()[]{}.,?·@，。、「」＃"~-—#%_`｀×*（）［］&【】～ｌ\\'
_PUNCTUATION_TO_SPACE = str.maketrans(_PUNCTUATION, " " * len(_PUNCTUATION))
# Full-width Latin letters (U+FF21-U+FF3A, U+FF41-U+FF5A) and é to lower-case ASCII, as ESPnet maps them.
_TO_ASCII = str.maketrans(
    {
        **{chr(0xFF21 + i): chr(0x61 + i) for i in range(26)},
        **{chr(0xFF41 + i): chr(0x61 + i) for i in range(26)},
        "é": "e",
    }
)
_BRACKETED_NOISE = re.compile(r"\(pp\w+\)|<pp\w+>|<v-noise>")
# Control characters, but not tabs and line breaks: those separate words.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_NOISE_WORDS = {"ppl", "ppc", "ppb", "ppo", "<noise>"}
_UNKNOWN = re.compile(r"<unl>|< ?unk[a-z ]*>")


def clean_text(text: str) -> str:
    """Transcript text with SEAME's noise and unknown-word markers removed (see the module docstring)."""
    text = _BRACKETED_NOISE.sub(" ", text.lower())
    text = _CONTROL.sub("", text.translate(_PUNCTUATION_TO_SPACE))
    text = " ".join(word for word in text.split() if word not in _NOISE_WORDS)
    text = _UNKNOWN.sub(" ", text.translate(_TO_ASCII))
    return join_cjk(" ".join(text.split()))


def speaker_of(recording: str) -> str:
    """ESPnet's speaker id: ``01NC01FBX_0101`` -> ``nc01f`` (conversation), ``NI01MAX_0101`` -> ``ni01m``."""
    stem = recording.split("_")[0]
    return (stem[2:-2] if stem[:1].isdigit() else stem[:5]).lower()


def find_sections(root: Path) -> list[Path]:
    """The conversation/interview folders under ROOT, ROOT/data or the two LDC discs' data folders."""
    bases = [root, root / "data", root / "seame_d1" / "data", root / "seame_d2" / "data"]
    return [base / kind for base in bases for kind in ("conversation", "interview") if (base / kind).is_dir()]


class DevSets:
    """The split of github.com/zengzp0912/SEAME-dev-set: recordings in ``train/wav_file.txt``, and the segments
    of ``dev_man/segments`` and ``dev_sge/segments`` (Kaldi: utterance recording start end, in seconds)."""

    def __init__(self, folder: Path):
        needed = [folder / "train" / "wav_file.txt"] + [folder / name / "segments" for name in DEV_SETS]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise ImporterError(
                f"--dev-sets {folder}: missing {', '.join(missing)} — fix: point --dev-sets at a copy of "
                "https://github.com/zengzp0912/SEAME-dev-set (train/wav_file.txt, dev_*/segments)"
            )
        self.train = {Path(line.strip()).stem.lower() for line in needed[0].read_text().splitlines() if line.strip()}
        self.segments: dict[str, list[tuple[float, float, str]]] = {}
        self.matched: set[tuple[str, int]] = set()
        for name, path in zip(DEV_SETS, needed[1:]):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                fields = line.split()
                try:
                    if fields:
                        self.segments.setdefault(fields[1].lower(), []).append(
                            (float(fields[2]), float(fields[3]), name)
                        )
                except (IndexError, ValueError) as err:
                    raise ImporterError(
                        f"{path}:{number}: not a Kaldi segments line 'utterance recording start end' — "
                        "fix: use the dev-set repository's segments file unchanged"
                    ) from err

    def split_of(self, recording: str, start: float, end: float) -> str | None:
        """``dev_man``/``dev_sge`` for a segment within 30 ms of a dev segment, else ``train`` for a train
        recording, else None."""
        for index, (dev_start, dev_end, name) in enumerate(self.segments.get(recording, [])):
            if abs(dev_start - start) < MATCH_TOLERANCE_S and abs(dev_end - end) < MATCH_TOLERANCE_S:
                self.matched.add((recording, index))
                return name
        return "train" if recording in self.train else None

    def unmatched(self) -> list[tuple[str, str]]:
        """(reason, item) for each dev segment that no transcript line matched."""
        return [
            (f"{name} segment without a transcript line", f"{recording} {start:.2f}-{end:.2f}")
            for recording, segments in self.segments.items()
            for index, (start, end, name) in enumerate(segments)
            if (recording, index) not in self.matched
        ]


def _parse(line: str, phase: str) -> tuple[str, float, float, str]:
    """(recording, start s, end s, text) of one transcript line; ValueError names what is wrong."""
    fields = line.split("\t", 4 if phase == "II" else 3)
    if len(fields) < (5 if phase == "II" else 4):
        raise ValueError(f"fewer than {5 if phase == 'II' else 4} tab-separated fields")
    try:
        start, end = float(fields[1]) / 1000, float(fields[2]) / 1000
    except ValueError:
        raise ValueError("bad time stamps") from None
    return fields[0].strip(), start, end, fields[-1]


def collect(
    collection: Collection, root: Path, *, lang: str = "zh-en", phase: str = "II", dev_sets: Path | None = None
) -> None:
    lang = check_lang(lang, allow_auto=True)
    sections = find_sections(root)
    if not sections:
        raise ImporterError(f"{root}: no data/conversation or data/interview folder — {LAYOUT}")
    transcripts = [t for s in sections for t in sorted((s / "transcript" / f"phase{phase}").glob("*.txt"))]
    if not transcripts:
        raise ImporterError(f"{root}: no transcript/phase{phase}/*.txt in {', '.join(map(str, sections))} — {LAYOUT}")
    recordings = {p.stem.lower(): p for s in sections for p in sorted((s / "audio").glob("*.flac"))}
    dev = DevSets(Path(dev_sets)) if dev_sets else None
    splits = {name: collection.split(name) for name in (("train", *DEV_SETS) if dev else ("all",))}
    seen: set[tuple[str, float, float]] = set()
    lengths: dict[str, tuple[float, str]] = {}
    for transcript in transcripts:
        for number, line in enumerate(transcript.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{transcript}:{number}"
            try:
                recording, start, end, raw = _parse(line, phase)
            except ValueError as err:
                if line.strip():
                    (collection.unassigned if dev else splits["all"]).skip(str(err), where)
                continue
            key = recording.lower()
            split = splits.get(dev.split_of(key, start, end) if dev else "all")
            if split is None:
                collection.unassigned.skip("not in train/dev_man/dev_sge", where)
            elif (key, start, end) in seen:
                split.skip("duplicate segment", where)
            elif not (text := clean_text(raw)):
                split.skip("empty after marker removal", where)
            elif end - start <= MIN_SEGMENT_S:
                split.skip("segment of 10 ms or less", where)
            elif key not in recordings:
                split.skip("transcript without audio", f"{where}: {recording}.flac")
            else:
                lengths.setdefault(key, probe_audio(recordings[key]))
                length, problem = lengths[key]
                if problem:
                    split.skip(problem, f"{where}: {recordings[key]}")
                elif end > length + 0.05:
                    split.skip(
                        "segment past the end of the recording", f"{where} (ends {end:.2f} s, audio {length:.2f} s)"
                    )
                else:
                    split.entries.append(
                        Entry(
                            recordings[key].resolve(),
                            end - start,
                            text,
                            script_lang(text) if lang == "auto" else lang,
                            speaker_of(recording),
                            start,
                        )
                    )
            seen.add((key, start, end))
    transcribed = {key for key, _, _ in seen}
    for key, path in recordings.items():
        if key not in transcribed:
            collection.unassigned.skip("audio without transcript", str(path))
    for reason, item in dev.unmatched() if dev else []:
        collection.unassigned.skip(reason, item)
    for split in splits.values():
        split.entries.sort(key=lambda e: (str(e.audio), e.offset))


def add_arguments(parser) -> None:
    add_lang_argument(parser, "zh-en", "; auto: zh or en for monolingual lines, zh-en for mixed ones")
    parser.add_argument(
        "--phase", choices=("I", "II"), default="II", help="read transcript/phaseI or phaseII (default II, as ESPnet)"
    )
    parser.add_argument(
        "--dev-sets",
        type=Path,
        metavar="DIR",
        help="a copy of github.com/zengzp0912/SEAME-dev-set: write train, dev_man and dev_sge.jsonl "
        "instead of all.jsonl",
    )


IMPORTER = Importer(
    "seame", "Mandarin-English SEAME (LDC2015S04), one line per time-stamped segment", collect, add_arguments, LAYOUT
)
