"""What each adaptation strategy costs, measured in one run on one model and batch (ratios, not seconds).

    .venv/bin/python benchmarks/adapter_overhead.py [--model whisper-toy] [--batch 8] [--repeats 7]

Prints, for each strategy: training-step time relative to LoRA, trainable parameters, exported adapter bytes
relative to the whole model; our LoRA relative to PEFT's; greedy decoding with merged LoRA/BLoRA relative to
the base model. Targets: our LoRA <= 1.05x PEFT, GLoRA <= 1.10x LoRA, BLoRA <= 1.35x LoRA, merged decoding
<= 1.02x base. Timings on shared machines drift: each figure is the median of interleaved repeats.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lightning_asr.adapters import build_strategy
from lightning_asr.models import load_base_model

STRATEGIES = {
    "lora": {"name": "lora"},
    "glora-1": {"name": "glora", "type": 1},
    "glora-2": {"name": "glora", "type": 2},
    "glora-3": {"name": "glora", "type": 3},
    "glora-4": {"name": "glora", "type": 4},
    "blora": {"name": "blora"},
    "full_ft": {"name": "full_ft"},
}


def make_batch(model, batch_size: int, label_length: int = 20) -> dict:
    generator = torch.Generator().manual_seed(0)
    frames = 2 * model.config.max_source_positions
    labels = torch.randint(0, 50000, (batch_size, label_length), generator=generator)
    decoder_input_ids = torch.cat([torch.full((batch_size, 1), 50258), labels[:, :-1]], dim=1)
    return {
        "input_features": torch.randn(batch_size, 80, frames, generator=generator),
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }


def step_timer(model, batch):
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    model.train()

    def step() -> float:
        started = time.perf_counter()
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    step()  # warm-up
    return step


def decode_timer(model, batch, new_tokens: int = 20):
    model.eval()
    features = batch["input_features"]

    def decode() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(
                features, language="en", task="transcribe", max_new_tokens=new_tokens, min_new_tokens=new_tokens
            )
        return time.perf_counter() - started

    decode()
    return decode


def interleaved_medians(timers: dict, repeats: int) -> dict[str, float]:
    """Run every timer once per round, ``repeats`` rounds, so drift hits all of them alike."""
    samples = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            samples[name].append(timer())
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-toy")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    base = load_base_model(args.model)
    batch = make_batch(base, args.batch)
    model_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    print(
        f"model {args.model}: {sum(p.numel() for p in base.parameters()) / 1e6:.1f} M parameters, "
        f"{model_bytes / 2**20:.1f} MiB; batch {args.batch}; rank {args.rank}; median of {args.repeats}; "
        f"{torch.get_num_threads()} threads"
    )

    models, strategies, timers = {}, {}, {}
    for name, values in STRATEGIES.items():
        low_rank = {"rank": args.rank, "alpha": 2 * args.rank} if name != "full_ft" else {}
        config = {**low_rank, **values}
        model = copy.deepcopy(base)
        strategies[name] = build_strategy(config)
        strategies[name].attach(model)
        models[name] = model
        timers[name] = step_timer(model, batch)
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=strategies["lora"].target_names),
    )
    timers["peft-lora"] = step_timer(peft_model, batch)
    steps = interleaved_medians(timers, args.repeats)

    print(f"\n{'strategy':<10} {'step s':>8} {'vs LoRA':>8} {'trainable':>11} {'adapter bytes':>14} {'vs model':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, strategy in strategies.items():
            directory = strategy.save_adapter(Path(tmp) / name)
            size = sum(f.stat().st_size for f in directory.iterdir())
            print(
                f"{name:<10} {steps[name]:>8.3f} {steps[name] / steps['lora']:>7.2f}x "
                f"{strategy.parameter_counts()['trainable']:>11,} {size:>14,} {size / model_bytes:>8.2%}"
            )
    print(f"\nour LoRA vs PEFT LoRA, training step: {steps['lora'] / steps['peft-lora']:.3f}x (target <= 1.05)")
    print(
        "GLoRA types 1-4 vs LoRA: "
        + ", ".join(f"{steps[f'glora-{t}'] / steps['lora']:.2f}x" for t in range(1, 5))
        + " (target <= 1.10)"
    )
    print(f"BLoRA vs LoRA: {steps['blora'] / steps['lora']:.2f}x (target <= 1.35)")

    for name in ("lora", "blora"):
        strategies[name].merge()
    decode = interleaved_medians(
        {
            "base": decode_timer(base, batch),
            "lora-merged": decode_timer(models["lora"], batch),
            "blora-merged": decode_timer(models["blora"], batch),
        },
        args.repeats,
    )
    print(
        f"greedy decoding, 20 tokens: base {decode['base']:.3f} s; merged LoRA {decode['lora-merged'] / decode['base']:.3f}x, "
        f"merged BLoRA {decode['blora-merged'] / decode['base']:.3f}x (target <= 1.02)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
