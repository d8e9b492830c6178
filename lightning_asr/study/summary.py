"""The benchmark's comparison as pure functions of its ``BenchmarkResult``: paired, crossed statistics of every
strategy against the reference (``study/statistics.py``), fronts at declared learning levels, and the markdown
the run prints and logs. Nothing here trains, caches or talks to MLflow."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lightning_asr.study.report import markdown_table
from lightning_asr.study.result import BenchmarkResult
from lightning_asr.study.statistics import (
    CONDITIONAL,
    Estimate,
    FrontReading,
    Hypothesis,
    PairedStatistics,
    Ratios,
    curve_pair,
    decide,
    front_at,
    front_difference,
    resolution,
)


def complete_cells(result: BenchmarkResult, sets: list[str], pick) -> dict[str, dict[str, Ratios]]:
    """Per strategy with every seed of the result, per set, the cells' ``pick(cell, set)`` (numerator,
    denominator) stacked as ``Ratios``, seeds in the result's order."""
    cells = {}
    for label in result.labels:
        runs = result.of(label)
        if [c.seed for c in runs] == list(result.seeds):
            cells[label] = {name: Ratios.stack([pick(c, name) for c in runs]) for name in sets}
    return cells


def ratios(result: BenchmarkResult, kind: str) -> tuple[dict[str, Ratios], dict[str, dict[str, Ratios]]]:
    """The base's and every complete strategy's per-utterance ``Ratios`` (``error``: edits over tokens; ``ce``:
    nats over label units), seeds in the result's order."""
    numerator, denominator = ("edits", "tokens") if kind == "error" else ("ce", "ce_units")
    sets = [*result.source_sets, result.target_set]

    def of(scores) -> tuple[np.ndarray, np.ndarray]:
        return getattr(scores, numerator), getattr(scores, denominator)

    base = {name: Ratios.stack([of(result.base[name])]) for name in sets}
    return base, complete_cells(result, sets, lambda cell, name: of(cell.scores[name]))


def drift_ratios(
    result: BenchmarkResult, kind: str = "error"
) -> tuple[dict[str, Ratios], dict[str, dict[str, Ratios]]] | None:
    """The label-free drift of every complete strategy on the source sets as ``Ratios`` (``error``: edits against
    the base's own transcripts over their tokens; ``ce``: the rise of cross-entropy on those transcripts over the
    base's, nats over label units), beside the base's (zero: no drift from itself); None where a cell lacks it
    (results written before it was kept, or a profile that does not score it)."""
    numerator, denominator = ("edits", "tokens") if kind == "error" else ("ce", "ce_units")

    def scored(cell) -> bool:
        return set(result.source_sets) <= set(cell.drift) and all(
            getattr(cell.drift[name], numerator) is not None for name in result.source_sets
        )

    if not result.cells or not all(scored(c) for c in result.cells):
        return None
    cells = complete_cells(
        result,
        result.source_sets,
        lambda cell, name: (getattr(cell.drift[name], numerator), getattr(cell.drift[name], denominator)),
    )
    units = {name: getattr(result.cells[0].drift[name], denominator) for name in result.source_sets}
    base = {name: Ratios.stack([(np.zeros_like(u), u)]) for name, u in units.items()}
    return base, cells


def has_cross_entropy(result: BenchmarkResult) -> bool:
    every = [result.base, *(c.scores for c in result.cells)]
    return all(s.ce is not None and np.isfinite(s.ce).all() for by_set in every for s in by_set.values())


@dataclass
class StrategyComparison:
    label: str
    target_error: float
    source_error: float
    gain: Estimate  # E_tgt(base) − E_tgt(k)
    forgetting: Estimate  # E_src(k) − E_src(base), macro
    forgetting_by_set: dict[str, Estimate]
    forgetting_ce: Estimate | None  # CE_src(k) − CE_src(base), macro
    drift: Estimate | None = None  # error against the base's own transcripts on the source sets, macro
    drift_ce: Estimate | None = None  # rise of cross-entropy on the base's own source transcripts, macro
    vs_reference: dict[str, Hypothesis] = field(default_factory=dict)  # forgetting, target_error, source_ce
    backward_gain: Estimate | None = None  # ratio of means, where the reference's forgetting excludes 0
    backward_gain_reason: str = ""
    fronts: list[FrontReading] = field(default_factory=list)


