"""Where a benchmark's cells run: every executor takes the plan (``CellSpec``s) and returns, in the plan's order,
the MLflow run id that holds each cell's result. Each runs ``tasks.run_cell_task`` somewhere:

- ``local`` with 1 worker: in the driver's process, one cell after another (``Benchmark.run`` calls the cells
  itself; this module is not involved).
- ``local`` with N workers: N processes on this machine (``python -m lightning_asr.study.tasks``), each with its
  share of the cores as torch threads.
- ``ray``: one Ray task per cell with the resources it declares (CPU threads, GPUs); a local cluster of N
  workers by default, an existing cluster with ``address``. A worker that dies is a system failure to Ray: the
  task runs again, up to ``retries`` times.
- ``submitit``: one job per cell in a SLURM job array (``slurm_array_parallelism`` N), or submitit's local
  executor where no SLURM is found (or ``cluster: local``). A job that dies is submitted again, up to ``retries``
  times.

A cell run again after its worker died resumes from its last checkpoint in its own run, or starts again in a
new one while the abandoned run is closed as killed (``Benchmark.run_cell``): the store holds one finished run
per cell identity. An error the cell raises itself (a bad config, a diverged run) is not retried: it would
raise again.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from lightning_asr.config import ConfigError
from lightning_asr.study.profile import ExecutionSection
from lightning_asr.study.tasks import CellSpec, run_cell_task

EXECUTORS = ("local", "ray", "submitit")


class CellFailed(RuntimeError):
    """Cells that did not finish, each with what its worker reported."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        lines = [
            f"  {cell}: {reason.strip().splitlines()[-1] if reason.strip() else 'no output'}"
            for cell, reason in failures.items()
        ]
        super().__init__(f"{len(failures)} cell(s) did not finish:\n" + "\n".join(lines))


def cell_name(spec: CellSpec) -> str:
    return f"{spec.label}-seed{spec.seed}"


def threads_per_cell(execution: ExecutionSection, workers: int) -> int:
    if execution.threads_per_cell > 0:
        return execution.threads_per_cell
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def run_cell_with_threads(spec: CellSpec, threads: int) -> str:
    """``run_cell_task`` with the cell's share of the cores as torch threads (the worker's own process)."""
    import torch

    torch.set_num_threads(threads)
    return run_cell_task(spec)


class LocalProcesses:
    """N worker processes on this machine, each running one cell at a time."""

    name = "local"

    def __init__(self, workers: int, execution: ExecutionSection):
        self.workers, self.execution = workers, execution
        self.threads = threads_per_cell(execution, workers)

    def run(self, specs: list[CellSpec]) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="cells-") as folder:

            def one(index: int) -> tuple[str | None, str]:
                spec = specs[index]
                path = Path(folder) / f"{index}.json"
                path.write_text(spec.to_json())
                reason = ""
                for _attempt in range(self.execution.retries + 1):
                    env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
                    command = [sys.executable, "-m", "lightning_asr.study.tasks", str(path)]
                    with tempfile.TemporaryFile("w+") as errors:
                        worker = subprocess.Popen(
                            command + ["--threads", str(self.threads)],
                            stdout=subprocess.PIPE,
                            stderr=errors,
                            text=True,
                            env=env,
                        )
                        last = ""
                        for line in worker.stdout:  # the cell's progress as it comes; its run id last
                            sys.stdout.write(line)
                            sys.stdout.flush()
                            last = line.strip() or last
                        returncode = worker.wait()
                        errors.seek(0)
                        reason = errors.read()[-2000:] or f"exit status {returncode}"
                    if returncode == 0:
                        return last, ""
                    if returncode > 0:  # the cell's own error: it would raise again
                        break
                return None, reason  # killed by a signal every time, or failed

            with ThreadPoolExecutor(self.workers) as pool:
                outcomes = list(pool.map(one, range(len(specs))))
        return collect(specs, outcomes)


class RayCells:
    """One Ray task per cell on a local cluster of N workers, or on the cluster at ``address``."""

    name = "ray"

    def __init__(self, workers: int, execution: ExecutionSection, address: str | None = None):
        self.workers, self.execution, self.address = workers, execution, address
        self.threads = threads_per_cell(execution, workers)

    def run(self, specs: list[CellSpec]) -> list[str]:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                ray.init(address=self.address, log_to_driver=True)
            else:
                ray.init(
                    num_cpus=self.workers * self.threads,
                    num_gpus=self.workers * self.execution.gpus_per_cell,
                    include_dashboard=False,
                    log_to_driver=True,
                    # the cells exchange run ids, not tensors: a small object store
                    object_store_memory=100 * 1024 * 1024,
                )
        try:
            task = ray.remote(
                num_cpus=self.threads, num_gpus=self.execution.gpus_per_cell, max_retries=self.execution.retries
            )(run_cell_with_threads)
            futures = [task.remote(spec, self.threads) for spec in specs]
            outcomes = []
            for future in futures:
                try:
                    outcomes.append((ray.get(future), ""))
                except Exception as err:  # the cell's own error, or its worker died more than `retries` times
                    outcomes.append((None, f"{type(err).__name__}: {err}"))
        finally:
            if started_here:
                ray.shutdown()
        return collect(specs, outcomes)


