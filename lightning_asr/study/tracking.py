"""MLflow helpers of the study: experiments on a sqlite store, the tags that find runs, metrics and tables.

MLflow has no histogram-over-time API, so sparsity histograms are logged as figures (``log_figure``), tables
(``log_table``) and scalar summaries (``sparsity/frac_below_1e-3``).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_asr.adapters.sparsity import fractions

TAG_BENCH, TAG_CELL, TAG_CONFIG, TAG_STATUS = (
    "lightning_asr.bench",
    "lightning_asr.cell",
    "lightning_asr.config_hash",
    "lightning_asr.status",
)
# the named experiments of the reproduction: the profile, the experiment, and that its cells are listed
TAG_REPRODUCE, TAG_EXPERIMENT, TAG_CELLS = (
    "lightning_asr.reproduce",
    "lightning_asr.reproduce.experiment",
    "lightning_asr.reproduce.cells",
)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (relative or absolute), or None for other stores and memory."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def client_for(tracking_uri: str):
    """An MLflow client whose store is ready. MLflow creates and migrates an SQLite store's schema on first use,
    and two processes doing that at once break the file for every later run; so the first use of an SQLite store
    holds a lock beside the file (``<file>.lock``), and the others wait for it and find the schema made."""
    import mlflow
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("file:") or "://" not in tracking_uri and not tracking_uri.startswith("sqlite"):
        raise ValueError(
            f"tracking URI {tracking_uri!r}: use a database store such as sqlite:///mlflow.db (MLflow's file store is deprecated)"
        )
    mlflow.set_tracking_uri(tracking_uri)
    database = sqlite_path(tracking_uri)
    if database is None:
        return MlflowClient(tracking_uri=tracking_uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        return MlflowClient(tracking_uri=tracking_uri)  # opens the store: creates or migrates its schema


def experiment_id(client, name: str, artifact_root: str | Path) -> str:
    """The id of the experiment ``name``, created if missing (by this process or, at the same moment, another)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage != "deleted":
        return experiment.experiment_id
    if ":/" in str(artifact_root):  # a URI: s3://..., or mlflow-artifacts:/ where a server proxies the artifacts
        location = f"{str(artifact_root).rstrip('/')}/{name}"
    else:
        location = (Path(artifact_root) / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # another writer created it first
        if experiment is None or experiment.lifecycle_stage == "deleted":
            raise
        return experiment.experiment_id


def finite_metrics(values: dict) -> dict[str, float]:
    """MLflow rejects NaN in some stores: log only finite numbers (undefined values are explained elsewhere)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def metric_name(key: str) -> str:
    """``key`` as MLflow accepts a metric name: a character it refuses (a sweep point's label has ``@`` and
    ``=``, as in ``lora@lr=0.002``) becomes ``_``; names made only of accepted characters stay as they are."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


def log_values(client, run_id: str, metrics: dict | None = None, params: dict | None = None, step: int = 0) -> None:
    """Metrics (the finite ones, at ``step``; names as ``metric_name`` makes them) and parameters of a run in as
    few store writes as MLflow allows: one write per value costs ~10 ms on sqlite, and a cell logs a hundred or
    more."""
    import time

    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    metric_rows = [Metric(metric_name(k), v, stamp, step) for k, v in finite_metrics(metrics or {}).items()]
    param_rows = [Param(k, str(v)[:500]) for k, v in (params or {}).items()]
    for start in range(0, len(metric_rows), 1000):  # MLflow's limits per batch
        client.log_batch(run_id, metrics=metric_rows[start : start + 1000])
    for start in range(0, len(param_rows), 100):
        client.log_batch(run_id, params=param_rows[start : start + 100])


def sparsity_table(report: dict) -> dict[str, list]:
    """Column-oriented table for ``log_table``: one row per module and kind, fraction below each threshold, and
    for delta W the readings against W0 (share below 1e-3 * RMS(W0), ||delta W|| / ||W0||, effective rank)."""
    columns: dict[str, list] = {"module": [], "kind": [], "entries": []}
    for threshold in report["thresholds"]:
        columns[f"below_{threshold}"] = []
    readings = ("below_1e-3_rms_relative", "relative_norm", "effective_rank")
    for key in readings:
        columns[key] = []
    rows = [
        (name, kind, summary, entry.get("readings") if kind == "delta_w" else None)
        for name, entry in report["modules"].items()
        for kind, summary in entry.items()
        if kind != "readings"
    ]
    rows += [("overall", kind, summary, None) for kind, summary in report["overall"].items() if summary["count"]]
    for name, kind, summary, reading in rows:
        columns["module"].append(name)
        columns["kind"].append(kind)
        columns["entries"].append(summary["count"])
        for threshold, value in fractions(summary).items():
            columns[f"below_{threshold}"].append(value)
        values = (
            (
                reading["below_rms_relative"] / max(reading["count"], 1),
                (reading["delta_sq"] / max(reading["base_sq"], 1e-300)) ** 0.5,
                reading["effective_rank"],
            )
            if reading
            else (None, None, None)
        )
        for key, value in zip(readings, values):
            columns[key].append(value)
    return columns


@contextmanager
def shared_store(tracking_uri: str, workers_leave_machine: bool = False, log: Path | None = None) -> Iterator[str]:
    """The tracking URI many writers log through at once, for as long as the block runs.

    An ``http(s)://`` URI (the user's MLflow server, on any database) is used as it is. A database store (an
    SQLite file, PostgreSQL, MySQL) is served by one ``mlflow server`` on loopback, stopped when the block ends,
    so that workers write through one process rather than each holding the database (an SQLite file's schema is
    made or migrated first, under its lock: see ``client_for``). Workers on other machines cannot reach loopback:
    for them the store must be a server they can reach, and anything else is refused with the fix."""
    if tracking_uri.startswith(("http://", "https://")):
        yield tracking_uri
        return
    if workers_leave_machine:
        raise ValueError(
            f"tracking URI {tracking_uri!r}: workers on other machines cannot reach a server on this machine's "
            "loopback — fix: start one they can reach (mlflow server --backend-store-uri postgresql://... --host "
            "0.0.0.0 --serve-artifacts; docs/scale-out.md) and pass tracking_uri=http://HOST:PORT"
        )
    client_for(tracking_uri)  # an SQLite file's schema, before the server opens it
    database = sqlite_path(tracking_uri)
    backend = f"sqlite:///{database.resolve()}" if database is not None else tracking_uri
    with mlflow_server(backend, log or Path(tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")[1])) as uri:
        yield uri


@contextmanager
def mlflow_server(backend_store_uri: str, log: Path, artifacts_destination: str | None = None) -> Iterator[str]:
    """An ``mlflow server`` on loopback over ``backend_store_uri`` (with a proxied artifact store at
    ``artifacts_destination``, where given) while the block runs; its output goes to ``log``."""
    from lightning_asr.client import free_port

    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts_destination:
        command += ["--serve-artifacts", "--artifacts-destination", artifacts_destination]
    with open(log, "ab") as output:
        server = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    uri = f"http://127.0.0.1:{port}"
    where = backend_store_uri.split("@")[-1]  # no password in a message
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the MLflow server on {where} stopped at start (its log: {log}):\n" + tail(log))
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the MLflow server on {where} did not answer in {SERVER_START_SECONDS} s (log: {log})"
                )
            time.sleep(0.5)
        yield uri
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


SERVER_START_SECONDS = 120  # an MLflow server takes ~15 s to answer on 2 busy cores


def tail(path: Path, characters: int = 3000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""