@dataclass
class Comparison:
    seeds: int
    reference: str
    strategies: list[StrategyComparison]
    levels: list[float]  # the fronts' target cross-entropy levels (nats per unit)
    front_curves: dict[str, dict] = field(default_factory=dict)  # label -> levels, mean, low, high (figure)
    missing: list[str] = field(default_factory=list)  # strategies without every seed

    @property
    def interval(self) -> str:
        if self.seeds < 2:
            return f"95 % utterance bootstrap of one seed, {CONDITIONAL}"
        return (
            f"95 % interval over {self.seeds} seeds and the test utterances (crossed bootstrap, paired; Student t "
            "with Satterthwaite's degrees of freedom)"
        )


def set_resolution(result: BenchmarkResult, sets: list[str]) -> float:
    return resolution([float(result.base[name].tokens.sum()) for name in sets])


def compare(result: BenchmarkResult, statistics, rng_seed: int = 0) -> Comparison:
    """Every strategy against the base and against the reference. ``statistics``: the profile's
    ``StatisticsSection`` (replicates, margins, front levels)."""
    sources, target, reference = result.source_sets, [result.target_set], result.reference
    base, cells = ratios(result, "error")
    if reference not in cells:
        raise ValueError(f"reference {reference!r} lacks some of the seeds {result.seeds}")
    errors = PairedStatistics(base, cells, statistics.replicates, rng_seed)
    with_ce = has_cross_entropy(result)
    ce = PairedStatistics(*ratios(result, "ce"), statistics.replicates, rng_seed) if with_ce else None
    drift_data = drift_ratios(result)
    drift = PairedStatistics(*drift_data, statistics.replicates, rng_seed) if drift_data else None
    drift_ce_data = drift_ratios(result, "ce")
    drift_ce = PairedStatistics(*drift_ce_data, statistics.replicates, rng_seed) if drift_ce_data else None
    margins = dict(statistics.margins)
    reference_forgetting = errors.difference(reference, "base", sources)
    defined = reference_forgetting.low > 0 if not reference_forgetting.conditional else reference_forgetting.value > 0
    levels = front_levels(result, statistics.front_levels) if with_ce else []
    curves = method_curves(result, lambda_ratios(result)) if levels else {}
    strategies = []
    for label in cells:
        comparison = StrategyComparison(
            label,
            float(np.mean([c.scores[result.target_set].error() for c in result.of(label)])),
            float(np.mean([np.mean([c.scores[s].error() for s in sources]) for c in result.of(label)])),
            negate(errors.difference(label, "base", target)),
            errors.difference(label, "base", sources),
            {name: errors.difference(label, "base", [name]) for name in sources},
            ce.difference(label, "base", sources) if ce else None,
            drift.difference(label, "base", sources) if drift and label in drift.cells else None,
            drift_ce.difference(label, "base", sources) if drift_ce and label in drift_ce.cells else None,
        )
        if label != reference and label not in result.methods:  # a sweep cell is a point of its method's front
            comparison.vs_reference = {
                "forgetting": Hypothesis(
                    f"{label}: forgetting",
                    errors.difference(label, reference, sources),
                    "less",
                    margins.get("forgetting", 0.0),
                    set_resolution(result, sources),
                ),
                "target_error": Hypothesis(
                    f"{label}: target error",
                    errors.difference(label, reference, target),
                    "less",
                    margins.get("target_error", 0.0),
                    set_resolution(result, target),
                ),
            }
            exploratory = {
                "source_ce": (ce, "source cross-entropy"),
                "drift": (drift, "label-free drift"),
                "drift_ce": (drift_ce, "label-free drift in cross-entropy"),
            }
            for key, (paired, what) in exploratory.items():
                if paired and label in paired.cells and reference in paired.cells:
                    comparison.vs_reference[key] = Hypothesis(
                        f"{label}: {what}",
                        paired.difference(label, reference, sources),
                        "less",
                        margins.get(key, 0.0),
                        primary=False,
                    )
            if defined:
                comparison.backward_gain = errors.ratio_of_means(label, reference, sources)
            else:
                comparison.backward_gain_reason = (
                    f"not reported: the reference's forgetting {reference_forgetting.text()} does not exclude 0"
                )
            if levels and label in curves and reference in curves:
                comparison.fronts = [
                    front_difference(errors.bootstrap, curves, label, reference, level) for level in levels
                ]
        strategies.append(comparison)
    decide([h for s in strategies for h in s.vs_reference.values()])
    missing = [label for label in result.labels if label not in cells]
    bands = front_bands(result, curves, errors, levels) if curves else {}
    return Comparison(len(result.seeds), reference, strategies, levels, bands, missing)


