"""Forgetting-learning curves: how each strategy trades source error for target error along its training.

During adaptation ``LearningCurve`` decodes fixed subsets of the source and target dev sets (batched, with
the cell's decoding settings) at evenly spaced steps, step 0 and the step training ends at included, and logs their error rates as step metrics
(``curve/<set>/error``, ``curve/source_error`` macro over the source sets, ``curve/target_error``), so
MLflow's chart view shows each cell's trajectory. Strategies are compared at matched learning on their
fronts (``study/summary.py``), not on these few decoded points.
"""

from __future__ import annotations

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
