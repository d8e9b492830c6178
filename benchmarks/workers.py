"""Cells one after another or side by side on this machine: the same cells run by 1 worker (in the driver's
process, every core a torch thread) and by N workers (processes or Ray, the cores shared out as threads).

    .venv/bin/python benchmarks/workers.py [--profile workers] [--workers 2] [--executor local] [--out FILE] [key=value ...]

Each arm runs on a fresh temporary store, so no cell is reused; both share the base cache and the base's evaluation
(made once, by the first arm). Prints the seconds of the cells' phase in each arm (dispatch, training, evaluation
and reading back) and the ratio; ``--out`` writes the table. One run of each arm: a ratio on a busy machine is a
ratio of that load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def arm(profile: str, overrides: list[str], executor: str, workers: int, output: Path) -> float:
    """The seconds of the cells' phase of one run of the profile on a fresh store."""
    from lightning_asr.study.benchmark import Benchmark
    from lightning_asr.study.executors import make_executor
    from lightning_asr.study.profile import load_bench_config

    with tempfile.TemporaryDirectory(prefix="workers-") as folder:
        fresh = [f"tracking_uri=sqlite:///{folder}/mlflow.db", f"artifact_root={folder}/artifacts"]
        bench, path = load_bench_config(profile, overrides + fresh + [f"output_dir={output}"])
        result = Benchmark(bench, path).run(
            bench.seeds, make_executor(executor, workers, bench.execution, None, Path(folder) / "submitit")
        )
        return result.seconds["cells"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="workers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor", default="local", choices=["local", "ray", "submitit"])
    parser.add_argument("--out", help="write the table (markdown) here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the benchmark profile")
    args = parser.parse_args(argv)
    from lightning_asr.console import quiet
    from lightning_asr.study.profile import load_bench_config
    from lightning_asr.study.report import markdown_table

    quiet()
    bench, _ = load_bench_config(args.profile, list(args.overrides))
    cells = (len(bench.strategies) + sum(len(s["values"]) for s in bench.sweeps)) * len(bench.seeds)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="workers-runs-") as output:
        one = arm(args.profile, list(args.overrides), "local", 1, Path(output))
        many = arm(args.profile, list(args.overrides), args.executor, args.workers, Path(output))
    threads = bench.execution.threads_per_cell or max(1, cores // args.workers)
    rows = [
        ["local", "1", str(cores), f"{one:.0f}", "1.00×"],
        [args.executor, str(args.workers), str(threads), f"{many:.0f}", f"{one / many:.2f}×"],
    ]
    table = markdown_table(["executor", "workers", "torch threads each", "cells (s)", "speed-up"], rows)
    text = (
        f"{cells} cells of the `{args.profile}` profile on {cores} cores, each arm on a fresh store (one run of each; "
        f"`benchmarks/workers.py --workers {args.workers} --executor {args.executor}`)\n\n{table}\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({"cells_seconds": [one, many], "speedup": one / many}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
