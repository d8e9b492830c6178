"""What a benchmark run returns: every number its comparison, report and figures are computed from, as a value
(``BenchmarkResult``) that round-trips through JSON, so the statistics are pure functions testable without
MLflow or training."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lightning_asr.study.forgetting import Scores


@dataclass
class CellResult:
    """One (strategy, seed) cell: its per-utterance scores on every test set (edits, tokens, cross-entropy),
    its λ-interpolation curve (``study/interpolation.py``), its dense dev cross-entropy curves
    (``{set: [[step, nats per unit], ...]}``), the step training stopped at, its MLflow run, and its drift from
    the base's own transcripts on the source sets."""

    label: str
    seed: int
    run_id: str
    scores: dict[str, Scores]
    predictions: dict[str, list[dict]] = field(default_factory=dict, repr=False)
    interpolation: dict = field(default_factory=dict, repr=False)
    dev_curves: dict[str, list[list[float]]] = field(default_factory=dict, repr=False)
    stopped_step: float = math.nan
    # per source set, the label-free drift: edits against the base's own transcripts (``forgetting.label_free_drift``)
    drift: dict[str, Scores] = field(default_factory=dict, repr=False)


@dataclass
class BenchmarkResult:
    name: str
    reference: str
    source_sets: list[str]  # test-set names (``en/test``, ...)
    target_set: str
    seeds: list[int]
    base: dict[str, Scores]
    base_predictions: dict[str, list[dict]] = field(default_factory=dict, repr=False)
    cells: list[CellResult] = field(default_factory=list)
    parent_run_id: str = ""
    git_commit: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # wall time by stage (data, base, base_eval, cells)
    methods: dict[str, str] = field(default_factory=dict)  # a knob-sweep cell's label -> its strategy's label

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(cell.label for cell in self.cells))

    def cell(self, label: str, seed: int) -> CellResult:
        return next(c for c in self.cells if c.label == label and c.seed == seed)

    def of(self, label: str) -> list[CellResult]:
        """The cells of a strategy, in seed order."""
        return sorted((c for c in self.cells if c.label == label), key=lambda c: self.seeds.index(c.seed))

    # ---- JSON ------------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        def scores(by_set: dict[str, Scores]) -> dict:
            return {
                name: {k: (None if v is None else np.asarray(v).tolist()) for k, v in asdict(s).items()}
                for name, s in by_set.items()
            }

        value = asdict(self)
        value["base"] = scores(self.base)
        for cell, entry in zip(self.cells, value["cells"]):
            entry["scores"] = scores(cell.scores)
            entry["drift"] = scores(cell.drift)
        return json.dumps(value, ensure_ascii=False, default=float)

    @classmethod
    def from_json(cls, text: str) -> BenchmarkResult:
        value = json.loads(text)

        def scores(by_set: dict) -> dict[str, Scores]:
            return {
                name: Scores(**{k: (None if v is None else np.array(v, dtype=float)) for k, v in entry.items()})
                for name, entry in by_set.items()
            }

        cells = [
            CellResult(**{**c, "scores": scores(c["scores"]), "drift": scores(c.get("drift", {}))})
            for c in value.pop("cells")
        ]
        return cls(**{**value, "base": scores(value["base"]), "cells": cells})

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(self.to_json())
        partial.replace(path)
        return path
