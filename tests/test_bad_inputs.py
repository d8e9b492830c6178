"""Property-based sweep of bad inputs: manifest lines, run configs and exported adapter directories.

Each generator mixes bad inputs with good ones. A bad input must be refused with the module's own error
(``ManifestError``, ``ConfigError``, ``AdapterFileError``) that says where the problem is; a good input must
come through unchanged. Any other exception type fails the test. ``TRIED`` counts the bad inputs per
category; the last test prints the totals (``pytest -s``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lightning_asr.adapters.export import (
    PEFT_CONFIG,
    PEFT_TENSORS,
    SIDE_JSON,
    SIDE_TENSORS,
    AdapterFileError,
    file_sha256,
)
from lightning_asr.config import ConfigError, TrainConfig, load_config
from lightning_asr.data.manifest import ManifestError, read_manifest
from lightning_asr.tokenizer import WHISPER_LANGUAGES

TRIED: Counter = Counter()
SWEEP = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


KNOWN = set(WHISPER_LANGUAGES)


def sweep(examples: int) -> settings:
    return settings(SWEEP, max_examples=examples)


# ---- manifests --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """A folder with one good 1 s recording and fixed bad ones; examples add their own corrupt files."""
    folder = tmp_path_factory.mktemp("audio")
    sf.write(
        folder / "good.wav",
        np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype(np.float32),
        16000,
        subtype="PCM_16",
    )
    for rate in (1000, 3999, 192001, 384000):
        sf.write(folder / f"rate{rate}.wav", np.zeros(max(rate // 10, 1), dtype=np.float32), rate)
    (folder / "folder.wav").mkdir()
    (folder / "sub").mkdir()
    return folder


def text_without_newline(**kwargs):
    return st.text(**kwargs).filter(lambda t: "\n" not in t)


good_text = text_without_newline(min_size=1, max_size=20).filter(lambda t: t.strip())
language = st.sampled_from(["en", "ko", "zh", "ko-en", "zh-en", "ja", "de"])


@st.composite
def good_line(draw, folder: Path):
    record = {
        "audio_filepath": draw(
            st.sampled_from(["good.wav", "./good.wav", "sub/../good.wav", str(folder / "good.wav")])
        ),
        "text": draw(good_text),
        "lang": draw(language),
    }
    if draw(st.booleans()):
        record["duration"] = draw(st.floats(0.95, 1.05))
    else:  # a segment inside the recording
        record["offset"] = draw(st.floats(0.0, 0.5))
        record["duration"] = draw(st.floats(0.01, 0.5))
    if draw(st.booleans()):
        record["speaker"] = draw(text_without_newline(max_size=5))
    return record


def wrong_type(kind: str):
    everything = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 5),
        st.floats(allow_nan=False, allow_infinity=False),
        text_without_newline(max_size=6),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.sampled_from("ab"), st.integers(), max_size=2),
    )
    if kind == "number":
        return everything.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)))
    return everything.filter(lambda v: not isinstance(v, str))


def bad_float():
    return st.one_of(
        st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, -1e308]),
        st.floats(max_value=0.0),
        st.floats(min_value=1.1 + 1e-6, allow_nan=False),
    )


@st.composite
def bad_line(draw, folder: Path):
    """(kind, line bytes, what the problem must say): one bad line of a chosen kind, built from a good one."""
    record = draw(good_line(folder))
    record.pop("offset", None)
    record["duration"] = 1.0
    kind = draw(
        st.sampled_from(
            [
                "json",
                "utf8",
                "not object",
                "missing",
                "type",
                "duration",
                "offset",
                "text",
                "lang",
                "no file",
                "directory",
                "corrupt",
                "truncated",
                "rate",
                "past end",
            ]
        )
    )
    if kind == "json":
        full = json.dumps(record, ensure_ascii=False)
        raw = draw(
            st.one_of(
                st.integers(1, len(full) - 1).map(lambda n: full[:n]),
                text_without_newline(min_size=1).filter(lambda t: t.strip() and not _is_json(t)),
            )
        )
        return kind, raw.encode(), r"invalid JSON|not a JSON object"
    if kind == "utf8":
        junk = draw(st.binary(max_size=4)).replace(b"\n", b"")
        # 0x80 is a continuation byte with no lead byte: never valid UTF-8, wherever it stands
        return kind, json.dumps(record).encode()[:-1] + b"\x80" + junk + b"}", "not UTF-8"
    if kind == "not object":
        value = draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5), st.none()))
        return kind, json.dumps(value).encode(), "not a JSON object"
    if kind == "missing":
        gone = draw(st.sets(st.sampled_from(["audio_filepath", "duration", "text", "lang"]), min_size=1))
        return kind, json.dumps({k: v for k, v in record.items() if k not in gone}).encode(), "missing field"
    if kind == "type":
        field, expected = draw(
            st.sampled_from(
                [
                    ("duration", "number"),
                    ("offset", "number"),
                    ("text", "string"),
                    ("lang", "string"),
                    ("audio_filepath", "string"),
                ]
            )
        )
        record[field] = draw(wrong_type(expected))
        if field == "offset" and record["offset"] is None:  # null offset means 0
            record["offset"] = "0"
        patterns = {
            "duration": "'duration'",
            "offset": "'offset'",
            "text": "'text'",
            "lang": "'lang'",
            "audio_filepath": "'audio_filepath'",
        }
        return kind, json.dumps(record).encode(), patterns[field]
    if kind == "duration":
        record["duration"] = draw(bad_float().filter(lambda d: not 0.9 <= d <= 1.1))
        return kind, json.dumps(record).encode(), r"'duration'|out of range|disagrees"
    if kind == "offset":
        record["offset"] = draw(st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(max_value=-1e-9)))
        return kind, json.dumps(record).encode(), r"'offset'|out of range"
    if kind == "text":
        record["text"] = draw(st.text(alphabet=" \t\u3000\u00a0\u2003\x0b\x0c", max_size=4))
        return kind, json.dumps(record, ensure_ascii=draw(st.booleans())).encode(), "empty transcript"
    if kind == "lang":
        record["lang"] = draw(
            st.one_of(
                st.sampled_from(["", "xx", "en-", "-ko", "ko-xx", "EN", "english", "yue"]),
                text_without_newline(max_size=6),
            ).filter(lambda lang: not lang or any(part not in KNOWN for part in lang.split("-")))
        )
        return kind, json.dumps(record).encode(), r"unknown language|empty 'lang'"
    if kind == "no file":
        record["audio_filepath"] = draw(
            st.one_of(
                st.text(alphabet="abcxyz_-. ", min_size=1, max_size=12).filter(
                    lambda p: p.strip() and not (folder / p).exists()
                ),
                st.just("missing/" + "x" * 300),
                st.just("x" * 5000),
                st.just("a\u0000b.wav"),
            )
        )
        return kind, json.dumps(record).encode(), r"does not exist|cannot be looked up|not a file path"
    if kind == "directory":
        record["audio_filepath"] = draw(st.sampled_from(["folder.wav", "sub", ".", str(folder)]))
        return kind, json.dumps(record).encode(), "not a regular file"
    if kind == "corrupt":
        magic = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS", b".snd", b"caff")
        name = write_example_file(folder, draw(st.binary(max_size=200).filter(lambda b: not b.startswith(magic))))
        record["audio_filepath"] = name
        return kind, json.dumps(record).encode(), "unreadable"
    if kind == "truncated":
        whole = (folder / "good.wav").read_bytes()
        cut = draw(st.one_of(st.integers(0, 44), st.integers(45, 44 + 2 * 14000)))
        record["audio_filepath"] = write_example_file(folder, whole[:cut])
        return kind, json.dumps(record).encode(), r"unreadable|holds no samples|disagrees"
    if kind == "rate":
        rate = draw(st.sampled_from([1000, 3999, 192001, 384000]))
        record.update(audio_filepath=f"rate{rate}.wav", duration=0.1)
        return kind, json.dumps(record).encode(), "cannot be resampled"
    # past end: a segment that ends after the recording does
    offset = draw(st.floats(0.0, 1e6))
    record.update(offset=offset, duration=draw(st.floats(max(1.1 - offset, 0.0) + 1e-3, 1e6)))
    return kind, json.dumps(record).encode(), "runs past the end"


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except Exception:
        return False


def write_example_file(folder: Path, data: bytes) -> str:
    handle, name = tempfile.mkstemp(suffix=".wav", dir=folder)
    os.write(handle, data)
    os.close(handle)
    return Path(name).name


@st.composite
def manifest(draw, folder: Path):
    """Lines of a manifest as (kind, bytes, pattern); kind "good" carries the record, "blank" nothing."""
    entries = draw(
        st.lists(
            st.one_of(
                good_line(folder).map(lambda r: ("good", r, None)),
                bad_line(folder),
                st.sampled_from(["", "   ", "\t", "\r"]).map(lambda b: ("blank", b.encode(), None)),
            ),
            min_size=1,
            max_size=8,
        )
    )
    if not any(kind not in ("good", "blank") for kind, _, _ in entries):
        entries.append(draw(bad_line(folder)))
    return entries


@sweep(300)
@given(data=st.data())
def test_bad_manifest_lines_are_reported_with_their_line_numbers(audio, data):
    entries = data.draw(manifest(audio))
    path = Path(tempfile.mkdtemp(dir=audio)) / "m.jsonl"
    # the manifest sits in a fresh folder: relative audio paths resolve against the audio folder by a link
    os.symlink(audio, path.parent / "audio")
    lines = []
    for kind, content, _ in entries:
        if kind == "good":
            record = dict(content)
            if not Path(record["audio_filepath"]).is_absolute():
                record["audio_filepath"] = "audio/" + record["audio_filepath"]
            lines.append(json.dumps(record, ensure_ascii=False).encode())
        else:
            lines.append(_relocate(content, kind))
    path.write_bytes(b"\n".join(lines) + b"\n")
    bad = [
        (number, kind, pattern) for number, (kind, _, pattern) in enumerate(entries, 1) if kind not in ("good", "blank")
    ]
    good = [(number, content) for number, (kind, content, _) in enumerate(entries, 1) if kind == "good"]
    TRIED["manifest lines"] += len(bad)

    with pytest.raises(ManifestError) as caught:
        read_manifest(path, known_languages=KNOWN)
    problems = caught.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{number}" for number, _, _ in bad], problems
    for problem, (_number, kind, pattern) in zip(problems, bad):
        assert " — fix: " in problem, problem
        assert _matches(pattern, problem), (kind, problem)

    if not good:
        with pytest.raises(ManifestError, match="no valid utterance"):
            read_manifest(path, skip_bad_lines=True, known_languages=KNOWN)
        return
    kept = read_manifest(path, skip_bad_lines=True, known_languages=KNOWN)
    assert [(u.line, u.text, u.lang, u.duration, u.offset, u.audio_filepath, u.speaker) for u in kept] == [
        (
            number,
            r["text"].strip(),
            r["lang"],
            r["duration"],
            r.get("offset", 0.0),
            str((audio / "good.wav").resolve()),
            str(r.get("speaker", "")),
        )
        for number, r in good
    ]


def _relocate(content: bytes, kind: str) -> bytes:
    """Bad lines name files relative to the audio folder; the manifest reaches it through ``audio/``."""
    if kind in ("blank", "json", "utf8", "not object", "missing"):
        return content
    record = json.loads(content)
    name = record.get("audio_filepath")
    if isinstance(name, str) and name and not Path(name).is_absolute() and "\0" not in name:
        record["audio_filepath"] = "audio/" + name
    return json.dumps(record, ensure_ascii=False).encode()


def _matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


def test_manifest_that_is_a_folder_or_not_utf8_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="not a file"):
        read_manifest(tmp_path)
    (tmp_path / "m.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(ManifestError, match=re.escape(f"{tmp_path / 'm.jsonl'}:1: not UTF-8")):
        read_manifest(tmp_path / "m.jsonl")
    TRIED["manifest lines"] += 2


# ---- configs ----------------------------------------------------------------------------------------------------


def schema_fields(schema=TrainConfig, prefix=""):
    """Every leaf field as (dotted key, type annotation, default) and every section as its dotted prefix."""
    from lightning_asr.adapters import StrategyConfig, strategy_class

    leaves, sections = [], [prefix]
    for f in fields(schema):
        factory = f.default_factory
        if schema is TrainConfig and f.name == "adapter":  # typed by its strategy: the default one's keys
            factory = strategy_class(StrategyConfig.name).config_class
        if factory is not MISSING and is_dataclass(factory):
            sub_leaves, sub_sections = schema_fields(factory, f"{prefix}{f.name}.")
            leaves += sub_leaves
            sections += sub_sections
        else:
            default = f.default if f.default is not MISSING else factory()
            leaves.append((prefix + f.name, str(f.type), default))
    return leaves, sections


LEAVES, SECTIONS = schema_fields()
REAL_KEYS = {key for key, _, _ in LEAVES} | {s.rstrip(".") for s in SECTIONS if s}
identifier = st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True)
CONVERTIBLE = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "none", "nan", "inf", "infinity"}
word = st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(lambda w: w not in CONVERTIBLE)


def wrong_value(annotation: str):
    """A value OmegaConf cannot convert to a field of this type (None only where it is not Optional)."""
    composite = st.one_of(
        st.lists(st.integers(0, 3), min_size=1, max_size=2),
        st.dictionaries(word, st.integers(), min_size=1, max_size=2),
    )
    if annotation == "Any":
        return st.nothing()
    if annotation.startswith("list"):
        return st.one_of(st.dictionaries(word, st.integers(), min_size=1, max_size=2), word)
    optional = annotation.startswith("Optional") or annotation.endswith("| None")
    base = annotation.removeprefix("Optional[").rstrip("]").removesuffix(" | None")
    if base == "str":  # OmegaConf turns any scalar into a string
        return composite
    choices = [composite, word]
    if base == "int":
        choices.append(st.sampled_from([1.5, -0.25, 2.75]))
    if base == "bool":  # OmegaConf reads any integer as a bool
        choices.append(st.sampled_from([1.5, -0.5]))
    if not optional:
        choices.append(st.none())
    return st.one_of(*choices)


def typo(key: str):
    """One edit of a key's last part: a deletion, insertion, substitution or swap that is not a real key."""
    head, _, last = key.rpartition(".")
    prefix = head + "." if head else ""

    @st.composite
    def edit(draw):
        i = draw(st.integers(0, len(last) - 1))
        letter = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
        how = draw(st.sampled_from(["delete", "insert", "replace", "swap"]))
        if how == "delete" and len(last) > 1:
            new = last[:i] + last[i + 1 :]
        elif how == "swap" and i + 1 < len(last):
            new = last[:i] + last[i + 1] + last[i] + last[i + 2 :]
        elif how == "replace":
            new = last[:i] + letter + last[i + 1 :]
        else:
            new = last[:i] + letter + last[i:]
        return prefix + new

    return edit().filter(
        lambda k: (
            k not in REAL_KEYS
            and k.rpartition(".")[2] not in {f.rpartition(".")[2] for f in REAL_KEYS if f.startswith(prefix)}
        )
    )


