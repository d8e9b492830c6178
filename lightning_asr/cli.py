"""Command line: ``python -m lightning_asr train|evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _quiet() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*past_key_values.*")


def _train(args) -> int:
    from lightning_asr.config import load_config
    from lightning_asr.train import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume, force=args.force)
    print(f"best checkpoint: {result.best_checkpoint}\nlast checkpoint: {result.last_checkpoint}")
    for key, value in sorted(result.validation.items()):
        print(f"{key}: {value:.4f}")
    return 0


def _evaluate(args) -> int:
    from lightning_asr.module import ASRModule
    from lightning_asr.train import evaluate

    module = ASRModule.from_checkpoint(args.checkpoint)
    overrides = {}
    if args.num_beams or args.language:
        overrides["decode"] = dict(module.config["decode"], **({"num_beams": args.num_beams} if args.num_beams else {}),
                                   **({"language": args.language} if args.language else {}))
    results = evaluate(module, args.manifest, overrides)
    for key, value in sorted(results.items()):
        print(f"{key}: {value:.4f}")
    if args.predictions:
        Path(args.predictions).parent.mkdir(parents=True, exist_ok=True)
        with open(args.predictions, "w", encoding="utf-8") as handle:
            for name, rows in module.predictions.items():
                for row in rows:
                    handle.write(json.dumps({"set": name, **row}, ensure_ascii=False) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_asr")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a base model with an adaptation strategy")
    train.add_argument("--config", required=True, help="YAML run config (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    train.add_argument("--force", action="store_true", help="replace a run already in output_dir")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=200")
    evaluate = commands.add_parser("evaluate", help="decode manifests with a checkpoint and print error rates")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--manifest", required=True, nargs="+")
    evaluate.add_argument("--num-beams", type=int)
    evaluate.add_argument("--language", help="'manifest' (default), 'auto' or a language code")
    evaluate.add_argument("--predictions", help="write per-utterance predictions to this JSONL file")
    args = parser.parse_args(argv)
    _quiet()
    from lightning_asr.config import ConfigError
    from lightning_asr.data.manifest import ManifestError
    from lightning_asr.train import OutputExistsError

    try:
        return {"train": _train, "evaluate": _evaluate}[args.command](args)
    except (ConfigError, ManifestError, OutputExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
