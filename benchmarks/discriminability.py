"""Which target set lets adaptation strategies differ? The discriminability index of each target's benchmark
result (several strategies, several seeds):

    D = SD over strategies of their mean matched forgetting / pooled SD over seeds within a strategy

Matched forgetting is read on each cell's front (``study/summary.py``): the source cross-entropy where the λ
curve reaches a declared target level, minus the base's; and, as a second reading, the end point's forgetting in
error rate. A target where every learner must flip the same decoder prior makes every method forget alike: a low
D. Also printed: forgetting per source set, so Korean (which the Korean frames partly rehearse) is apart from
English and Mandarin.

    .venv/bin/python benchmarks/discriminability.py [runs/bench/discriminability/forgetting-embedded/result-*.json]
"""

from __future__ import annotations

import argparse
import glob
import math
import sys

import numpy as np

from lightning_asr.study import summary
from lightning_asr.study.report import markdown_table
from lightning_asr.study.result import BenchmarkResult
from lightning_asr.study.statistics import front_at

DEFAULT = "runs/bench/discriminability/forgetting-embedded/result-*.json"


def index(per_strategy: dict[str, list[float]]) -> float:
    """SD of the strategies' means over the pooled within-strategy SD (NaN with fewer than 2 seeds)."""
    groups = [np.array([v for v in values if math.isfinite(v)]) for values in per_strategy.values()]
    groups = [g for g in groups if g.size > 1]
    if len(groups) < 2:
        return math.nan
    pooled = math.sqrt(np.mean([g.var(ddof=1) for g in groups]))
    return float(np.std([g.mean() for g in groups], ddof=1) / pooled) if pooled else math.inf


def matched_forgetting(result: BenchmarkResult, fraction: float) -> dict[str, list[float]]:
    """Per strategy and seed: source cross-entropy on the front at ``fraction`` of the base's target
    cross-entropy, minus the base's source cross-entropy (NaN where the level is not reached), both on the
    utterances the λ curves score (λ = 0 is the base)."""
    (level,) = summary.front_levels(result, [fraction])
    values: dict[str, list[float]] = {}
    for cell in result.cells:
        curve = cell.interpolation["sets"]

        def rate(name: str, curve=curve) -> np.ndarray:
            return np.array(curve[name]["ce"]).sum(1) / np.sum(curve[name]["units"])

        source = np.mean([rate(s) for s in result.source_sets], axis=0)
        values.setdefault(cell.label, []).append(float(front_at(rate(result.target_set), source, level)) - source[0])
    return values


def end_forgetting(result: BenchmarkResult, sets: list[str]) -> dict[str, list[float]]:
    base = np.mean([result.base[s].error() for s in sets])
    values: dict[str, list[float]] = {}
    for cell in result.cells:
        values.setdefault(cell.label, []).append(float(np.mean([cell.scores[s].error() for s in sets]) - base))
    return values


def mean_sd(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "not reached"
    sd = f"{np.std(finite, ddof=1):.3f}" if len(finite) > 1 else "—"
    return f"{np.mean(finite):.3f} ± {sd}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", help=f"result files (default: {DEFAULT})")
    parser.add_argument("--level", type=float, default=0.1, help="front level, a fraction of the base's target CE")
    args = parser.parse_args(argv)
    paths = args.results or sorted(glob.glob(DEFAULT))
    if not paths:
        print(f"no result files ({DEFAULT}): run the discriminability profile first (see its header)", file=sys.stderr)
        return 2
    rows, detail = [], []
    for path in paths:
        result = BenchmarkResult.from_json(open(path).read())
        matched = matched_forgetting(result, args.level)
        end = end_forgetting(result, result.source_sets)
        rows.append(
            [
                result.target_set,
                len(result.labels),
                len(result.seeds),
                index(matched),
                index(end),
                sum(not math.isfinite(v) for values in matched.values() for v in values),
            ]
        )
        korean = [s for s in result.source_sets if s.startswith("ko/")]
        others = [s for s in result.source_sets if s not in korean]
        for label in result.labels:
            by_ko, by_others = end_forgetting(result, korean)[label], end_forgetting(result, others)[label]
            detail.append(
                [
                    result.target_set,
                    label,
                    f"{mean_sd(matched[label])} ({sum(map(math.isfinite, matched[label]))} of {len(result.seeds)})",
                    f"{np.mean(end[label]):.3f} ± {np.std(end[label], ddof=1):.3f}",
                    f"{np.mean(by_ko):.3f}",
                    f"{np.mean(by_others):.3f}",
                ]
            )
    print(f"Written by `benchmarks/discriminability.py --level {args.level:g}` from {', '.join(paths)}.\n")
    print(
        markdown_table(
            [
                "target",
                "strategies",
                "seeds",
                f"D (front CE at {args.level:g} of base)",
                "D (end error)",
                "not reached",
            ],
            rows,
        )
    )
    print()
    print(
        markdown_table(
            [
                "target",
                "strategy",
                "matched forgetting (CE, mean ± SD over the seeds that reach the level)",
                "end forgetting (error)",
                "ko",
                "en + zh",
            ],
            detail,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
