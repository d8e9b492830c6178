"""A run killed mid-epoch and resumed with ``--resume`` ends exactly where an uninterrupted run does.

The run uses every source of randomness training has: SpecAugment masks on the batches and BLoRA's
weight noise in each forward pass, with a data order that is reshuffled every epoch. It is killed with
SIGKILL once a checkpoint of step 4 or later exists (step 4 is the middle of the second epoch). The comparison is bit for bit: weights, optimizer moments, learning rate and
every logged loss after the resume point.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from lightning_asr.cli import main

MAX_STEPS, VALIDATE_EVERY, KILL_AFTER = 8, 2, 4


def write_config(path: Path, output: Path, corpus: Path) -> Path:
    # 12 training utterances in batches of 4: three steps an epoch, so checkpoints at steps 2, 4 and 8 fall
    # inside an epoch and the resumed run crosses epoch boundaries
    path.write_text(f"""
seed: 7
output_dir: {output}
data:
  train_manifests: [{corpus}/ko-en/train.jsonl]
  val_manifests: [{corpus}/ko-en/dev.jsonl]
  batch_size: 4
  spec_augment: {{enabled: true}}
adapter: {{name: blora, rank: 4}}
optim: {{warmup_steps: 2}}
trainer: {{max_steps: {MAX_STEPS}, val_check_interval: {VALIDATE_EVERY}, log_every_n_steps: 1, enable_progress_bar: false}}
decode: {{in_validation: false}}
""")
    return path


def checkpoint_step(path: Path) -> int:
    """The global step of a checkpoint, or -1 while there is none."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except FileNotFoundError:
        return -1


def logged(output: Path) -> dict[int, dict[str, str]]:
    """``step -> {metric: value}`` over every CSV log of a run (a resumed run writes a second version)."""
    rows: dict[int, dict[str, str]] = {}
    for log in sorted((output / "logs").glob("version_*/metrics.csv")):
        with open(log) as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(int(row["step"]), {}).update(
                    {k: v for k, v in row.items() if v and k not in ("step", "epoch")}
                )
    return rows


def final_state(output: Path) -> dict:
    checkpoint = torch.load(output / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {
        "global_step": checkpoint["global_step"],
        "state_dict": checkpoint["state_dict"],
        "optimizer": checkpoint["optimizer_states"][0]["state"],
        "lr_scheduler": checkpoint["lr_schedulers"][0],
    }


def assert_identical(a, b, where="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{where}: max difference {(a.double() - b.double()).abs().max().item()}"
    else:
        assert a == b, (where, a, b)


def without_progress(out: str) -> str:
    """What a run printed, less the progress lines at each validation (wall times, and a resumed run prints
    only those after its resumption)."""
    return "".join(line for line in out.splitlines(keepends=True) if not line.startswith("[train] step"))


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_result(corpus, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main(["train", "--config", str(write_config(tmp_path / "reference.yaml", reference, corpus))]) == 0
    expected_metrics = without_progress(capsys.readouterr().out)

    killed = tmp_path / "killed"
    config = write_config(tmp_path / "killed.yaml", killed, corpus)
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_asr", "train", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while process.poll() is None and checkpoint_step(last) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be killed:\n{process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    resumed_from = checkpoint_step(last)
    assert process.returncode == -signal.SIGKILL and KILL_AFTER <= resumed_from < MAX_STEPS, (
        process.returncode,
        resumed_from,
    )

    # a truncated last checkpoint is refused with its path and the fix, not a torch traceback
    broken = tmp_path / "broken"
    shutil.copytree(killed, broken)
    broken_last = broken / "checkpoints" / "last.ckpt"
    broken_last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    broken_config = write_config(tmp_path / "broken.yaml", broken, corpus)
    assert main(["train", "--config", str(broken_config), "--resume"]) == 2
    error = capsys.readouterr().err
    assert str(broken_last) in error and "fix:" in error and "Traceback" not in error, error

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--config", str(config), "--resume"]) == 0
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert without_progress(capsys.readouterr().out).replace(str(killed), str(reference)) == expected_metrics
    assert_identical(final_state(killed), final_state(reference))
    ours, theirs = logged(killed), logged(reference)
    after = [step for step in theirs if step >= resumed_from]
    assert after and all(ours.get(step) == theirs[step] for step in after), [
        (step, ours.get(step), theirs[step]) for step in after if ours.get(step) != theirs[step]
    ][:3]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not a lightning checkpoint"])
def test_a_damaged_last_checkpoint_names_the_file_and_the_fix(tmp_path, capsys, damage):
    output = tmp_path / "run"
    last = output / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    whole = tmp_path / "whole.ckpt"
    torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(64, 64)}, "loops": {}}, whole)
    data = {
        "empty": b"",
        "truncated": whole.read_bytes()[: whole.stat().st_size - 100],
        "garbage": os.urandom(4096),
        "not a lightning checkpoint": None,
    }[damage]
    if data is None:
        torch.save({"weights": torch.zeros(3)}, last)
    else:
        last.write_bytes(data)
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {output}\ndata:\n  train_manifests: [{tmp_path}/none.jsonl]\n")
    assert main(["train", "--config", str(config), "--resume"]) == 2
    error = capsys.readouterr().err
    assert f"error: {last}" in error and "fix:" in error and "--force" in error, error
    assert last.exists()  # nothing is deleted without being asked


class Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> int:
        return index


def draw_with_noise(items: list[int]) -> tuple[list[int], float]:
    """A collate function that, like SpecAugment, draws from the global generator."""
    return items, torch.rand(()).item()


def loader_at(epoch: int, seed: int = 7):
    from lightning_asr.data.datamodule import BucketBatchSampler
    from lightning_asr.data.resumable import ResumableTrainLoader

    durations = [1.0 + i % 5 for i in range(12)]
    plain = torch.utils.data.DataLoader(
        Items(), batch_sampler=BucketBatchSampler(durations, 4, 4, True, seed), collate_fn=draw_with_noise
    )
    progress = {"epoch": epoch, "position": 0}
    return ResumableTrainLoader(plain, seed, 0, lambda: (progress["epoch"], progress["position"])), progress


def test_each_epoch_has_its_own_order_and_a_restored_loader_continues_mid_epoch():
    loader, progress = loader_at(0)
    epochs = []
    for epoch in range(3):
        progress["epoch"] = epoch
        epochs.append(list(loader))
    orders = [[items for items, _ in batches] for batches in epochs]
    assert orders[0] != orders[1] and orders[1] != orders[2]  # the batch sampler's set_epoch is reached
    assert all(sorted(i for batch in order for i in batch) == list(range(12)) for order in orders)

    progress["position"] = 2
    state = loader.state_dict()
    assert state == {"epoch": 2, "position": 2}
    torch.manual_seed(12345)  # a restarted process: another global generator state
    fresh, _ = loader_at(0)
    fresh.load_state_dict(state)
    assert list(fresh) == epochs[2][2:]  # the same batches with the same augmentation draws
    fresh.load_state_dict({"epoch": 1, "position": 3})  # saved after the last batch of epoch 1
    assert list(fresh) == epochs[2]


def test_augmentation_draws_depend_on_the_batch_place_only():
    loader, _ = loader_at(0)
    torch.manual_seed(0)
    first = list(loader)
    torch.manual_seed(99)
    torch.rand(5)
    again = list(loader)
    assert first == again and len({noise for _, noise in first}) == len(first)
    other_seed, _ = loader_at(0, seed=8)
    assert [noise for _, noise in other_seed] != [noise for _, noise in first]


def test_a_damaged_run_config_names_the_file_and_the_fix(tmp_path, capsys):
    output = tmp_path / "run"
    (output / "checkpoints").mkdir(parents=True)
    torch.save(
        {"global_step": 3, "state_dict": {}, "loops": {}, "optimizer_states": []}, output / "checkpoints" / "last.ckpt"
    )
    (output / "config.json").write_text('{"seed": 0, "data": {"train_')  # cut short
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {output}\n")
    assert main(["train", "--config", str(config), "--resume"]) == 2
    error = capsys.readouterr().err
    assert f"error: {output / 'config.json'} is not readable JSON" in error and "fix:" in error, error


def test_a_strategy_prepares_on_the_base_s_weights_also_when_a_run_resumes(corpus, tmp_path):
    """EWC's Fisher information is estimated before training, on the base's weights: a resumed run estimates it
    before Lightning restores the checkpoint, so it gets the interrupted run's, not one at the resumed weights."""
    import lightning as L
    from conftest import config_dict

    from lightning_asr.config import TrainConfig, structured
    from lightning_asr.train import train

    class StopAfterStep2(L.Callback):  # the interruption: the run ends at its step-2 checkpoint
        def on_train_batch_end(self, trainer, *_):
            trainer.should_stop = trainer.global_step >= 2

    settings = {
        "adapter.name": "ewc",
        "adapter.strength": 1.0,
        "adapter.source_manifests": f"[{corpus}/en/train.jsonl]",
        "adapter.source_utterances": 2,
        "optim.lr": 1e-2,
        "trainer.max_steps": 4,
        "trainer.val_check_interval": 2,
        "trainer.log_every_n_steps": 1,
        "trainer.enable_progress_bar": "false",
        "decode.in_validation": "false",
    }
    config = structured(TrainConfig, config_dict(corpus, tmp_path, **settings))
    first = train(config, extra_callbacks=[StopAfterStep2()])
    assert first.stopped_at_step == 2
    fisher = {name: f.clone() for name, f in first.module.strategy.fisher.items()}
    first.module.train()
    assert fisher and first.module.strategy.regularizer().item() > 0  # two steps away from the base
    resumed = train(config, resume=True)
    assert resumed.stopped_at_step == 4
    assert all(
        torch.allclose(resumed.module.strategy.fisher[name], f, rtol=1e-4, atol=1e-8) for name, f in fisher.items()
    )
