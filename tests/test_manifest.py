import json

import numpy as np
import pytest
import soundfile as sf

from lightning_asr.data.manifest import ManifestError, read_manifest


@pytest.fixture
def folder(tmp_path):
    sf.write(tmp_path / "good.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(tmp_path / "rate.wav", np.zeros(100, dtype=np.float32), 1000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not really audio")
    return tmp_path


def line(**fields):
    record = {"audio_filepath": "good.wav", "duration": 1.0, "text": "hello", "lang": "en", "speaker": "s1"}
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False)


BAD_LINES = {
    "invalid JSON": ('{"audio_filepath": "good.wav",', "invalid JSON"),
    "missing field": (line(text=None), "missing field(s) text"),
    "missing audio": (line(audio_filepath="nowhere.wav"), "does not exist"),
    "unreadable audio": (line(audio_filepath="corrupt.wav"), "unreadable"),
    "duration mismatch": (line(duration=2.5), "disagrees with the file"),
    "empty transcript": (line(text="   "), "empty transcript"),
    "bad sample rate": (line(audio_filepath="rate.wav", duration=0.1), "cannot be resampled"),
    "unknown language": (line(lang="xx"), "unknown language"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_each_bad_line_names_file_line_problem_and_fix(folder, case):
    bad, message = BAD_LINES[case]
    manifest = folder / "m.jsonl"
    manifest.write_text(line() + "\n" + bad + "\n" + line() + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest, known_languages={"en", "ko", "zh"})
    assert len(caught.value.problems) == 1
    problem = caught.value.problems[0]
    assert problem.startswith(f"{manifest}:2: ")
    assert message in problem
    assert "fix:" in problem


def test_skip_bad_lines_keeps_good_ones_and_says_which(folder, capsys):
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join([line(), line(text=""), line(duration=9), line(text="second")]) + "\n")
    utterances = read_manifest(manifest, skip_bad_lines=True)
    assert [u.text for u in utterances] == ["hello", "second"]
    err = capsys.readouterr().err
    assert "skipped 2 bad line(s)" in err and f"{manifest}:2:" in err and f"{manifest}:3:" in err


def test_paths_are_relative_to_the_manifest_and_segments_are_checked(folder):
    sub = folder / "sub"
    sub.mkdir()
    (sub / "m.jsonl").write_text(
        line(audio_filepath="../good.wav", duration=0.5, offset=0.25)
        + "\n"
        + line(audio_filepath=str(folder / "good.wav"), duration=0.5, offset=0.9)
        + "\n"
    )
    with pytest.raises(ManifestError, match="runs past the end"):
        read_manifest(sub / "m.jsonl")
    (sub / "m.jsonl").write_text(line(audio_filepath="../good.wav", duration=0.5, offset=0.25) + "\n")
    [utterance] = read_manifest(sub / "m.jsonl")
    assert utterance.audio_filepath == str((folder / "good.wav").resolve()) and utterance.offset == 0.25
