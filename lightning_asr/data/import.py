"""Command line for the corpus importers: ``python -m lightning_asr.data.import <corpus> --root DIR --out DIR``.

``python -m lightning_asr.data.import --help`` lists the corpora; ``... <corpus> --help`` their options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_asr.data.importers import IMPORTERS, ImporterError, run_import

COMMON_OPTIONS = ("corpus", "root", "out", "force", "strict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_asr.data.import",
        description="Write JSONL manifests (<out>/<split>.jsonl) for a speech corpus in its own layout. "
        "Manifests point at the original audio (segments by offset/duration); nothing is re-encoded.",
    )
    corpora = parser.add_subparsers(
        dest="corpus", required=True, metavar="CORPUS", title="corpora", description=", ".join(IMPORTERS)
    )
    for name, importer in IMPORTERS.items():
        sub = corpora.add_parser(name, help=importer.help, description=f"{importer.help}. {importer.layout}.")
        sub.add_argument("--root", type=Path, required=importer.needs_root, help="the corpus folder")
        sub.add_argument("--out", type=Path, required=True, help="folder for the manifests (created if missing)")
        sub.add_argument("--force", action="store_true", help="overwrite existing manifests")
        sub.add_argument(
            "--strict",
            action="store_true",
            help="make any skipped line (missing audio or transcript, empty text) an error; write nothing then",
        )
        importer.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {key: value for key, value in vars(args).items() if key not in COMMON_OPTIONS}
    try:
        if options.get("to_lhotse"):  # the other direction: a manifest written as a Lhotse CutSet
            from lightning_asr.data.importers.lhotse_cuts import manifest_to_cutset

            if args.out.exists() and not args.force:
                raise ImporterError(f"{args.out} already exists — fix: pass --force to overwrite it")
            count = manifest_to_cutset(options["to_lhotse"], args.out)
            print(f"{args.out}: {count} cuts from {options['to_lhotse']}")
            return 0
        root = args.root
        if root is None:  # importers that read the files their options name
            named = [v for k, v in options.items() if isinstance(v, Path)]
            root = named[0].parent if named else Path.cwd()
        run_import(args.corpus, root, args.out, force=args.force, strict=args.strict, **options)
    except ImporterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