@st.composite
def bad_entry(draw):
    """(dotted key, value, kind) of one bad setting."""
    kind = draw(st.sampled_from(["unknown", "typo", "type", "section", "interpolation"]))
    if kind == "unknown":
        section = draw(st.sampled_from(SECTIONS))
        key = section + draw(identifier.filter(lambda k: section + k not in REAL_KEYS))
        return key, draw(st.one_of(st.integers(), word, st.booleans())), kind
    if kind == "typo":
        key = draw(st.sampled_from([k for k, _, _ in LEAVES if len(k.rpartition(".")[2]) >= 2]))
        return draw(typo(key)), 1, kind
    if kind == "section":
        section = draw(st.sampled_from([s.rstrip(".") for s in SECTIONS if s]))
        return section, draw(st.one_of(st.integers(), word, st.lists(st.integers(), max_size=2))), kind
    if kind == "interpolation":
        key, _, _ = draw(st.sampled_from([leaf for leaf in LEAVES if leaf[1] != "Any"]))
        return key, "${" + draw(identifier.filter(lambda k: k not in REAL_KEYS)) + "}", kind
    key, annotation, _ = draw(st.sampled_from([leaf for leaf in LEAVES if leaf[1] != "Any"]))
    return key, draw(wrong_value(annotation)), kind


