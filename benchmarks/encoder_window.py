"""A real Whisper's error and decode time at its 30 s window against shorter encoder windows.

    make fetch-whisper MODEL=base
    .venv/bin/python benchmarks/encoder_window.py [--base whisper-base] [--positions 1500 500 300] [--count 20]

Synthetic test utterances (``lightning_asr.data.synth``, seed 0, all shorter than 6 s) of each ``--sets``,
decoded greedily with the language forced, for each encoder window (``model.encoder_positions``:
1500 = Whisper's 30 s, 500 = 10 s, 300 = 6 s), scored as the benchmark scores them (WER for en, CER for
ko/zh, MER for code-switched sets; basic normaliser). Prints error and seconds per utterance per window,
and whether each shorter window stays within 2 points of the 30 s error on every set (the rule the real-model
profile uses to pick its window).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="whisper-base")
    parser.add_argument("--positions", type=int, nargs="+", default=[1500, 500, 300])
    parser.add_argument("--sets", nargs="+", default=["en"])
    parser.add_argument("--count", type=int, default=20, help="test utterances per set")
    parser.add_argument("--corpus", default="runs/bench/encoder_window/corpus")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from lightning_asr.audio import read_audio
    from lightning_asr.config import DecodeConfig, structured
    from lightning_asr.data.manifest import read_manifest
    from lightning_asr.data.synth import CorpusSpec, build_corpus
    from lightning_asr.metrics import score_texts
    from lightning_asr.models import WhisperBackbone, load_model_processor

    hf_logging.set_verbosity_error()
    corpus = build_corpus(
        CorpusSpec(seed=0, train=1, dev=1, test=args.count, target_train=1, sets=args.sets),
        Path(args.corpus),
        verbose=False,
    )
    backbone = WhisperBackbone()
    decode = structured(DecodeConfig, {"max_new_tokens": 64, "num_beams": 1})
    rows = []
    for positions in args.positions:
        model, processor = load_model_processor(args.base, encoder_positions=positions)
        model.eval()
        for name in args.sets:
            entries = read_manifest(corpus / name / "test.jsonl")[: args.count]
            predictions, started = [], time.perf_counter()
            for entry in entries:
                inputs = backbone.audio_inputs(processor, [read_audio(entry.audio_filepath)])
                with torch.no_grad():
                    texts, _ = backbone.decode(model, processor.tokenizer, inputs, [entry.language], decode)
                predictions.append(texts[0])
            seconds = (time.perf_counter() - started) / len(entries)
            scores = score_texts(predictions, [e.text for e in entries], entries[0].lang)
            lang = entries[0].lang
            metric = "mer" if "-" in lang else "wer" if lang == "en" else "cer"  # as the benchmark scores sets
            rows.append({"positions": positions, "set": name, "metric": metric, "error": scores[metric], "s": seconds})
            print(f"{positions} positions {name}: {metric} {scores[metric]:.3f}, {seconds:.2f} s/utt", file=sys.stderr)
    print(f"\n{args.base}, {args.count} synthetic test utterances per set, greedy, {torch.get_num_threads()} threads\n")
    print("| window | set | error | s per utterance | vs 30 s |")
    print("|---|---|---:|---:|---|")
    full = {r["set"]: r for r in rows if r["positions"] == max(args.positions)}
    for r in rows:
        delta = r["error"] - full[r["set"]]["error"]
        verdict = "-" if r["positions"] == max(args.positions) else ("within 2 points" if delta <= 0.02 else "worse")
        print(
            f"| {r['positions'] * 2 / 100:g} s | {r['set']} | {r['metric']} {r['error']:.3f} | {r['s']:.2f} | "
            f"{verdict} ({delta:+.3f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
