"""A benchmark's cells dispatched by engines (Ray, submitit's local executor) through a loopback MLflow server:
the same cells, run by run, as the sequential runner, and one finished run per cell when a worker is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY_CELL = b"ray::run_cell_with_threads"  # the process title Ray gives a worker running a cell


def overrides(tmp: Path, store: str) -> list[str]:
    """The smoke profile on its own store and output, sharing the corpus and the base cache; one torch thread
    per cell everywhere, so that the same cell gives the same numbers in any process."""
    return [
        f"tracking_uri=sqlite:///{tmp}/{store}.db",
        f"artifact_root={tmp}/artifacts-{store}",
        f"output_dir={tmp}/runs-{store}",
        f"corpus.root={tmp}/corpus",
        f"base.cache_dir={tmp}/bases",
        "execution.threads_per_cell=1",
    ]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    import torch

    from lightning_asr.study.cli import forgetting_main

    tmp = tmp_path_factory.mktemp("grid")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert forgetting_main(["--profile", "smoke", *overrides(tmp, "sequential")]) == 0
    finally:
        torch.set_num_threads(threads)
    return tmp


def finished_cells(tmp: Path, store: str, tracking_uri: str = "") -> dict[str, tuple[str, dict]]:
    """Per cell of the store: its identity (config hash) and its test metrics; exactly one finished run each."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{tmp}/{store}.db")
    experiment = client.get_experiment_by_name("forgetting-smoke")
    cells = {}
    for run in client.search_runs([experiment.experiment_id]):
        tags = run.data.tags
        if tags.get("lightning_asr.status") != "finished" or "lightning_asr.cell" not in tags:
            continue
        assert tags["lightning_asr.cell"] not in cells, f"two finished runs of {tags['lightning_asr.cell']}"
        metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
        cells[tags["lightning_asr.cell"]] = (tags["lightning_asr.config_hash"], metrics)
    return cells


def cell_workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(RAY_CELL):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_ray_grid_with_a_killed_worker_gives_the_sequential_cells(sequential):
    """2 Ray workers, one killed (SIGKILL) while it runs a cell: Ray runs the cell again, the store holds one
    finished run per cell, and every cell has the sequential runner's identity and test metrics."""
    tmp = sequential
    log = tmp / "ray.log"
    with open(log, "w") as output:
        driver = subprocess.Popen(
            [
                sys.executable,
                "benchmarks/forgetting.py",
                "--profile",
                "smoke",
                "--executor",
                "ray",
                "--workers",
                "2",
                *overrides(tmp, "ray"),
            ],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    killed = None
    try:
        deadline = time.monotonic() + 900
        while driver.poll() is None and time.monotonic() < deadline:
            if killed is None and (workers := cell_workers()):
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        assert driver.poll() == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    text = log.read_text()
    assert killed is not None and "logging through http://127.0.0.1:" in text
    assert "cells: 2 finished on 2 workers" in text
    assert finished_cells(tmp, "ray") == finished_cells(tmp, "sequential")


def test_submitit_s_local_executor_gives_the_sequential_cells(sequential):
    from lightning_asr.study.cli import forgetting_main

    tmp = sequential
    args = ["--profile", "smoke", "--executor", "submitit", "--workers", "2", "execution.cluster=local"]
    assert forgetting_main(args + overrides(tmp, "submitit")) == 0
    assert list((tmp / "runs-submitit" / "forgetting-smoke" / "submitit").glob("*_result.pkl"))
    assert finished_cells(tmp, "submitit") == finished_cells(tmp, "sequential")


def test_worker_processes_log_through_a_server_on_postgresql(sequential):
    """The tracking store many writers share on a real database: an MLflow server on PostgreSQL with proxied
    artifacts, written by 2 local worker processes; every cell reads back through the server as the sequential
    runner made it, and its artifacts sit in the server's artifact store."""
    from mlflow.tracking import MlflowClient
    from postgres import postgres_database, server_binaries

    from lightning_asr.study import tracking
    from lightning_asr.study.cli import forgetting_main

    binaries, why = server_binaries()
    if binaries is None:
        pytest.skip(why)
    tmp = sequential
    with postgres_database() as database:
        with tracking.mlflow_server(database, tmp / "postgres-server.log", str(tmp / "served-artifacts")) as uri:
            args = ["--profile", "smoke", "--executor", "local", "--workers", "2", *overrides(tmp, "postgres")]
            args += [f"tracking_uri={uri}", "artifact_root=mlflow-artifacts:/"]
            assert forgetting_main(args) == 0
            cells = finished_cells(tmp, "postgres", uri)
            assert cells == finished_cells(tmp, "sequential")
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name("forgetting-smoke")
            for run in client.search_runs([experiment.experiment_id], "tags.`lightning_asr.status` = 'finished'"):
                assert "predictions.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(list((tmp / "served-artifacts" / "forgetting-smoke").glob("*/artifacts/predictions.json"))) == 2


def test_executors_refuse_what_they_cannot_do(tmp_path):
    from lightning_asr.config import ConfigError
    from lightning_asr.study import tracking
    from lightning_asr.study.executors import make_executor, makespan
    from lightning_asr.study.profile import ExecutionSection

    with pytest.raises(ConfigError, match="--workers 0"):
        make_executor("ray", 0, ExecutionSection(), None, tmp_path)
    with pytest.raises(ConfigError, match="--address names a Ray cluster"):
        make_executor("submitit", 2, ExecutionSection(), "ray://head:10001", tmp_path)
    assert make_executor("local", 1, ExecutionSection(), None, tmp_path) is None  # the in-process runner
    # workers on other machines cannot log to a loopback server over a file
    with pytest.raises(ValueError, match="tracking_uri=http://"):
        with tracking.shared_store(f"sqlite:///{tmp_path}/m.db", workers_leave_machine=True):
            pass
    # longest cells first, each to the least loaded worker (not the optimum: 3+3 | 2+2+2 would take 6)
    assert makespan([3, 3, 2, 2, 2], 2) == 7 and makespan([5, 1, 1], 2) == 5 and makespan([], 4) == 0
