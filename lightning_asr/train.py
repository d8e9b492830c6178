"""The training and evaluation path in one place: config -> data -> ``ASRModule`` -> ``Trainer``."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from lightning_asr.config import ConfigError, TrainConfig, structured, to_dict
from lightning_asr.data.datamodule import ManifestDataModule
from lightning_asr.data.resumable import ResumableDataModule, batch_seed
from lightning_asr.module import ASRModule


class OutputExistsError(FileExistsError):
    """A finished or interrupted run is in the output folder; nothing is overwritten without being asked."""


class CheckpointError(OutputExistsError):
    """The run in the output folder cannot be resumed: its last checkpoint is incomplete or not a training checkpoint."""


def check_resumable(last: Path) -> None:
    """Refuse a ``last.ckpt`` that would fail deep inside Lightning: truncated (a copy cut short, a full disk),
    not a checkpoint at all, or one without the training state. Tensors are memory-mapped, not read."""
    try:
        checkpoint = torch.load(str(last), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch's zip reader and unpickler errors
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{last} is truncated or not a checkpoint ({first_line[:160]}) — fix: pass --force "
            f"to start the run over, or put an intact checkpoint of this run in its place"
        ) from err
    missing = [key for key in ("state_dict", "loops", "optimizer_states", "global_step") if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{last} is not a training checkpoint (no {', '.join(missing)}) — fix: pass --force to "
            "start the run over, or put an intact checkpoint of this run in its place"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written next to their final name and renamed into place, so a run killed while saving
    leaves the previous checkpoint, never a truncated one (Lightning's own save stages the file in the
    system's temporary folder, from which the final move is a copy when that is another file system)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)


@dataclass
class TrainResult:
    module: ASRModule
    best_checkpoint: str
    last_checkpoint: str
    validation: dict[str, float]
    stopped_at_step: int = 0  # the step training ended at: trainer.max_steps, or sooner by early stopping


def make_datamodule(config, module: ASRModule, resumable: bool = False) -> ManifestDataModule:
    """The data of a run for ``module``'s backbone and processor; ``resumable`` for training
    (``data/resumable.py``: exact mid-epoch resumption)."""
    return (ResumableDataModule if resumable else ManifestDataModule)(
        module.processor, module.backbone, config.data, config.seed
    )


class SeedEachBatch(Callback):
    """Seeds the global generators before each training batch from the batch's place in training, so a resumed
    run draws the same dropout and weight noise as an uninterrupted one (see ``data/resumable.py``)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        torch.manual_seed(batch_seed(self.seed, "step", trainer.global_rank, trainer.current_epoch, batch_idx))


class StopAtErrors(Callback):
    """Ends training at the first validation where every set in ``bounds`` has a decoded error at or below its
    bound (``trainer.early_stopping.errors_below``); ``met`` says whether that happened. The run's best
    checkpoint is then the one that met the bounds, not the one of lowest ``val/loss``."""

    def __init__(self, bounds: dict[str, float], val_sets: list[str], decoded: bool):
        if not decoded:
            raise ConfigError(
                "trainer.early_stopping.errors_below needs decoded validation errors — fix: set "
                "decode.in_validation=true"
            )
        unknown = sorted(set(bounds) - set(val_sets))
        if unknown:
            raise ConfigError(
                f"trainer.early_stopping.errors_below names {', '.join(unknown)}, which is not a validation set "
                f"of this run — fix: use the names of data.val_manifests' sets ({', '.join(val_sets) or 'none'})"
            )
        self.bounds, self.met = bounds, False

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        errors = trainer.callback_metrics
        if all(float(errors[f"val/{name}/error"]) <= bound for name, bound in self.bounds.items()):
            trainer.should_stop = self.met = True


