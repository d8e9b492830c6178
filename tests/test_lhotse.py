"""Lhotse in and out: a CutSet and a RecordingSet + SupervisionSet built with Lhotse's own API over real
audio files become our manifests (offsets, durations, languages kept; nothing dropped silently), and our
manifests become a CutSet that round-trips."""

import json

import numpy as np
import pytest

lhotse = pytest.importorskip("lhotse")

from lightning_asr.audio import write_wav  # noqa: E402
from lightning_asr.data.importers.lhotse_cuts import manifest_to_cutset  # noqa: E402
from lightning_asr.data.manifest import read_manifest  # noqa: E402


def import_main(args):
    import importlib

    return importlib.import_module("lightning_asr.data.import").main([str(a) for a in args])


@pytest.fixture
def lhotse_corpus(tmp_path):
    rng = np.random.RandomState(0)
    recordings = []
    for index, seconds in enumerate((3.0, 2.0)):
        path = tmp_path / "audio" / f"rec{index}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, (0.1 * rng.randn(int(seconds * 16000))).astype(np.float32))
        recordings.append(lhotse.Recording.from_file(path, recording_id=f"rec{index}"))
    supervisions = [
        lhotse.SupervisionSegment(
            "s0", "rec0", start=0.5, duration=1.5, text="hello  world", language="English", speaker="spk1"
        ),
        lhotse.SupervisionSegment("s1", "rec1", start=0.0, duration=2.0, text="회의를 시작해요", language="ko"),
        lhotse.SupervisionSegment("s2", "rec1", start=0.2, duration=1.0, text="", language="ko"),  # empty: skipped
        lhotse.SupervisionSegment("s3", "rec0", start=0.0, duration=1.0, text="bonjour", language="Klingon"),
    ]
    recording_set = lhotse.RecordingSet.from_recordings(recordings)
    supervision_set = lhotse.SupervisionSet.from_segments(supervisions)
    recording_set.to_file(tmp_path / "recordings.jsonl.gz")
    supervision_set.to_file(tmp_path / "supervisions.jsonl.gz")
    cuts = lhotse.CutSet.from_manifests(recordings=recording_set, supervisions=supervision_set)
    padded = next(iter(cuts)).pad(duration=10.0)  # a MixedCut: several tracks, not one span of one file
    lhotse.CutSet.from_cuts([*cuts, padded.with_id("padded")]).to_file(tmp_path / "train_cuts.jsonl.gz")
    return tmp_path


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_cutset_becomes_a_manifest_and_skips_are_named(lhotse_corpus, capsys):
    out = lhotse_corpus / "manifests"
    assert import_main(["lhotse", "--cuts", lhotse_corpus / "train_cuts.jsonl.gz", "--out", out]) == 0
    rows = {row["text"]: row for row in lines(out / "train.jsonl")}
    assert set(rows) == {"hello world", "회의를 시작해요"}
    hello = rows["hello world"]
    assert (hello["offset"], hello["duration"], hello["lang"], hello["speaker"]) == (0.5, 1.5, "en", "spk1")
    assert "offset" not in rows["회의를 시작해요"] and rows["회의를 시작해요"]["lang"] == "ko"  # the whole file
    printed = capsys.readouterr().out
    assert "empty transcript: 1 (s2)" in printed and "language 'Klingon': 1 (s3)" in printed
    assert "not a single-recording cut (fix: import the cuts before padding or mixing): 1 (padded)" in printed
    assert len(read_manifest(out / "train.jsonl")) == 2  # the manifest checks pass: audio, durations, languages
    # --strict: any skip is an error, and nothing is written
    assert (
        import_main(
            ["lhotse", "--cuts", lhotse_corpus / "train_cuts.jsonl.gz", "--out", lhotse_corpus / "s", "--strict"]
        )
        == 2
    )
    assert not (lhotse_corpus / "s" / "train.jsonl").exists()


def test_recordings_and_supervisions_import_the_same(lhotse_corpus):
    out = lhotse_corpus / "from_sets"
    args = [
        "--recordings",
        lhotse_corpus / "recordings.jsonl.gz",
        "--supervisions",
        lhotse_corpus / "supervisions.jsonl.gz",
    ]
    assert import_main(["lhotse", *args, "--out", out, "--split", "dev"]) == 0
    assert {row["text"] for row in lines(out / "dev.jsonl")} == {"hello world", "회의를 시작해요"}


def test_our_manifest_round_trips_through_a_cutset(lhotse_corpus):
    out = lhotse_corpus / "manifests"
    import_main(["lhotse", "--cuts", lhotse_corpus / "train_cuts.jsonl.gz", "--out", out])
    cuts_path = lhotse_corpus / "ours.jsonl.gz"
    assert import_main(["lhotse", "--to-lhotse", out / "train.jsonl", "--out", cuts_path]) == 0
    cuts = list(lhotse.CutSet.from_file(cuts_path))
    assert [(round(c.start, 3), round(c.duration, 3), c.supervisions[0].text) for c in cuts] == [
        (0.5, 1.5, "hello world"),
        (0.0, 2.0, "회의를 시작해요"),
    ]
    assert cuts[0].load_audio().shape[-1] == 24000  # the segment, read through Lhotse
    back = lhotse_corpus / "back"
    assert import_main(["lhotse", "--cuts", cuts_path, "--out", back, "--split", "train"]) == 0
    assert lines(back / "train.jsonl") == lines(out / "train.jsonl")
    assert manifest_to_cutset(out / "train.jsonl", lhotse_corpus / "again.jsonl.gz") == 2
