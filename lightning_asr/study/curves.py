"""Forgetting-learning curves: how each strategy trades source error for target error along its training.

During adaptation ``LearningCurve`` decodes fixed subsets of the source and target dev sets (batched, with
the cell's decoding settings) at evenly spaced steps, step 0 and the step training ends at included, and logs their error rates as step metrics
(``curve/<set>/error``, ``curve/source_error`` macro over the source sets, ``curve/target_error``), so
MLflow's chart view shows each cell's trajectory. ``matched`` compares strategies at equal target error:
each strategy's source error interpolated along its curve at a target error (by default the one the reference
reaches at its last point; ``common_level`` gives the lowest one every strategy reaches), and the forgetting
and backward gain that go with it.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch

from lightning_asr.data.datamodule import set_language, set_name
from lightning_asr.data.manifest import read_manifest
from lightning_asr.metrics import METRIC_NAMES, score_texts
from lightning_asr.text import TextNormalizer, primary_unit

SOURCE, TARGET = "curve/source_error", "curve/target_error"


def curve_steps(max_steps: int, points: int) -> list[int]:
    """``points`` evenly spaced steps from 0 to ``max_steps`` (both included)."""
    return sorted({round(i * max_steps / (points - 1)) for i in range(points)}) if points > 1 else [max_steps]


class LearningCurve(L.Callback):
    """Error rates of fixed dev subsets at ``curve_steps(max_steps, points)``, logged to every logger."""

    def __init__(
        self,
        source_manifests: list[str],
        target_manifest: str,
        subset: int,
        points: int,
        max_steps: int,
        batch_size: int = 32,
    ):
        self.sets = [(m, False) for m in source_manifests] + [(target_manifest, True)]
        self.subset, self.batch_size = subset, batch_size
        self.steps = set(curve_steps(max_steps, points))
        self.inputs: list[tuple[str, str, bool, list]] = []
        self.scoring = None
        self.measured: set[int] = set()  # steps done (with gradient accumulation a step spans several batches)

    def setup(self, trainer, pl_module, stage: str) -> None:
        module = pl_module
        self.scoring = module.config.scoring
        self.inputs = []
        for manifest, is_target in self.sets:
            utterances = read_manifest(manifest)[: self.subset]
            lang = set_language(u.lang for u in utterances)
            batches = []
            for start in range(0, len(utterances), self.batch_size):
                chunk = utterances[start : start + self.batch_size]
                inputs = module.backbone.audio_inputs(module.processor, [u.samples() for u in chunk])
                batches.append((inputs, chunk))
            self.inputs.append((set_name(manifest), lang, is_target, batches))

    def on_train_start(self, trainer, pl_module) -> None:
        self.maybe_measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.maybe_measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step not in self.measured:  # stopped early: the curve ends where training did
            self.measured.add(trainer.global_step)
            self.measure(trainer, pl_module)

    def maybe_measure(self, trainer, module) -> None:
        if trainer.global_step in self.steps and trainer.global_step not in self.measured:
            self.measured.add(trainer.global_step)
            self.measure(trainer, module)

    @torch.no_grad()
    def measure(self, trainer, module) -> None:
        was_training = module.training
        module.eval()
        metrics, sources = {}, []
        for name, lang, is_target, batches in self.inputs:
            hypotheses, references = [], []
            for inputs, chunk in batches:
                inputs = {k: v.to(module.device) for k, v in inputs.items()}
                hypotheses += module.transcribe(inputs, [u.lang for u in chunk])[0]
                references += [u.text for u in chunk]
            normalizer = TextNormalizer.from_scoring(lang, self.scoring)
            error = score_texts(hypotheses, references, lang, normalizer, self.scoring.average)[
                METRIC_NAMES[primary_unit(lang)]
            ]
            metrics[f"curve/{name}/error"] = error
            if is_target:
                metrics[TARGET] = error
            else:
                sources.append(error)
        metrics[SOURCE] = float(np.mean(sources))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if was_training:
            module.train()


def interpolate_source(curve: list[tuple[int, float, float]], target: float) -> float:
    """The source error where a (step, target error, source error) curve first reaches ``target``, linear
    between the two points around it; NaN where the curve never gets that low."""
    for (_, t0, s0), (_, t1, s1) in zip(curve, curve[1:]):
        if t1 <= target <= t0 or t0 <= target <= t1:
            return s0 if t0 == t1 else s0 + (s1 - s0) * (target - t0) / (t1 - t0)
    if curve and math.isclose(curve[0][1], target):
        return curve[0][2]
    return math.nan


def common_level(curves: dict[str, list[tuple[int, float, float]]]) -> float:
    """The lowest target error every curve reaches: the highest of the curves' lowest points. Read there, no
    strategy drops out of the comparison for ending just above the reference."""
    lows = [min(target for _, target, _ in curve) for curve in curves.values() if curve]
    return max(lows) if lows else math.nan


def matched(
    curves: dict[str, list[tuple[int, float, float]]], reference: str, level: float | None = None
) -> tuple[float, list[dict]]:
    """Each strategy at target error ``level`` (default: the one ``reference`` reaches at its last point): its
    source error there (interpolated), its forgetting (that source error minus the curve's step-0 source
    error), and the backward gain in both readings (share of the reference's forgetting avoided; relative
    source error)."""
    if reference not in curves or not curves[reference]:
        return math.nan, []
    level = curves[reference][-1][1] if level is None else level
    # read off the reference's curve like every other one's: where it first reaches its final target error (a
    # curve that gets there early and then moves on the source side has its last point elsewhere)
    ref_source = interpolate_source(curves[reference], level)
    ref_forgetting = ref_source - curves[reference][0][2]
    rows = []
    for label, curve in curves.items():
        source = interpolate_source(curve, level)
        forgetting = source - curve[0][2] if curve else math.nan
        rows.append(
            {
                "strategy": label,
                "source_error": source,
                "forgetting": forgetting,
                "backward_gain": (ref_forgetting - forgetting) / ref_forgetting if ref_forgetting > 0 else math.nan,
                "relative_source_gain": (ref_source - source) / ref_source if ref_source > 0 else math.nan,
            }
        )
    return level, rows