def negate(estimate: Estimate) -> Estimate:
    return Estimate(
        -estimate.value,
        estimate.se,
        -estimate.high,
        -estimate.low,
        estimate.seeds,
        estimate.se_seeds,
        estimate.se_utterances,
        -estimate.replicates,
        estimate.utterances,
    )


def front_levels(result: BenchmarkResult, fractions: list[float]) -> list[float]:
    """The declared learning levels in nats per unit: fractions of the base's target cross-entropy on the
    utterances the λ curves score (the same for every strategy; no strategy's outcome sets them)."""
    base = result.base[result.target_set]
    if base.ce is None:
        return [math.nan for _ in fractions]
    curves = [
        c.interpolation["sets"][result.target_set]
        for c in result.cells
        if result.target_set in c.interpolation.get("sets", {})
    ]
    scored = len(curves[0]["units"]) if curves else 0
    nats, units = base.ce[: scored or None], base.ce_units[: scored or None]
    return [float(f) * float(np.sum(nats) / np.sum(units)) for f in fractions]


def lambda_ratios(result: BenchmarkResult) -> dict[str, tuple[dict[str, Ratios], dict[str, Ratios]]]:
    """Per complete strategy, (target, sources) ``Ratios`` of its λ curves: (seeds × λ × utterances)."""
    curves = {}
    for label in result.labels:
        runs = result.of(label)
        if [c.seed for c in runs] != list(result.seeds) or not all(c.interpolation for c in runs):
            continue

        def stacked(name: str, runs=runs) -> Ratios:
            numerator = np.stack([np.array(c.interpolation["sets"][name]["ce"], dtype=float) for c in runs])
            units = np.stack([np.array(c.interpolation["sets"][name]["units"], dtype=float) for c in runs])
            return Ratios(numerator, np.broadcast_to(units[:, None, :], numerator.shape).copy())

        curves[label] = (
            {result.target_set: stacked(result.target_set)},
            {name: stacked(name) for name in result.source_sets},
        )
    return curves


def method_curves(result: BenchmarkResult, curves: dict) -> dict:
    """Per strategy, its λ curves and those of its knob-sweep cells (``result.methods``) as one set of points,
    each curve after the first behind a NaN point so that no segment joins two curves: the lower envelope
    (``front_at``) is then the method's front over every setting it was run at."""
    grouped = {}
    for label, (target, sources) in curves.items():
        if label in result.methods:
            continue
        members = [label] + [v for v, method in result.methods.items() if method == label and v in curves]

        def joined(side: int, name: str, members=members) -> Ratios:
            parts = []
            for index, member in enumerate(members):
                data = curves[member][side][name]
                if index:
                    gap = np.full(data.numerator[:, :1].shape, np.nan)
                    parts.append((gap, np.ones_like(gap)))
                parts.append((data.numerator, data.denominator))
            return Ratios(np.concatenate([n for n, _ in parts], axis=1), np.concatenate([d for _, d in parts], axis=1))

        grouped[label] = ({name: joined(0, name) for name in target}, {name: joined(1, name) for name in sources})
    return grouped


