"""Command line: ``python -m lightning_asr train|evaluate|export|serve|transcribe``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


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
    overrides: dict = {"decode": {}, "trainer": {}}
    if args.num_beams:
        overrides["decode"]["num_beams"] = args.num_beams
    if args.language:
        overrides["decode"]["language"] = args.language
    if args.devices:  # e.g. --devices 2 --strategy ddp: the test set sharded over processes
        overrides["trainer"]["devices"] = args.devices
    if args.strategy:
        overrides["trainer"]["strategy"] = args.strategy
    results = evaluate(module, args.manifest, overrides)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # every process holds the reduced scores; one prints them
        return 0
    for key, value in sorted(results.items()):
        print(f"{key}: {value:.4f}")
    for name, normalizer_id in sorted(module.normalizer_ids.items()):
        print(f"normalizer/{name}: {normalizer_id}")
    if args.predictions:
        Path(args.predictions).parent.mkdir(parents=True, exist_ok=True)
        with open(args.predictions, "w", encoding="utf-8") as handle:
            for name, rows in module.predictions.items():
                for row in rows:
                    handle.write(json.dumps({"set": name, **row}, ensure_ascii=False) + "\n")
    return 0


def _export(args) -> int:
    from lightning_asr.adapters.export import AdapterFileError
    from lightning_asr.module import ASRModule

    module = ASRModule.from_checkpoint(args.checkpoint)
    try:
        path = module.strategy.save_adapter(args.out, overwrite=args.force)
    except (FileExistsError, AdapterFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{module.strategy.name} adapter of {args.checkpoint} written to {path}")
    print(f"serve it: python -m lightning_asr serve --base {module.config.model.spec} --adapters {Path(path).parent}")
    return 0


def api_keys(args) -> list[str]:
    """``--api-key`` values and the lines of ``--api-key-file`` (blank lines and ``#`` comments skipped)."""
    keys = list(args.api_key or [])
    if args.api_key_file:
        lines = Path(args.api_key_file).read_text().splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return keys


def _serve(args) -> int:
    from lightning_asr.models import ModelSpecError
    from lightning_asr.serving import ServiceLimits, serve

    try:
        limits = ServiceLimits(
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_adapter_bytes=int(args.max_adapter_mb * 2**20),
            max_audio_seconds=args.max_audio_seconds,
            max_queue=args.max_queue,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
        )
        serve(
            args.base,
            args.adapters,
            host=args.host,
            port=args.port,
            mode=args.mode,
            cache_size=args.cache_size,
            language=args.language,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            api_keys=api_keys(args),
            require_user_keys=args.require_user_keys,
            limits=limits,
        )
    except (ModelSpecError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _transcribe(args) -> int:
    from lightning_asr.client import ClientError, ServerError, transcribe

    failed = 0
    for path in args.files:
        try:
            result = transcribe(
                args.server,
                path,
                user=args.user,
                adapter_dir=args.adapter_dir,
                language=args.language,
                api_key=args.api_key or os.environ.get("LIGHTNING_ASR_API_KEY"),
                user_key=args.user_key,
            )
        except (ServerError, ClientError) as err:  # one bad file (or refusal) does not stop the others
            failed += 1
            result = {"error": str(getattr(err, "detail", err)), "status": getattr(err, "status", None)}
        print(json.dumps({"file": path, **result}, ensure_ascii=False), flush=True)
    return 1 if failed else 0


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
    evaluate.add_argument("--devices", type=int, help="processes (or GPUs) to shard the test sets over")
    evaluate.add_argument("--strategy", help="Lightning strategy for several devices, e.g. ddp")
    export = commands.add_parser(
        "export", help="write a checkpoint's adapter as a directory a device keeps and the server serves"
    )
    export.add_argument("--checkpoint", required=True, help="e.g. a run's or a benchmark cell's best.ckpt")
    export.add_argument("--out", required=True, help="the adapter directory, e.g. adapters/<user_id>")
    export.add_argument("--force", action="store_true", help="replace the files of a directory that holds some")
    serve = commands.add_parser("serve", help="serve one base model with per-user adapters over HTTP")
    serve.add_argument("--base", required=True, help="base model: preset, local directory or hub id")
    serve.add_argument("--adapters", required=True, help="adapter store: DIR/<user_id>/ as written by save_adapter")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--mode",
        choices=("merged", "unmerged"),
        default="unmerged",
        help="merged: fold mergeable adapters (LoRA, BLoRA) into the base weights for each decode (restored exactly after)",
    )
    serve.add_argument("--cache-size", type=int, default=8, help="adapters kept ready in memory (LRU)")
    serve.add_argument("--max-upload-mb", type=float, default=25.0, help="larger request bodies get HTTP 413")
    serve.add_argument("--language", default="auto", help="'auto' (detected) or a language code; requests may override")
    serve.add_argument("--num-beams", type=int)
    serve.add_argument("--max-new-tokens", type=int)
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    serve.add_argument(
        "--api-key", action="append", help="bearer token required on every route but /health (repeatable)"
    )
    serve.add_argument("--api-key-file", help="file of bearer tokens, one per line")
    serve.add_argument(
        "--require-user-keys",
        action="store_true",
        help="every user needs access_key.sha256 in their adapter directory, and uploads name a user and carry the key",
    )
    serve.add_argument("--max-audio-seconds", type=float, default=600.0, help="longer audio gets HTTP 413")
    serve.add_argument("--max-adapter-mb", type=float, default=64.0, help="larger uploaded adapters get HTTP 413")
    serve.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond this get HTTP 503")
    serve.add_argument(
        "--max-batch-size",
        type=int,
        default=1,
        help="decode up to this many requests together, each with its own user's adapter (1: one at a time)",
    )
    serve.add_argument(
        "--batch-timeout-ms", type=float, default=25.0, help="how long a batch waits for more requests after its first"
    )
    for command in (train, evaluate, export, serve):
        command.add_argument(
            "--plugin",
            action="append",
            help="module of your own strategies (dotted path), imported first (repeatable); modules in the "
            "lightning_asr.strategies entry-point group are imported too",
        )
    client = commands.add_parser("transcribe", help="send audio files to a running server; one JSON line per file")
    client.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8000")
    client.add_argument(
        "--user", help="user id of an adapter in the server's store (or of the uploaded adapter); none: the base"
    )
    client.add_argument("--adapter-dir", help="send this exported adapter directory with each file")
    client.add_argument("--language", help="'auto' or a language code (default: the server's)")
    client.add_argument("--api-key", help="the server's bearer token (default: $LIGHTNING_ASR_API_KEY)")
    client.add_argument("--user-key", help="the user's own access key, where the server's store holds one")
    client.add_argument("files", nargs="+", help="WAV or FLAC files")
    args = parser.parse_args(argv)
    if args.command == "transcribe":  # the client needs neither torch nor transformers
        return _transcribe(args)
    from lightning_asr.console import quiet

    quiet()
    from lightning_asr.config import ConfigError
    from lightning_asr.data.manifest import ManifestError
    from lightning_asr.train import OutputExistsError

    try:
        from lightning_asr.adapters import load_plugins

        load_plugins(args.plugin)
        return {"train": _train, "evaluate": _evaluate, "export": _export, "serve": _serve}[args.command](args)
    except (ConfigError, ManifestError, OutputExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