good_entry = st.sampled_from(LEAVES).map(lambda leaf: (leaf[0], leaf[2], "good"))


def nest(entries) -> dict:
    """Dotted entries as the nested mapping a YAML file holds (the entries are ``distinct``)."""
    tree: dict = {}
    for key, value, _ in entries:
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def dotlist(entries) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value, _ in entries]


def distinct(entries) -> list:
    """The entries without any whose key repeats or nests inside another's (one source sets a key once)."""
    kept = []
    for entry in entries:
        keys = [key for key, _, _ in kept]
        if not any(entry[0] == k or entry[0].startswith(k + ".") or k.startswith(entry[0] + ".") for k in keys):
            kept.append(entry)
    return kept


def expected_errors(path: Path, file_entries, line_entries) -> list[tuple[str, list[str]]]:
    """Where the first error may come from, with the keys it may name. The file is checked and merged before
    the command line; interpolations are resolved after both (in schema order), and a command-line value
    replaces a broken interpolation of the file."""
    for origin, entries in ((str(path), file_entries), ("command line", line_entries)):
        keys = [key for key, _, kind in entries if kind not in ("good", "interpolation")]
        if keys:
            return [(origin, keys)]
    overridden = {key for key, _, _ in line_entries}
    candidates = [
        (str(path), [k for k, _, kind in file_entries if kind == "interpolation" and k not in overridden]),
        ("command line", [k for k, _, kind in line_entries if kind == "interpolation"]),
    ]
    return [(origin, keys) for origin, keys in candidates if keys]


