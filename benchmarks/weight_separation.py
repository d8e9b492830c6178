"""Weight separation in serving: what a device keeps, how fast the server swaps adapters, what it serves.

    .venv/bin/python benchmarks/weight_separation.py [--base whisper-tiny-random] [--requests 16] [--seconds 5]
        [--users 1 8] [--modes unmerged merged] [--max-new-tokens 48] [--out runs/bench/weight_separation]

Per strategy (LoRA, GLoRA type 1, BLoRA, full fine-tuning), with adapters of random nonzero weights:

- bytes on the device: the exported adapter directory, against the base's safetensors;
- memory of the server's slot for that structure that is not the shared base (adapter parameters only,
  except full fine-tuning, whose slot owns every trained weight);
- swap latency, in process: cold (read from disk, OS page cache warm, checked and copied into the slot)
  and warm (from the LRU, copied into the slot); medians of ``--swap-repeats``;
- over HTTP on loopback, per mode (merged / unmerged) and user count: requests/s and p50/p95 latency as
  the client sees it, with one client thread per user, each asking for its own user's adapter, until
  ``--requests`` are done or ``--seconds`` have passed. The LRU is emptied before each cell, so the first
  request of each user loads its adapter from disk; one untimed request per strategy warms the process.
- in process (``--parts engine``), without HTTP: 8 users' requests of each mix as one ``transcribe_many``
  batch against the same requests one by one (every row checked equal to its user's transcript alone).

``--encoder-positions N`` serves a Whisper base whose encoder window is cut to its first N positions (300 = 6 s,
``model.encoder_positions``), saved once as a model directory: the real whisper-base on a CPU, for example
(``make fetch-whisper``, then ``--base whisper-base --encoder-positions 300``).

Prints markdown tables and writes ``weight_separation.json`` and ``weight_separation.csv`` to ``--out``.
On a shared CPU the absolute figures drift; the ratios between rows are what to read. Every torch computation
runs on the serving process's engine thread (``serving.batcher.ENGINE_THREAD``), as ``serve`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from lightning_asr import client
from lightning_asr.adapters import build_strategy
from lightning_asr.audio import write_wav
from lightning_asr.models import load_base_model
from lightning_asr.serving import AdapterServer, ServiceLimits, create_app
from lightning_asr.serving.batcher import on_engine_thread

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the loopback server the tests use
from loopback import BackgroundServer  # noqa: E402

STRATEGIES = {
    "lora": {"name": "lora"},
    "glora-1": {"name": "glora", "type": 1},
    "blora": {"name": "blora"},
    "full_ft": {"name": "full_ft"},
}


def cut_base(spec: str, positions: int, directory: Path) -> str:
    """The base with its encoder window cut to ``positions``, saved as a model directory the server loads."""
    from lightning_asr.models.whisper import load_model_processor

    model, processor = load_model_processor(spec, encoder_positions=positions)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_users(base, adapters: Path, strategy: str, users: int) -> None:
    """``users`` adapters of ``strategy`` under ``adapters/<strategy>-<i>``, each with its own random weights."""
    values = STRATEGIES[strategy]
    for index in range(users):
        model = copy.deepcopy(base)
        adapter = build_strategy(values)
        seed = 1000 * index + len(strategy)
        with torch.random.fork_rng():  # the same adapters every run
            torch.manual_seed(seed)
            adapter.attach(model)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in adapter.trainable_parameters():
                if strategy == "full_ft":
                    if parameter.ndim >= 2:
                        parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
                elif name.endswith("lora_B.weight") or "gate" in name or "glu" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        if hasattr(adapter, "initial_weights"):
            adapter.initial_weights = {}
        adapter.save_adapter(adapters / f"{strategy}-{index}")


def base_bytes(spec: str, base) -> int:
    """Size of the base's safetensors (the spec's own file where it is a directory)."""
    path = Path(spec) / "model.safetensors"
    if path.exists():
        return path.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp, safe_serialization=True)
        return sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))


def slot_bytes(engine: AdapterServer, slot) -> int:
    """Bytes of the slot's parameters that are not the shared base's tensors."""
    shared = {p.data_ptr() for p in engine.base.parameters()}
    return sum(p.numel() * p.element_size() for p in slot.model.parameters() if p.data_ptr() not in shared)


def swap_latency(engine: AdapterServer, strategy: str, repeats: int) -> dict:
    """Cold: adapter read from disk, checked, copied into the slot. Warm: from the LRU, copied."""
    users = [f"{strategy}-0", f"{strategy}-1"]
    cold, warm = [], []
    with engine.lock:

        def swap(user: str) -> tuple[bool, bool]:
            adapter, hit, _ = engine.store.user(user)
            return hit, engine.load_into(engine.slot(adapter.side, user, adapter.key), adapter)

        for index in range(repeats):
            engine.store.cache.clear()
            for slot in engine.slots.values():
                slot.loaded = None
            started = time.perf_counter()
            swap(users[index % 2])
            cold.append((time.perf_counter() - started) * 1000)
        for user in users:
            engine.store.user(user)
        for index in range(repeats):
            started = time.perf_counter()
            hit, swapped = swap(users[index % 2])
            warm.append((time.perf_counter() - started) * 1000)
            assert hit and swapped
        slot = engine.slots[engine.store.user(users[0])[0].key]
    return {
        "swap_cold_ms": statistics.median(cold),
        "swap_warm_ms": statistics.median(warm),
        "slot_bytes": slot_bytes(engine, slot),
    }


def load_test(url: str, audio: Path, users: list[str], requests: int, seconds: float, send=None) -> dict:
    """One client thread per user, each asking for its own adapter, until ``requests`` or ``seconds``.
    ``send(user)``: one request and its JSON answer (default: the audio as the body, ``?user=``)."""
    latencies, hits, errors, modes, texts, lock = [], [], [], set(), {}, threading.Lock()
    budget = iter(range(requests))
    deadline = time.monotonic() + seconds
    send = send or (lambda user: client.transcribe(url, audio, user=user))

    def worker(user: str) -> None:
        while time.monotonic() < deadline:
            with lock:
                if next(budget, None) is None:
                    return
            started = time.perf_counter()
            try:
                result = send(user)
            except Exception as err:  # counted and reported, the run goes on
                with lock:
                    errors.append(str(err))
                continue
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
                texts.setdefault(user, set()).add(result.get("text"))
                hits.append(result.get("cache_hit", False))
                note = result.get("note") or ""
                modes.add(
                    result.get("mode", "?")
                    + (
                        " (cannot merge)"
                        if "cannot be folded" in note
                        else " (full weights)"
                        if "full fine-tuning" in note
                        else ""
                    )
                )

    threads = [threading.Thread(target=worker, args=(user,)) for user in users]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")

    return {
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": quantile(0.5),
        "p95_ms": quantile(0.95),
        "cache_hit_rate": sum(hits) / max(1, len(hits)),
        "served_as": ", ".join(sorted(modes)),
        "texts": texts,  # user: the distinct transcripts it got
        **({"first_error": errors[0]} if errors else {}),
    }


MIXES = {  # the adapters of a run's users, cycled
    "lora": ["lora"],  # one structure: every row can share one pass, each with its own weights
    "mixed": ["lora", "glora-1", "blora"],  # three structures: rows of all three share one pass
}
SERVINGS = {  # name: (mode, max batch size; None: --max-batch-size)
    "serialised": ("unmerged", 1),
    "batched": ("unmerged", None),
    "merged": ("merged", 1),
}


def mix_users(mix: str, count: int) -> list[str]:
    cycle = MIXES[mix]
    return [f"{cycle[i % len(cycle)]}-{i}" for i in range(count)]


def batching_rows(args, adapters: Path, audio: Path) -> list[dict]:
    """Users of different adapters served three ways by three servers over one store: serialised (one
    request at a time), batched (requests within --batch-timeout-ms share a pass, up to --max-batch-size)
    and merged (one at a time, each adapter folded into the base). The cells of one mix and user count run
    back to back on the three servers, so that the ratios compare the machine in one state. Every adapter
    is read and every structure decoded once before timing: these are steady-state figures."""
    most = max(args.batching_users)
    rows = []
    with contextlib.ExitStack() as stack:
        urls = {}
        for serving, (mode, batch) in SERVINGS.items():
            limits = ServiceLimits(
                max_batch_size=batch or args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms, max_queue=4 * most
            )
            engine = on_engine_thread(
                AdapterServer,
                args.base,
                adapters,
                mode=mode,
                cache_size=most,
                language="en",
                max_new_tokens=args.max_new_tokens,
                limits=limits,
            )
            on_engine_thread(engine.preload_structures)
            urls[serving] = stack.enter_context(BackgroundServer(create_app(engine)))
        for mix in args.mixes:
            for url in urls.values():  # untimed: adapters read, first decodes of each structure
                for user in mix_users(mix, most):
                    client.transcribe(url, audio, user=user)
            for users in args.batching_users:
                for serving, url in urls.items():
                    row = {
                        "mix": mix,
                        "serving": serving,
                        "users": users,
                        **load_test(url, audio, mix_users(mix, users), args.batching_requests, args.seconds),
                    }
                    row.pop("texts")
                    rows.append(row)
                    print(
                        f"{mix} {serving} users={users}: {row['requests']} requests, "
                        f"{row['requests_per_s']:.2f}/s, p95 {row['p95_ms']:.0f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    for row in rows:
        serial = next(
            r for r in rows if r["mix"] == row["mix"] and r["users"] == row["users"] and r["serving"] == "serialised"
        )
        row["rps_vs_serialised"] = row["requests_per_s"] / serial["requests_per_s"]
        row["p95_vs_serialised"] = row["p95_ms"] / serial["p95_ms"]
    return rows


def engine_rows(args, adapters: Path, audio: Path) -> list[dict]:
    """In process, no HTTP: 8 users' requests (each mix) through ``transcribe_many`` as one batch, against the
    same requests one by one, alternating ``--engine-repeats`` times. What the engine itself gains, apart
    from how the batcher forms batches over HTTP."""
    engine = AdapterServer(args.base, adapters, language="en", max_new_tokens=args.max_new_tokens, cache_size=32)
    samples = audio.read_bytes()
    rows = []
    for mix in args.mixes:
        requests = [{"audio": samples, "user": user} for user in mix_users(mix, 8)]
        engine.transcribe_many(requests)  # untimed: adapters read, structures injected, the mixed model built
        batched, serial = [], []
        for _ in range(args.engine_repeats):
            started = time.perf_counter()
            together = engine.transcribe_many(requests)
            batched.append(time.perf_counter() - started)
            started = time.perf_counter()
            alone = [engine.transcribe(**request) for request in requests]
            serial.append(time.perf_counter() - started)
            assert [r["text"] for r in together] == [r["text"] for r in alone], "a row differs from its user alone"
        rows.append(
            {
                "mix": mix,
                "users": 8,
                "batch_s": statistics.median(batched),
                "serial_s": statistics.median(serial),
                "ratio": statistics.median(serial) / statistics.median(batched),
                "batch_rows": together[0]["batch_rows"],
            }
        )
    return rows


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "|".join("---" if fmt == "s" else "---:" for _, _, fmt in columns) + "|",
    ]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key, "")
            cells.append(format(value, fmt) if isinstance(value, (int, float)) and fmt != "s" else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="whisper-tiny-random", help="preset or local model directory")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--users", type=int, nargs="+", default=[1, 8], help="concurrent users (one thread each)")
    parser.add_argument("--modes", nargs="+", default=["unmerged", "merged"], choices=["unmerged", "merged"])
    parser.add_argument("--requests", type=int, default=16, help="requests per cell, at most")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per cell, at most")
    parser.add_argument("--swap-repeats", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--audio-seconds", type=float, default=2.0)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["per-strategy", "batching", "engine"],
        choices=["per-strategy", "batching", "engine"],
    )
    parser.add_argument("--mixes", nargs="+", default=list(MIXES), choices=list(MIXES))
    parser.add_argument("--batching-users", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--batching-requests", type=int, default=48, help="requests per batching cell, at most")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=25.0)
    parser.add_argument("--engine-repeats", type=int, default=3, help="alternations of the in-process part")
    parser.add_argument(
        "--encoder-positions", type=int, help="cut a Whisper base's encoder window to N positions (300 = 6 s)"
    )
    parser.add_argument("--out", default="runs/bench/weight_separation", help="directory for the JSON and CSV")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    most_users = max(max(args.users), 2, 8 if "engine" in args.parts else 2)
    most_users = max([most_users, *(args.batching_users if "batching" in args.parts else [])])
    exported = (list(args.strategies) if "per-strategy" in args.parts else []) + [
        s for mix in args.mixes for s in MIXES[mix] if {"batching", "engine"} & set(args.parts)
    ]
    with tempfile.TemporaryDirectory(prefix="weight-separation-") as tmp:
        tmp = Path(tmp)
        named_base = args.base
        if args.encoder_positions:
            args.base = on_engine_thread(cut_base, args.base, args.encoder_positions, tmp / "base")
        base = on_engine_thread(lambda: load_base_model(args.base).eval())
        total_base_bytes = on_engine_thread(base_bytes, args.base, base)
        audio = tmp / "audio.wav"
        rng = np.random.RandomState(0)
        write_wav(audio, (0.1 * rng.randn(int(args.audio_seconds * 16000))).astype(np.float32))
        for strategy in dict.fromkeys(exported):
            on_engine_thread(export_users, base, tmp / "adapters", strategy, most_users)
        del base
        sizes, serving, batching = [], [], []
        for mode in args.modes if "per-strategy" in args.parts else []:
            engine = on_engine_thread(
                AdapterServer,
                args.base,
                tmp / "adapters",
                mode=mode,
                cache_size=most_users,
                language="en",
                max_new_tokens=args.max_new_tokens,
            )
            on_engine_thread(engine.preload_structures)
            if mode == args.modes[0]:
                for strategy in args.strategies:
                    device = directory_bytes(tmp / "adapters" / f"{strategy}-0")
                    sizes.append(
                        {
                            "strategy": strategy,
                            "device_bytes": device,
                            "base_bytes": total_base_bytes,
                            "device_vs_base": device / total_base_bytes,
                            **on_engine_thread(swap_latency, engine, strategy, args.swap_repeats),
                        }
                    )
            with BackgroundServer(create_app(engine)) as url:
                for strategy in args.strategies:  # untimed: the first decode of a process pays one-off costs
                    client.transcribe(url, audio, user=f"{strategy}-0")
                for strategy in args.strategies:
                    for users in args.users:
                        engine.store.cache.clear()
                        row = {
                            "strategy": strategy,
                            "mode": mode,
                            "users": users,
                            **load_test(
                                url, audio, [f"{strategy}-{i}" for i in range(users)], args.requests, args.seconds
                            ),
                        }
                        row.pop("texts")
                        serving.append(row)
                        print(
                            f"{strategy} {mode} users={users}: {row['requests']} requests, "
                            f"{row['requests_per_s']:.2f}/s, p50 {row['p50_ms']:.0f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
            del engine
        if "batching" in args.parts:
            batching = batching_rows(args, tmp / "adapters", audio)
        in_process = on_engine_thread(engine_rows, args, tmp / "adapters", audio) if "engine" in args.parts else []
    print(
        f"\nbase {named_base}"
        + (f" (encoder window {args.encoder_positions / 50:g} s)" if args.encoder_positions else "")
        + f": {total_base_bytes / 2**20:.1f} MiB of safetensors; decoding {args.audio_seconds:g} s of "
        f"audio, up to {args.max_new_tokens} new tokens, greedy; torch threads {torch.get_num_threads()}\n"
    )
    if sizes:
        print(
            markdown(
                sizes,
                [
                    ("strategy", "strategy", "s"),
                    ("device_bytes", "bytes on device", ",d"),
                    ("device_vs_base", "vs base model", ".2%"),
                    ("slot_bytes", "server memory beyond base", ",d"),
                    ("swap_cold_ms", "swap cold (disk) ms", ".2f"),
                    ("swap_warm_ms", "swap warm (LRU) ms", ".2f"),
                ],
            )
        )
        print()
        print(
            markdown(
                serving,
                [
                    ("strategy", "strategy", "s"),
                    ("mode", "mode", "s"),
                    ("served_as", "served as", "s"),
                    ("users", "users", "d"),
                    ("requests", "requests", "d"),
                    ("requests_per_s", "req/s", ".2f"),
                    ("p50_ms", "p50 ms", ".0f"),
                    ("p95_ms", "p95 ms", ".0f"),
                    ("errors", "errors", "d"),
                ],
            )
        )
    if batching:
        print()
        print(
            markdown(
                batching,
                [
                    ("mix", "users' adapters", "s"),
                    ("users", "users", "d"),
                    ("serving", "serving", "s"),
                    ("requests", "requests", "d"),
                    ("requests_per_s", "req/s", ".2f"),
                    ("rps_vs_serialised", "req/s vs serialised", ".2f"),
                    ("p50_ms", "p50 ms", ".0f"),
                    ("p95_ms", "p95 ms", ".0f"),
                    ("p95_vs_serialised", "p95 vs serialised", ".2f"),
                    ("errors", "errors", "d"),
                ],
            )
        )
        for row in batching:
            if row["serving"] == "batched" and row["users"] == 8:
                print(
                    f"\n8 concurrent users, adapters {'+'.join(MIXES[row['mix']])}: batched "
                    f"{row['rps_vs_serialised']:.2f}x the requests/s of serialised decoding, p95 "
                    f"{row['p95_vs_serialised']:.2f}x (goal: >= 4x at no worse p95)"
                )
    if in_process:
        print("\nIn process (no HTTP): 8 users' requests as one transcribe_many batch against one by one\n")
        print(
            markdown(
                in_process,
                [
                    ("mix", "users' adapters", "s"),
                    ("users", "users", "d"),
                    ("batch_rows", "rows per pass", "d"),
                    ("batch_s", "batch s", ".3f"),
                    ("serial_s", "one by one s", ".3f"),
                    ("ratio", "throughput vs one by one", ".2f"),
                ],
            )
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**vars(args), "base": named_base}
    (out / "weight_separation.json").write_text(
        json.dumps(
            {"settings": settings, "sizes": sizes, "serving": serving, "batching": batching, "engine": in_process},
            indent=2,
        )
    )
    with open(out / "weight_separation.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["table", "strategy", "mode", "users", "metric", "value"])
        for row in sizes:
            for key in ("device_bytes", "base_bytes", "device_vs_base", "slot_bytes", "swap_cold_ms", "swap_warm_ms"):
                writer.writerow(["size", row["strategy"], "", "", key, row[key]])
        for row in serving:
            for key in ("requests", "errors", "requests_per_s", "p50_ms", "p95_ms", "cache_hit_rate"):
                writer.writerow(["serving", row["strategy"], row["mode"], row["users"], key, row[key]])
        for row in batching:
            for key in ("requests", "errors", "requests_per_s", "p50_ms", "p95_ms", "rps_vs_serialised"):
                writer.writerow(["batching", row["mix"], row["serving"], row["users"], key, row[key]])
    print(f"\nwrote {out / 'weight_separation.json'} and {out / 'weight_separation.csv'}")
    return 0 if not any(row["errors"] for row in serving + batching) else 1


if __name__ == "__main__":
    sys.exit(main())
