"""Corpus importers: read a corpus in its own on-disk layout, write checked-format manifests under an output folder.

    python -m lightning_asr.data.import <corpus> --root DIR --out DIR [--force] [--strict] [options]

or ``run_import("seame", root, out, dev_sets=...)``. Each importer's module documents its layout, the
manifests it writes and what it does to the text.
"""

from __future__ import annotations

from pathlib import Path

from lightning_asr.data.importers import aishell, fleurs, hf_parquet, kecs, lhotse_cuts, librispeech, seame
from lightning_asr.data.importers.common import Collection, Importer, ImporterError

IMPORTERS: dict[str, Importer] = {
    importer.name: importer
    for importer in (
        kecs.IMPORTER,
        seame.IMPORTER,
        hf_parquet.ASCEND,
        hf_parquet.HIKE,
        fleurs.IMPORTER,
        librispeech.LIBRISPEECH_IMPORTER,
        librispeech.ZEROTH_IMPORTER,
        aishell.IMPORTER,
        lhotse_cuts.IMPORTER,
    )
}

__all__ = ["IMPORTERS", "Collection", "Importer", "ImporterError", "run_import"]


def run_import(
    corpus: str,
    root: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    strict: bool = False,
    verbose: bool = True,
    **options,
) -> Collection:
    """Import ``corpus`` from ``root`` into manifests under ``out``; print one summary line per manifest.
    Existing manifests are kept unless ``force``; with ``strict`` any skipped line is an error."""
    if corpus not in IMPORTERS:
        raise ImporterError(f"unknown corpus {corpus!r} — fix: choose one of {', '.join(IMPORTERS)}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ImporterError(f"{root}: no such folder — fix: pass the corpus folder as --root")
    out.mkdir(parents=True, exist_ok=True)
    collection = Collection(root, out, force)
    IMPORTERS[corpus].collect(collection, root, **options)
    collection.write(strict=strict, verbose=verbose)
    return collection