@sweep(150)
@given(
    file_entries=st.lists(st.one_of(bad_entry(), good_entry), max_size=4),
    line_entries=st.lists(st.one_of(bad_entry(), good_entry), max_size=4),
)
def test_bad_config_keys_and_values_name_the_key_and_where_it_came_from(tmp_path_factory, file_entries, line_entries):
    file_entries, line_entries = distinct(file_entries), distinct(line_entries)
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    path.write_text(yaml.safe_dump(nest(file_entries)))
    TRIED["config settings"] += sum(kind != "good" for _, _, kind in file_entries + line_entries)
    expected = expected_errors(path, file_entries, line_entries)
    if not expected:
        config = load_config(path, dotlist(line_entries))
        overridden = {key for key, _, _ in line_entries}
        for key, value, _kind in [e for e in file_entries if e[0] not in overridden] + line_entries:
            assert _get(config, key) == value, key
        return
    with pytest.raises(ConfigError) as caught:
        load_config(path, dotlist(line_entries))
    message = str(caught.value)
    assert any(
        message.startswith(f"{origin}: ") and any(re.search(rf"'{re.escape(key)}(\.[^']*)?'", message) for key in keys)
        for origin, keys in expected
    ), (expected, message)
    if "unknown config key" in message:
        assert "did you mean" in message or "valid keys here" in message, message