def front_bands(result: BenchmarkResult, curves: dict, statistics: PairedStatistics, levels: list[float]) -> dict:
    """For the figure: each strategy's front (source cross-entropy, mean over seeds; ``curves`` from
    ``lambda_ratios``) on a grid of target levels from the base's down to below the deepest declared level, with a
    95 % crossed-bootstrap band."""
    base_level = result.base[result.target_set].cross_entropy()
    grid = np.linspace(min(levels) * 0.8, base_level, 40)
    weights_s = statistics.bootstrap.designs["crossed"][1]
    bands = {}
    for label, (target, sources) in curves.items():
        (t_point, t_reps), (s_point, s_reps) = curve_pair(statistics.bootstrap, target, sources)
        mean, low, high = [], [], []
        for level in grid:
            point = front_at(t_point, s_point, level)
            reps = front_at(t_reps, s_reps, level)
            usable = np.isfinite(reps)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_replicate = (np.where(usable, reps, 0) * weights_s).sum(1) / (usable * weights_s).sum(1)
            finite = per_replicate[np.isfinite(per_replicate)]
            mean.append(float(np.nanmean(point)) if np.isfinite(point).any() else math.nan)
            lo, hi = np.percentile(finite, [2.5, 97.5]) if finite.size else (math.nan, math.nan)
            low.append(float(lo))
            high.append(float(hi))
        bands[label] = {"levels": grid.tolist(), "mean": mean, "low": low, "high": high}
    return bands


def table_rows(comparison: Comparison) -> list[dict]:
    """One flat row per strategy (values with ``_low``/``_high``): the CSV, the MLflow table and the trade-off
    figure."""
    rows = []
    for s in comparison.strategies:
        row = {"strategy": s.label, "seeds": comparison.seeds, "target_error": s.target_error}
        row["source_error"] = s.source_error
        estimates = {
            "adaptation_gain": s.gain,
            "forgetting": s.forgetting,
            "forgetting_ce": s.forgetting_ce,
            "drift": s.drift,
            "drift_ce": s.drift_ce,
        }
        estimates.update({f"forgetting/{name}": e for name, e in s.forgetting_by_set.items()})
        estimates.update({f"delta_{key}": h.estimate for key, h in s.vs_reference.items()})
        estimates["backward_gain"] = s.backward_gain
        for index, reading in enumerate(s.fronts):
            estimates[f"front{index}_delta_source_ce"] = reading.difference
        for key, estimate in estimates.items():
            values = (estimate.value, estimate.low, estimate.high) if estimate else (math.nan,) * 3
            row[key], row[f"{key}_low"], row[f"{key}_high"] = values
        row.update({f"verdict_{key}": h.verdict for key, h in s.vs_reference.items()})
        rows.append(row)
    return rows


def planned_power(
    result: BenchmarkResult, seed_counts: list[int], replicates: int = 1000, utterances: int | None = None
) -> list[list]:
    """What a study of this design could detect, from the variance a finished multi-seed result measured: per
    strategy, the minimum detectable ΔF and ΔE (two-sided 5 %, 80 % power) at each seed count, ΔF also as a
    share of the reference's forgetting. The seed component shrinks with more seeds; the utterance component
    (the same test sets for every seed) does not, but shrinks with ``utterances`` per test set (default: the
    result's own)."""
    from lightning_asr.study.statistics import planned_minimum_detectable

    base, cells = ratios(result, "error")
    statistics = PairedStatistics(base, cells, replicates)
    sources, target = result.source_sets, [result.target_set]
    reference_forgetting = statistics.difference(result.reference, "base", sources).value
    rows = []
    for label in cells:
        if label == result.reference or label in result.methods:
            continue
        forgetting = statistics.difference(label, result.reference, sources)
        target_error = statistics.difference(label, result.reference, target)
        scale = math.sqrt(statistics.utterances / utterances) if utterances else 1.0
        for seeds in seed_counts:
            mde_f = planned_minimum_detectable(
                forgetting.se_seeds, scale * forgetting.se_utterances, forgetting.seeds, seeds
            )
            mde_e = planned_minimum_detectable(
                target_error.se_seeds, scale * target_error.se_utterances, target_error.seeds, seeds
            )
            # the reproduction's primary family is three claims: Holm's first step tests at a third of 5 %
            mde_f_holm = planned_minimum_detectable(
                forgetting.se_seeds, scale * forgetting.se_utterances, forgetting.seeds, seeds, alpha=0.05 / 3
            )
            share, share_holm = (
                (mde_f / reference_forgetting, mde_f_holm / reference_forgetting)
                if reference_forgetting > 0
                else (math.nan, math.nan)
            )
            rows.append(
                [
                    label,
                    seeds,
                    utterances or statistics.utterances,
                    f"{mde_f:.4f}",
                    f"{share:.0%}",
                    f"{share_holm:.0%}",
                    f"{mde_e:.4f}",
                ]
            )
    return rows


