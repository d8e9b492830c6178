"""The embedded base for several pretraining seeds: is it a recipe or a lottery?

    .venv/bin/python benchmarks/base_seeds.py [--profile embedded] [--seeds 0,1,2] [key=value ...]

For each seed, pretrains the profile's base exactly as ``make bench-forgetting`` does (stage 0, cached
under ``base.cache_dir`` like any base; seed 0 is the profile's own base) with ``base.train.seed`` and
``base.train.model.init_seed`` set to the seed, then scores it on the source test sets. Prints per seed the
steps it trained, its pretraining time, its dev errors (what the gate reads) and its test errors, and
whether it passed the gate. A seed whose base fails the gate is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def shown(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in values.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the benchmark profile")
    args = parser.parse_args(argv)
    from lightning_asr.console import quiet
    from lightning_asr.study.base_model import BaseGateError
    from lightning_asr.study.benchmark import Benchmark
    from lightning_asr.study.forgetting import errors
    from lightning_asr.study.profile import load_bench_config

    quiet()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        overrides = list(args.overrides) + [f"base.train.seed={seed}", f"base.train.model.init_seed={seed}"]
        bench, path = load_bench_config(args.profile, overrides)
        benchmark = Benchmark(bench, path)
        started = time.perf_counter()
        benchmark.corpus_checksum = benchmark.prepare_data()
        try:
            base = benchmark.base.prepare()
            passed = True
        except BaseGateError as err:
            print(f"seed {seed}: {err}", flush=True)
            base, passed = str(err.path), False
        record = json.loads((Path(base) / "pretraining.json").read_text())
        scores = errors(benchmark.evaluate_base(base)[0])
        test = {name: scores[name] for name in benchmark.source_names}
        rows.append(
            (
                seed,
                record.get("stopped_at_step"),
                record.get("train_seconds"),
                record.get("dev_errors", {}),
                test,
                passed,
                time.perf_counter() - started,
            )
        )
    print("\n| seed | steps | pretraining s | dev errors | test errors | gate |\n|---|---|---|---|---|---|")
    for seed, steps, seconds, dev, test, passed, _ in rows:
        print(f"| {seed} | {steps} | {seconds} | {shown(dev)} | {shown(test)} | {'passed' if passed else 'FAILED'} |")
    return 0 if all(row[5] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
