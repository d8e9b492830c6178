"""Simulated per-utterance results of a forgetting study, with the variance structure measured on the embedded
benchmark (docs/benchmark.md, "How many seeds"): a training-run effect per (strategy, seed) and an utterance
effect shared by every model, so the statistics can be checked against known truths."""

from __future__ import annotations

import numpy as np

from lightning_asr.study.statistics import Ratios

SOURCE_SETS, TARGET_SET = ["en/test", "ko/test", "zh/test"], "ko-en/test"
BASE_SOURCE, BASE_TARGET = 0.010, 0.157
REFERENCE_FORGETTING = 0.225  # LoRA's on the embedded default
SEED_SD_FORGETTING = 0.035  # per strategy and seed: SD(ΔF) per seed ≈ 0.05 between two independent strategies
TARGET_ERROR, SEED_SD_TARGET = 0.026, 0.004


def simulate(
    rng: np.random.Generator, seeds: int, forgetting: dict[str, float], utterances: int = 50
) -> tuple[dict[str, Ratios], dict[str, dict[str, Ratios]]]:
    """Base and cells (``forgetting[label]``: the strategy's true forgetting) over the four test sets."""
    tokens = {name: rng.integers(8, 30, utterances).astype(float) for name in SOURCE_SETS + [TARGET_SET]}
    difficulty = {name: rng.gamma(2.0, 0.5, utterances) for name in tokens}  # mean 1, shared by every model

    def edits(rate: float, name: str) -> np.ndarray:
        return rng.binomial(tokens[name].astype(int), np.clip(rate * difficulty[name], 0, 1)).astype(float)

    base = {name: Ratios(edits(BASE_SOURCE, name)[None], tokens[name][None]) for name in SOURCE_SETS}
    base[TARGET_SET] = Ratios(edits(BASE_TARGET, TARGET_SET)[None], tokens[TARGET_SET][None])
    cells = {}
    for label, true_forgetting in forgetting.items():
        per_set: dict[str, list] = {name: [] for name in tokens}
        for _ in range(seeds):
            run_forgetting = max(0.0, true_forgetting + rng.normal(0, SEED_SD_FORGETTING))
            for name in SOURCE_SETS:
                rate = BASE_SOURCE + run_forgetting * rng.lognormal(0, 0.1)
                per_set[name].append((edits(rate, name), tokens[name]))
            target = max(0.0, TARGET_ERROR + rng.normal(0, SEED_SD_TARGET))
            per_set[TARGET_SET].append((edits(target, TARGET_SET), tokens[TARGET_SET]))
        cells[label] = {name: Ratios.stack(rows) for name, rows in per_set.items()}
    return base, cells
