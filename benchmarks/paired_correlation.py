"""What pairing buys: for each strategy against the reference, the spread over seeds of the paired forgetting
difference ΔF and the correlation of the two strategies' forgetting over seeds, in error rate and in
cross-entropy. Run on the ``crn`` profile's result, where ``blora`` shares LoRA's initial draws at every seed and
``blora-independent`` does not (same data order), the ratio of the two variances is the factor in seeds that the
shared draws save:

    make bench-forgetting PROFILE=crn
    .venv/bin/python benchmarks/paired_correlation.py [runs/bench/crn/forgetting-embedded/result-<target>.json]

With a handful of seeds these are rough: the 90 % interval of an SD ratio from 4 seeds spans about 3× each way.
"""

from __future__ import annotations

import argparse
import glob
import math
import sys
from pathlib import Path

import numpy as np

from lightning_asr.study import summary
from lightning_asr.study.report import markdown_table
from lightning_asr.study.result import BenchmarkResult
from lightning_asr.study.statistics import PairedStatistics, pooled

DEFAULT = "runs/bench/crn/forgetting-embedded/result-*.json"


def per_seed_forgetting(statistics: PairedStatistics, label: str, sets: list[str]) -> np.ndarray:
    """Per seed: the macro source rate of ``label`` minus the base's (the base has one row)."""
    rate = np.mean([pooled(statistics.cells[label][s]) for s in sets], axis=0)
    base = np.mean([pooled(statistics.base[s]) for s in sets])
    return rate - base


def rows(result: BenchmarkResult, kind: str) -> list[list[str]]:
    base, cells = summary.ratios(result, kind)
    statistics = PairedStatistics(base, cells, replicates=200)
    sources, reference = result.source_sets, result.reference
    reference_forgetting = per_seed_forgetting(statistics, reference, sources)
    table = []
    for label in cells:
        if label == reference:
            continue
        forgetting = per_seed_forgetting(statistics, label, sources)
        difference = forgetting - reference_forgetting
        correlation = float(np.corrcoef(forgetting, reference_forgetting)[0, 1]) if len(forgetting) > 2 else math.nan
        table.append(
            [
                kind,
                label,
                str(len(forgetting)),
                f"{np.std(reference_forgetting, ddof=1):.4f}",
                f"{np.std(forgetting, ddof=1):.4f}",
                f"{correlation:+.2f}",
                f"{np.std(difference, ddof=1):.4f}",
            ]
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", help=f"result JSON files (default: {DEFAULT})")
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    args = parser.parse_args(argv)
    written = []
    paths = args.results or sorted(glob.glob(DEFAULT))
    if not paths:
        print(f"no result at {DEFAULT}: run `make bench-forgetting PROFILE=crn` first", file=sys.stderr)
        return 2
    for path in paths:
        result = BenchmarkResult.from_json(open(path).read())
        if len(result.seeds) < 3:
            print(f"{path}: {len(result.seeds)} seeds; a spread over seeds needs at least 3", file=sys.stderr)
            return 2
        table = rows(result, "error") + (rows(result, "ce") if summary.has_cross_entropy(result) else [])
        written.append(f"{path} (target {result.target_set}, reference {result.reference}, seeds {result.seeds})\n")
        written.append(
            markdown_table(
                [
                    "metric",
                    "strategy",
                    "seeds",
                    f"SD of {result.reference}'s forgetting",
                    "SD of its forgetting",
                    "correlation over seeds",
                    "SD of ΔF per seed",
                ],
                table,
            )
            + "\n"
        )
    print("\n".join(written))
    if args.out:
        Path(args.out).write_text("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
