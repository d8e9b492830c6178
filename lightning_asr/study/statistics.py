"""Paired, crossed statistics of the forgetting benchmark: what varies between reruns is the training run (its
seed) *and* the test utterances, so an interval covers both.

The data are per utterance: for every (strategy, seed) cell and every test set, a numerator and a denominator
per utterance (edits and reference tokens for an error rate; summed cross-entropy in nats and scored tokens for
the cross-entropy per token). Every cell is scored on the same utterances, so a difference between two
strategies is paired by seed and by utterance.

- **Estimates** are differences against the reference strategy, seed by seed, averaged over seeds: forgetting
  ΔF = E_src(k) − E_src(ref) (the base cancels), target error ΔE = E_tgt(k) − E_tgt(ref), and the rise of source
  cross-entropy ΔCE. A corpus-level rate is pooled over the (resampled) utterances of a set; a source rate is
  the macro average over the source sets.
- **Standard errors** come from a crossed ("pigeonhole") bootstrap: each replicate draws seeds with
  replacement and, independently, the utterances of every set with replacement, the same draw for every
  strategy and every seed, so the pairing holds inside each replicate. Its variance counts the seed and the
  utterance components (and the interaction twice: a conservative estimate).
- **Intervals and p-values** use Student's t with (seeds − 1) degrees of freedom around the estimate, with the
  bootstrap standard error: a percentile interval over a handful of seeds is too narrow. With one seed nothing
  measures the training-run variance: the interval is the utterance bootstrap alone and is *conditional on that
  training run*; it is never a verdict.
- **Ratios** (backward gain) are ratios of means, (F̄_ref − F̄_k) / F̄_ref, bootstrapped as a ratio, and only
  where the reference's own forgetting interval excludes 0.
- **Verdicts**: a declared primary family is corrected with Holm's step-down procedure; everything else is
  exploratory. "No difference" is only an equivalence verdict (two one-sided tests: the 90 % interval inside
  ±margin); otherwise the report says "not detected" with the minimum detectable effect at 80 % power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALPHA, POWER = 0.05, 0.80
HOLDS, FAILS, EQUIVALENT, NOT_DETECTED, UNDECIDABLE = (
    "holds",
    "does not hold",
    "equivalent",
    "not detected",
    "no verdict",
)
CONDITIONAL = "conditional on one training run (utterance bootstrap of a single seed)"


def t_quantile(probability: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(probability, df))


def t_two_sided_p(statistic: float, df: float) -> float:
    from scipy.stats import t

    return float(2 * t.sf(abs(statistic), df))


@dataclass
class Estimate:
    """A mean over seeds with its crossed-bootstrap standard error and a t-interval (df = seeds − 1); with one
    seed, the utterance-bootstrap percentile interval, labelled conditional."""

    value: float
    se: float
    low: float
    high: float
    seeds: int
    se_seeds: float = math.nan  # the standard error with only seeds resampled
    se_utterances: float = math.nan  # with only utterances resampled
    replicates: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    utterances: int = 0  # test utterances per set (the smallest set), for the degrees of freedom

    @property
    def df(self) -> float:
        """Satterthwaite's degrees of freedom of the two variance components: seeds − 1 when the seed
        component dominates, more when the utterances' (estimated from many) carries weight."""
        seeds_df = self.seeds - 1
        a, b = self.se_seeds**2, self.se_utterances**2
        if self.utterances < 2 or not (a > 0 and b > 0) or seeds_df < 1:
            return seeds_df
        return min((a + b) ** 2 / (a**2 / seeds_df + b**2 / (self.utterances - 1)), self.seeds * self.utterances - 1)

    @property
    def conditional(self) -> bool:
        return self.seeds < 2

    @property
    def p_value(self) -> float:
        """Two-sided p-value of "the mean is 0"; NaN for a single run."""
        if self.conditional or not self.se > 0 or math.isnan(self.value):
            return math.nan
        return t_two_sided_p(self.value / self.se, self.df)

    def interval(self, level: float) -> tuple[float, float]:
        if self.conditional or math.isnan(self.se):
            finite = self.replicates[np.isfinite(self.replicates)]
            if not finite.size:
                return math.nan, math.nan
            tail = 100 * (1 - level) / 2
            return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))
        half = t_quantile(1 - (1 - level) / 2, self.df) * self.se
        return self.value - half, self.value + half

    def minimum_detectable(self, alpha: float = ALPHA, power: float = POWER) -> float:
        """The smallest true difference a two-sided test at ``alpha`` detects with ``power``, at this standard
        error and these degrees of freedom."""
        if self.conditional or not self.se > 0:
            return math.nan
        return (t_quantile(1 - alpha / 2, self.df) + t_quantile(power, self.df)) * self.se

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.value):
            return "nan"
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        mark = " (one run)" if self.conditional else ""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]{mark}"


