"""Adapter-only files (weight separation): what a device keeps besides the shared base model.

A directory holds, for every strategy, ``lightning_asr_adapter.json`` (strategy, its config, a fingerprint
of the base model, file format version) and ``lightning_asr_adapter.safetensors`` (the tensors PEFT does not
know: GLoRA gates, BLoRA's rho, or every trained weight for full fine-tuning). The LoRA family also writes
PEFT's ``adapter_config.json`` (only keys PEFT knows, ``peft_type: LORA``) and
``adapter_model.safetensors`` (A and B; BLoRA's posterior means), which ``peft.PeftModel.from_pretrained``
loads as a plain LoRA. PEFT drops unknown tensors silently, so a GLoRA or BLoRA directory without the side
file is refused rather than loaded without its gates or variances. safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 1
SIDE_JSON, SIDE_TENSORS = "lightning_asr_adapter.json", "lightning_asr_adapter.safetensors"
PEFT_CONFIG, PEFT_TENSORS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# readable in a mismatch message (Whisper's names); the shapes and weights hashes decide for every family
ARCHITECTURE_KEYS = (
    "model_type",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "vocab_size",
    "num_mel_bins",
    "max_source_positions",
)


class AdapterFileError(ValueError):
    """An adapter directory is incomplete, or was made for another strategy or base model."""


def base_fingerprint(model: nn.Module) -> dict:
    """Architecture, parameter names and shapes, and a hash of every weight of the (unadapted) base."""
    shapes, weights = hashlib.sha256(), hashlib.sha256()
    for name, parameter in model.state_dict().items():
        shapes.update(f"{name}:{tuple(parameter.shape)};".encode())
        weights.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    config = getattr(model, "config", None)
    architecture = {k: getattr(config, k) for k in ARCHITECTURE_KEYS if config is not None and hasattr(config, k)}
    return {"architecture": architecture, "shapes_sha256": shapes.hexdigest(), "weights_sha256": weights.hexdigest()}


def fingerprint_mismatch(saved: dict, current: dict) -> str | None:
    for key, what in (
        ("architecture", "architecture"),
        ("shapes_sha256", "parameter shapes"),
        ("weights_sha256", "weights"),
    ):
        if saved.get(key) != current.get(key):
            detail = f" ({saved.get(key)} vs {current.get(key)})" if key == "architecture" else ""
            return f"the base model's {what} differ from those the adapter was trained on{detail}"
    return None


def save_adapter(strategy, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``strategy``'s adapter to ``directory`` atomically; an existing directory needs ``overwrite``."""
    from omegaconf import OmegaConf

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file, not a directory — fix: choose another directory")
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} already holds files — fix: choose another directory or pass overwrite=True")
    if strategy.is_merged():
        raise AdapterFileError(
            "the adapter is merged into the base weights — fix: call strategy.unmerge() before saving"
        )
    tensors = {name: t.detach().cpu().contiguous() for name, t in strategy.adapter_state_dict().items()}
    peft_tensors = {}
    if strategy.peft_exports_factors:
        peft_tensors = {PEFT_PREFIX + n: tensors.pop(n) for n in list(tensors) if strategy.is_peft_tensor(n)}
    config = (
        OmegaConf.to_container(strategy.config, resolve=True)
        if not isinstance(strategy.config, dict)
        else strategy.config
    )
    side = {
        "format_version": FORMAT_VERSION,
        "strategy": strategy.name,
        "config": config,
        "fingerprint": strategy.base_fingerprint,
        "peft_files": bool(peft_tensors),
        "target_modules": strategy.target_names,
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save_file(tensors, str(staging / SIDE_TENSORS), metadata={"format": "pt"})
        if peft_tensors:
            (staging / PEFT_CONFIG).write_text(json.dumps(strategy.peft_adapter_config(), indent=2))
            save_file(peft_tensors, str(staging / PEFT_TENSORS), metadata={"format": "pt"})
        side["sha256"] = {
            name: file_sha256(staging / name) for name in (SIDE_TENSORS, PEFT_TENSORS) if (staging / name).exists()
        }
        (staging / SIDE_JSON).write_text(json.dumps(side, indent=2))
        old = None
        if directory.exists():  # move the old export aside first: a crash never leaves neither
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        try:
            os.replace(staging, directory)
        except BaseException:
            if old is not None:  # put the previous export back rather than leave none
                os.replace(old, directory)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_side_file(directory: str | Path) -> dict | None:
    """The side file's contents after checking its structure, or None where there is none."""
    path = Path(directory) / SIDE_JSON
    if not path.exists():
        return None
    try:
        side = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # unreadable, not UTF-8, not JSON
        raise AdapterFileError(
            f"{path} is not a readable JSON file ({str(err)[:120]}) — fix: export the adapter again with save_adapter"
        ) from err
    if not isinstance(side, dict):
        raise AdapterFileError(
            f"{path} holds a JSON {type(side).__name__}, not an object — fix: export the adapter again"
        )
    if side.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(
            f"{path}: format version {side.get('format_version')!r} is not {FORMAT_VERSION} — fix: "
            "export the adapter again with this version of lightning_asr"
        )
    kinds = {"strategy": str, "config": dict, "fingerprint": dict}
    wrong = [key for key, kind in kinds.items() if not isinstance(side.get(key), kind)]
    if "sha256" in side and not isinstance(side["sha256"], dict):
        wrong.append("sha256")
    if wrong:
        raise AdapterFileError(
            f"{path} lacks a valid {', '.join(wrong)} — fix: export the adapter again with save_adapter"
        )
    return side


def _load_tensors(path: Path, side: dict | None) -> dict[str, torch.Tensor]:
    """A safetensors file, checked against the checksum ``save_adapter`` recorded (where there is one)."""
    expected = (side or {}).get("sha256", {}).get(path.name)
    if not path.is_file():
        raise AdapterFileError(
            f"{path} is missing — fix: copy every file save_adapter wrote, or export the adapter again"
        )
    if expected is not None and file_sha256(path) != expected:
        raise AdapterFileError(
            f"{path} differs from the file save_adapter wrote (checksum mismatch: truncated or "
            "corrupt) — fix: copy it again or export the adapter again"
        )
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors' own errors: truncated or corrupt header, bad offsets
        raise AdapterFileError(
            f"{path} is not a readable safetensors file ({str(err)[:120]}) — fix: export the adapter again"
        ) from err


def check_fit(strategy, directory: Path | str, side: dict | None, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors or settings that do not fit the model: a load would fail halfway or compute another function."""
    # only what the strategy trains: a tensor named after a frozen base weight would overwrite the base
    own = dict(strategy.trainable_parameters())
    unknown = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    wrong = sorted(
        name
        for name in set(tensors) & set(own)
        if tuple(tensors[name].shape) != tuple(own[name].shape)
        or (own[name].is_floating_point() and not tensors[name].is_floating_point())
    )
    if unknown or missing or wrong:
        shown = "; ".join(
            f"{what} {names[:3]}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            for what, names in (("unknown", unknown), ("missing", missing), ("wrong shape or type", wrong))
            if names
        )
        raise AdapterFileError(
            f"{directory} does not fit this {strategy.name} model: {shown} — fix: build the model "
            f"with the adapter's own settings ('config' in {SIDE_JSON}) on its base model"
        )
    if side is None:
        return
    differ = strategy.settings_mismatch(side["config"])
    targets = side.get("target_modules")
    if targets is not None and strategy.target_names is not None and list(targets) != list(strategy.target_names):
        differ.append("target_modules")
    if differ:
        raise AdapterFileError(
            f"{directory} was trained with other {', '.join(differ)} than this model uses — fix: "
            f"build the model with the adapter's own settings ('config' in {SIDE_JSON})"
        )


def read_adapter_tensors(strategy, directory: str | Path, ignore_fingerprint: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an adapter directory under the model's own parameter names, after every check."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterFileError(f"{directory} is not an adapter directory — fix: pass the directory save_adapter wrote")
    side = read_side_file(directory)
    if side is None:
        if not strategy.imports_plain_peft:
            raise AdapterFileError(
                f"{directory} has no {SIDE_JSON}: it holds at most PEFT's LoRA factors, without the "
                f"{strategy.name} tensors (gates, variances) — fix: export the adapter with save_adapter, which writes both"
            )
        if not (directory / PEFT_TENSORS).exists():
            raise AdapterFileError(
                f"{directory} holds neither {SIDE_JSON} nor {PEFT_TENSORS} — fix: export the adapter "
                "with save_adapter, or copy every file it wrote"
            )
    else:
        if side["strategy"] != strategy.name:
            raise AdapterFileError(
                f"{directory} holds a {side['strategy']!r} adapter; this model uses {strategy.name!r} — "
                f"fix: build the model with adapter.name={side['strategy']}"
            )
        problem = fingerprint_mismatch(side["fingerprint"], strategy.base_fingerprint)
        if problem and not ignore_fingerprint:
            raise AdapterFileError(
                f"{directory}: {problem} — fix: load it onto the base model it was trained on, "
                "or pass ignore_fingerprint=True if you know the bases are compatible"
            )
        if side.get("peft_files") and not (directory / PEFT_TENSORS).exists():
            raise AdapterFileError(
                f"{directory / PEFT_TENSORS} is missing — fix: copy every file save_adapter wrote, "
                "or export the adapter again"
            )
    tensors = read_tensor_files(directory, side)
    check_fit(strategy, directory, side, tensors)
    return tensors


def read_tensor_files(directory: Path, side: dict | None) -> dict[str, torch.Tensor]:
    """The tensors of an adapter directory's safetensors files (checksums checked) under the model's own
    parameter names; whether they fit a model is ``check_fit``'s question."""
    tensors: dict[str, torch.Tensor] = {}
    if side is not None:
        tensors.update(_load_tensors(directory / SIDE_TENSORS, side))
    if (directory / PEFT_TENSORS).exists():
        for name, tensor in _load_tensors(directory / PEFT_TENSORS, side).items():
            tensors[name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name] = tensor
    return tensors
