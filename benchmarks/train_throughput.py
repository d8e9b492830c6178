"""Training throughput: the project's training step against a plain PyTorch loop, on the same batches.

    .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--warmup 5] [--rounds 2] [--phases pretrain,lora]
        [--precisions 32-true,bf16-mixed] [--allocator kept|glibc|both]

For each phase (``pretrain``: whisper-toy, every weight trains, the embedded profile's pretraining settings;
``lora``: LoRA on whisper-toy with the profile's adaptation settings), in one process:

- **project**: ``lightning_asr.train.train`` as the benchmark runs it (the data module reading the manifests,
  the Trainer, its callbacks and loggers), timed by a callback;
- **plain**: the same model, loss, optimiser, schedule and clipping in a hand-written loop over the same
  batches, collated in memory before the clock starts (the plain loop's data time is a list lookup).

Both run ``--rounds`` times, alternating, after ``--warmup`` untimed steps each time; the figures are medians
over every timed step. Each precision (``--precisions``: ``32-true`` float32, ``bf16-mixed`` bfloat16 autocast)
runs on the same batches. Printed: steps/s, the ratio project / plain, the ratio of each precision to float32,
the model's FLOPs per step (counted by ``torch.utils.flop_counter`` on one forward and backward, not
estimated), the achieved GFLOP/s and the utilisation against the matrix-product peak measured in the same
process for that precision (a 2048² product, the best of several), and per step the time in data (from the end
of one step to the start of the next), forward, backward, optimiser (clipping, step, zero_grad, schedule) and
everything else. The corpus is the embedded profile's (built first where it is missing).

``--allocator``: training keeps freed memory for reuse (``lightning_asr.train.keep_freed_memory``), and so do
both loops here by default; ``glibc`` leaves glibc's thresholds as they are; ``both`` measures each in its own
process and adds each loop's ratio to its glibc figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from lightning_asr.train import GLIBC_MALLOC, autocast_for, keep_freed_memory

PHASES = ("data", "forward", "backward", "optimizer", "other")


class PhaseTimer(L.Callback):
    """Per training step: data (end of the previous step to this one's start), forward, backward, optimiser."""

    def __init__(self, warmup: int):
        self.warmup, self.rows, self.last_end, self.marks = warmup, [], None, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.marks = {"start": time.perf_counter()}

    def on_before_backward(self, trainer, pl_module, loss):
        self.marks["forward"] = time.perf_counter()

    def on_after_backward(self, trainer, pl_module):
        self.marks["backward"] = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        end, m = time.perf_counter(), self.marks
        if self.last_end is not None and trainer.global_step > self.warmup:
            row = {
                "data": m["start"] - self.last_end,
                "forward": m["forward"] - m["start"],
                "backward": m["backward"] - m["forward"],
                "optimizer": end - m["backward"],
                "total": end - self.last_end,
            }
            row["other"] = row["total"] - sum(row[k] for k in PHASES[:-1])
            self.rows.append(row)
        self.last_end = end


def phase_config(phase: str, corpus: Path, steps: int, output: Path, precision: str = "32-true"):
    from lightning_asr.config import TrainConfig, structured
    from lightning_asr.study.profile import load_bench_config

    bench, _ = load_bench_config("embedded")
    if phase == "pretrain":
        values = OmegaConf.merge(
            OmegaConf.structured(TrainConfig),
            bench.base.train,
            {
                "model": {"spec": bench.base.spec},
                "data": {"train_manifests": [str(corpus / s / "train.jsonl") for s in bench.source_sets]},
            },
        )
    else:
        entry = next(OmegaConf.to_container(e) for e in bench.strategies if e.adapter.name == "lora")
        entry.pop("label")
        values = OmegaConf.merge(
            OmegaConf.structured(TrainConfig),
            bench.adapt,
            entry,
            {
                "model": {"spec": bench.base.spec},
                "data": {"train_manifests": [str(corpus / bench.target_set / "train.jsonl")]},
            },
        )
    values = OmegaConf.merge(
        values,
        {
            "output_dir": str(output),
            "data": {"val_manifests": []},
            "trainer": {
                "max_steps": steps,
                "val_check_interval": None,
                "enable_progress_bar": False,
                "precision": precision,
            },
        },
    )
    return structured(TrainConfig, values)


def project_steps(config, warmup: int) -> list[dict]:
    from lightning_asr.train import train

    timer = PhaseTimer(warmup)
    train(config, force=True, extra_callbacks=[timer])
    return timer.rows


def plain_setup(config):
    from lightning_asr.module import ASRModule
    from lightning_asr.train import make_datamodule

    L.seed_everything(config.seed, verbose=False)
    module = ASRModule(config)
    datamodule = make_datamodule(config, module)
    datamodule.setup()
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == config.trainer.max_steps:
            break
    return module, batches


def flops_per_step(config) -> float:
    """The model FLOPs of one training step (forward and backward of the first batch), counted."""
    from torch.utils.flop_counter import FlopCounterMode

    module, batches = plain_setup(config)
    module.train()
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast_for(config):
            loss = module.forward_loss(batches[0])[0] + module.strategy.regularizer()
        loss.backward()
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a square matrix product in ``dtype`` on this process's threads: the best of ``repeats``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # the first call picks its kernels
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def plain_steps(config, warmup: int) -> list[dict]:
    """The same model, batches, loss, optimiser and schedule as ``ASRModule`` and the Trainer, by hand."""
    from lightning_asr.module import adamw

    module, batches = plain_setup(config)
    optim = config.optim
    optimizer = adamw(module.strategy.optimizer_groups(optim.weight_decay), optim.lr, optim.betas)
    total, warm, floor = config.trainer.max_steps, optim.warmup_steps, optim.min_lr_ratio
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warm
            if step < warm
            else floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        ),
    )
    module.train()
    parameters = [p for _, p in module.strategy.trainable_parameters()]
    rows, last_end = [], None
    for step in range(len(batches)):
        start = time.perf_counter()
        batch = batches[step]
        fetched = time.perf_counter()
        with autocast_for(config):
            loss = module.forward_loss(batch)[0] + module.strategy.regularizer()
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(parameters, config.trainer.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        end = time.perf_counter()
        if last_end is not None and step >= warmup:
            row = {
                "data": fetched - start + (start - last_end),
                "forward": forward - fetched,
                "backward": backward - forward,
                "optimizer": end - backward,
                "total": end - last_end,
            }
            row["other"] = row["total"] - sum(row[k] for k in PHASES[:-1])
            rows.append(row)
        last_end = end
    return rows


def embedded_corpus(corpus: Path) -> Path:
    """The embedded profile's synthetic corpus at ``corpus``, built where it is missing."""
    from lightning_asr.data.synth import CorpusSpec, build_corpus
    from lightning_asr.study.profile import load_bench_config

    c = load_bench_config("embedded")[0].corpus
    build_corpus(CorpusSpec(c.seed, c.train, c.dev, c.test, c.target_train), corpus, verbose=False)
    return corpus


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows) if rows else float("nan")


