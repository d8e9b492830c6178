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
- label-free drift    D_k  = E(k's transcripts | base's transcripts)  (> 0: moved from the base; no references)

Source metrics are given per source set and macro-averaged over source sets. A zero denominator (F_ref = 0,
say) makes a ratio undefined: it is NaN with a reason, never a crash or a silent division.
These are the per-cell values (one seed against the reference at the same seed). The benchmark's comparison
(``study/summary.py``) decides on paired differences over seeds and utterances (``study/statistics.py``):
ΔF = F_k − F_ref, ΔE = E_tgt(k) − E_tgt(ref) and the rise of source cross-entropy, with backward gain as a ratio
of means over seeds, never a mean of per-seed ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS_DOC = __doc__


@dataclass
class Scores:
    """Per-utterance edit and reference-token counts of one model on one test set (in a fixed order), and its
    teacher-forced cross-entropy (summed nats and label units per utterance; NaN where not scored)."""

    edits: np.ndarray
    tokens: np.ndarray
    ce: np.ndarray | None = None
    ce_units: np.ndarray | None = None

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Scores:
        def column(key: str) -> np.ndarray:
            return np.array([r.get(key, np.nan) for r in rows], dtype=float)

        return cls(column("edits"), column("tokens"), column("ce"), column("ce_units"))

    def cross_entropy(self) -> float:
        """Cross-entropy per label unit over the set (nats); NaN where not scored."""
        if self.ce is None or not np.isfinite(self.ce).all() or not self.ce_units.sum():
            return float("nan")
        return float(self.ce.sum() / self.ce_units.sum())

    def error(self, index: np.ndarray | None = None) -> float:
        edits, tokens = (self.edits, self.tokens) if index is None else (self.edits[index], self.tokens[index])
        return float(edits.sum() / tokens.sum()) if tokens.sum() else float("nan")


def label_free_drift(base_rows: list[dict], rows: list[dict], lang: str, normalizer=None, average="corpus") -> Scores:
    """How far an adapted model's transcripts moved from the base's own on the same audio: per utterance, the
    edits of the adapted model's transcript against the base's (as the reference) and the base transcript's
    tokens, in the set's primary unit. It needs no reference transcripts, and it counts a change the references
    would call an improvement as drift too: where the base is better than the source transcripts (or they are
    missing), retention is this, not forgetting."""
    from lightning_asr.metrics import METRIC_NAMES, metrics_for
    from lightning_asr.text import primary_unit

    base_by_line = {row["line"]: row["prediction"] for row in base_rows}
    if sorted(base_by_line) != sorted(row["line"] for row in rows):
        raise ValueError("the adapted model and the base were scored on different utterances")
    metric = metrics_for(lang, normalizer, average)[METRIC_NAMES[primary_unit(lang)]]
    counts = [metric.utterance_counts(row["prediction"], base_by_line[row["line"]]) for row in rows]
    return Scores(np.array([c[0] for c in counts], dtype=float), np.array([c[1] for c in counts], dtype=float))


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