def _get(config, key):
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


# fragments that make overrides and YAML text near-valid (arbitrary text rarely even holds a "=" or a ":")
OVERRIDE_PARTS = [
    "seed",
    "trainer",
    "max_steps",
    "data",
    "train_manifests",
    "spec_augment",
    "enabled",
    "optim",
    "lr",
    "betas",
    ".",
    "..",
    "=",
    "==",
    "${",
    "}",
    "${seed}",
    "[",
    "]",
    "{",
    "}",
    ":",
    ",",
    "'",
    '"',
    "null",
    "1",
    "-1",
    "1.5",
    "1e400",
    "abc",
    " ",
    "#",
    "\\",
    "!!",
    "&a",
    "*a",
    "%",
    "+",
    "~",
    "true",
]
YAML_PARTS = [
    "trainer:",
    "data:",
    "seed:",
    "max_steps:",
    "spec_augment:",
    "enabled:",
    "\n",
    "\n  ",
    "\n    ",
    "  ",
    " ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "${",
    "${seed}",
    "}",
    ":",
    ",",
    "'",
    '"',
    "5",
    "1.5",
    "abc",
    "null",
    "~",
    "&a ",
    "*a",
    "!!binary ",
    "!!python/object:os.system ",
    "? ",
    "---",
    "...",
    "\t",
    "#",
    "%YAML 1.2",
    "|",
    ">",
]


def spliced(parts, max_size):
    return st.one_of(st.lists(st.sampled_from(parts), max_size=max_size).map("".join), st.text(max_size=max_size))


@sweep(150)
@given(overrides=st.lists(spliced(OVERRIDE_PARTS, 8), max_size=3), text=spliced(YAML_PARTS, 12))
def test_arbitrary_override_strings_and_yaml_text_load_or_raise_config_error(tmp_path_factory, overrides, text):
    path = tmp_path_factory.mktemp("config") / "any.yaml"
    path.write_text(text, encoding="utf-8")
    TRIED["config texts"] += 1 + len(overrides)
    for source in ((path, None), (None, overrides)):
        try:
            load_config(*source)
        except ConfigError as err:
            assert str(err).startswith((f"{path}: ", "command line: ")), err


# ---- adapter directories ----------------------------------------------------------------------------------------

ADAPTERS = {
    "lora": ["adapter.name=lora", "adapter.rank=4", "adapter.alpha=8"],
    "glora": ["adapter.name=glora", "adapter.type=4", "adapter.rank=4", "adapter.alpha=8"],
    "blora": ["adapter.name=blora", "adapter.rank=4", "adapter.alpha=8"],
}


def build_module(overrides: list[str]):
    from lightning_asr.config import to_dict
    from lightning_asr.module import ASRModule

    return ASRModule(to_dict(load_config(overrides=overrides)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Per strategy: a pristine export of a trained-looking adapter, its tensors, and a second module to load into."""
    root = tmp_path_factory.mktemp("adapters")
    made = {}
    for name, overrides in ADAPTERS.items():
        torch.manual_seed(0)
        saver = build_module(overrides)
        with torch.no_grad():
            for _, parameter in saver.strategy.trainable_parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        saver.strategy.save_adapter(root / name)
        made[name] = {
            "directory": root / name,
            "expected": saver.strategy.adapter_state_dict(),
            "loader": build_module(overrides),
        }
    made["other base"] = build_module(ADAPTERS["lora"] + ["model.init_seed=1"]).strategy.base_fingerprint
    return made


MUTATIONS = [
    "delete",
    "truncate",
    "flip bytes",
    "garble json",
    "json not object",
    "json not utf8",
    "format version",
    "strategy name",
    "drop side key",
    "wrong shape",
    "wrong dtype",
    "missing tensor",
    "extra tensor",
    "other base",
    "other alpha",
    "peft config garbled",
    "side file only",
    "empty file",
]


def rewrite_tensors(directory: Path, name: str, change) -> None:
    """Rewrite a tensor file consistently: the side file's checksum follows, so only the content check can refuse it."""
    tensors = load_file(str(directory / name))
    tensors = change(tensors)
    save_file(tensors, str(directory / name), metadata={"format": "pt"})
    side = json.loads((directory / SIDE_JSON).read_text())
    if isinstance(side.get("sha256"), dict):  # an earlier mutation may have broken the checksums already
        side["sha256"][name] = file_sha256(directory / name)
        (directory / SIDE_JSON).write_text(json.dumps(side))


def readable_side(directory: Path) -> bool:
    """Whether an earlier mutation left a side file that later ones can still edit."""
    try:
        side = json.loads((directory / SIDE_JSON).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(side, dict) and isinstance(side.get("config"), dict)


def edit_side(directory: Path, change) -> None:
    side = json.loads((directory / SIDE_JSON).read_text())
    change(side)
    (directory / SIDE_JSON).write_text(json.dumps(side))


@st.composite
def mutation(draw, directory: Path, other_base: dict):
    """Apply one mutation to ``directory``; return its description."""
    kind = draw(st.sampled_from(MUTATIONS))
    files = sorted(p.name for p in directory.iterdir())
    tensor_files = [f for f in files if f.endswith(".safetensors")]
    side_edits = (
        "garble json",
        "json not object",
        "json not utf8",
        "format version",
        "strategy name",
        "drop side key",
        "other base",
        "other alpha",
        "wrong shape",
        "wrong dtype",
        "missing tensor",
        "extra tensor",
    )
    if (kind in side_edits and not readable_side(directory)) or (kind not in ("delete",) and not tensor_files):
        kind = "delete"
    if kind == "delete":
        victim = draw(st.sampled_from(files))
        (directory / victim).unlink()
        return f"delete {victim}"
    if kind in ("truncate", "flip bytes", "empty file"):
        victim = draw(st.sampled_from(tensor_files))
        data = bytearray((directory / victim).read_bytes())
        if not data:
            (directory / victim).unlink()
            return f"delete {victim}"
        if kind == "truncate":
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif kind == "empty file":
            data = bytearray()
        else:
            for _ in range(draw(st.integers(1, 4))):
                at = draw(st.integers(0, len(data) - 1))
                data[at] = (data[at] + draw(st.integers(1, 255))) % 256
        (directory / victim).write_bytes(bytes(data))
        return f"{kind} {victim}"
    if kind == "garble json":
        text = (directory / SIDE_JSON).read_text()
        cut = draw(st.integers(0, len(text) - 1))
        (directory / SIDE_JSON).write_text(text[:cut] + draw(st.text(max_size=5)))
        return kind
    if kind == "json not object":
        (directory / SIDE_JSON).write_text(
            json.dumps(
                draw(st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.none(), st.text(max_size=4)))
            )
        )
        return kind
    if kind == "json not utf8":
        (directory / SIDE_JSON).write_bytes(b"\xff\xfe" + (directory / SIDE_JSON).read_bytes())
        return kind
    if kind == "format version":
        version = draw(st.one_of(st.integers().filter(lambda v: v != 1), st.text(max_size=3), st.none(), st.just(1.5)))
        edit_side(directory, lambda side: side.update(format_version=version))
        return kind
    if kind == "strategy name":
        name = draw(st.one_of(st.sampled_from(["lora", "glora", "blora", "full_ft", "frozen"]), st.text(max_size=6)))
        before = json.loads((directory / SIDE_JSON).read_text()).get("strategy")
        if name == before:
            name += "x"
        edit_side(directory, lambda side: side.update(strategy=name))
        return kind
    if kind == "drop side key":
        key = draw(st.sampled_from(["strategy", "config", "fingerprint", "sha256"]))
        # without its checksums a side file is an older export's, which loads: give it a wrong type instead
        value = draw(
            st.one_of(
                st.just("drop") if key != "sha256" else st.nothing(), st.integers(), st.lists(st.integers(), max_size=1)
            )
        )
        edit_side(directory, lambda side: side.pop(key, None) if value == "drop" else side.update({key: value}))
        return f"{kind} {key}={value}"
    if kind == "other base":
        edit_side(directory, lambda side: side.update(fingerprint=other_base))
        return kind
    if kind == "other alpha":
        edit_side(directory, lambda side: side["config"].update(alpha=side["config"]["alpha"] * 2))
        return kind
    if kind == "peft config garbled":
        if PEFT_CONFIG in files:
            (directory / PEFT_CONFIG).write_text("{not json")
        return kind
    if kind == "side file only":
        for name in (PEFT_CONFIG, PEFT_TENSORS):
            if name in files:
                (directory / name).unlink()
        return kind
    victim = draw(st.sampled_from(tensor_files))
    try:
        names = sorted(load_file(str(directory / victim)))
    except Exception:  # an earlier mutation broke the file: deleting it is the mutation left
        (directory / victim).unlink()
        return f"delete {victim}"
    if not names:
        return "nothing to change"
    target = draw(st.sampled_from(names))
    if kind == "wrong shape":
        extra_dim = draw(st.booleans())

        def change(tensors):
            shape = tensors[target].shape
            tensors[target] = torch.zeros(*shape, 2) if extra_dim else torch.zeros(shape.numel() + 1)
            return tensors
    elif kind == "wrong dtype":
        dtype = draw(st.sampled_from([torch.int64, torch.int8, torch.bool]))

        def change(tensors):
            tensors[target] = tensors[target].to(dtype)
            return tensors
    elif kind == "missing tensor":

        def change(tensors):
            tensors.pop(target)
            return tensors
    else:
        extra = draw(st.sampled_from(["model.decoder.no_such.weight", target + ".extra", "lora_Z"]))

        def change(tensors):
            tensors[extra] = torch.zeros(2)
            return tensors

    rewrite_tensors(directory, victim, change)
    return f"{kind} {victim}:{target}"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_mutated_adapter_directories_are_refused_with_adapter_file_error(exports, name, tmp_path_factory):
    pristine, expected, loader = exports[name]["directory"], exports[name]["expected"], exports[name]["loader"]
    work = tmp_path_factory.mktemp(f"mutated-{name}")
    outcomes = Counter()

    @sweep(60)
    @given(data=st.data())
    def mutate_and_load(data):
        directory = Path(tempfile.mkdtemp(dir=work)) / "adapter"
        shutil.copytree(pristine, directory)
        done = [data.draw(mutation(directory, exports["other base"])) for _ in range(data.draw(st.integers(1, 2)))]
        try:
            loader.strategy.load_adapter(directory)
        except AdapterFileError as err:
            assert str(directory) in str(err), (done, err)
            assert " — fix: " in str(err), (done, err)
            outcomes["refused"] += 1
            TRIED["adapter directories"] += 1
        else:
            # a load goes through only where every file it reads is the one save_adapter wrote (PEFT's own
            # adapter_config.json is not read; a LoRA without its side files is a plain PEFT directory)
            if (directory / SIDE_JSON).exists():
                assert json.loads((directory / SIDE_JSON).read_text()) == json.loads(
                    (pristine / SIDE_JSON).read_text()
                ), done
            # without the side JSON the directory is read as PEFT wrote it: the side tensors are not read
            files = (SIDE_TENSORS, PEFT_TENSORS) if (directory / SIDE_JSON).exists() else (PEFT_TENSORS,)
            read = [f for f in files if (directory / f).exists()]
            assert all((directory / f).read_bytes() == (pristine / f).read_bytes() for f in read), done
            loaded = loader.strategy.adapter_state_dict()
            assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected), done
            outcomes["loaded unchanged"] += 1
            TRIED["adapter directories changed harmlessly (loaded exactly)"] += 1

    mutate_and_load()
    assert outcomes["refused"] > 0, outcomes
    # the loader still holds a consistent adapter: the pristine export loads exactly
    loader.strategy.load_adapter(pristine)
    loaded = loader.strategy.adapter_state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_lora_directory_without_side_file_loads_as_plain_peft_but_not_without_its_factors(exports, tmp_path):
    directory = tmp_path / "adapter"
    shutil.copytree(exports["lora"]["directory"], directory)
    (directory / SIDE_JSON).unlink()
    (directory / SIDE_TENSORS).unlink()
    exports["lora"]["loader"].strategy.load_adapter(directory)
    (directory / PEFT_TENSORS).unlink()
    with pytest.raises(AdapterFileError, match="holds neither"):
        exports["lora"]["loader"].strategy.load_adapter(directory)
    TRIED["adapter directories"] += 1


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("name", ["lora", "blora"])
def test_saving_over_an_export_needs_overwrite_and_an_interrupted_save_keeps_the_old_one(
    exports, name, tmp_path, monkeypatch
):
    import lightning_asr.adapters.export as export

    strategy = exports[name]["loader"].strategy
    strategy.load_adapter(exports[name]["directory"])
    target = tmp_path / "adapter"
    shutil.copytree(exports[name]["directory"], target)
    before = snapshot(target)
    with pytest.raises(FileExistsError, match="already holds files"):
        strategy.save_adapter(target)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        strategy.save_adapter(tmp_path / "a-file")
    assert snapshot(target) == before

    real_save, real_replace = export.save_file, os.replace

    def interrupt(fail_at: str, directory: Path) -> None:
        """Make the next save into ``directory`` fail at ``fail_at``."""
        calls = Counter()

        def failing_save(*args, **kwargs):
            calls["save"] += 1
            if calls["save"] == {"first tensor file": 1, "second tensor file": 2}.get(fail_at):
                raise OSError("disk full")
            return real_save(*args, **kwargs)

        def failing_replace(source, destination, *args, **kwargs):
            staged = Path(source).name.startswith(f".{directory.name}.") and not Path(source).name.endswith(".old")
            if fail_at == "final rename" and staged and Path(destination) == directory:
                raise OSError("power cut")
            return real_replace(source, destination, *args, **kwargs)

        monkeypatch.setattr(export, "save_file", failing_save)
        monkeypatch.setattr(export.os, "replace", failing_replace)

    for fail_at in ("first tensor file", "second tensor file", "final rename"):
        for directory in (target, tmp_path / "new"):
            interrupt(fail_at, directory)
            with pytest.raises(OSError, match="disk full|power cut"):
                strategy.save_adapter(directory, overwrite=True)
            leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
            assert leftovers == [], (fail_at, leftovers)
            TRIED["interrupted saves"] += 1
        assert snapshot(target) == before, fail_at
        assert not (tmp_path / "new").exists(), fail_at
    monkeypatch.undo()
    strategy.load_adapter(target)
    strategy.save_adapter(target, overwrite=True)
    strategy.load_adapter(target)


# ---- totals -----------------------------------------------------------------------------------------------------


def test_report_how_many_bad_inputs_were_tried():
    if not TRIED:
        pytest.skip("counts come from the sweeps above; run the whole file")
    print(
        "\nbad inputs tried:",
        ", ".join(f"{k}: {v}" for k, v in sorted(TRIED.items())),
        f"(total {sum(TRIED.values())})",
    )
    assert TRIED["manifest lines"] >= 100 and TRIED["config settings"] >= 100 and TRIED["adapter directories"] >= 100, (
        TRIED
    )


def test_a_bad_strategy_name_in_a_file_is_refused_even_where_the_command_line_replaces_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("adapter:\n  name: [0]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: 'adapter.name' is \[0\]"):
        load_config(path, ['adapter.name="full_ft"'])


def test_an_unknown_adapter_key_in_a_file_is_reported_before_a_bad_strategy_name_on_the_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("adapter:\n  _: 0\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unknown config key 'adapter._'"):
        load_config(path, ["adapter.name=[0]"])
    path.write_text("adapter:\n  modules_to_save: []\n")
    with pytest.raises(ConfigError, match=r"^command line: 'adapter.name' is \[0\]"):
        load_config(path, ["adapter.name=[0]"])
