"""Stage 0's model: the base every cell adapts, pretrained here on the source sets or used as it is.

A base pretrained here is cached under ``base.cache_dir`` by a hash of its training config, the content of its
data, the pretraining recipe and the package version. Building an entry holds a lock on it (``.<entry>.lock``),
so two runs on one machine that need the same base pretrain it once: the later one waits, then reuses what the
first saved. The gate (``base.max_dev_error``) decides whether a pretrained base is used; one that misses it is kept beside the
cache entry as ``<name>.rejected`` and stops the run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

import lightning_asr
from lightning_asr.config import ConfigError, TrainConfig, check_keys, structured, to_dict
from lightning_asr.data.datamodule import set_name
from lightning_asr.files import held_lock
from lightning_asr.models import backbone_for, is_preset
from lightning_asr.study.identity import PRETRAIN_RECIPE_VERSION, checksum, config_identity, digest


class BaseGateError(ConfigError):
    """The pretrained base did not reach the profile's bounds on the source dev sets; ``path`` is where it
    was kept."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


class BaseModel:
    """The base of one benchmark profile (its ``base:`` section). ``manifest(set, split)`` locates a set's
    manifest as the profile does; ``out`` is the profile's output folder (pretraining checkpoints go there)."""

    def __init__(self, bench, config_path: Path, manifest: Callable[[str, str], str], out: Path):
        self.bench, self.config_path, self.manifest, self.out = bench, config_path, manifest, out
        self.dev_bounds()  # a bound for a set that is not a source set is an error now, not after pretraining

    @property
    def pretrains(self) -> bool:
        return self.bench.base.pretrain and is_preset(self.bench.base.spec)

    def source_train_manifests(self) -> list[str]:
        return [self.manifest(s, "train") for s in self.bench.source_sets] if self.pretrains else []

    def source_dev_manifests(self) -> list[str]:
        return [self.manifest(s, "dev") for s in self.bench.source_sets]

    def pretraining_manifests(self) -> list[str]:
        """What pretraining reads: the source training sets, and their dev sets for validation and the gate."""
        return self.source_train_manifests() + self.source_dev_manifests()

    def training_config(self) -> dict:
        overrides = OmegaConf.to_container(self.bench.base.train, resolve=True)
        check_keys(overrides, TrainConfig, f"{self.config_path}: base.train")
        return to_dict(
            OmegaConf.merge(
                OmegaConf.structured(TrainConfig),
                overrides,
                {
                    "model": {"spec": self.bench.base.spec},
                    "data": {
                        "train_manifests": self.source_train_manifests(),
                        "val_manifests": self.source_dev_manifests(),
                    },
                },
            )
        )

    def cache_key(self, config: dict) -> str:
        return digest(
            {
                "config": config_identity(config),
                "corpus": checksum(self.pretraining_manifests()),
                "recipe": PRETRAIN_RECIPE_VERSION,
                "version": lightning_asr.__version__,
            }
        )[:12]

    def prepare(self) -> str:
        """The spec the cells adapt: the profile's own spec, or the cached base (pretrained first if missing)."""
        base = self.bench.base
        if not self.pretrains:
            say(f"stage 0: base model {base.spec} (no pretraining)")
            return base.spec
        config = self.training_config()
        key = self.cache_key(config)
        target = Path(base.cache_dir) / f"{base.spec}-{key}"
        waiting = f"stage 0: another run is building the base {target}; waiting for it"
        with held_lock(target.parent / f".{target.name}.lock", lambda: say(waiting)):
            if (target / "config.json").exists():
                return self.reuse(target)
            return self.pretrain(config, key, target)

    def reuse(self, target: Path) -> str:
        record = json.loads((target / "pretraining.json").read_text())
        problem = self.above_bounds(record.get("dev_errors", {}))
        if problem:  # cached under looser bounds than the profile's now
            raise BaseGateError(
                f"the cached base {target} reached {problem} — fix: relax base.max_dev_error, or "
                f"remove {target} and give pretraining more steps (base.train)",
                target,
            )
        say(f"stage 0: reusing pretrained base {target}")
        return str(target)

    def pretrain(self, config: dict, key: str, target: Path) -> str:
        config["output_dir"] = str(self.out / "pretrain" / key)
        config = structured(TrainConfig, config, lenient_adapter=False)
        if self.bench.base.require_vocabulary_coverage:
            self.check_vocabulary_coverage(config.model)
        resume = (Path(config.output_dir) / "checkpoints" / "last.ckpt").exists()
        say(
            f"stage 0: pretraining {self.bench.base.spec} on {', '.join(self.bench.source_sets)} for "
            f"{config.trainer.max_steps} steps{' (resuming)' if resume else ''}"
        )
        started = time.perf_counter()
        from lightning_asr.module import ASRModule
        from lightning_asr.train import train

        result = train(config, resume=resume, force=not resume)
        train_seconds = time.perf_counter() - started
        module = ASRModule.from_checkpoint(result.best_checkpoint)
        dev = self.dev_errors(module, config)
        reached = ", ".join(f"{name} {error:.3f}" for name, error in dev.items())
        too_high = self.above_bounds(dev)
        record = {
            "validation": result.validation,
            "dev_errors": dev,
            "stopped_at_step": result.stopped_at_step,
            "train_seconds": round(train_seconds, 1),
            "config": to_dict(config),
        }
        saved = self.save(module, target.with_name(target.name + ".rejected") if too_high else target, record)
        if too_high:
            raise BaseGateError(
                f"the pretrained base reached {reached} on the source dev sets after {result.stopped_at_step} steps "
                f"({train_seconds:.0f} s): {too_high}. It is kept at {saved} and not used — fix: give pretraining more "
                f"steps or another schedule (base.train in {self.config_path}), or relax base.max_dev_error",
                saved,
            )
        # the cached model directory is the base from now on: its training checkpoints (hundreds of MB with the
        # optimiser's state) would only resume a pretraining that already passed its gate
        shutil.rmtree(Path(config.output_dir) / "checkpoints", ignore_errors=True)
        say(
            f"stage 0: pretrained base saved to {target} after {result.stopped_at_step} steps in {train_seconds:.0f} s; "
            f"dev error {reached}"
        )
        return str(target)

    def check_vocabulary_coverage(self, model_config) -> None:
        """A base pretrained here has trained embeddings (output units) only for what its source data holds;
        adapters that cannot touch embeddings cannot learn target units it never saw. Stop before wasting
        the run."""
        from lightning_asr.data.manifest import read_manifest

        backbone = backbone_for(model_config.spec)

        def units(manifests):
            return backbone.output_units(model_config, [u for m in manifests for u in read_manifest(m)])

        target_set = self.bench.target_set
        source = units(self.source_train_manifests())
        target = units([self.manifest(target_set, "train"), self.manifest(target_set, "test")])
        unseen = sorted(target - source)
        if unseen:
            raise ConfigError(
                f"{len(unseen)} of {len(target)} target tokens never occur in the source training data "
                f"({unseen[:10]}...) — fix: extend the source text pools so "
                "the pretrained base has trained embeddings for every target token"
            )

    def above_bounds(self, dev: dict[str, float]) -> str:
        """The source dev sets whose error is above the gate's bound ("en/dev 0.083 > 0.05; ..."), or ""."""
        return "; ".join(
            f"{name} {dev[name]:.3f} > {bound:g}"
            for name, bound in self.dev_bounds().items()
            if name in dev and not dev[name] <= bound
        )

    def dev_bounds(self) -> dict[str, float]:
        bounds = OmegaConf.to_container(self.bench.base.max_dev_error)
        unknown = sorted(set(bounds) - set(self.bench.source_sets))
        if unknown:
            raise ConfigError(f"{self.config_path}: base.max_dev_error names {unknown}, which are not source_sets")
        return {set_name(self.manifest(s, "dev")): float(bound) for s, bound in bounds.items()}

    def dev_errors(self, module, config) -> dict[str, float]:
        """The pretrained base's primary error on each source dev set (decoded as the cells' evaluation is)."""
        from lightning_asr.train import evaluate

        decode = to_dict(OmegaConf.merge(config.decode, OmegaConf.to_container(self.bench.adapt).get("decode", {})))
        results = evaluate(module, self.source_dev_manifests(), {"decode": decode})
        return {
            key.split("/", 1)[1].rsplit("/", 1)[0]: value
            for key, value in sorted(results.items())
            if key.endswith("/error")
        }

    @staticmethod
    def save(module, target: Path, record: dict) -> Path:
        """The model and processor as a model directory, written next to ``target`` and renamed into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            staging.chmod(0o755)
            module.model.save_pretrained(staging)
            module.processor.save_pretrained(staging)
            (staging / "pretraining.json").write_text(json.dumps(record, indent=2))
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
