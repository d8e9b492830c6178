"""FLEURS (google/fleurs), one language folder as the hub repository stores it, audio archives extracted.

Layout: ROOT is a language folder such as ``fleurs/data/ko_kr`` holding ``{train,dev,test}.tsv`` and
``audio/{train,dev,test}/*.wav`` (extracted from ``audio/<split>.tar.gz``). Each TSV line has no header and
seven tab-separated fields: id, file name, raw transcription, transcription (normalised: lower case, no
punctuation), words (space-separated), number of samples, gender. The same sentence id recurs once per speaker.

Each split becomes ``<out>/<split>.jsonl`` with the raw transcription (cased and punctuated, as Whisper writes;
``--text-field transcription`` takes the normalised one). FLEURS has no speaker ids, so ``speaker`` is left
out. lang from the folder name: ``cmn_hans_cn`` -> ``zh``, ``yue_hant_hk`` -> ``yue``, otherwise the part
before the first ``_`` (``ko_kr`` -> ``ko``); ``--lang`` overrides it.
"""

from __future__ import annotations

from pathlib import Path

from lightning_asr.data.importers.common import Collection, Importer, ImporterError, check_lang, tidy

SPLITS = ("train", "dev", "test")
LAYOUT = (
    "FLEURS' layout is a language folder (e.g. data/ko_kr) with {train,dev,test}.tsv and "
    "audio/{train,dev,test}/*.wav extracted from audio/<split>.tar.gz"
)
TEXT_FIELDS = {"raw_transcription": 2, "transcription": 3}
FLEURS_TO_WHISPER = {"cmn": "zh", "yue": "yue"}


def language_of(folder: Path) -> str:
    code = folder.name.split("_")[0].lower()
    return FLEURS_TO_WHISPER.get(code, code)


def collect(collection: Collection, root: Path, *, lang: str = "", text_field: str = "raw_transcription") -> None:
    tsvs = [root / f"{split}.tsv" for split in SPLITS if (root / f"{split}.tsv").is_file()]
    if not tsvs:
        tsvs_below = [p for pattern in ("*/*.tsv", "data/*/*.tsv") for p in root.glob(pattern) if p.stem in SPLITS]
        languages = sorted({p.parent.name for p in tsvs_below})
        hint = (
            f" ROOT holds language folders ({', '.join(languages[:5])}): pass one of them as --root."
            if languages
            else ""
        )
        raise ImporterError(f"{root}: no train.tsv, dev.tsv or test.tsv — {LAYOUT}.{hint}")
    lang = check_lang(lang or language_of(root))
    for tsv in tsvs:
        split_name = tsv.stem
        audio_dir = root / "audio" / split_name
        if not audio_dir.is_dir():
            archive = root / "audio" / f"{split_name}.tar.gz"
            fix = (
                f"extract it: tar xzf {archive} -C {root / 'audio'}"
                if archive.is_file()
                else f"put the {split_name} audio there"
            )
            raise ImporterError(f"{audio_dir}: no such folder — fix: {fix} ({LAYOUT})")
        split = collection.split(split_name)
        named = set()
        for number, line in enumerate(tsv.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{tsv}:{number}"
            fields = line.split("\t")
            if len(fields) != 7:
                split.skip("malformed line", f"{where} ({len(fields)} of 7 tab-separated fields)")
                continue
            named.add(fields[1])
            split.add_file(audio_dir / fields[1], tidy(fields[TEXT_FIELDS[text_field]]), lang, "", where)
        for audio in sorted(audio_dir.glob("*.wav")):
            if audio.name not in named:
                split.skip("audio without transcript", str(audio))


def add_arguments(parser) -> None:
    parser.add_argument("--lang", default="", help="the lang field of every line (default: from the folder name)")
    parser.add_argument(
        "--text-field",
        choices=sorted(TEXT_FIELDS),
        default="raw_transcription",
        help="raw (cased, punctuated; default) or normalised transcription",
    )


IMPORTER = Importer("fleurs", "FLEURS (google/fleurs), one language folder", collect, add_arguments, LAYOUT)