def measure(args, corpus: Path) -> dict:
    """{"phase/precision/loop": (steps/s, {phase of the step: median ms}, GFLOP per step)} for this process's
    allocator, and {"peak/<precision>": GFLOP/s} of a matrix product in that precision."""
    results = {}
    precisions = args.precisions.split(",")
    for precision in precisions:
        results[f"peak/{precision}"] = matmul_peak(torch.bfloat16 if precision.startswith("bf16") else torch.float32)
    for phase in args.phases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            for precision in precisions:
                rows = {"plain": [], "project": []}
                config = phase_config(phase, corpus, args.warmup + args.steps + 1, Path(tmp) / "run", precision)
                flops = flops_per_step(config) / 1e9
                for index in range(args.rounds):
                    for loop, run in (("plain", plain_steps), ("project", project_steps)):
                        timed = run(config, args.warmup)
                        rows[loop] += timed
                        if args.verbose:
                            print(
                                f"  {phase} {precision} round {index + 1} {loop}: "
                                f"{1000 * median(timed, 'total'):.1f} ms per step",
                                flush=True,
                            )
                for loop, timed in rows.items():
                    results[f"{phase}/{precision}/{loop}"] = (
                        1 / median(timed, "total"),
                        {k: 1000 * median(timed, k) for k in PHASES},
                        flops,
                    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phases", default="pretrain,lora")
    parser.add_argument(
        "--precisions", default="32-true,bf16-mixed", help="trainer precisions, each on the same batches"
    )
    parser.add_argument("--corpus", default="data_manifests/synth", help="the embedded profile's corpus")
    parser.add_argument(
        "--allocator",
        default="kept",
        choices=("kept", "glibc", "both"),
        help="kept: freed memory kept for reuse, as training runs (lightning_asr.train.keep_freed_memory); "
        "glibc: glibc's own thresholds; both: each in its own process, and their ratio",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child's results, for both
    parser.add_argument("--verbose", action="store_true", help="print each round's median")
    args = parser.parse_args(argv)
    from lightning_asr.console import quiet

    quiet()
    corpus = embedded_corpus(Path(args.corpus))
    allocators = ("glibc", "kept") if args.allocator == "both" else (args.allocator,)
    if args.allocator == "both":
        results = {}
        for allocator in allocators:  # one process each: glibc's thresholds, once raised, stay raised
            command = [sys.executable, __file__, "--allocator", allocator, "--json", "--corpus", args.corpus]
            command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
            command += ["--precisions", args.precisions]
            done = subprocess.run([*command, "--phases", args.phases], check=True, capture_output=True, text=True)
            results[allocator] = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        if args.allocator == "glibc":
            os.environ[GLIBC_MALLOC] = "1"
        keep_freed_memory()
        results = {args.allocator: measure(args, corpus)}
        if args.json:
            print(json.dumps(results[args.allocator]))
            return 0
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; {args.rounds} rounds x {args.steps} timed steps after "
        f"{args.warmup} warm-up steps; medians in ms per step"
    )
    first = results[allocators[0]]
    print(
        "matrix-product peak (2048², best of 10): "
        + ", ".join(
            f"{key.split('/')[1]} {value:.0f} GFLOP/s" for key, value in first.items() if key.startswith("peak/")
        )
    )
    print(
        f"{'phase':<9} {'precision':<10} {'loop':<8} {'allocator':<9} {'steps/s':>8} {'ratio':>6} {'vs fp32':>7} "
        f"{'vs glibc':>8} {'GFLOP':>6} {'GFLOP/s':>7} {'util':>5} " + " ".join(f"{k:>9}" for k in PHASES)
    )
    for key in first:
        if key.startswith("peak/"):
            continue
        phase, precision, loop = key.split("/")
        for allocator in allocators:
            measured = results[allocator]
            rate, phases, flops = measured[key]
            ratio = rate / measured[f"{phase}/{precision}/plain"][0]
            float32 = measured.get(f"{phase}/32-true/{loop}")
            versus_fp32 = f"{rate / float32[0]:>7.3f}" if float32 else f"{'':>7}"
            versus = f"{rate / results['glibc'][key][0]:>8.3f}" if "glibc" in results else f"{'':>8}"
            achieved = flops * rate
            utilisation = achieved / measured[f"peak/{precision}"]
            print(
                f"{phase:<9} {precision:<10} {loop:<8} {allocator:<9} {rate:>8.3f} {ratio:>6.3f} {versus_fp32} "
                f"{versus} {flops:>6.1f} {achieved:>7.0f} {utilisation:>5.0%} "
                + " ".join(f"{phases[k]:>9.1f}" for k in PHASES),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
