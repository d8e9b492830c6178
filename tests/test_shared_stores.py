"""Two runs started together on one machine share its stores: the MLflow database and the base cache."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from lightning_asr.study.base_model import BaseModel
from lightning_asr.study.profile import load_bench_config

ROOT = Path(__file__).resolve().parents[1]

OPEN_STORE = """
import sys, time
from pathlib import Path
from lightning_asr.study import tracking
uri, barrier = sys.argv[1], Path(sys.argv[2])
(barrier / f"ready-{sys.argv[4]}").touch()  # imports done: wait for the others, then open the store together
while not (barrier / "go").exists():
    time.sleep(0.002)
client = tracking.client_for(uri)
experiment = tracking.experiment_id(client, "shared", sys.argv[3])
client.set_terminated(client.create_run(experiment).info.run_id)
"""


def test_processes_opening_one_fresh_sqlite_store_at_once_all_log_to_it(tmp_path):
    # MLflow migrates a fresh store's schema on first use; concurrent migrations broke the file for good
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, uri, str(tmp_path), str(tmp_path / "artifacts"), str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for index in range(4)
    ]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    failed = [out[-800:] for process, out in zip(processes, outputs) if process.returncode != 0]
    assert not failed, failed
    from lightning_asr.study import tracking

    client = tracking.client_for(uri)
    experiments = [e for e in client.search_experiments() if e.name == "shared"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}


def test_two_runs_needing_one_base_pretrain_it_once(tmp_path, monkeypatch, capsys):
    bench, path = load_bench_config(
        "smoke", [f"corpus.root={tmp_path / 'corpus'}", f"base.cache_dir={tmp_path / 'bases'}"]
    )
    for name in ("en", "ko", "zh"):  # what the cache key hashes; pretraining itself is replaced below
        for split in ("train", "dev"):
            (tmp_path / "corpus" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "corpus" / name / f"{split}.jsonl").write_text(f'{{"set": "{name}/{split}"}}\n')
    built = []

    def pretrain(self, config, key, target):
        built.append(key)
        time.sleep(0.5)  # long enough for the other run to arrive while this one builds
        target.mkdir(parents=True)
        (target / "pretraining.json").write_text('{"dev_errors": {}}')
        (target / "config.json").write_text("{}")
        return str(target)

    monkeypatch.setattr(BaseModel, "pretrain", pretrain)

    def base(bench_):
        return BaseModel(bench_, path, lambda s, split: str(tmp_path / "corpus" / s / f"{split}.jsonl"), tmp_path)

    specs = []
    runs = [threading.Thread(target=lambda: specs.append(base(bench).prepare())) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    assert len(built) == 1, built
    assert len(specs) == 2 and specs[0] == specs[1] and Path(specs[0]).name.startswith("whisper-tiny-random-")
    out = capsys.readouterr().out
    assert "another run is building the base" in out and "reusing pretrained base" in out


def test_a_sweep_point_s_metrics_are_logged_under_names_mlflow_accepts(tmp_path):
    """A sweep point's label (``lora@lr=0.002``) has characters MLflow refuses in a metric name; they become
    ``_``, and names without them stay as they are."""
    from lightning_asr.study import tracking

    client = tracking.client_for(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(tracking.experiment_id(client, "names", tmp_path / "artifacts")).info.run_id
    tracking.log_values(client, run, {"lora@lr=0.002/target_mer": 0.1, "val/ko-en/dev/loss": 2.0})
    assert client.get_run(run).data.metrics == {"lora_lr_0.002/target_mer": 0.1, "val/ko-en/dev/loss": 2.0}