class SubmititCells:
    """One submitit job per cell: a SLURM job array, or submitit's local executor."""

    name = "submitit"

    def __init__(self, workers: int, execution: ExecutionSection, folder: Path):
        self.workers, self.execution, self.folder = workers, execution, folder
        self.threads = threads_per_cell(execution, workers)

    def executor(self):
        import submitit

        executor = submitit.AutoExecutor(folder=str(self.folder), cluster=self.execution.cluster or None)
        executor.update_parameters(
            cpus_per_task=self.threads,
            slurm_array_parallelism=self.workers,
            **({"gpus_per_node": self.execution.gpus_per_cell} if self.execution.gpus_per_cell else {}),
            **self.execution.slurm,
        )
        return executor

    def run(self, specs: list[CellSpec]) -> list[str]:
        executor = self.executor()
        outcomes: list[tuple[str | None, str]] = [(None, "not run")] * len(specs)
        pending = list(range(len(specs)))
        for _attempt in range(self.execution.retries + 1):
            if not pending:
                break
            retry = []
            # submitit's local executor starts every job of an array at once: waves of `workers` keep N running
            wave = self.workers if executor.cluster == "local" else len(pending)
            for start in range(0, len(pending), wave):
                indices = pending[start : start + wave]
                jobs = executor.map_array(
                    run_cell_with_threads, [specs[i] for i in indices], [self.threads] * len(indices)
                )
                for index, job in zip(indices, jobs):
                    try:
                        outcomes[index] = (job.result(), "")
                    except Exception as err:
                        outcomes[index] = (None, f"{type(err).__name__}: {err}")
                        if not cell_raised(err):
                            retry.append(index)  # the job died (killed, node lost, timed out): run it again
            pending = retry
        return collect(specs, outcomes)


def cell_raised(err: Exception) -> bool:
    """Whether a submitit job failed because the cell raised (submitit relays the traceback), rather than died."""
    import submitit

    return isinstance(err, submitit.core.utils.FailedJobError) and "Traceback" in str(err)


def collect(specs: list[CellSpec], outcomes: list[tuple[str | None, str]]) -> list[str]:
    failures = {cell_name(spec): reason for spec, (run_id, reason) in zip(specs, outcomes) if run_id is None}
    if failures:
        raise CellFailed(failures)
    return [run_id for run_id, _ in outcomes]


def make_executor(name: str, workers: int, execution: ExecutionSection, address: str | None, folder: Path):
    """The executor ``name`` for ``workers`` workers; None for the sequential in-process runner."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r}: choose from {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    if address and name != "ray":
        raise ConfigError(f"--address names a Ray cluster; it means nothing to --executor {name}")
    if name == "local":
        return None if workers == 1 else LocalProcesses(workers, execution)
    if name == "ray":
        return RayCells(workers, execution, address)
    return SubmititCells(workers, execution, folder)


def leaves_machine(executor) -> bool:
    """Whether the executor's workers may run on other machines (a loopback tracking server cannot serve them)."""
    if isinstance(executor, RayCells):
        return bool(executor.address)
    if isinstance(executor, SubmititCells):  # submitit picks SLURM where sbatch is found
        return executor.execution.cluster != "local" and shutil.which("sbatch") is not None
    return False


def for_workers(specs: list[CellSpec], tracking_uri: str) -> list[CellSpec]:
    """The specs as workers get them: logging to ``tracking_uri``, relative paths read from this directory."""
    from omegaconf import OmegaConf

    def rewrite(spec: CellSpec) -> CellSpec:
        profile = OmegaConf.create(spec.profile)
        profile.tracking_uri = tracking_uri
        return replace(spec, profile=OmegaConf.to_yaml(profile), directory=spec.directory or os.getcwd())

    return [rewrite(spec) for spec in specs]


def makespan(cell_seconds: list[float], workers: int) -> float:
    """The wall time of cells of these durations on ``workers`` workers, longest first to the least loaded worker
    (a cluster scheduler does no better than this without knowing more)."""
    loads = [0.0] * max(workers, 1)
    for seconds in sorted(cell_seconds, reverse=True):
        loads[loads.index(min(loads))] += seconds
    return max(loads) if cell_seconds else 0.0


def makespan_text(methods: list[str], cell_seconds: dict, workers: int) -> str:
    known = [cell_seconds[m] for m in methods if m in cell_seconds]
    if not known or workers < 2:
        return ""
    total = sum(known)
    span = makespan(known, workers)
    return (
        f"; on {workers} workers about {span / 60:.0f} min ({total / span:.1f}× one worker; each worker as fast as "
        f"the machine cell_seconds was measured on, which {workers} workers sharing this machine's cores are not)"
        if math.isfinite(span) and span > 0
        else ""
    )