# ---- text -----------------------------------------------------------------------------------------------------
def markdown(comparison: Comparison, result: BenchmarkResult, unit: str) -> str:
    """The comparison as the run prints it and logs it (``comparison.md``)."""
    sources = ", ".join(result.source_sets)
    one_run = comparison.seeds < 2
    lines = [
        f"# {result.name}",
        "",
        f"Error rates as fractions: target {result.target_set} ({unit}); source = macro average over {sources} "
        f"(WER for English, CER for Korean and Chinese). Cross-entropy: teacher-forced, nats per label unit. "
        f"Reference: {comparison.reference}. Brackets: {comparison.interval}.",
    ]
    if result.seconds:
        stages = ", ".join(f"{stage} {value:.0f} s" for stage, value in result.seconds.items())
        lines += ["", f"Run: commit {result.git_commit[:10] or 'unknown'}, seeds {result.seeds}; wall time {stages}."]
    if one_run:
        lines += [
            "",
            "**One run.** With one seed nothing measures how much a rerun moves these numbers (training "
            "randomness moved single-run backward gains by up to 0.3 here): every interval below is conditional "
            "on this training run and no difference is a finding. `SEEDS=...` with the profile's "
            "`statistics.decision_seeds` gives verdicts.",
        ]
    lines += ["", "## Each strategy against the base", ""]
    base_ce = [result.base[name].cross_entropy() for name in result.source_sets]
    with_drift_ce = any(s.drift_ce for s in comparison.strategies)
    table = [
        [
            "base",
            f"{result.base[result.target_set].error():.3f}",
            "",
            f"{np.mean([result.base[name].error() for name in result.source_sets]):.3f}",
            "",
            f"(source CE {np.mean(base_ce):.3f})",
            *[f"({result.base[name].error():.3f})" for name in result.source_sets],
            "0",
            *(["0"] if with_drift_ce else []),
            "",
        ]
    ]
    for s in comparison.strategies:
        table.append(
            [
                s.label,
                f"{s.target_error:.3f}",
                s.gain.text(),
                f"{s.source_error:.3f}",
                s.forgetting.text(),
                s.forgetting_ce.text() if s.forgetting_ce else "—",
                *[s.forgetting_by_set[name].text() for name in result.source_sets],
                s.drift.text() if s.drift else "—",
                *([s.drift_ce.text() if s.drift_ce else "—"] if with_drift_ce else []),
                ", ".join(f"{c.stopped_step:.0f}" for c in result.of(s.label)),
            ]
        )
    lines.append(
        markdown_table(
            [
                "strategy",
                "target error",
                "adaptation gain",
                "source error",
                "forgetting",
                "forgetting (CE)",
                *[f"forgetting {name}" for name in result.source_sets],
                "drift (no labels)",
                *(["drift in CE (no labels)"] if with_drift_ce else []),
                "stopped at step",
            ],
            table,
        )
    )
    lines += [
        "",
        "Drift (no labels): the strategy's source transcripts scored against the base's own transcripts of the "
        "same audio, macro-averaged; it needs no reference transcripts and counts any change, an improvement "
        "included, so it is the retention measure where the base beats the source transcripts."
        + (
            " Drift in CE: the rise of the strategy's teacher-forced cross-entropy (nats per token) on the base's "
            "own source transcripts over the base's."
            if with_drift_ce
            else ""
        ),
    ]
    lines += [
        "",
        f"## Against the reference ({comparison.reference}), paired by seed and utterance",
        "",
        "Differences are strategy minus reference (negative: forgets less, or lower target error). Verdicts: "
        "Holm-corrected over the forgetting and target-error comparisons of every strategy; source "
        "cross-entropy and drift are exploratory; *equivalent* = 90 % interval inside ±margin; *not detected* gives the "
        "minimum detectable difference at 80 % power. Backward gain = (F̄_ref − F̄_k) / F̄_ref, a ratio of means.",
        "",
    ]
    table = []
    for s in comparison.strategies:
        if not s.vs_reference:
            continue
        f, e = s.vs_reference["forgetting"], s.vs_reference["target_error"]
        c, d, dc = (s.vs_reference.get(key) for key in ("source_ce", "drift", "drift_ce"))
        table.append(
            [
                s.label,
                f.estimate.text(),
                f"{f.verdict}: {f.reason}",
                e.estimate.text(),
                f"{e.verdict}: {e.reason}",
                c.estimate.text() if c else "—",
                d.estimate.text() if d else "—",
                *([dc.estimate.text() if dc else "—"] if with_drift_ce else []),
                s.backward_gain.text() if s.backward_gain else s.backward_gain_reason,
            ]
        )
    lines.append(
        markdown_table(
            [
                "strategy",
                "ΔF",
                "forgetting verdict",
                "ΔE",
                "target verdict",
                "ΔCE source",
                "Δdrift (no labels)",
                *(["Δdrift in CE"] if with_drift_ce else []),
                "backward gain",
            ],
            table,
        )
    )
    if comparison.levels:
        lines += [
            "",
            "## Fronts: forgetting at matched learning",
            "",
            "Each cell's model between the base (λ = 0) and the adapted model (λ = 1) in steps of 0.1, scored by "
            "cross-entropy on the test sets; a strategy's front is the lower envelope of its points (source "
            "cross-entropy against target cross-entropy). Read at declared target levels (fractions "
            "of the base's target cross-entropy, the same for every strategy, the reference included): the "
            "difference of source cross-entropy from the reference's, and in how many seeds each reaches the level."
            + (
                " A strategy with a knob sweep ("
                + ", ".join(sorted(result.methods))
                + ") is read on the envelope of all its cells' curves."
                if result.methods
                else ""
            ),
            "",
        ]
        table = []
        for s in comparison.strategies:
            for reading in s.fronts:
                table.append(
                    [
                        s.label,
                        f"{reading.level:.3f}",
                        reading.difference.text(),
                        f"{reading.reached}/{reading.seeds}",
                        f"{reading.reference_reached}/{reading.seeds}",
                    ]
                )
        lines.append(
            markdown_table(
                ["strategy", "target CE level", "ΔCE source at the level", "reached", "reference reached"], table
            )
        )
    if comparison.missing:
        lines += ["", f"Left out (not every seed finished): {', '.join(comparison.missing)}."]
    return "\n".join(lines) + "\n"


def closing_lines(comparison: Comparison, result: BenchmarkResult, unit: str) -> list[str]:
    """One line per strategy: what it learned and what it forgot, marked as one run where it is."""
    base_target = result.base[result.target_set].error()
    base_source = float(np.mean([result.base[s].error() for s in result.source_sets]))
    mark = " (one run)" if comparison.seeds < 2 else ""
    return [
        f"{s.label:<10} learned {s.gain.value:+.3f} {unit} ({base_target:.3f} -> {s.target_error:.3f}); forgot "
        f"{s.forgetting.value:+.3f} source error ({base_source:.3f} -> {s.source_error:.3f}){mark}"
        for s in comparison.strategies
    ]
