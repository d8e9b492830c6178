"""Data parallelism: two CPU processes (gloo) against one process on the same data."""

import os
import re
import subprocess
import sys

import pytest
import torch

from lightning_asr.module import ASRModule

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lightning_asr", *args], capture_output=True, text=True, timeout=900, env=ENV
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def scores(out: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^(test/\S+|val/\S+): ([-\d.naninf]+)$", out, flags=re.M)}


# two gloo processes (~80 s on 2 cores): the scale-out path, not a main job; `make test-all` runs it
@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(corpus, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"""
data: {{train_manifests: [{corpus}/ko-en/train.jsonl], val_manifests: [{corpus}/ko-en/dev.jsonl], bucket_size: 12,
       spec_augment: {{enabled: false}}}}
adapter: {{name: blora, rank: 4}}
trainer: {{max_steps: 3, val_check_interval: 3, accelerator: cpu, enable_progress_bar: false, log_every_n_steps: 1}}
decode: {{max_new_tokens: 4}}
optim: {{warmup_steps: 1, lr: 1.0e-2}}
""")
    one = cli("train", "--config", str(config), f"output_dir={tmp_path / 'one'}", "data.batch_size=4")
    two = cli(
        "train",
        "--config",
        str(config),
        f"output_dir={tmp_path / 'two'}",
        "data.batch_size=2",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    )
    loss_one, loss_two = scores(one)["val/ko-en/dev/loss"], scores(two)["val/ko-en/dev/loss"]
    assert loss_two == pytest.approx(loss_one, rel=0.02)  # token weighting of the mean differs slightly
    a = ASRModule.from_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt")
    b = ASRModule.from_checkpoint(tmp_path / "two" / "checkpoints" / "last.ckpt")
    initial = ASRModule(a.config).strategy.adapter_state_dict()
    flat = {
        key: torch.cat([t.flatten() for _, t in sorted(state.items())])
        for key, state in (
            ("init", initial),
            ("one", a.strategy.adapter_state_dict()),
            ("two", b.strategy.adapter_state_dict()),
        )
    }
    change = (flat["one"] - flat["init"]).norm()
    # both runs moved the adapter the same way: their difference is small against the distance travelled
    # (flipout's random signs are drawn per process, and Adam's first steps amplify tiny gradient differences)
    assert change > 0 and (flat["two"] - flat["one"]).norm() < 0.25 * change
    kl_one, kl_two = float(a.strategy.regularizer()), float(b.strategy.regularizer())
    assert kl_two == pytest.approx(kl_one, rel=0.01)  # the KL is a function of the (synchronised) parameters
    for report in (a.strategy.sparsity_stats(), b.strategy.sparsity_stats()):
        assert report["overall"]["delta_w"]["count"] > 0
    assert (
        a.strategy.sparsity_stats()["overall"]["delta_w"]["count"]
        == b.strategy.sparsity_stats()["overall"]["delta_w"]["count"]
    )

    # one checkpoint scored by one and by two processes: sharded counts sum to exactly the same metrics
    manifests = [f"{corpus}/ko-en/test.jsonl", f"{corpus}/en/test.jsonl", f"{corpus}/zh/test.jsonl"]
    single = scores(
        cli(
            "evaluate",
            "--checkpoint",
            str(tmp_path / "one" / "checkpoints" / "last.ckpt"),
            "--manifest",
            *manifests,
            "--predictions",
            str(tmp_path / "p1.jsonl"),
        )
    )
    sharded = scores(
        cli(
            "evaluate",
            "--checkpoint",
            str(tmp_path / "one" / "checkpoints" / "last.ckpt"),
            "--manifest",
            *manifests,
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--predictions",
            str(tmp_path / "p2.jsonl"),
        )
    )
    errors = {k: v for k, v in single.items() if not k.endswith("/loss")}
    assert errors and {k: sharded[k] for k in errors} == errors
    assert (tmp_path / "p1.jsonl").read_text() == (tmp_path / "p2.jsonl").read_text()  # gathered, in manifest order


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["{name: full_ft}", "{name: lora, rank: 4}", "{name: glora, type: 4, rank: 4}"])
def test_every_strategy_trains_under_ddp(adapter, corpus, tmp_path):
    out = cli(
        "train",
        "--config",
        "configs/smoke.yaml",
        f"output_dir={tmp_path}",
        f"adapter={adapter}",
        f"data.train_manifests=[{corpus}/ko-en/train.jsonl]",
        f"data.val_manifests=[{corpus}/ko-en/dev.jsonl]",
        "data.batch_size=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.accelerator=cpu",
        "decode.max_new_tokens=4",
    )
    assert "val/ko-en/dev/mer" in out
    assert (
        ASRModule.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt").strategy.parameter_counts()["trainable"] > 0
    )
