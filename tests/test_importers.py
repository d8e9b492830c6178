"""Corpus importers: each reads a small corpus written here in that corpus's own layout (real 16 kHz audio)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from lightning_asr.data.importers import ImporterError, run_import
from lightning_asr.data.importers.hf_parquet import find_tables
from lightning_asr.data.importers.seame import clean_text, speaker_of
from lightning_asr.data.manifest import read_manifest

RATE = 16000
LANGUAGES = {"en", "ko", "zh"}


def tone(path: Path, seconds: float, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), RATE, format=fmt)
    return path


def audio_bytes(seconds: float, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * RATE), dtype=np.float32), RATE, format=fmt)
    return buffer.getvalue()


def lines(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(read_manifest(path, known_languages=LANGUAGES)) == len(records)
    return records


# --- KECS -------------------------------------------------------------------------------------------


@pytest.fixture
def kecs_table(tmp_path):
    root = tmp_path / "kecs"
    tone(root / "audio" / "a.wav", 1.0)
    tone(root / "audio" / "b.flac", 1.5)
    tone(root / "audio" / "d.wav", 0.5)
    tone(root / "audio" / "orphan.wav", 0.5)
    (root / "train.tsv").write_text(
        "path\ttext\tspeaker\n"
        "audio/a.wav\t오늘 meeting 있어요\tspk1\n"
        'audio/b.flac\t"quoted"  email 보냈어요\tspk2\n'
        "audio/missing.wav\t없는 파일\tspk1\n"
        "audio/d.wav\t \tspk3\n",
        encoding="utf-8",
    )
    (root / "test.csv").write_text('path,text\naudio/a.wav,"네, schedule 확인했어요"\n', encoding="utf-8")
    return root


def test_kecs_table_layout_writes_one_manifest_per_table_and_reports_every_skip(kecs_table, tmp_path, capsys):
    out = tmp_path / "out"
    collection = run_import("kecs", kecs_table, out)
    train = lines(out / "train.jsonl")
    assert [(r["text"], r["lang"], r["speaker"]) for r in train] == [
        ("오늘 meeting 있어요", "ko-en", "spk1"),
        ('"quoted" email 보냈어요', "ko-en", "spk2"),
    ]
    assert train[0]["audio_filepath"] == str((kecs_table / "audio" / "a.wav").resolve())  # absolute: outside --out
    assert train[1]["duration"] == pytest.approx(1.5) and "offset" not in train[1]
    assert [r["text"] for r in lines(out / "test.jsonl")] == ["네, schedule 확인했어요"]
    skipped = collection.splits["train"].skipped
    assert skipped["transcript without audio"] == [
        f"{kecs_table / 'train.tsv'}:4: {(kecs_table / 'audio/missing.wav').resolve()}"
    ]
    assert skipped["empty transcript"] == [f"{kecs_table / 'train.tsv'}:5"]
    assert collection.unassigned.skipped == {"audio without transcript": [str(kecs_table / "audio" / "orphan.wav")]}
    report = capsys.readouterr().out.splitlines()
    assert report[0] == f"{out / 'test.jsonl'}: 1 utterances, 0.00 h; skipped 0"
    assert report[1].startswith(f"{out / 'train.jsonl'}: 2 utterances, 0.00 h; skipped 2: ")
    assert "transcript without audio: 1 (" in report[1] and "train.tsv:4" in report[1]
    assert report[-1].startswith(f"{kecs_table} (in no manifest): skipped 1: audio without transcript: 1 (")


def test_kecs_per_file_transcripts(tmp_path):
    root = tmp_path / "kecs"
    tone(root / "s1" / "x.wav", 1.0)
    (root / "s1" / "x.txt").write_text("이건 test 입니다\n", encoding="utf-8")
    tone(root / "s1" / "y.wav", 1.0)
    (root / "s2").mkdir()
    (root / "s2" / "z.txt").write_text("음성 없음", encoding="utf-8")
    collection = run_import("kecs", root, tmp_path / "out", name="dev", lang="ko-en", verbose=False)
    assert [(r["text"], r["lang"]) for r in lines(tmp_path / "out" / "dev.jsonl")] == [("이건 test 입니다", "ko-en")]
    assert collection.splits["dev"].skipped == {
        "audio without transcript": [str(root / "s1" / "y.wav")],
        "transcript without audio": [str(root / "s2" / "z.txt")],
    }


def test_kecs_layout_errors_say_what_was_expected(tmp_path):
    tone(tmp_path / "only" / "a.wav", 0.5)
    with pytest.raises(
        ImporterError, match=r"no transcript table and no NAME.txt .* KECS layouts: \(1\) a transcript table"
    ):
        run_import("kecs", tmp_path / "only", tmp_path / "out")
    (tmp_path / "only" / "t.csv").write_text("file,transcript\na.wav,hi\n")
    with pytest.raises(
        ImporterError, match=r"t.csv:1: header .* lacks path and text — fix: start the table with the header"
    ):
        run_import("kecs", tmp_path / "only", tmp_path / "out")


def test_existing_manifests_are_kept_unless_force_and_strict_writes_nothing(kecs_table, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ImporterError, match=r"--strict: 3 problem\(s\), no manifest written"):
        run_import("kecs", kecs_table, out, strict=True)
    assert not list(out.glob("*.jsonl"))
    run_import("kecs", kecs_table, out, verbose=False)
    (out / "train.jsonl").write_text("kept\n")
    with pytest.raises(ImporterError, match=r"out/test.jsonl already exists — fix: pass --force to overwrite it"):
        run_import("kecs", kecs_table, out)
    assert (out / "train.jsonl").read_text() == "kept\n"
    run_import("kecs", kecs_table, out, force=True, verbose=False)
    assert len(lines(out / "train.jsonl")) == 2 and not list(out.glob("*.partial"))


# --- SEAME ------------------------------------------------------------------------------------------


@pytest.fixture
def seame_root(tmp_path):
    root = tmp_path / "seame"
    conversation, interview = root / "data" / "conversation", root / "data" / "interview"
    tone(conversation / "audio" / "01NC01FBX_0101.flac", 10.0, "FLAC")
    tone(interview / "audio" / "NI01MAX_0101.flac", 4.0, "FLAC")
    tone(interview / "audio" / "NI09FBP_0101.flac", 1.0, "FLAC")  # no transcript
    rows = [
        "01NC01FBX_0101\t0\t2500\tCS\t(ppl) 我 们 去 shopping 吧 <unk>",
        "01NC01FBX_0101\t3000\t5200\tEN\tOK lah [oh] , see you",
        "01NC01FBX_0101\t6000\t7000\tZH\t(ppb) <noise> ppc",
        "01NC01FBX_0101\t7500\t9000\tZH\t你 好 ＡＢＣ <v-noise>",
        "01NC01FBX_0101\t9500\t12000\tZH\t太 长 了",
        "01NC01FBX_0101 no tabs here",
    ]
    (conversation / "transcript" / "phaseII").mkdir(parents=True)
    (conversation / "transcript" / "phaseII" / "01NC01FBX_0101.txt").write_text(
        "\n".join(rows) + "\n", encoding="utf-8"
    )
    (interview / "transcript" / "phaseII").mkdir(parents=True)
    (interview / "transcript" / "phaseII" / "NI01MAX_0101.txt").write_text(
        "NI01MAX_0101\t500\t3500\tZH\t对 啊 #\n", encoding="utf-8"
    )
    (interview / "transcript" / "phaseII" / "NI02FAX_0101.txt").write_text(
        "NI02FAX_0101\t0\t1000\tEN\thello\n", encoding="utf-8"
    )
    return root


def test_seame_text_rules_and_speakers():
    assert clean_text("(ppl) 我 们 去 Shopping 吧 <unk>") == "我们去 shopping 吧"
    assert clean_text("<ppo> ok [lah] , #you# know？<unk can> < unk > <unl>") == "ok lah you know？"
    assert clean_text("ｓｅｅ\tＹｏｕ ppb <v-noise> <noise> é") == "see you e"
    assert clean_text("(ppb) <noise>") == ""
    assert speaker_of("01NC01FBX_0101") == "nc01f" and speaker_of("NI01MAX_0101") == "ni01m"


def test_seame_one_line_per_segment_into_the_long_recording(seame_root, tmp_path):
    out = tmp_path / "out"
    collection = run_import("seame", seame_root, out, verbose=False)
    records = lines(out / "all.jsonl")
    conversation = str((seame_root / "data/conversation/audio/01NC01FBX_0101.flac").resolve())
    assert [
        (r["audio_filepath"] == conversation, r["offset"], r["duration"], r["text"], r["speaker"], r["lang"])
        for r in records
    ] == [
        (True, 0.0, 2.5, "我们去 shopping 吧", "nc01f", "zh-en"),
        (True, 3.0, 2.2, "ok lah oh see you", "nc01f", "zh-en"),
        (True, 7.5, 1.5, "你好 abc", "nc01f", "zh-en"),
        (False, 0.5, 3.0, "对啊", "ni01m", "zh-en"),
    ]
    skipped = collection.splits["all"].skipped
    transcript = seame_root / "data/conversation/transcript/phaseII/01NC01FBX_0101.txt"
    assert skipped["empty after marker removal"] == [f"{transcript}:3"]
    assert skipped["segment past the end of the recording"] == [f"{transcript}:5 (ends 12.00 s, audio 10.00 s)"]
    assert skipped["fewer than 5 tab-separated fields"] == [f"{transcript}:6"]
    assert skipped["transcript without audio"][0].endswith("NI02FAX_0101.txt:1: NI02FAX_0101.flac")
    assert collection.unassigned.skipped == {
        "audio without transcript": [str(seame_root / "data/interview/audio/NI09FBP_0101.flac")]
    }
    run_import("seame", seame_root, out, lang="auto", force=True, verbose=False)
    assert [r["lang"] for r in lines(out / "all.jsonl")] == ["zh-en", "en", "zh-en", "zh"]


def test_seame_dev_sets_split_through_the_cli(seame_root, tmp_path):
    dev = tmp_path / "SEAME-dev-set"
    (dev / "train").mkdir(parents=True)
    (dev / "train" / "wav_file.txt").write_text(
        "./seame/phasei/original/conversation/01nc01fbx_0101/01nc01fbx_0101.wav\n"
    )
    for name, segments in {
        "dev_man": "ni01m-ni01max_0101-00050-00350 ni01max_0101 0.50 3.50\n",
        "dev_sge": "nc01f-01nc01fbx_0101-00300-00520 01nc01fbx_0101 3.01 5.20\n"
        "nc01f-01nc01fbx_0101-05000-05200 01nc01fbx_0101 50.00 52.00\n",
    }.items():
        (dev / name).mkdir()
        (dev / name / "segments").write_text(segments)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_asr.data.import",
            "seame",
            "--root",
            str(seame_root),
            "--out",
            str(out),
            "--dev-sets",
            str(dev),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [r["text"] for r in lines(out / "train.jsonl")] == ["我们去 shopping 吧", "你好 abc"]
    assert [r["offset"] for r in lines(out / "dev_sge.jsonl")] == [3.0]
    assert [r["speaker"] for r in lines(out / "dev_man.jsonl")] == ["ni01m"]
    summary = result.stdout.splitlines()
    assert summary[0].startswith(f"{out / 'train.jsonl'}: 2 utterances") and len(summary) == 4
    assert (
        "not in train/dev_man/dev_sge: 1" in summary[3] and "dev_sge segment without a transcript line: 1" in summary[3]
    )


def test_seame_phase_one_lines_have_no_language_field(seame_root, tmp_path):
    phase_one = seame_root / "data" / "interview" / "transcript" / "phaseI"
    phase_one.mkdir()
    (phase_one / "NI01MAX_0101.txt").write_text(
        "NI01MAX_0101\t500\t1500\t哦 (ppo) okay\nNI01MAX_0101\t1500\t2000\n", encoding="utf-8"
    )
    collection = run_import("seame", seame_root, tmp_path / "out", phase="I", verbose=False)
    assert [(r["offset"], r["duration"], r["text"]) for r in lines(tmp_path / "out" / "all.jsonl")] == [
        (0.5, 1.0, "哦 okay")
    ]
    assert collection.splits["all"].skipped == {
        "fewer than 4 tab-separated fields": [f"{phase_one / 'NI01MAX_0101.txt'}:2"]
    }


def test_seame_layout_error(tmp_path):
    (tmp_path / "seame" / "audio").mkdir(parents=True)
    with pytest.raises(ImporterError, match=r"no data/conversation or data/interview folder — SEAME's layout is DATA/"):
        run_import("seame", tmp_path / "seame", tmp_path / "out")


# --- ASCEND and HiKE (parquet, save_to_disk arrow) --------------------------------------------------


def ascend_table(rows):
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table(
        {
            "id": [r[0] for r in rows],
            "path": [f"waves/{r[0]}.wav" for r in rows],
            "audio": pa.array([{"bytes": r[1], "path": r[2]} for r in rows], type=audio_type),
            "transcription": [r[3] for r in rows],
            "duration": [1.0] * len(rows),
            "language": [r[4] for r in rows],
            "original_speaker_id": [17] * len(rows),
            "session_id": [1] * len(rows),
            "topic": ["persona"] * len(rows),
        }
    )


def test_ascend_parquet_writes_clip_bytes_unchanged(tmp_path, capsys):
    root, out = tmp_path / "ASCEND", tmp_path / "out"
    (root / "data").mkdir(parents=True)
    wav, flac = audio_bytes(1.0), audio_bytes(0.5, "FLAC")
    pq.write_table(
        ascend_table(
            [
                ("ses1_spk17_15.3200_0.7810", wav, "ses1_spk17_15.3200_0.7810.wav", "好的", "zh"),
                ("ses1_spk17_b", flac, "", "okay sure", "en"),
                ("ses1_spk17_c", wav, "c.wav", "这个 deadline 很 急", "mixed"),
                ("ses1_spk17_d", wav, "d.wav", "", "zh"),
            ]
        ),
        root / "data" / "train-00000-of-00001.parquet",
    )
    pq.write_table(
        ascend_table([("ses2_spk3_a", wav, "a.wav", "嗯", "xx")]), root / "data" / "test-00000-of-00001.parquet"
    )
    collection = run_import("ascend", root, out)
    train = lines(out / "train.jsonl")
    assert [(r["audio_filepath"], r["text"], r["lang"], r["speaker"]) for r in train] == [
        ("audio/train/ses1_spk17_15.3200_0.7810.wav", "好的", "zh", "17"),
        ("audio/train/ses1_spk17_b.flac", "okay sure", "en", "17"),
        ("audio/train/ses1_spk17_c.wav", "这个 deadline 很 急", "zh-en", "17"),
    ]
    assert (out / "audio/train/ses1_spk17_15.3200_0.7810.wav").read_bytes() == wav
    assert (out / "audio/train/ses1_spk17_b.flac").read_bytes() == flac
    assert collection.splits["train"].skipped == {
        "empty transcript": [f"{root / 'data/train-00000-of-00001.parquet'} row 3"]
    }
    assert collection.splits["test"].skipped == {
        "unknown language value": [f"{root / 'data/test-00000-of-00001.parquet'} row 0: 'xx'"]
    }
    assert "test.jsonl: 0 utterances, 0.00 h (nothing to write: manifest not written)" in capsys.readouterr().out
    assert not (out / "test.jsonl").exists()
    run_import("ascend", root, out, lang="zh-en", force=True, verbose=False)
    assert {r["lang"] for r in lines(out / "train.jsonl")} == {"zh-en"} and len(lines(out / "test.jsonl")) == 1


def test_parquet_split_names_from_hub_and_converted_file_names(tmp_path):
    table = pa.table({"x": [1]})
    for name in (
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "default/validation/0000.parquet",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp_path / name)
    tables = find_tables(tmp_path)
    assert {split: [p.name for _, p in files] for split, files in tables.items()} == {
        "train": ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"],
        "validation": ["0000.parquet"],
    }


def test_hike_save_to_disk_arrow(tmp_path):
    root, out = tmp_path / "HiKE", tmp_path / "out"
    (root / "test").mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    (root / "test" / "dataset_info.json").write_text("{}")
    (root / "test" / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": "test"})
    )
    table = pa.table(
        {
            "audio": [{"bytes": audio_bytes(1.2), "path": "hike_0001.wav"}],
            "text": ["오늘 presentation 준비했어요"],
            "text_normalized": ["오늘 presentation 준비했어요"],
            "cs_level": ["word"],
            "sample_id": ["hike/0001"],
        }
    )
    with (
        pa.OSFile(str(root / "test" / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    run_import("hike", root, out, verbose=False)
    assert [(r["audio_filepath"], r["text"], r["lang"], r["duration"]) for r in lines(out / "test.jsonl")] == [
        ("audio/test/hike_0001.wav", "오늘 presentation 준비했어요", "ko-en", 1.2)
    ]
    with pytest.raises(
        ImporterError, match=r"no column\(s\) transcription, id, original_speaker_id, language .* --text-column"
    ):
        run_import("ascend", root, tmp_path / "out2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ImporterError, match=r"no parquet or arrow data — A saved Hugging Face dataset's layout is \*.parquet"
    ):
        run_import("hike", tmp_path / "empty", out)


# --- FLEURS, LibriSpeech, Zeroth-Korean, AISHELL-1 --------------------------------------------------


def test_fleurs_language_folder(tmp_path):
    root = tmp_path / "fleurs" / "data" / "ko_kr"
    tone(root / "audio" / "train" / "1.wav", 1.0)
    tone(root / "audio" / "train" / "2.wav", 0.8)
    tone(root / "audio" / "train" / "extra.wav", 0.5)
    tone(root / "audio" / "test" / "9.wav", 0.6)
    row = "{}\t{}\t{}\t{}\twords\t16000\tFEMALE"
    (root / "train.tsv").write_text(
        "\n".join(
            [
                row.format(10, "1.wav", "안녕하세요, 여러분.", "안녕하세요 여러분"),
                row.format(10, "2.wav", "안녕하세요!", "안녕하세요"),
                row.format(11, "3.wav", "없는 소리", "없는 소리"),
                "short\tline",
            ]
        )
        + "\n"
    )
    (root / "test.tsv").write_text(row.format(12, "9.wav", "시험입니다.", "시험입니다") + "\n")
    collection = run_import("fleurs", root, tmp_path / "out", verbose=False)
    assert [(r["text"], r["lang"]) for r in lines(tmp_path / "out" / "train.jsonl")] == [
        ("안녕하세요, 여러분.", "ko"),
        ("안녕하세요!", "ko"),
    ]
    assert [r["text"] for r in lines(tmp_path / "out" / "test.jsonl")] == ["시험입니다."]
    skipped = collection.splits["train"].skipped
    assert sorted(skipped) == ["audio without transcript", "malformed line", "transcript without audio"]
    assert skipped["transcript without audio"][0].startswith(f"{root / 'train.tsv'}:3: ")
    run_import("fleurs", root, tmp_path / "out", text_field="transcription", force=True, verbose=False)
    assert lines(tmp_path / "out" / "train.jsonl")[0]["text"] == "안녕하세요 여러분"
    with pytest.raises(ImporterError, match=r"ROOT holds language folders \(ko_kr\): pass one of them as --root"):
        run_import("fleurs", tmp_path / "fleurs", tmp_path / "out2")
    (root / "dev.tsv").write_text(row.format(13, "5.wav", "x", "x") + "\n")
    (root / "audio" / "dev.tar.gz").write_bytes(b"")
    with pytest.raises(ImporterError, match=r"audio/dev: no such folder — fix: extract it: tar xzf"):
        run_import("fleurs", root, tmp_path / "out3")


def test_librispeech_and_zeroth_trans_txt(tmp_path):
    chapter = tmp_path / "corpus" / "LibriSpeech" / "dev-clean" / "84" / "121123"
    for n, seconds in enumerate((1.0, 0.7, 0.4)):
        tone(chapter / f"84-121123-000{n}.flac", seconds, "FLAC")
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    other = tmp_path / "corpus" / "LibriSpeech" / "test-clean" / "61" / "70968"
    tone(other / "61-70968-0000.flac", 0.5, "FLAC")
    (other / "61-70968.trans.txt").write_text("61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\n")
    collection = run_import("librispeech", tmp_path / "corpus", tmp_path / "ls", split=["dev-clean"], verbose=False)
    assert list(collection.splits) == ["dev-clean"] and not (tmp_path / "ls" / "test-clean.jsonl").exists()
    assert [(r["text"], r["speaker"], r["lang"]) for r in lines(tmp_path / "ls" / "dev-clean.jsonl")] == [
        ("go do you hear", "84", "en"),
        ("but in less than five minutes", "84", "en"),
    ]
    assert collection.splits["dev-clean"].skipped == {
        "audio without transcript": [str(chapter / "84-121123-0002.flac")]
    }

    reader = tmp_path / "zeroth" / "train_data_01" / "003" / "104"
    tone(reader / "104_003_0000.flac", 1.0, "FLAC")
    (reader / "104_003.trans.txt").write_text(
        "104_003_0000 그래서 오늘 회의를 했습니다\n104_003_0001 소리 없음\n", encoding="utf-8"
    )
    tone(tmp_path / "zeroth" / "test_data_01" / "003" / "105" / "105_003_0000.flac", 0.5, "FLAC")
    (tmp_path / "zeroth" / "test_data_01" / "003" / "105" / "105_003.trans.txt").write_text(
        "105_003_0000 시험\n", encoding="utf-8"
    )
    collection = run_import("zeroth", tmp_path / "zeroth", tmp_path / "zo", verbose=False)
    assert [(r["text"], r["speaker"], r["lang"]) for r in lines(tmp_path / "zo" / "train_data_01.jsonl")] == [
        ("그래서 오늘 회의를 했습니다", "104", "ko")
    ]
    assert len(lines(tmp_path / "zo" / "test_data_01.jsonl")) == 1
    assert list(collection.splits["train_data_01"].skipped) == ["transcript without audio"]

    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "dev-clean.tar.gz").write_bytes(b"")
    with pytest.raises(ImporterError, match=r"only archives \(dev-clean.tar.gz\) — fix: extract them first"):
        run_import("librispeech", tmp_path / "archives", tmp_path / "ls2")
    with pytest.raises(ImporterError, match=r"no split folder with \*/\*/\*.trans.txt — Zeroth-Korean's layout is"):
        run_import("zeroth", tmp_path / "corpus" / "LibriSpeech" / "dev-clean" / "84", tmp_path / "zo2")


def test_aishell_extracted_layout(tmp_path):
    base = tmp_path / "aishell" / "data_aishell"
    tone(base / "wav" / "train" / "S0002" / "BAC009S0002W0122.wav", 1.0)
    tone(base / "wav" / "train" / "S0002" / "BAC009S0002W0123.wav", 0.5)
    tone(base / "wav" / "dev" / "S0724" / "BAC009S0724W0121.wav", 0.8)
    (base / "wav" / "S0002.tar.gz").write_bytes(b"")
    (base / "wav" / "S0003.tar.gz").write_bytes(b"")
    (base / "transcript").mkdir()
    (base / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\nBAC009S0724W0121 甚至 出现 交易 几乎 停滞 的 情况\n"
        "BAC009S0916W0001 没有 录音\n",
        encoding="utf-8",
    )
    collection = run_import("aishell", tmp_path / "aishell", tmp_path / "out", verbose=False)
    assert [(r["text"], r["speaker"], r["lang"]) for r in lines(tmp_path / "out" / "train.jsonl")] == [
        ("而对楼市成交抑制作用最大的限购", "S0002", "zh")
    ]
    assert [r["text"] for r in lines(tmp_path / "out" / "dev.jsonl")] == ["甚至出现交易几乎停滞的情况"]
    assert collection.splits["train"].skipped == {
        "audio without transcript": [str(base / "wav/train/S0002/BAC009S0002W0123.wav")]
    }
    assert collection.unassigned.skipped == {
        "transcript without audio": [f"{base / 'transcript/aishell_transcript_v0.8.txt'}:3: BAC009S0916W0001"],
        "archive not extracted": [str(base / "wav" / "S0003.tar.gz")],
    }

    packed = tmp_path / "packed" / "data_aishell"
    (packed / "wav").mkdir(parents=True)
    (packed / "wav" / "S0002.tar.gz").write_bytes(b"")
    (packed / "transcript").mkdir()
    (packed / "transcript" / "aishell_transcript_v0.8.txt").write_text("BAC009S0002W0122 而\n", encoding="utf-8")
    with pytest.raises(ImporterError, match=r"only archives \(S0002.tar.gz .* — fix: extract the speaker archives"):
        run_import("aishell", tmp_path / "packed", tmp_path / "out2")


def test_cli_lists_corpora_and_reports_errors_with_exit_code_2(tmp_path, capsys):
    from importlib import import_module

    cli = import_module("lightning_asr.data.import")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "kecs, seame, ascend, hike, fleurs, librispeech, zeroth, aishell" in capsys.readouterr().out
    assert cli.main(["seame", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: no data/conversation or data/interview folder")
