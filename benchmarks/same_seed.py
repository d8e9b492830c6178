"""Does one seed give one base? Pretrains the embedded base's recipe twice for a few steps at each thread
count and prints how far apart the two runs' weights end.

    .venv/bin/python benchmarks/same_seed.py [--steps 30] [--threads 1,2] [--deterministic]

Each pair runs in this process with the same config and seed (``lightning_asr.train.train``, the data module
and the Trainer as stage 0 runs them); ``--deterministic`` sets ``torch.use_deterministic_algorithms(True)``.
The corpus is the embedded profile's (built first where it is missing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch


def trained_weights(steps: int, corpus: Path) -> dict[str, torch.Tensor]:
    from train_throughput import phase_config

    from lightning_asr.module import ASRModule
    from lightning_asr.train import train

    with tempfile.TemporaryDirectory() as tmp:
        result = train(phase_config("pretrain", corpus, steps, Path(tmp) / "run"), force=True)
        return {k: v.clone() for k, v in ASRModule.from_checkpoint(result.best_checkpoint).model.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--corpus", default="data_manifests/synth", help="the embedded profile's corpus")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))  # train_throughput's configs and corpus: the same runs
    from train_throughput import embedded_corpus

    from lightning_asr.console import quiet

    quiet()
    corpus = embedded_corpus(Path(args.corpus))
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}; {args.steps} pretraining steps, twice per thread count, one seed")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        first, second = trained_weights(args.steps, corpus), trained_weights(args.steps, corpus)
        gap = max((first[k].float() - second[k].float()).abs().max().item() for k in first)
        print(f"{threads} thread{'s' if threads > 1 else ''}: max |w1 - w2| = {gap:.3g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
