"""The study's command lines (``benchmarks/forgetting.py`` and ``benchmarks/reproduce.py`` call these)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lightning_asr.config import ConfigError

FORGETTING = "Forgetting benchmark: which adaptation strategy learns the target domain and keeps the source domains?"
REPRODUCE = (
    "Reproducing the seeds' claims: named experiments run on the forgetting benchmark, then a report with verdicts."
)


def parse_seeds(text: str | None, default: list[int]) -> list[int]:
    if not text:
        return list(default)
    try:
        return [int(s) for s in text.split(",")]
    except ValueError as err:
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. 1,2,3") from err


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    from lightning_asr.study.executors import EXECUTORS

    parser.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS,
        help="where cells run: this process (local, 1 worker) or worker processes (local), Ray, or submitit (SLURM)",
    )
    parser.add_argument("--workers", type=int, default=1, help="cells run at once (default 1)")
    parser.add_argument("--address", help="an existing Ray cluster (default: a local one of --workers workers)")


def forgetting_main(argv: list[str] | None = None) -> int:
    """``benchmarks/forgetting.py``: the forgetting benchmark of one profile."""
    parser = argparse.ArgumentParser(prog="benchmarks/forgetting.py", description=FORGETTING)
    parser.add_argument("--profile", default="embedded", help="embedded, smoke, or a benchmark YAML")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3 (default: the profile's)")
    parser.add_argument("--force", action="store_true", help="retrain every cell in new MLflow runs")
    parser.add_argument(
        "--check", action="store_true", help="validate the profile and list its cells and manifests; run nothing"
    )
    add_executor_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the benchmark config")
    args = parser.parse_args(argv)
    from lightning_asr.console import quiet
    from lightning_asr.study.benchmark import Benchmark
    from lightning_asr.study.executors import CellFailed, make_executor
    from lightning_asr.study.profile import load_bench_config

    quiet()
    try:
        bench, path = load_bench_config(args.profile, args.overrides)
        seeds = parse_seeds(args.seeds, bench.seeds)
        benchmark = Benchmark(bench, path, args.force)
        executor = make_executor(args.executor, args.workers, bench.execution, args.address, benchmark.out / "submitit")
        if args.check:
            print("\n".join(benchmark.check(seeds, args.workers)))
            return 0
        benchmark.run(seeds, executor)
    except (ValueError, FileExistsError) as err:  # config, manifest, model-spec, tokenizer and adapter errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CellFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def reproduce_main(argv: list[str] | None = None) -> int:
    """``benchmarks/reproduce.py``: the named experiments of a reproduce profile and their report."""
    from lightning_asr.study.claims import EXPERIMENTS

    parser = argparse.ArgumentParser(prog="benchmarks/reproduce.py", description=REPRODUCE)
    parser.add_argument("--profile", default="embedded", help="embedded, tiny, or a YAML under configs/reproduce/")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3 (default: the profile's)")
    parser.add_argument(
        "--experiments", help=f"comma-separated subset of {','.join(EXPERIMENTS)} to run (the report covers all)"
    )
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the report from MLflow")
    parser.add_argument("--check", action="store_true", help="list the planned cells and their cost; run nothing")
    parser.add_argument("--force", action="store_true", help="retrain every cell in new MLflow runs")
    add_executor_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the reproduce profile")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded cell drowns the log
    from lightning_asr.console import quiet
    from lightning_asr.study.executors import CellFailed, make_executor
    from lightning_asr.study.reproduction import Reproduction, say

    quiet()
    try:
        reproduction = Reproduction(args.profile, args.overrides, parse_seeds(args.seeds, []) or None)
        if args.check:
            print("\n".join(reproduction.check()))
            return 0
        selected = args.experiments.split(",") if args.experiments else None
        executor = make_executor(
            args.executor,
            args.workers,
            reproduction.bench.execution,
            args.address,
            Path(reproduction.bench.output_dir) / reproduction.bench.name / "submitit",
        )
        report, failed = reproduction.run(selected, args.force, args.report_only, executor)
        say(f"report: {report.path} ({len(report.missing)} missing cells)")
        for claim in report.claims:
            say(f"  {claim.id}: {claim.verdict.status} — {claim.verdict.reason[:160]}")
        if failed:
            say(f"failed experiments: {', '.join(failed)} (their MLflow parent runs hold the error)")
            return 1
    except (ValueError, FileExistsError) as err:  # config, manifest, model-spec and adapter errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CellFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
