"""Continual-learning metrics over error rates (lower is better, so mind the signs).

E is a set's primary error rate (WER for English, CER for Chinese/Korean, MER for code-switched), pooled at
corpus level. ``base`` is the unadapted model, ``ref`` the reference strategy (the profile's ``reference``:
LoRA in the shipped ones), ``k`` the strategy being judged.

- forgetting          F_k  = E_src(k) - E_src(base)                  (> 0: forgot; absolute points)
- relative forgetting      = F_k / E_src(base)
- adaptation gain     G_k  = E_tgt(base) - E_tgt(k)                  (> 0: learned the target)
- backward gain       BG_k = (F_ref - F_k) / F_ref                   (share of the reference's forgetting avoided;
                                                                       defined only when F_ref > 0)
- relative source gain     = (E_src(ref) - E_src(k)) / E_src(ref)    (the other reading of "backward gain")
- forward loss        FL_k = (E_tgt(k) - E_tgt(ref)) / E_tgt(ref)    (> 0: worse than ref on the target)

Source metrics are given per source set and macro-averaged over source sets. A zero denominator (F_ref = 0,
say) makes a ratio undefined: it is NaN with a reason, never a crash or a silent division.
Intervals: with several seeds, mean +- 95 % Student-t interval over seeds; with one seed, a paired bootstrap
over test utterances (the same resampled utterances for base, ref and k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS_DOC = __doc__


@dataclass
class Scores:
    """Per-utterance edit and reference-token counts of one model on one test set (in a fixed order)."""

    edits: np.ndarray
    tokens: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Scores:
        return cls(
            np.array([r["edits"] for r in rows], dtype=float), np.array([r["tokens"] for r in rows], dtype=float)
        )

    def error(self, index: np.ndarray | None = None) -> float:
        edits, tokens = (self.edits, self.tokens) if index is None else (self.edits[index], self.tokens[index])
        return float(edits.sum() / tokens.sum()) if tokens.sum() else float("nan")


def ratio(numerator: float, denominator: float, what: str) -> tuple[float, str]:
    """``numerator / denominator``, or NaN with the reason when the denominator is zero."""
    if denominator == 0 or math.isnan(denominator):
        return float("nan"), f"{what} undefined: its denominator is {denominator}"
    return numerator / denominator, ""


def derived_metrics(
    base: dict[str, float], ref: dict[str, float], k: dict[str, float], source_sets: list[str], target_set: str
) -> tuple[dict[str, float], dict[str, str]]:
    """All metrics of strategy ``k`` from error rates per set; returns (values, reasons for NaNs)."""
    values, reasons = {}, {}

    def put(name: str, value_reason: tuple[float, str] | float) -> None:
        value, reason = value_reason if isinstance(value_reason, tuple) else (value_reason, "")
        values[name] = value
        if reason:
            reasons[name] = reason

    for suffix, sets in [(f"/{s}", [s]) for s in source_sets] + [("", source_sets)]:
        e_k = float(np.mean([k[s] for s in sets]))
        e_base = float(np.mean([base[s] for s in sets]))
        e_ref = float(np.mean([ref[s] for s in sets]))
        f_k, f_ref = e_k - e_base, e_ref - e_base
        put(f"source_error{suffix}", e_k)
        put(f"forgetting{suffix}", f_k)
        put(f"relative_forgetting{suffix}", ratio(f_k, e_base, "relative forgetting"))
        if f_ref > 0:
            put(f"backward_gain{suffix}", ratio(f_ref - f_k, f_ref, "backward gain"))
        else:  # a share of the reference's forgetting means nothing when it did not forget
            put(
                f"backward_gain{suffix}",
                (float("nan"), f"backward gain undefined: the reference did not forget (F_ref = {f_ref:.4f} <= 0)"),
            )
        put(f"relative_source_gain{suffix}", ratio(e_ref - e_k, e_ref, "relative source gain"))
    put("target_error", k[target_set])
    put("adaptation_gain", base[target_set] - k[target_set])
    put("forward_loss", ratio(k[target_set] - ref[target_set], ref[target_set], "forward loss"))
    return values, reasons


def errors(scores: dict[str, Scores], index: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    return {name: s.error(None if index is None else index[name]) for name, s in scores.items()}


def t_quantile_975(degrees: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, degrees))


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval over seeds (NaN values are left out)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean(finite))
    if len(finite) < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile_975(len(finite) - 1) * float(np.std(finite, ddof=1)) / math.sqrt(len(finite))
    return mean, mean - half, mean + half


def compare(
    base: dict[str, Scores],
    cells: dict[str, dict[int, dict[str, Scores]]],
    reference: str,
    source_sets: list[str],
    target_set: str,
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """One row per strategy label: each metric's value (mean over seeds) with ``_low``/``_high`` bounds.

    ``cells[label][seed][set]`` are the scores of a strategy; the reference must have every seed the
    others have. Returns the rows and the reasons for undefined values."""
    if reference not in cells:
        raise ValueError(f"reference strategy {reference!r} is not in the grid ({', '.join(cells)})")
    rows, all_reasons = [], {}
    rng = np.random.default_rng(seed)
    for label, by_seed in cells.items():
        per_seed = []
        for run_seed, scores in by_seed.items():
            if run_seed not in cells[reference]:
                raise ValueError(f"reference {reference!r} has no run with seed {run_seed}")
            values, reasons = derived_metrics(
                errors(base), errors(cells[reference][run_seed]), errors(scores), source_sets, target_set
            )
            per_seed.append(values)
            all_reasons.update({f"{label}/{k}": v for k, v in reasons.items()})
        row = {"strategy": label, "seeds": len(per_seed)}
        if len(per_seed) > 1:
            for metric in per_seed[0]:
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean_interval([v[metric] for v in per_seed])
        else:
            run_seed, scores = next(iter(by_seed.items()))
            ref_scores = cells[reference][run_seed]
            samples = {metric: [] for metric in per_seed[0]}
            for _ in range(bootstrap):
                index = {name: rng.integers(0, len(s.edits), len(s.edits)) for name, s in base.items()}
                values, _ = derived_metrics(
                    errors(base, index), errors(ref_scores, index), errors(scores, index), source_sets, target_set
                )
                for metric, value in values.items():
                    samples[metric].append(value)
            for metric, value in per_seed[0].items():
                finite = [v for v in samples[metric] if not math.isnan(v)]
                row[metric] = value
                row[f"{metric}_low"], row[f"{metric}_high"] = (
                    (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5)))
                    if finite and bootstrap
                    else (float("nan"),) * 2
                )
        rows.append(row)
    return rows, all_reasons
