"""Continual-learning metrics of a stream of domains, defined once, from the error matrix R.

``R[k, j]`` is the error on task j's test data after learning stage k. Row 0 is the base before any stage, and
column 0 its own (source) task; a stream of K stages has a (K + 1) × (K + 1) matrix, complete because every
set is evaluated after every stage (the entries above the diagonal are zero-shot errors on later tasks). Error
rates and cross-entropy are lower-is-better, and every metric below is signed so that its name says which way
is good:

- ``awer[k]`` = mean over j ≤ k of R[k, j]: the average error over what has been seen (lower is better);
  CL-MASR's AWER.
- ``bwt[k]`` = mean over j < k of (R[j, j] − R[k, j]), for k ≥ 1: backward transfer, positive when later stages
  improved earlier tasks, negative when they were forgotten; CL-MASR's BWT.
- ``forgetting[k]`` = mean over j < k of (R[k, j] − min over l < k of R[l, j]), for k ≥ 1: Chaudhry et al.'s
  forgetting for error rates (current minus the best earlier), positive when forgotten.
- ``im[k]`` = R[k, k] − joint[k]: intransigence against joint training on all stages (``joint[k]``, its error on
  task k), positive when the stream learns task k less well than joint training; CL-MASR's IM.
- ``fwt[k]`` = single[k] − R[k, k]: forward transfer against fine-tuning the base on task k alone
  (``single[k]``), positive when what came before helps; CL-MASR's FWT.

The stream's figure is each metric at its last stage. Every function accepts leading axes (``R[..., K+1,
K+1]``), so a bootstrap's replicates of R give replicates of every metric in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _matrix(r) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    if r.ndim < 2 or r.shape[-1] != r.shape[-2] or r.shape[-1] < 2:
        raise ValueError(f"R must be square over its last two axes, with the base and at least one stage: {r.shape}")
    return r


def awer(r) -> np.ndarray:
    """Per row k (the base included), the mean error over tasks 0..k."""
    r = _matrix(r)
    size = r.shape[-1]
    seen = np.tril(np.ones((size, size)))
    return (r * seen).sum(-1) / seen.sum(-1)


def bwt(r) -> np.ndarray:
    """Per stage k = 1..K, the mean over earlier tasks j < k of R[j, j] − R[k, j] (negative: forgotten)."""
    r = _matrix(r)
    diagonal = np.diagonal(r, axis1=-2, axis2=-1)
    return np.stack(
        [(diagonal[..., :k] - r[..., k, :k]).mean(-1) for k in range(1, r.shape[-1])],
        axis=-1,
    )


def forgetting(r) -> np.ndarray:
    """Per stage k = 1..K, the mean over earlier tasks j < k of R[k, j] minus the best (lowest) error on j
    before stage k (positive: forgotten)."""
    r = _matrix(r)
    return np.stack(
        [(r[..., k, :k] - r[..., :k, :k].min(-2)).mean(-1) for k in range(1, r.shape[-1])],
        axis=-1,
    )


def intransigence(r, joint) -> np.ndarray:
    """Per stage k = 1..K, R[k, k] minus joint training's error on task k (``joint``: one value per stage)."""
    r = _matrix(r)
    return np.diagonal(r, axis1=-2, axis2=-1)[..., 1:] - _per_stage(joint, r)


def forward_transfer(r, single) -> np.ndarray:
    """Per stage k = 1..K, the error of fine-tuning the base on task k alone (``single``) minus R[k, k]."""
    r = _matrix(r)
    return _per_stage(single, r) - np.diagonal(r, axis1=-2, axis2=-1)[..., 1:]


def _per_stage(values, r: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.shape[-1] != r.shape[-1] - 1:
        raise ValueError(f"one reference value per stage is needed ({r.shape[-1] - 1}), got {values.shape[-1]}")
    return values


def task_matrix(errors_after: list[dict[str, float]], tasks: list[list[str]]) -> np.ndarray:
    """R from per-set errors: ``errors_after[k]`` maps each test set to its error after stage k (row 0: the base),
    ``tasks[j]`` lists the sets of task j (task 0: the source sets, averaged as CL-MASR averages the base's
    locales). Every set must be scored after every stage, or R would be incomplete."""
    if len(errors_after) != len(tasks):
        raise ValueError(f"{len(errors_after)} rows of errors for {len(tasks)} tasks: R must be square")
    r = np.empty((len(tasks), len(tasks)))
    for k, errors in enumerate(errors_after):
        for j, sets in enumerate(tasks):
            missing = [name for name in sets if name not in errors]
            if missing:
                raise ValueError(f"after stage {k}: no score for {missing}; every set is evaluated after every stage")
            r[k, j] = np.mean([errors[name] for name in sets])
    return r


@dataclass
class StreamMetrics:
    """Every metric per stage (index 0 is stage 1; ``awer`` also has the base's row first), and at the stream's
    end. ``im`` and ``fwt`` are None without their references."""

    awer: np.ndarray
    bwt: np.ndarray
    forgetting: np.ndarray
    im: np.ndarray | None = None
    fwt: np.ndarray | None = None

    @classmethod
    def of(cls, r, joint=None, single=None) -> StreamMetrics:
        return cls(
            awer(r),
            bwt(r),
            forgetting(r),
            None if joint is None else intransigence(r, joint),
            None if single is None else forward_transfer(r, single),
        )

    def final(self) -> dict[str, np.ndarray]:
        """Each metric at the last stage: the stream's figure."""
        values = {"awer": self.awer, "bwt": self.bwt, "forgetting": self.forgetting, "im": self.im, "fwt": self.fwt}
        return {name: value[..., -1] for name, value in values.items() if value is not None}
