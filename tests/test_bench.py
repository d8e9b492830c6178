"""The forgetting benchmark's smoke profile, end to end, against a temporary MLflow store; and the UI target."""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lightning_asr.client import free_port
from lightning_asr.study.result import BenchmarkResult

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from lightning_asr.study.cli import forgetting_main as main

    tmp = tmp_path_factory.mktemp("bench")
    args = [
        "--profile",
        "smoke",
        f"tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"artifact_root={tmp}/artifacts",
        f"output_dir={tmp}/runs",
        f"corpus.root={tmp}/corpus",
        f"base.cache_dir={tmp}/bases",
        "statistics.drift_cross_entropy=true",
    ]
    assert main(args) == 0
    return tmp, args


def runs_of(tmp):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("forgetting-smoke")
    return client, client.search_runs([experiment.experiment_id])


def test_smoke_benchmark_writes_parent_and_child_runs(smoke_run):
    tmp, _ = smoke_run
    client, runs = runs_of(tmp)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    parent_files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {
        "comparison.csv",
        "comparison.md",
        "metrics.md",
        "comparison_table.json",
        "tradeoff.png",
        "tradeoff.svg",
        "curves.png",
        "fronts.png",
        "fronts.svg",
        "result.json",
    } <= parent_files
    assert "forward loss" in Path(client.download_artifacts(parent.info.run_id, "metrics.md", str(tmp))).read_text()
    comparison = Path(client.download_artifacts(parent.info.run_id, "comparison.md", str(tmp))).read_text()
    assert "| strategy | mer | jer | cer | wer | err_ko | err_en | pier |" in comparison and "| base |" in comparison
    assert {"full_ft/target_pier", "lora/target_err_ko", "base/target_mer"} <= set(parent.data.metrics)
    assert "**One run.**" in comparison and "(one run)" in comparison and "## Fronts" in comparison
    assert "| full_ft | 5.4" in comparison  # a front level (half the base's target cross-entropy) and its reading
    assert {"full_ft/delta_forgetting", "full_ft/forgetting_ce", "base/ko-en/test/ce"} <= set(parent.data.metrics)
    result = BenchmarkResult.from_json(
        Path(client.download_artifacts(parent.info.run_id, "result.json", str(tmp))).read_text()
    )
    assert result.labels == ["full_ft", "lora"] and result.seeds == [1]
    assert {c.run_id for c in result.cells} == {c.info.run_id for c in children}
    for child in children:
        data = child.data
        assert (
            data.tags["strategy"] in ("full_ft", "lora")
            and data.tags["seed"] == "1"
            and data.tags["lightning_asr.status"] == "finished"
        )
        assert data.params["adapter.name"] == data.tags["strategy"] and "optim.lr" in data.params
        assert data.params["normalizer/ko-en/test"].startswith("basic-v3[ko-en,")
        for metric in (
            "test/en/test/wer",
            "test/ko-en/test/mer",
            "test/ko-en/test/jer",
            "test/ko-en/test/pier",
            "test/ko-en/test/err_en",
            "sparsity/frac_below_1e-3",
            "params/trainable",
            "adapter/bytes",
            "train/step_time_s",
            "cl/forgetting",
            "cl/adaptation_gain",
        ):
            assert metric in data.metrics, metric
        assert client.get_metric_history(child.info.run_id, "train/loss")  # per-step training metrics
        # dense cross-entropy curves of the target and source dev sets at every validation, no decoding
        assert len(client.get_metric_history(child.info.run_id, "val/en/dev/loss")) == 2  # every 2 of 4 steps
        assert {"test/en/test/ce", "test/ko-en/test/ce", "cl/forgetting_ce"} <= set(data.metrics)
        interpolation = client.get_metric_history(child.info.run_id, "interpolation/source_ce")
        assert [m.step for m in interpolation] == list(range(11))  # λ = 0, 0.1, ..., 1
        cell = result.cell(data.tags["label"], 1)
        assert cell.interpolation["lambda"][-1] == 1.0 and cell.scores["en/test"].ce is not None
        curve = client.get_metric_history(child.info.run_id, "curve/target_error")
        assert [m.step for m in curve] == [0, 2, 4]  # the profile's three points: step 0, the middle, the end
        assert {m.step for m in client.get_metric_history(child.info.run_id, "curve/en/dev/error")} == {0, 2, 4}
        assert data.metrics["train/stopped_step"] == 4
        files = {f.path for f in client.list_artifacts(child.info.run_id)}
        assert {"adapter", "config.yaml", "predictions.json", "interpolation.json", "sparsity"} <= files
        assert {f.path for f in client.list_artifacts(child.info.run_id, "sparsity")} == {
            "sparsity/histogram.png",
            "sparsity/histogram.svg",
            "sparsity/table.json",
            "sparsity/report.json",
        }
        table = json.loads(
            Path(client.download_artifacts(child.info.run_id, "sparsity/table.json", str(tmp))).read_text()
        )
        assert "below_1e-3" in table["columns"]
        report = json.loads(
            Path(client.download_artifacts(child.info.run_id, "sparsity/report.json", str(tmp))).read_text()
        )
        overall = report["overall"]["delta_w"]
        assert sum(overall["histogram"]) == overall["count"] > 0  # every |delta W| entry counted once
        assert overall["below"]["1e-3"] / overall["count"] == pytest.approx(data.metrics["sparsity/frac_below_1e-3"])


