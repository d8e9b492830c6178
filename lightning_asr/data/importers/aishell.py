"""AISHELL-1 (openslr 33), Mandarin read speech, with its per-speaker archives extracted.

Layout: ``ROOT[/data_aishell]/wav/{train,dev,test}/<speaker>/<utterance>.wav`` and
``ROOT[/data_aishell]/transcript/aishell_transcript_v0.8.txt`` (``<utterance> <words separated by spaces>``).
The release ships ``wav/S0002.tar.gz`` ... (one archive per speaker), each extracting to
``wav/<split>/<speaker>/``. Texts are written without the word-separating spaces (as ESPnet's recipe does).
Each split becomes ``<out>/<split>.jsonl``; speaker: the speaker folder; lang ``zh``. The transcript file lacks
some recordings: those are listed as 'audio without transcript', as usual.
"""

from __future__ import annotations

from pathlib import Path

from lightning_asr.data.importers.common import Collection, Importer, ImporterError, join_cjk, tidy

TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
LAYOUT = (
    "AISHELL-1's layout is ROOT[/data_aishell]/wav/{train,dev,test}/<speaker>/*.wav (extracted from "
    "wav/<speaker>.tar.gz) and ROOT[/data_aishell]/transcript/aishell_transcript_v0.8.txt"
)


def collect(collection: Collection, root: Path) -> None:
    base = root / "data_aishell" if (root / "data_aishell").is_dir() else root
    wav_dir, transcript = base / "wav", base / TRANSCRIPT
    if not wav_dir.is_dir() or not transcript.is_file():
        raise ImporterError(f"{root}: no wav/ folder or {TRANSCRIPT} — {LAYOUT}")
    archives = sorted(wav_dir.glob("*.tar.gz"))
    folders = [d for d in sorted(wav_dir.iterdir()) if d.is_dir() and next(d.glob("*/*.wav"), None)]
    if not folders:
        found = (
            f"only archives ({archives[0].name} ... {len(archives)} files)"
            if archives
            else "no extracted split folders"
        )
        raise ImporterError(
            f"{wav_dir}: {found} — fix: extract the speaker archives: "
            f"cd {wav_dir} && for f in *.tar.gz; do tar xzf $f; done ({LAYOUT})"
        )
    texts: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(transcript.read_text(encoding="utf-8").splitlines(), 1):
        utterance, _, words = line.strip().partition(" ")
        if utterance:
            texts[utterance] = (join_cjk(tidy(words)), number)
    used, speakers = set(), set()
    for folder in folders:
        split = collection.split(folder.name)
        for audio in sorted(folder.glob("*/*.wav")):
            speakers.add(audio.parent.name)
            if audio.stem not in texts:
                split.skip("audio without transcript", str(audio))
                continue
            used.add(audio.stem)
            text, number = texts[audio.stem]
            split.add_file(audio, text, "zh", audio.parent.name, f"{transcript}:{number}")
    for utterance, (_, number) in texts.items():
        if utterance not in used:
            collection.unassigned.skip("transcript without audio", f"{transcript}:{number}: {utterance}")
    for archive in archives:
        if archive.name.split(".")[0] not in speakers:
            collection.unassigned.skip("archive not extracted", str(archive))


IMPORTER = Importer("aishell", "Mandarin AISHELL-1 (openslr 33)", collect, layout=LAYOUT)
