"""LibriSpeech and Zeroth-Korean: the same ``*.trans.txt`` + ``.flac`` scheme, two folder levels below each split.

- LibriSpeech (openslr 12): ``ROOT[/LibriSpeech]/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
  with ``<speaker>-<chapter>-<n>.flac`` beside it; splits such as ``dev-clean``, ``train-clean-100``. The
  upper-case transcripts are written lower-cased (Whisper writes mixed case; scoring lower-cases anyway).
- Zeroth-Korean (openslr 40): ``ROOT/{train_data_01,test_data_01}/<script>/<reader>/<reader>_<script>.trans.txt``
  with ``<reader>_<script>_<n>.flac`` beside it; texts kept as written.

Each trans.txt line is ``<utterance id> <text>``; the audio is ``<utterance id>.flac`` in the same folder.
Each split folder becomes ``<out>/<split folder name>.jsonl``; ``--split`` picks some. speaker: the LibriSpeech
speaker folder, the Zeroth reader folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lightning_asr.data.importers.common import Collection, Importer, ImporterError, tidy

TRANS_GLOB = "*/*/*.trans.txt"


@dataclass(frozen=True)
class Scheme:
    name: str
    lang: str
    speaker_level: int  # how many folders above the trans.txt file the speaker folder is: 1 or 0
    lowercase: bool
    layout: str
    subfolder: str = ""  # the folder the archive extracts to, when ROOT is its parent


LIBRISPEECH = Scheme(
    "librispeech",
    "en",
    1,
    True,
    "LibriSpeech's layout is ROOT[/LibriSpeech]/<split>/<speaker>/<chapter>/"
    "<speaker>-<chapter>.trans.txt with <speaker>-<chapter>-<n>.flac beside it",
    "LibriSpeech",
)
ZEROTH = Scheme(
    "zeroth",
    "ko",
    0,
    False,
    "Zeroth-Korean's layout is ROOT/{train_data_01,test_data_01}/<script>/<reader>/"
    "<reader>_<script>.trans.txt with <reader>_<script>_<n>.flac beside it",
)


def find_splits(root: Path, scheme: Scheme) -> list[Path]:
    base = root / scheme.subfolder if scheme.subfolder and (root / scheme.subfolder).is_dir() else root
    splits = [d for d in sorted(base.iterdir()) if d.is_dir() and next(d.glob(TRANS_GLOB), None)]
    if not splits and next(root.glob(TRANS_GLOB), None):
        return [root]  # ROOT is itself one split folder
    if not splits:
        archives = sorted(p.name for p in base.glob("*.tar.gz"))
        if archives:
            raise ImporterError(
                f"{base}: only archives ({', '.join(archives)}) — fix: extract them first "
                f"(tar xzf ARCHIVE -C {base}). {scheme.layout}"
            )
        raise ImporterError(f"{root}: no split folder with {TRANS_GLOB} — {scheme.layout}")
    return splits


def collect(collection: Collection, root: Path, *, scheme: Scheme, split: list[str] | None = None) -> None:
    folders = find_splits(root, scheme)
    if split:
        unknown = sorted(set(split) - {f.name for f in folders})
        if unknown:
            raise ImporterError(
                f"--split {', '.join(unknown)}: not under {root} — fix: choose from "
                f"{', '.join(f.name for f in folders)}"
            )
        folders = [f for f in folders if f.name in split]
    for folder in folders:
        target = collection.split(folder.name)
        for trans in sorted(folder.glob(TRANS_GLOB)):
            speaker = (trans.parent.parent if scheme.speaker_level else trans.parent).name
            named = set()
            for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                utterance, _, text = line.strip().partition(" ")
                named.add(utterance)
                text = tidy(text.lower() if scheme.lowercase else text)
                target.add_file(trans.parent / f"{utterance}.flac", text, scheme.lang, speaker, f"{trans}:{number}")
            for audio in sorted(trans.parent.glob("*.flac")):
                if audio.stem not in named:
                    target.skip("audio without transcript", str(audio))


def add_arguments(parser) -> None:
    parser.add_argument("--split", nargs="+", metavar="NAME", help="split folders to import (default: all found)")


LIBRISPEECH_IMPORTER = Importer(
    "librispeech",
    "English LibriSpeech (openslr 12)",
    partial(collect, scheme=LIBRISPEECH),
    add_arguments,
    LIBRISPEECH.layout,
)
ZEROTH_IMPORTER = Importer(
    "zeroth", "Korean Zeroth-Korean (openslr 40)", partial(collect, scheme=ZEROTH), add_arguments, ZEROTH.layout
)