class SaveLastAtValidation(Callback):
    """``last.ckpt`` at every validation and at the end of training. Lightning's ``save_last`` rewrites it only
    at a step where a monitored checkpoint was saved (an improvement of ``val/loss``), so a run resumed after a
    stretch without improvement would start over from its last improvement, and a run stopped by
    ``StopAtErrors`` would keep the weights of an earlier step than the ones that met its bounds."""

    def __init__(self, path: Path):
        self.path, self.saved_step = path, None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.saved_step != trainer.global_step:  # steps after the last validation, or none ran
            self.save(trainer)

    def save(self, trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole training state: resumes start here
        self.saved_step = trainer.global_step


class ValidationProgress(Callback):
    """One line per validation that reads well in a log file: the step of the cap, the monitored dev values
    against the bounds that stop the run, the time spent and an estimate of what remains at this pace."""

    def __init__(self, bounds: dict[str, float] | None = None, prefix: str = "[train]"):
        self.bounds, self.prefix, self.started, self.first_step = dict(bounds or {}), prefix, None, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started, self.first_step = time.perf_counter(), trainer.global_step

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.started is None:
            return
        metrics = trainer.callback_metrics
        step, cap = trainer.global_step, trainer.max_steps
        elapsed = time.perf_counter() - self.started
        done = step - self.first_step
        remaining = f", about {clock((cap - step) * elapsed / done)} left at most" if 0 < done and step < cap else ""
        parts = [f"val/loss {float(metrics['val/loss']):.3f}"] if "val/loss" in metrics else []
        for key in sorted(metrics):
            if key.startswith("val/") and key.endswith("/error"):
                name = key[len("val/") : -len("/error")]
                bound = self.bounds.get(name)
                parts.append(
                    f"{name} {float(metrics[key]):.3f}" + (f" (stops at ≤ {bound:g})" if bound is not None else "")
                )
        of_cap = f"/{cap}" if cap > 0 else ""
        print(f"{self.prefix} step {step}{of_cap}, {clock(elapsed)}{remaining}: " + ", ".join(parts), flush=True)


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class StepProgressBar(TQDMProgressBar):
    """The terminal bar of a run bounded by steps: steps done of the cap, not an epoch of an endless count
    (Lightning's bar reads ``Epoch 4/-2`` when ``max_epochs`` is unbounded)."""

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        if trainer.max_steps > 0:
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step
            bar.set_description("steps")
            bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module))
        bar.refresh()


