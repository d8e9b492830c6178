"""Weight separation over a phone's network: a device that uploads its adapter with every request against one
that uploads it once and then names it by fingerprint (and a server that keeps the user's adapter itself).

    .venv/bin/python benchmarks/network_conditions.py [--base whisper-tiny-random] [--requests 8]
        [--strategies lora glora-1 blora full_ft] [--out runs/bench/network_conditions]

Each request is served for real over loopback HTTP (the server's own time, measured by the client); the
network is then applied by the client from the bytes each request puts on the wire and gets back: a new TCP
connection per request (urllib's) costs two round trips, then the request's bytes at the uplink's rate and
the response's at the downlink's. The profiles are round numbers for a phone, not measurements of one:

- ``4g``: 60 ms round trip, 8 Mbit/s up, 30 Mbit/s down;
- ``wifi``: 15 ms round trip, 40 Mbit/s up, 100 Mbit/s down;
- ``loopback``: nothing added.

Prints the adapter bytes a device stores per strategy and, per profile and way of sending, the median
latency a device would see and the first request's (registration included); writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the loopback server the tests use
from loopback import BackgroundServer  # noqa: E402
from weight_separation import STRATEGIES, directory_bytes, export_users, markdown  # noqa: E402

from lightning_asr import client  # noqa: E402
from lightning_asr.audio import write_wav  # noqa: E402
from lightning_asr.models import load_base_model  # noqa: E402
from lightning_asr.serving import AdapterServer, create_app  # noqa: E402
from lightning_asr.serving.batcher import on_engine_thread  # noqa: E402

PROFILES = {  # round trip s, uplink bit/s, downlink bit/s
    "4g": (0.060, 8e6, 30e6),
    "wifi": (0.015, 40e6, 100e6),
    "loopback": (0.0, float("inf"), float("inf")),
}
HEADERS = 400  # bytes of HTTP request or response headers, roughly


def on_the_wire(profile: str, sent: int, received: int) -> float:
    """Seconds a request of ``sent`` bytes answered with ``received`` bytes spends on the network."""
    rtt, up, down = PROFILES[profile]
    return 2 * rtt + 8 * (sent + HEADERS) / up + 8 * (received + HEADERS) / down


def timed(call) -> tuple[float, int]:
    """(seconds, response bytes) of one request."""
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, len(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="whisper-tiny-random")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--requests", type=int, default=8, help="timed requests per strategy and way of sending")
    parser.add_argument("--audio-seconds", type=float, default=4.0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", default="runs/bench/network_conditions")
    args = parser.parse_args(argv)
    sizes, rows = [], []
    with tempfile.TemporaryDirectory(prefix="network-conditions-") as tmp:
        tmp = Path(tmp)
        base = on_engine_thread(lambda: load_base_model(args.base).eval())
        for strategy in args.strategies:
            on_engine_thread(export_users, base, tmp / "adapters", strategy, 1)
        del base
        audio = tmp / "audio.wav"
        write_wav(audio, (0.1 * np.random.RandomState(0).randn(int(args.audio_seconds * 16000))).astype(np.float32))
        audio_bytes = audio.stat().st_size
        engine = on_engine_thread(
            AdapterServer, args.base, tmp / "adapters", language="en", max_new_tokens=args.max_new_tokens
        )
        with BackgroundServer(create_app(engine)) as url:
            for strategy in args.strategies:
                user, directory = f"{strategy}-0", tmp / "adapters" / f"{strategy}-0"
                adapter_bytes = directory_bytes(directory)
                sizes.append({"strategy": strategy, "adapter_bytes": adapter_bytes})
                client.transcribe(url, audio, user=user)  # untimed: the structure injected, the first decode paid
                registration, registered_bytes = timed(partial(client.register_adapter, url, directory))
                adapter_id = client.register_adapter(url, directory)["adapter_id"]
                send = partial(client.transcribe, url, audio)
                ways = {  # way of sending: (request, bytes sent)
                    "upload every request": (partial(send, adapter_dir=directory), audio_bytes + adapter_bytes),
                    "upload once, then by fingerprint": (partial(send, adapter_id=adapter_id), audio_bytes),
                    "server keeps it (user id)": (partial(send, user=user), audio_bytes),
                }
                for way, (call, sent) in ways.items():
                    served = [timed(call) for _ in range(args.requests)]
                    for profile in PROFILES:
                        latencies = [s + on_the_wire(profile, sent, received) for s, received in served]
                        first = latencies[0]
                        if way.startswith("upload once"):
                            first += registration + on_the_wire(profile, adapter_bytes, registered_bytes)
                        rows.append(
                            {
                                "strategy": strategy,
                                "profile": profile,
                                "way": way,
                                "sent_bytes": sent,
                                "server_ms": 1000 * statistics.median(s for s, _ in served),
                                "p50_ms": 1000 * statistics.median(latencies),
                                "first_ms": 1000 * first,
                            }
                        )
                print(f"{strategy}: done", file=sys.stderr, flush=True)
    print(
        f"\nbase {args.base}; {args.audio_seconds:g} s of audio ({audio_bytes:,} bytes), greedy, {args.max_new_tokens} tokens\n"
    )
    print(markdown(sizes, [("strategy", "strategy", "s"), ("adapter_bytes", "adapter bytes on the device", ",d")]))
    print()
    columns = [
        ("strategy", "strategy", "s"),
        ("profile", "network", "s"),
        ("way", "adapter sent", "s"),
        ("sent_bytes", "bytes up per request", ",d"),
        ("server_ms", "server ms (p50)", ".0f"),
        ("p50_ms", "device sees ms (p50)", ".0f"),
        ("first_ms", "first request ms", ".0f"),
    ]
    print(markdown(rows, columns))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "network_conditions.json").write_text(
        json.dumps({"settings": vars(args), "profiles": PROFILES, "sizes": sizes, "rows": rows}, indent=2, default=str)
    )
    print(f"\nwrote {out / 'network_conditions.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
