"""Estimates over seeds and the rules that turn them into verdicts: the only place the rules are written.

``RULES`` is the text the report prints; ``judge`` implements rules 2 and 3, ``combine_verdicts`` rule 4.
A claim (``ClaimResult``) carries its own reduction (rule 1): what number per seed, oriented how, against
which threshold (``claims/``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_asr.study.forgetting import mean_interval

MIN_SEEDS = 3
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

RULES = f"""\
How a verdict is reached (the same rules for every claim; `lightning_asr/study/verdicts.py`):

1. Each claim is reduced to one number per seed, oriented as the claim states it (e.g. LoRA's target error
   minus GLoRA's, so that a positive number supports "GLoRA beats LoRA"), and compared with a threshold: 0
   for "better than", the paper's own figure for a stated size ("a 4 % drop", "99.7 % below 1e-3", the
   latter relaxed to 99 %).
2. Fewer than {MIN_SEEDS} seeds with a defined value: **{INCONCLUSIVE}**. An undefined value (a backward gain when LoRA
   did not forget in that seed) is left out and counted in the reason.
3. Otherwise the 95 % Student-t interval over seeds decides: entirely on the claimed side of the threshold:
   **{HOLDS}**; entirely on the other side: **{FAILS}**; containing the threshold: **{INCONCLUSIVE}**.
4. A claim made of parts (type 1 best = better than each other type; "at every rank") holds if every part
   holds, does not hold if any part does not hold, and is inconclusive otherwise.

The paper's own figure (54 % backward gain, 99.7 %) is compared with our interval in the notes; whether it
lies inside the interval is reported, not used for the verdict of a directional claim. Error rates are
fractions (WER for English, CER for Korean and Chinese, MER for code-switched sets); forgetting is the
macro-averaged rise of source-set error over the unadapted base; all differences are paired by seed."""


@dataclass
class Estimate:
    mean: float
    low: float
    high: float
    n: int  # seeds with a defined value
    undefined: int = 0  # seeds whose value is undefined (NaN)

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        values = [float(v) for v in values]
        mean, low, high = mean_interval(values)
        finite = sum(not math.isnan(v) for v in values)
        return cls(mean, low, high, finite, len(values) - finite)


@dataclass
class Verdict:
    status: str
    reason: str


@dataclass
class ClaimResult:
    id: str
    paper: str
    quote: str
    setting: str
    measure: str  # what the number is, oriented as the claim
    estimate: Estimate | None
    verdict: Verdict
    rule: str
    unit: str = ""  # "%": shown as a percentage
    note: str = ""
    # a claim of the primary family: its test on per-utterance results over seeds (``study/statistics.py``),
    # decided with the family's other claims (Holm); None: exploratory, judged by the rules below alone
    hypothesis: object = None


def judge(
    estimate: Estimate, direction: str, threshold: float, min_seeds: int = MIN_SEEDS, undefined_reason: str = ""
) -> Verdict:
    """Rules 2 and 3 of ``RULES``: ``direction`` is ``greater`` (the claim says the value exceeds
    ``threshold``) or ``less``."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction {direction!r}: choose greater or less")
    undefined = ""
    if estimate.undefined:
        undefined = f"; {estimate.undefined} seed(s) undefined" + (f" ({undefined_reason})" if undefined_reason else "")
    if estimate.n < min_seeds:
        return Verdict(
            INCONCLUSIVE,
            f"{estimate.n} seed(s) with a defined value, {min_seeds} needed for a 95 % t-interval{undefined}",
        )
    interval = f"95 % interval [{estimate.low:.4g}, {estimate.high:.4g}] over {estimate.n} seeds"
    above, below = estimate.low > threshold, estimate.high < threshold
    if (above and direction == "greater") or (below and direction == "less"):
        return Verdict(HOLDS, f"{interval} lies {'above' if above else 'below'} {threshold:g}{undefined}")
    if above or below:
        return Verdict(
            FAILS, f"{interval} lies {'above' if above else 'below'} {threshold:g}, against the claim{undefined}"
        )
    return Verdict(INCONCLUSIVE, f"{interval} contains {threshold:g}{undefined}")


def combine_verdicts(parts: list[tuple[str, Verdict]], nothing: str) -> Verdict:
    """Rule 4: every part holds -> holds; any part does not hold -> does not hold; else inconclusive."""
    if not parts:
        return Verdict(INCONCLUSIVE, nothing)
    failing = [name for name, v in parts if v.status == FAILS]
    if failing:
        return Verdict(FAILS, f"does not hold for {', '.join(failing)}")
    open_ = [name for name, v in parts if v.status == INCONCLUSIVE]
    if open_:
        reasons = "; ".join(f"{name}: {v.reason}" for name, v in parts if v.status == INCONCLUSIVE)
        return Verdict(INCONCLUSIVE, f"inconclusive for {', '.join(open_)}; " + reasons[:400])
    return Verdict(HOLDS, f"holds for each of {', '.join(name for name, _ in parts)}")


def paired(a: dict[int, dict], b: dict[int, dict], key: str) -> list[float]:
    """``a[key] - b[key]`` for the seeds both have."""
    return [a[s].get(key, math.nan) - b[s].get(key, math.nan) for s in sorted(set(a) & set(b))]


def metric(values: dict[int, dict], key: str) -> Estimate:
    """The estimate over seeds of one metric of ``values`` (seed -> metrics)."""
    return Estimate.of([v.get(key, math.nan) for _, v in sorted(values.items())])


def number(value) -> str:
    """A setting as the report shows it: numbers compactly (1e-05, 0.01), anything else as it is."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def fmt_value(value: float, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "nan"
    return f"{100 * value:.1f} %" if unit == "%" else f"{value:.4g}"


def fmt_estimate(estimate: Estimate | None, unit: str = "") -> str:
    if estimate is None or estimate.n == 0:
        return "no data" + (f" ({estimate.undefined} undefined)" if estimate and estimate.undefined else "")
    undefined = f", {estimate.undefined} undefined" if estimate.undefined else ""
    if estimate.n < 2 or math.isnan(estimate.low):
        return f"{fmt_value(estimate.mean, unit)} ({estimate.n} seed{undefined})"
    return (
        f"{fmt_value(estimate.mean, unit)} [{fmt_value(estimate.low, unit)}, {fmt_value(estimate.high, unit)}] "
        f"({estimate.n} seeds{undefined})"
    )


def paper_figure_note(estimate: Estimate, value: float) -> str:
    """Where a paper's figure lies relative to our interval (empty without an interval)."""
    if estimate.n < 2 or math.isnan(estimate.low):
        return ""
    where = "inside" if estimate.low <= value <= estimate.high else "above" if value > estimate.high else "below"
    return f"the paper's {100 * value:g} % is {where} our interval"
