"""Cells as tasks: a benchmark's plan is a list of cell specifications, and running one is a function from a
specification to a finished run in the tracking store.

The sequential runner (``Benchmark.run``) calls it in a loop in its own process. Anything that runs a cell
elsewhere (another process, a job on another machine) calls ``run_cell_task`` there, or
``python -m lightning_asr.study.tasks SPEC.json``. Where the profile's data, base cache and tracking store are
reachable, the cell reads its stages 0 and 1 from their caches (a base is pretrained once, under a lock) and
writes one run, found again by its cell identity as every cell is: a cell finished before is reused, an
interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CellSpec:
    """One cell of a benchmark run: the resolved profile (its ``BenchConfig`` as YAML, overrides applied), the
    file it was read from, the strategy entry's label, the seed, the parent run the cell's run is nested
    under (empty: none), and the directory the profile's relative paths are read from (empty: the worker's
    own)."""

    profile: str
    config_path: str
    label: str
    seed: int
    parent_run_id: str = ""
    directory: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        return cls(**json.loads(text))


def bench_from_spec(spec: CellSpec):
    from omegaconf import OmegaConf

    from lightning_asr.study.profile import BenchConfig

    return OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.create(spec.profile))


def run_cell_task(spec: CellSpec) -> str:
    """Run the cell ``spec`` names, with every stage before it read from its cache (or made, once); return the
    MLflow run id that holds its result."""
    from lightning_asr.study import tracking
    from lightning_asr.study.benchmark import Benchmark

    if spec.directory:
        os.chdir(spec.directory)  # a worker an engine started elsewhere reads the profile's paths from there
    benchmark = Benchmark(bench_from_spec(spec), Path(spec.config_path))
    bench = benchmark.bench
    benchmark.corpus_checksum = benchmark.prepare_data()
    base_spec = benchmark.base.prepare()
    benchmark.evaluate_base(base_spec)
    client = tracking.client_for(bench.tracking_uri)
    experiment = tracking.experiment_id(client, bench.name, bench.artifact_root)
    cell = benchmark.run_cell(client, experiment, spec.parent_run_id, benchmark.entry(spec.label), spec.seed, base_spec)
    return cell.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark cell from its specification (a JSON file).")
    parser.add_argument("spec", help="a CellSpec as JSON (Benchmark.plan writes them)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    run_id = run_cell_task(CellSpec.from_json(Path(args.spec).read_text()))
    print(run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
