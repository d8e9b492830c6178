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
PEFT_FACTORS = (".lora_A.weight", ".lora_B.weight")
ARCHITECTURE_KEYS = ("model_type", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                     "decoder_attention_heads", "vocab_size", "num_mel_bins", "max_source_positions")


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
    for key, what in (("architecture", "architecture"), ("shapes_sha256", "parameter shapes"), ("weights_sha256", "weights")):
        if saved.get(key) != current.get(key):
            detail = f" ({saved.get(key)} vs {current.get(key)})" if key == "architecture" else ""
            return f"the base model's {what} differ from those the adapter was trained on{detail}"
    return None


def peft_config(strategy) -> dict:
    """PEFT's LoraConfig keys only: targets as one regular expression that fullmatches the exact modules."""
    c = strategy.config
    return {"peft_type": "LORA", "task_type": None, "r": c.rank, "lora_alpha": c.alpha, "lora_dropout": c.dropout,
            "target_modules": "^(" + "|".join(n.replace(".", r"\.") for n in strategy.target_names) + ")$",
            "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
            "modules_to_save": None, "use_rslora": False, "use_dora": False,
            "base_model_name_or_path": getattr(strategy.model.config, "name_or_path", None)}


def save_adapter(strategy, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``strategy``'s adapter to ``directory`` atomically; an existing directory needs ``overwrite``."""
    from omegaconf import OmegaConf

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} already holds files — fix: choose another directory or pass overwrite=True")
    if getattr(strategy, "merged", False) or any(getattr(m, "merged", False) for m in strategy.model.modules()):
        raise AdapterFileError("the adapter is merged into the base weights — fix: call strategy.unmerge() before saving")
    tensors = {name: t.detach().cpu().contiguous() for name, t in strategy.adapter_state_dict().items()}
    peft_tensors = {}
    if getattr(strategy, "peft_exports_factors", False):
        peft_tensors = {PEFT_PREFIX + n: tensors.pop(n) for n in list(tensors) if n.endswith(PEFT_FACTORS)}
    config = OmegaConf.to_container(strategy.config, resolve=True) if not isinstance(strategy.config, dict) else strategy.config
    side = {"format_version": FORMAT_VERSION, "strategy": strategy.name, "config": config,
            "fingerprint": strategy.base_fingerprint, "peft_files": bool(peft_tensors),
            "target_modules": getattr(strategy, "target_names", None)}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        (staging / SIDE_JSON).write_text(json.dumps(side, indent=2))
        save_file(tensors, str(staging / SIDE_TENSORS), metadata={"format": "pt"})
        if peft_tensors:
            (staging / PEFT_CONFIG).write_text(json.dumps(peft_config(strategy), indent=2))
            save_file(peft_tensors, str(staging / PEFT_TENSORS), metadata={"format": "pt"})
        old = None
        if directory.exists():  # move the old export aside first: a crash never leaves neither
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(staging, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def read_side_file(directory: str | Path) -> dict | None:
    path = Path(directory) / SIDE_JSON
    if not path.exists():
        return None
    side = json.loads(path.read_text())
    if side.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(f"{path}: format version {side.get('format_version')} is not {FORMAT_VERSION}")
    return side


def read_adapter_tensors(strategy, directory: str | Path, ignore_fingerprint: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an adapter directory under the model's own parameter names, after every check."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterFileError(f"{directory} is not an adapter directory")
    side = read_side_file(directory)
    tensors: dict[str, torch.Tensor] = {}
    if side is None:
        if not getattr(strategy, "imports_plain_peft", False):
            raise AdapterFileError(
                f"{directory} has no {SIDE_JSON}: it holds at most PEFT's LoRA factors, without the "
                f"{strategy.name} tensors (gates, variances) — fix: export the adapter with save_adapter, which writes both")
        if not (directory / PEFT_TENSORS).exists():
            raise AdapterFileError(f"{directory} holds neither {SIDE_JSON} nor {PEFT_TENSORS}")
    else:
        if side["strategy"] != strategy.name:
            raise AdapterFileError(f"{directory} holds a {side['strategy']!r} adapter; this model uses {strategy.name!r} — "
                                   f"fix: build the model with adapter.name={side['strategy']}")
        problem = fingerprint_mismatch(side["fingerprint"], strategy.base_fingerprint)
        if problem and not ignore_fingerprint:
            raise AdapterFileError(f"{directory}: {problem} — fix: load it onto the base model it was trained on, "
                                   "or pass ignore_fingerprint=True if you know the bases are compatible")
        tensors.update(load_file(str(directory / SIDE_TENSORS)))
    if (directory / PEFT_TENSORS).exists():
        for name, tensor in load_file(str(directory / PEFT_TENSORS)).items():
            tensors[name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name] = tensor
    return tensors