def cpu_has_bfloat16() -> bool:
    """Whether this processor computes bfloat16 natively (AVX-512 BF16 or AMX): elsewhere torch emulates it,
    slower than float32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(trainer: dict) -> str:
    """The precision a run trains in: ``bf16-mixed`` on a CPU without bfloat16 instructions falls back to
    ``32-true``, and says so."""
    precision = str(trainer["precision"])
    on_cpu = trainer["accelerator"] == "cpu" or (trainer["accelerator"] == "auto" and not torch.cuda.is_available())
    if precision.startswith("bf16") and on_cpu and not cpu_has_bfloat16():
        print(f"[train] precision {precision}: this CPU has no bfloat16 instructions; training in 32-true", flush=True)
        return "32-true"
    return precision


def autocast_for(config, device_type: str = "cpu"):
    """The autocast the Trainer's precision plugin opens around a forward pass, for code that runs the model
    outside the Trainer (the λ curve, the throughput benchmark's plain loop)."""
    precision = resolve_precision(to_dict(config.trainer))
    if precision.startswith(("bf16", "16")):
        return torch.autocast(device_type, dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16)
    return contextlib.nullcontext()


def make_trainer(config, callbacks=(), logger=None, **overrides) -> L.Trainer:
    trainer = to_dict(config.trainer)
    trainer.pop("early_stopping")  # a callback, added by train()
    val_check_interval = trainer.pop("val_check_interval")
    trainer["precision"] = resolve_precision(trainer)
    callbacks = list(callbacks)
    # a bar redraws one line with carriage returns: in a log file that is one endless line, so only on a terminal
    # (ValidationProgress prints the lines a file can read)
    trainer["enable_progress_bar"] = bool(trainer["enable_progress_bar"]) and sys.stderr.isatty()
    if trainer["enable_progress_bar"]:
        callbacks.append(StepProgressBar())
    # the data module shards batches itself (same global batches under any number of processes)
    kwargs = dict(
        trainer,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
    )
    if val_check_interval:
        kwargs.update(val_check_interval=val_check_interval, check_val_every_n_epoch=None)
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _comparable(config: dict) -> dict:
    """A run config as the schema types it (options added since it was written at their defaults), without
    what may differ between a run and its resumption."""
    typed = to_dict(structured(TrainConfig, config, lenient_adapter=True))
    return {k: v for k, v in typed.items() if k != "output_dir"}


def _same_run(saved: dict, config: dict) -> bool:
    try:
        return _comparable(saved) == _comparable(config)
    except ConfigError:  # a config.json this schema cannot read is another run's
        return False


GLIBC_MALLOC = "LIGHTNING_ASR_GLIBC_MALLOC"  # "1": leave glibc's thresholds as they are


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing large blocks back to the kernel. By default a
    block over the mmap threshold (32 MB at most) is unmapped when freed, so every training step that allocates
    a fresh embedding gradient or logit matrix (51,865 rows) faults its pages in again: about 100,000 page
    faults per whisper-toy step on CPU; keeping it trains 1.14x faster
    (benchmarks/train_throughput.py --phases pretrain --allocator both).
    Elsewhere than glibc, or with ``LIGHTNING_ASR_GLIBC_MALLOC=1`` in the environment, nothing changes."""
    if os.environ.get(GLIBC_MALLOC) == "1":
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # mallopt's parameter numbers (malloc.h)
    mallopt(mmap_threshold, 1 << 30)
    mallopt(trim_threshold, 1 << 30)
    mallopt(top_pad, 64 << 20)


def train(config, resume: bool = False, force: bool = False, logger=None, extra_callbacks=()) -> TrainResult:
    """Train with ``config`` (a typed run config; a dict of its keys is checked and typed first).
    ``output_dir`` holds checkpoints and CSV logs; a run already there is resumed with ``resume``, replaced
    with ``force``, and otherwise refused."""
    config = config if isinstance(config, DictConfig) else structured(TrainConfig, config)
    output = Path(config.output_dir)
    checkpoints = output / "checkpoints"
    last = checkpoints / "last.ckpt"
    if checkpoints.exists() and any(checkpoints.iterdir()) and not resume:
        if not force:
            raise OutputExistsError(
                f"{output} already holds a run — fix: pass --resume to continue it, "
                "--force to replace it, or choose another output_dir"
            )
        shutil.rmtree(checkpoints)  # only what a run writes: other files in output_dir stay
        shutil.rmtree(output / "logs", ignore_errors=True)
    saved = output / "config.json"
    if resume and last.exists() and saved.exists():
        try:
            saved_config = json.loads(saved.read_text(encoding="utf-8"))
        except ValueError as err:
            raise OutputExistsError(
                f"{saved} is not readable JSON ({err}) — fix: --force to start over, or restore the "
                "file from a copy of the run"
            ) from err
        if not isinstance(saved_config, dict) or not _same_run(saved_config, to_dict(config)):
            raise OutputExistsError(
                f"{output} was trained with another config ({saved}) — fix: resume with that "
                "config, or --force to start over"
            )
    if resume and last.exists():
        check_resumable(last)
    output.mkdir(parents=True, exist_ok=True)

    keep_freed_memory()
    L.seed_everything(config.seed, workers=True, verbose=False)
    # the module fills in what the run derives from its data (a CTC vocabulary, ELBO's example count): its
    # checkpoints keep that; config.json and the loggers keep the config as given
    module = ASRModule(config)
    datamodule = make_datamodule(config, module, resumable=True)
    datamodule.setup()
    partial = saved.with_name(saved.name + ".partial")  # renamed into place: a kill never leaves half a file
    partial.write_text(json.dumps(to_dict(config), indent=2, ensure_ascii=False), encoding="utf-8")
    partial.replace(saved)
    module.set_eval_sets("val", datamodule.eval_sets("val"))
    has_val = bool(config.data.val_manifests)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor="val/loss" if has_val else None,
        mode="min",
        save_last=not has_val,  # with validation: SaveLastAtValidation
        save_top_k=1,
        # best.ckpt is evaluated and exported, never resumed: where last.ckpt holds the training state, best
        # needs no optimiser state (two thirds of a full fine-tuning checkpoint under Adam)
        save_weights_only=has_val,
    )
    callbacks = [checkpoint, SeedEachBatch(config.seed), *extra_callbacks]
    if has_val:
        callbacks.append(SaveLastAtValidation(last))
    stopping = config.trainer.early_stopping
    if has_val and (stopping.stop_below is not None or stopping.patience > 0):
        callbacks.append(
            EarlyStopping(
                "val/loss",
                min_delta=stopping.min_delta,
                mode="min",
                patience=stopping.patience or 2**31,
                stopping_threshold=stopping.stop_below,
                check_on_train_epoch_end=False,
            )
        )
    stop_at_errors = None
    if has_val and stopping.errors_below:
        stop_at_errors = StopAtErrors(
            dict(stopping.errors_below), [name for name, _ in module.eval_sets["val"]], config.decode.in_validation
        )
        callbacks.append(stop_at_errors)
    if has_val:
        callbacks.append(ValidationProgress(dict(stopping.errors_below)))
    loggers = [CSVLogger(output, name="logs")] + ([logger] if logger is not None else [])
    callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = make_trainer(
        config, callbacks, loggers, limit_val_batches=config.trainer.limit_val_batches if has_val else 0
    )
    resume_from = str(last) if resume and last.exists() else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)  # no unpickled code
    validation = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = checkpoint.best_model_path or str(last)
    if stop_at_errors is not None and stop_at_errors.met:
        best = str(last)  # saved at the validation that met the bounds (it ended the run)
    return TrainResult(module, best, str(last), validation, trainer.global_step)


def evaluate(
    module: ASRModule, manifests: list[str], config_overrides: dict | None = None, logger=None
) -> dict[str, float]:
    """Test ``module`` on each manifest; return ``{"test/<set>/<metric>": value}``. Per-utterance predictions
    are left in ``module.predictions``. ``config_overrides``: run-config sections to change (decode, trainer)."""
    data = {"test_manifests": list(manifests), "train_manifests": [], "val_manifests": []}
    config = OmegaConf.merge(module.config, {"data": data}, config_overrides or {})
    module.config = config
    datamodule = make_datamodule(config, module)
    datamodule.setup()
    module.set_eval_sets("test", datamodule.eval_sets("test"))
    trainer = make_trainer(config, logger=logger, limit_test_batches=None)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