def test_every_cell_is_scored_on_the_base_s_own_transcripts_where_the_profile_asks(smoke_run):
    tmp, _ = smoke_run
    client, runs = runs_of(tmp)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    result = BenchmarkResult.from_json((tmp / "runs" / "forgetting-smoke" / "result-ko-en.json").read_text())
    for run in children:
        assert "drift_ce.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {f"drift/{name}/ce" for name in result.source_sets} <= set(run.data.metrics)
    for cell in result.cells:
        for name in result.source_sets:
            drift = cell.drift[name]
            assert len(drift.ce) == len(drift.edits) == len(result.base[name].edits) and drift.ce_units.sum() > 0
    # the base's transcripts as a manifest of the same audio, the set keeping its name
    manifests = list((tmp / "runs" / "forgetting-smoke").glob("base-eval-*-drift/en/test.jsonl"))
    assert len(manifests) == 1
    text = (tmp / "runs" / "forgetting-smoke" / "comparison-ko-en.md").read_text()
    assert "drift in CE (no labels)" in text


def test_a_cell_runs_as_a_task_in_another_process_into_its_own_run(smoke_run, tmp_path):
    """The plan is cell specifications; a worker process given one runs that cell (stages 0-1 from their caches)
    and its result lands in the run the cell's identity finds: here a run a killed worker left unfinished."""
    import sys

    from lightning_asr.study.benchmark import Benchmark
    from lightning_asr.study.profile import load_bench_config
    from lightning_asr.study.tasks import CellSpec

    tmp, args = smoke_run
    client, runs = runs_of(tmp)
    lora = next(r for r in runs if r.data.tags.get("strategy") == "lora" and "mlflow.parentRunId" in r.data.tags)
    parent = lora.data.tags["mlflow.parentRunId"]
    bench, path = load_bench_config("smoke", args[2:])
    specs = Benchmark(bench, path).plan([1], parent)
    assert [(s.label, s.seed, s.parent_run_id) for s in specs] == [("full_ft", 1, parent), ("lora", 1, parent)]
    spec = specs[1]
    assert CellSpec.from_json(spec.to_json()) == spec
    client.set_tag(lora.info.run_id, "lightning_asr.status", "running")
    (tmp_path / "spec.json").write_text(spec.to_json())
    done = subprocess.run(
        [sys.executable, "-m", "lightning_asr.study.tasks", str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == lora.info.run_id
    assert "reusing pretrained base" in done.stdout and "reusing the base evaluation" in done.stdout
    assert f"resuming run {lora.info.run_id}" in done.stdout
    assert client.get_run(lora.info.run_id).data.tags["lightning_asr.status"] == "finished"
    client, runs = runs_of(tmp)
    assert len([r for r in runs if r.data.tags.get("lightning_asr.cell") == "lora-seed1"]) == 1


def test_disk_holds_what_resumes_and_evaluates_not_more(smoke_run):
    """A cell's best.ckpt is evaluated and exported, never resumed: no optimiser state (its last.ckpt has it);
    a base saved to the cache keeps no pretraining checkpoints."""
    import torch

    tmp, _ = smoke_run
    for cell in (tmp / "runs" / "forgetting-smoke" / "cells").iterdir():
        best = torch.load(cell / "checkpoints" / "best.ckpt", weights_only=True)
        last = torch.load(cell / "checkpoints" / "last.ckpt", weights_only=True)
        assert "optimizer_states" not in best and best["state_dict"] and "lightning_asr_config" in best
        assert last["optimizer_states"]
    pretraining = list((tmp / "runs" / "forgetting-smoke" / "pretrain").iterdir())
    assert len(pretraining) == 1 and not (pretraining[0] / "checkpoints").exists()


def test_rerun_reuses_finished_cells(smoke_run, capsys):
    from lightning_asr.study.cli import forgetting_main as main

    tmp, args = smoke_run
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        out.count("finished before") == 2 and "reusing pretrained base" in out and "reusing the base evaluation" in out
    )
    _, runs = runs_of(tmp)
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 2  # no new child runs


# the UI server starts in ~15 s on 2 cores: not one of the main jobs, so `make test-all`
@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "mlflow").exists(), reason="needs make setup")
def test_mlflow_ui_target_answers_on_loopback_and_stops():
    port = free_port()
    server = subprocess.Popen(
        ["make", "-s", "mlflow-ui", f"MLFLOW_PORT={port}"],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, answer = time.time() + 90, None
        while time.time() < deadline and answer is None:
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            except OSError:
                time.sleep(1)
        assert answer == b"OK"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_interrupted_cell_resumes_in_its_own_run(smoke_run, capsys):
    """A cell whose run never got its 'finished' tag (the process was killed) continues from its last
    checkpoint in the same MLflow run: no duplicate run, nothing overwritten."""
    from lightning_asr.study.cli import forgetting_main as main

    tmp, args = smoke_run
    client, runs = runs_of(tmp)
    lora = next(r for r in runs if r.data.tags.get("strategy") == "lora")
    client.set_tag(lora.info.run_id, "lightning_asr.status", "running")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"resuming run {lora.info.run_id}" in out and out.count("finished before") == 1
    # the resumed cell says where its time went, and the run says where its results are
    done = next(line for line in out.splitlines() if "cell lora-seed" in line and "done in" in line)
    assert all(f"{stage} " in done for stage in ("train", "test", "interpolation", "logging"))
    assert "results: " in out and "comparison-" in out.split("results: ")[-1] and "/runs/" in out
    client, runs = runs_of(tmp)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and client.get_run(lora.info.run_id).data.tags["lightning_asr.status"] == "finished"


def test_a_cell_without_its_learning_curve_is_trained_again_in_a_new_run(smoke_run, capsys):
    """A finished cell without curve metrics (trained with curves.points 0) is not reused where curves are asked
    for: its strategy would be missing from the curves and the matched-target table. The old run stays."""
    import sqlite3

    from lightning_asr.study.cli import forgetting_main as main

    tmp, args = smoke_run
    client, runs = runs_of(tmp)
    lora = next(r for r in runs if r.data.tags.get("strategy") == "lora" and "mlflow.parentRunId" in r.data.tags)
    with sqlite3.connect(tmp / "mlflow.db") as db:  # the store as a run without curves leaves it
        for table in ("metrics", "latest_metrics"):
            db.execute(f"DELETE FROM {table} WHERE run_uuid = ? AND key LIKE 'curve/%'", (lora.info.run_id,))
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cell lora-seed1: finished before without a learning curve" in out
    assert "cell full_ft-seed1: finished before (run" in out
    client, runs = runs_of(tmp)
    new = [
        r for r in runs if r.data.tags.get("lightning_asr.cell") == "lora-seed1" and r.info.run_id != lora.info.run_id
    ]
    assert len(new) == 1 and client.get_metric_history(new[0].info.run_id, "curve/target_error")
    assert client.get_run(lora.info.run_id).data.tags["lightning_asr.status"] == "finished"


def test_a_base_above_its_bounds_stops_the_benchmark_and_is_not_cached(tmp_path, capsys):
    from lightning_asr.study.cli import forgetting_main as main

    args = [
        "--profile",
        "smoke",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"artifact_root={tmp_path}/artifacts",
        f"output_dir={tmp_path}/runs",
        f"corpus.root={tmp_path}/corpus",
        f"base.cache_dir={tmp_path}/bases",
        "base.max_dev_error={en: 0.0, zh: 0.0}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the pretrained base reached en/dev" in err and "fix: give pretraining" in err
    assert re.search(r"en/dev \d+\.\d{3} > 0; zh/dev \d+\.\d{3} > 0", err), err
    kept = [path for path in (tmp_path / "bases").iterdir() if path.is_dir()]  # not the lock beside it
    assert len(kept) == 1 and kept[0].name.endswith(".rejected") and (kept[0] / "pretraining.json").exists()
    assert main(args) == 2  # refused again, never taken from the cache


def test_a_base_evaluation_is_cached_under_the_base_s_files_not_only_its_path(tmp_path):
    """A base trained again at the same path (a rejected base is always kept at one) is evaluated again."""
    from lightning_asr.adapters import unadapted_strategy
    from lightning_asr.study.benchmark import Benchmark
    from lightning_asr.study.identity import base_identity
    from lightning_asr.study.profile import load_bench_config

    bench, path = load_bench_config("smoke", [f"output_dir={tmp_path}/runs", f"corpus.root={tmp_path}/corpus"])
    benchmark = Benchmark(bench, path)
    benchmark.corpus_checksum = "unchecked"
    base = tmp_path / "whisper-toy-abc.rejected"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"first weights")
    config = benchmark.cell_config({"label": "base", "adapter": {"name": unadapted_strategy()}}, 0, str(base))
    before = benchmark.base_evaluation_path(str(base), config)
    assert benchmark.base_evaluation_path(str(base), config) == before  # unchanged files: found again
    (base / "model.safetensors").write_bytes(b"second, longer weights")
    assert benchmark.base_evaluation_path(str(base), config) != before
    assert base_identity("whisper-toy") == "whisper-toy"  # presets and hub ids by name


def test_a_run_left_by_a_dead_process_is_closed_and_its_cell_trained_once_more(smoke_run, capsys):
    """A cell whose process died before its first checkpoint leaves a run with nothing to resume: the next run of
    the cell closes it as killed (never reused as finished) and trains the cell in a new run."""
    from lightning_asr.study.cli import forgetting_main as main

    tmp, args = smoke_run

    def finished_lora() -> set[str]:
        return {
            r.info.run_id
            for r in runs_of(tmp)[1]
            if r.data.tags.get("lightning_asr.cell") == "lora-seed1"
            and r.data.tags.get("lightning_asr.status") == "finished"
        }

    client, _ = runs_of(tmp)
    lora = max((client.get_run(run_id) for run_id in finished_lora()), key=lambda run: run.info.start_time)
    before = finished_lora() - {lora.info.run_id}
    client.set_tag(lora.info.run_id, "lightning_asr.status", "running")
    client.set_terminated(lora.info.run_id, "RUNNING")
    for checkpoint in (tmp / "runs" / "forgetting-smoke" / "cells").glob("lora-seed1-*/checkpoints/last.ckpt"):
        checkpoint.unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert (
        f"run {lora.info.run_id} was left unfinished with nothing to resume; closed as killed"
        in capsys.readouterr().out
    )
    abandoned = client.get_run(lora.info.run_id)
    assert abandoned.info.status == "KILLED" and abandoned.data.tags["lightning_asr.status"] == "abandoned"
    assert len(finished_lora() - before) == 1 and lora.info.run_id not in finished_lora()


def test_a_strategy_that_reads_source_data_gets_the_base_s_source_training_sets(tmp_path):
    """EWC and replay read the source sets' training data: where a profile leaves ``source_manifests`` out, the
    benchmark fills in its base's source training sets; a list the profile gives stays."""
    from lightning_asr.study.benchmark import Benchmark
    from lightning_asr.study.profile import load_bench_config

    profile = tmp_path / "baselines.yaml"
    profile.write_text(
        "based_on: smoke\nstrategies:\n  - {label: ewc, adapter: {name: ewc}}\n"
        "  - {label: replay, adapter: {name: replay, source_manifests: [mine.jsonl]}}\n"
        "  - {label: lora, adapter: {name: lora, rank: 4}}\nreference: lora\n"
    )
    bench, path = load_bench_config(str(profile), [f"corpus.root={tmp_path}/corpus"])
    benchmark = Benchmark(bench, path)
    benchmark.corpus_checksum = "unchecked"
    configs = {e["label"]: benchmark.cell_config(e, 1, "whisper-tiny-random") for e in benchmark.entries}
    assert list(configs["ewc"].adapter.source_manifests) == [
        f"{tmp_path}/corpus/{s}/train.jsonl" for s in ("en", "ko", "zh")
    ]
    assert list(configs["replay"].adapter.source_manifests) == ["mine.jsonl"]
    assert "source_manifests" not in configs["lora"].adapter
