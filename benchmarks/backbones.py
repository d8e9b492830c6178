"""What each backbone costs here: one training step and one decoding pass of the same audio, per backbone.

    .venv/bin/python benchmarks/backbones.py [--manifest data_manifests/synth/ko-en/train.jsonl] [--batch 8] [--repeats 5]

Same utterances, same strategy (LoRA, rank 8, q/v of every attention block), each backbone's own input
pipeline (Whisper: log-mel padded to its window; wav2vec2: normalised waveform padded to the longest clip)
and decoding (Whisper: greedy autoregressive; CTC: one argmax pass). Prints seconds per step and the
ratio to the first backbone; each figure is the median of interleaved repeats, since timings drift on
shared machines. Parameters are counted too: the backbones differ in size, so read the ratios with them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lightning_asr.config import load_config, to_dict
from lightning_asr.data.datamodule import ManifestDataModule
from lightning_asr.module import ASRModule

BACKBONES = {
    "whisper-tiny-random": [],
    "wav2vec2-tiny-random": ["model.ctc_unit=jamo"],
    "whisper-toy": [],
    "wav2vec2-toy": ["model.ctc_unit=jamo"],
}


def build(spec: str, extra: list[str], manifest: str, batch_size: int, out: str):
    config = to_dict(
        load_config(
            overrides=[
                f"model.spec={spec}",
                f"data.train_manifests=[{manifest}]",
                "adapter.name=lora",
                f"output_dir={out}",
                "data.spec_augment.enabled=false",
                *extra,
            ]
        )
    )
    module = ASRModule(config)
    data = {"train_manifests": [str(manifest)], "batch_size": batch_size, "bucket_size": 10_000}
    datamodule = ManifestDataModule(module.processor, module.backbone, data, seed=0)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.AdamW([p for _, p in module.strategy.trainable_parameters()], lr=1e-5)

    def train_step() -> float:
        module.train()
        started = time.perf_counter()
        loss, _ = module.forward_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    def decode() -> float:
        module.eval()
        started = time.perf_counter()
        with torch.no_grad():
            module.decode_batch(batch)
        return time.perf_counter() - started

    return module, train_step, decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default="data_manifests/synth/ko-en/train.jsonl")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not Path(args.manifest).exists():
        print(
            f"error: {args.manifest} does not exist — fix: build the corpus (python -m lightning_asr.data.synth "
            "--out data_manifests/synth) or pass --manifest",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        built = {spec: build(spec, extra, args.manifest, args.batch, tmp) for spec, extra in BACKBONES.items()}
        timings = {spec: {"train": [], "decode": []} for spec in built}
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            for spec, (_, train_step, decode) in built.items():
                timings[spec]["train"].append(train_step())
                timings[spec]["decode"].append(decode())
    first = next(iter(built))
    median = {spec: {k: statistics.median(v[1:]) for k, v in t.items()} for spec, t in timings.items()}
    print(f"batch {args.batch} of {args.manifest}; LoRA r8 on q/v; median of {args.repeats} interleaved repeats\n")
    print("| backbone | parameters | trainable | train step (s) | vs first | decode batch (s) | vs first |")
    print("|---|---|---|---|---|---|---|")
    for spec, (module, _, _) in built.items():
        counts = module.strategy.parameter_counts()
        m = median[spec]
        print(
            f"| {spec} | {counts['total'] / 1e6:.1f} M | {counts['trainable'] / 1e3:.0f} k | {m['train']:.3f} | "
            f"{m['train'] / median[first]['train']:.2f}x | {m['decode']:.3f} | {m['decode'] / median[first]['decode']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
