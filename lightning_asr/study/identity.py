"""What identifies a result: the hashes that find a cached base and a finished cell again, and the versions
that a code change bumps."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lightning_asr.config import TrainConfig, structured, to_dict
from lightning_asr.study.profile import ROOT

# bump when the pretraining code path changes what a cached base would be (2: cached float16 log-mel inputs,
# the base keyed on the manifests pretraining reads; 3: whisper-toy's convolution stem He-initialised)
PRETRAIN_RECIPE_VERSION = 3
# bump when a default or a code path changes what a finished cell would be (4: cached float16 log-mel inputs).
# Metrics added to every cell since (delta W read against W0, BLoRA's signal-to-noise per factor) leave the
# results the same: cells trained before simply lack them. The base's key holds this version too, so a bump
# also retrains the cached base.
RESULTS_VERSION = 4
# bump when a code path changes what an adaptation cell would be but not what a base is (1: adapter
# initialisation drawn per module from the seed and the module's name; cells keep per-utterance cross-entropy
# and their interpolation curve; 2: the λ curve may score the first utterances of each test set only)
CELL_VERSION = 2


def checksum(manifests) -> str:
    """A hash of the manifests' content (their audio paths included)."""
    digest = hashlib.sha256()
    for manifest in sorted(manifests):
        digest.update(Path(manifest).read_bytes())
    return digest.hexdigest()


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def config_identity(config) -> dict:
    """What identifies a run's result: its config without ``output_dir`` and without values equal to the
    schema's defaults (the adapter's: its strategy's defaults), so adding an option (at a default that changes
    nothing) keeps cached bases and finished cells valid. Changing a default's value is a code change: bump
    ``RESULTS_VERSION``."""
    from lightning_asr.adapters import StrategyConfig

    config = to_dict(config) if isinstance(config, DictConfig) else config
    name = config.get("adapter", {}).get("name", StrategyConfig.name)
    defaults = to_dict(structured(TrainConfig, {"adapter": {"name": name}}))
    # the strategy's name always counts, as it did when every strategy shared one adapter schema (full_ft's
    # default): identities computed then stay valid
    defaults["adapter"]["name"] = StrategyConfig.name

    def differing(values: dict, reference: dict) -> dict:
        kept = {}
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(reference.get(key), dict):
                nested = differing(value, reference[key])
                if nested:
                    kept[key] = nested
            elif key not in reference or reference[key] != value:
                kept[key] = value
        return kept

    return {
        "results_version": RESULTS_VERSION,
        **differing({k: v for k, v in config.items() if k != "output_dir"}, defaults),
    }


def base_identity(spec: str) -> Any:
    """What a base evaluation is cached under: a preset or hub id by its name; a local directory also by its
    files' names, sizes and modification times, so a base trained again at the same path is evaluated again
    (a rejected base is kept at one path whatever it reached)."""
    path = Path(spec)
    if not path.is_dir():
        return spec
    return [spec] + [
        [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(path.rglob("*"))
        if f.is_file()
    ]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