def planned_minimum_detectable(
    se_seeds: float, se_utterances: float, measured_seeds: int, seeds: int, alpha: float = ALPHA, power: float = POWER
) -> float:
    """The minimum detectable difference at ``seeds`` seeds, from the variance components measured at
    ``measured_seeds``: the seed component shrinks with more seeds, the utterance component (the same test set
    for every seed) does not."""
    if seeds < 2 or measured_seeds < 1:
        return math.nan
    seed_variance = se_seeds**2 * measured_seeds  # per-seed variance of the paired difference
    se = math.sqrt(seed_variance / seeds + se_utterances**2)
    return (t_quantile(1 - alpha / 2, seeds - 1) + t_quantile(power, seeds - 1)) * se


@dataclass
class Ratios:
    """Per-utterance numerators and denominators of one test set: ``numerator[seed, utterance]``."""

    numerator: np.ndarray
    denominator: np.ndarray

    @classmethod
    def stack(cls, per_seed: list[tuple[np.ndarray, np.ndarray]]) -> Ratios:
        return cls(np.stack([n for n, _ in per_seed]).astype(float), np.stack([d for _, d in per_seed]).astype(float))


class CrossedBootstrap:
    """Replicate weights shared by every strategy: ``utterance_weights[set]`` (replicates × utterances, counts
    of each utterance in the draw) and ``seed_weights`` (replicates × seeds). Three designs are drawn: both
    factors (the intervals), seeds only and utterances only (the variance components for planning)."""

    def __init__(self, utterances: dict[str, int], seeds: int, replicates: int = 1000, rng_seed: int = 0):
        rng = np.random.default_rng(rng_seed)
        self.seeds, self.replicates = seeds, replicates

        def utterance_draw(count: int) -> np.ndarray:
            return rng.multinomial(count, np.full(count, 1 / count), size=replicates).astype(float)

        def seed_draw() -> np.ndarray:
            return rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=replicates).astype(float)

        ones_u = {name: np.ones((replicates, n)) for name, n in utterances.items()}
        ones_s = np.ones((replicates, seeds))
        self.designs = {
            "crossed": ({name: utterance_draw(n) for name, n in utterances.items()}, seed_draw()),
            "seeds": (ones_u, seed_draw()),
            "utterances": ({name: utterance_draw(n) for name, n in utterances.items()}, ones_s),
        }

    def rates(self, data: Ratios, name: str, design: str = "crossed") -> np.ndarray:
        """Per replicate and seed, the pooled rate of one set (replicates × seeds)."""
        weights = self.designs[design][0][name]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ data.numerator.T) / (weights @ data.denominator.T)

    def curve_rates(self, data: Ratios, name: str, design: str = "crossed") -> tuple[np.ndarray, np.ndarray]:
        """For curves (``Ratios`` of seeds × points × utterances): the pooled rate per seed and point, and per
        replicate, seed and point. A curve scored on the first utterances of a set only takes those utterances'
        weights of the set's draw (Poisson-like counts), so it stays paired with the set's end points."""
        weights = self.designs[design][0][name][:, : data.numerator.shape[-1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            point = data.numerator.sum(-1) / data.denominator.sum(-1)
            replicates = np.einsum("bu,spu->bsp", weights, data.numerator) / np.einsum(
                "bu,spu->bsp", weights, data.denominator
            )
        return point, replicates

    def seed_mean(self, per_seed: np.ndarray, design: str = "crossed") -> np.ndarray:
        weights = self.designs[design][1]
        return (weights * per_seed).sum(axis=1) / weights.sum(axis=1)


def resolution(tokens_per_set: list[float]) -> float:
    """The smallest change of an error rate macro-averaged over sets with these reference-token totals: one token
    error in the largest set. A margin below it cannot be judged."""
    return min(1 / (len(tokens_per_set) * tokens) for tokens in tokens_per_set)


def pooled(data: Ratios) -> np.ndarray:
    """Per seed, the corpus-level rate of one set."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return data.numerator.sum(axis=1) / data.denominator.sum(axis=1)


class PairedStatistics:
    """Estimates over a grid of cells scored on the same utterances.

    ``cells[label][set]`` are ``Ratios`` with one row per seed, the seeds in the same order for every label
    (pairing by seed); ``base[set]`` is the base model's ``Ratios`` with one row. One ``CrossedBootstrap`` serves
    every estimate, so differences are paired inside each replicate."""

    def __init__(self, base: dict[str, Ratios], cells: dict[str, dict[str, Ratios]], replicates=1000, rng_seed=0):
        self.base, self.cells = base, cells
        seeds = {data.numerator.shape[0] for by_set in cells.values() for data in by_set.values()}
        if len(seeds) != 1:
            raise ValueError(f"every strategy needs the same seeds for paired statistics; got {sorted(seeds)} seeds")
        self.seeds = seeds.pop()
        utterances = {name: data.numerator.shape[1] for name, data in base.items()}
        self.utterances = min(utterances.values())
        self.bootstrap = CrossedBootstrap(utterances, self.seeds, replicates, rng_seed)

    def _rate(self, label: str, sets: list[str], design: str) -> tuple[np.ndarray, np.ndarray]:
        """Point (per seed) and replicates (replicates × seeds) of the macro average over ``sets``."""
        source = self.base if label == "base" else self.cells[label]
        points = np.mean([pooled(source[s]) for s in sets], axis=0)
        replicates = np.mean([self.bootstrap.rates(source[s], s, design) for s in sets], axis=0)
        if label == "base":  # one row, the same for every seed
            points = np.repeat(points, self.seeds)
            replicates = np.repeat(replicates, self.seeds, axis=1)
        return points, replicates

    def difference(self, label: str, other: str, sets: list[str]) -> Estimate:
        """Mean over seeds of rate(label) − rate(other), macro over ``sets``, paired by seed and utterance."""

        def per_design(design: str) -> tuple[float, np.ndarray]:
            point_a, reps_a = self._rate(label, sets, design)
            point_b, reps_b = self._rate(other, sets, design)
            return float(np.mean(point_a - point_b)), self.bootstrap.seed_mean(reps_a - reps_b, design)

        value, crossed = per_design("crossed")
        _, by_seeds = per_design("seeds")
        _, by_utterances = per_design("utterances")
        return self._estimate(value, crossed, by_seeds, by_utterances)

    def ratio_of_means(self, label: str, reference: str, sets: list[str]) -> Estimate:
        """Backward gain as a ratio of means: (F̄_ref − F̄_k) / F̄_ref with F = rate − base rate."""
        point_k, reps_k = self._rate(label, sets, "crossed")
        point_r, reps_r = self._rate(reference, sets, "crossed")
        point_0, reps_0 = self._rate("base", sets, "crossed")
        f_ref = self.bootstrap.seed_mean(reps_r - reps_0)
        f_k = self.bootstrap.seed_mean(reps_k - reps_0)
        value_ref, value_k = float(np.mean(point_r - point_0)), float(np.mean(point_k - point_0))
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates = (f_ref - f_k) / f_ref
        value = (value_ref - value_k) / value_ref if value_ref else math.nan
        if self.seeds < 2:
            low, high = np.percentile(replicates[np.isfinite(replicates)], [2.5, 97.5])
            return Estimate(value, math.nan, float(low), float(high), self.seeds, replicates=replicates)
        # a ratio's distribution is skewed: the percentile interval of the replicates, widened to the t
        # quantile of the seeds' degrees of freedom
        finite = replicates[np.isfinite(replicates)]
        scale = t_quantile(0.975, self.seeds - 1) / 1.959964
        low, high = np.percentile(finite, [2.5, 97.5])
        low, high = value - scale * (value - low), value + scale * (high - value)
        return Estimate(value, float(np.std(finite, ddof=1)), float(low), float(high), self.seeds, replicates=finite)

    def _estimate(self, value: float, crossed: np.ndarray, by_seeds: np.ndarray, by_utterances: np.ndarray) -> Estimate:
        def sd(values: np.ndarray) -> float:
            finite = values[np.isfinite(values)]
            return float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan

        estimate = Estimate(
            value,
            sd(crossed) if self.seeds > 1 else math.nan,
            math.nan,
            math.nan,
            self.seeds,
            sd(by_seeds) if self.seeds > 1 else math.nan,
            sd(by_utterances),
            crossed,
            self.utterances,
        )
        estimate.low, estimate.high = estimate.interval(0.95)
        return estimate


# ---- verdicts -------------------------------------------------------------------------------------------------
@dataclass
class Hypothesis:
    """One claim as a test on a difference ``estimate`` (oriented as computed: strategy minus reference).

    ``direction``: ``less`` (the claim says the difference is below 0, e.g. "forgets less") or ``greater``.
    ``margin``: the equivalence margin (absolute, in the estimate's units), under which a difference is
    declared negligible; ``resolution``: the smallest difference the test set can express (one token error
    over the set's tokens), below which a margin is refused. ``primary`` claims are corrected together.

    ``kind``: ``difference`` (the claim is about the sign) or ``non_inferiority`` (the claim is "worse by at most
    ``margin``", e.g. "only a 4 % drop"): it holds when the difference is shown below the margin (one-sided),
    and does not hold when it is shown above it."""

    id: str
    estimate: Estimate
    direction: str
    margin: float
    resolution: float = 0.0
    primary: bool = True
    kind: str = "difference"
    verdict: str = ""
    reason: str = ""
    adjusted_p: float = math.nan

    @property
    def p_value(self) -> float:
        """The p-value the verdict rests on: two-sided for a difference; for non-inferiority, one-sided on the
        side the estimate lies (below the margin: evidence for the claim; above: against it)."""
        e = self.estimate
        if self.kind == "difference":
            return e.p_value
        if e.conditional or not e.se > 0:
            return math.nan
        sign = 1 if self.direction == "less" else -1
        return t_two_sided_p((sign * self.margin - e.value) / e.se, e.df) / 2


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    order = [i for i in np.argsort(p_values) if not math.isnan(p_values[i])]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def decide(hypotheses: list[Hypothesis], alpha: float = ALPHA, power: float = POWER) -> list[Hypothesis]:
    """Verdicts for a list of hypotheses: the primary ones with Holm-adjusted p-values, the others each at
    ``alpha`` (labelled exploratory). A hypothesis is

    - **no verdict**: one training run (an interval conditional on it), or a margin below the resolution;
    - **holds** / **does not hold**: the difference is detected (adjusted p < alpha) on the claimed / other side;
    - **equivalent**: not detected, and the 90 % interval lies inside ±margin (two one-sided tests);
    - **not detected**: otherwise, with the minimum detectable difference at ``power``.
    """
    primary = [h for h in hypotheses if h.primary]
    for h, adjusted in zip(primary, holm([h.p_value for h in primary])):
        h.adjusted_p = adjusted
    for h in hypotheses:
        if not h.primary:
            h.adjusted_p = h.p_value
    tests = len(primary)
    for h in hypotheses:
        e = h.estimate
        label = "" if h.primary else " (exploratory)"
        if e.conditional:
            h.verdict, h.reason = UNDECIDABLE, "one run"
            continue
        if h.margin and h.margin < h.resolution:
            h.verdict = UNDECIDABLE
            h.reason = (
                f"margin {h.margin:.4g} is below the test set's resolution {h.resolution:.4g} (one token error "
                "over the set): refused, not judged"
            )
            continue
        if h.kind == "non_inferiority":
            bound = h.margin if h.direction == "less" else -h.margin
            inside = (e.value < bound) == (h.direction == "less")
            if h.adjusted_p < alpha:
                h.verdict = HOLDS if inside else FAILS
                where = "within" if inside else "beyond"
                h.reason = f"{e.text(4)} {where} the stated {bound:+.4g}, p = {h.adjusted_p:.3g}{label}"
            else:
                mde = e.minimum_detectable(alpha / tests if h.primary and tests else alpha, power)
                h.verdict = NOT_DETECTED
                h.reason = (
                    f"{e.text(4)} against the stated {bound:+.4g}: neither side shown; minimum detectable "
                    f"distance from it {mde:.4g} at {power:.0%} power{label}"
                )
            continue
        if h.adjusted_p < alpha:
            claimed = (e.value < 0) == (h.direction == "less")
            h.verdict = HOLDS if claimed else FAILS
            h.reason = f"{e.text(4)}, p = {h.adjusted_p:.3g}{' (Holm)' if h.primary else ''}{label}"
            continue
        low90, high90 = e.interval(0.90)
        if h.margin and -h.margin < low90 and high90 < h.margin:
            h.verdict = EQUIVALENT
            h.reason = f"90 % interval [{low90:.4g}, {high90:.4g}] inside ±{h.margin:.4g}{label}"
            continue
        mde = e.minimum_detectable(alpha / tests if h.primary and tests else alpha, power)
        h.verdict = NOT_DETECTED
        h.reason = (
            f"{e.text(4)}, p = {h.adjusted_p:.3g}{' (Holm)' if h.primary else ''}; minimum detectable difference "
            f"{mde:.4g} at {power:.0%} power{label}"
        )
    return hypotheses


# ---- fronts ---------------------------------------------------------------------------------------------------
def front_at(target: np.ndarray, source: np.ndarray, level: float) -> np.ndarray:
    """The lower envelope of learning–forgetting curves read at target ``level``: over the last axis (a curve's
    points, e.g. λ = 0, 0.1, …, 1), the lowest source value among the points and the linear segments between
    neighbours whose target value is at most ``level``. NaN where a curve never reaches the level: the caller
    counts those, nothing is dropped silently."""
    target, source = np.asarray(target, float), np.asarray(source, float)
    points = np.where(target <= level, source, np.inf)
    t0, t1, s0, s1 = target[..., :-1], target[..., 1:], source[..., :-1], source[..., 1:]
    crossing = (t0 - level) * (t1 - level) < 0
    with np.errstate(invalid="ignore", divide="ignore"):
        on_segment = s0 + (s1 - s0) * (level - t0) / (t1 - t0)
    segments = np.where(crossing, on_segment, np.inf)
    best = np.minimum(points.min(axis=-1), segments.min(axis=-1) if segments.shape[-1] else np.inf)
    return np.where(np.isfinite(best), best, np.nan)


def curve_pair(
    bootstrap: CrossedBootstrap, target: dict[str, Ratios], sources: dict[str, Ratios], design: str = "crossed"
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A strategy's curves as (target, source) rates, each (per seed × point, per replicate × seed × point); the
    source side is the macro average over the source sets."""
    ((target_set, target_data),) = target.items()
    source_rates = [bootstrap.curve_rates(data, name, design) for name, data in sources.items()]
    source = (np.mean([p for p, _ in source_rates], axis=0), np.mean([r for _, r in source_rates], axis=0))
    return bootstrap.curve_rates(target_data, target_set, design), source


@dataclass
class FrontReading:
    """Strategy k against the reference at one target level: the paired difference of their fronts' source
    values (mean over the seeds where both reach the level) and how many seeds each reaches it in."""

    level: float
    difference: Estimate
    reached: int  # seeds where strategy k reaches the level
    reference_reached: int
    seeds: int


def front_difference(
    bootstrap: CrossedBootstrap,
    curves: dict[str, tuple[dict[str, Ratios], dict[str, Ratios]]],
    label: str,
    reference: str,
    level: float,
) -> FrontReading:
    """``curves[label] = (target, sources)``: per set, ``Ratios`` whose numerator and denominator are
    (seeds × points × utterances). The source side is the macro average over the source sets."""

    def fronts(name: str, design: str) -> tuple[np.ndarray, np.ndarray]:
        (t_point, t_reps), (s_point, s_reps) = curve_pair(bootstrap, *curves[name], design)
        return front_at(t_point, s_point, level), front_at(t_reps, s_reps, level)

    def mean_difference(design: str) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        k_point, k_reps = fronts(label, design)
        r_point, r_reps = fronts(reference, design)
        weights = bootstrap.designs[design][1]
        differences = k_reps - r_reps
        usable = np.isfinite(differences)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates = (np.where(usable, differences, 0) * weights).sum(1) / (usable * weights).sum(1)
        point = k_point - r_point
        return (float(np.nanmean(point)) if np.isfinite(point).any() else math.nan), replicates, k_point, r_point

    value, crossed, k_point, r_point = mean_difference("crossed")
    by_seeds = mean_difference("seeds")[1]
    by_utterances = mean_difference("utterances")[1]
    both = int(np.sum(np.isfinite(k_point - r_point)))

    def sd(values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        return float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan

    target, sources = curves[label]
    utterances = min(data.numerator.shape[-1] for data in [*target.values(), *sources.values()])
    estimate = Estimate(
        value,
        sd(crossed) if both > 1 else math.nan,
        math.nan,
        math.nan,
        both,
        sd(by_seeds),
        sd(by_utterances),
        crossed,
        utterances,
    )
    estimate.low, estimate.high = estimate.interval(0.95)
    return FrontReading(
        level, estimate, int(np.isfinite(k_point).sum()), int(np.isfinite(r_point).sum()), bootstrap.seeds
    )
