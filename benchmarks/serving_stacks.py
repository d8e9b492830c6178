"""LitServe against the project's FastAPI app, serving the same engine: which stack to build the server on.

    .venv/bin/pip install -e '.[litserve]'   # LitServe is not a dependency of the server itself
    .venv/bin/python benchmarks/serving_stacks.py [--base whisper-tiny-random] [--users 1 8] [--requests 48]

Both stacks run as their own processes over one store of LoRA users (random nonzero weights) and decode
with one ``AdapterServer`` (``lightning_asr/serving/``), batched across requests with the same window and
size, so what differs is the stack: its request handling, its batching loop and its process layout.

- ``fastapi``: ``python -m lightning_asr serve --max-batch-size N --batch-timeout-ms T`` (one process:
  uvicorn's event loop hands batches to the engine in a thread).
- ``litserve``: a ``LitAPI`` whose ``predict`` is ``AdapterServer.transcribe_many``, ``max_batch_size=N``,
  ``batch_timeout=T``, one worker on the CPU (LitServe's layout: an API-server process and an inference
  worker process, requests and responses passed through queues between them).

Every request is the same ``multipart/form-data`` body (``audio`` file, ``user`` field), which both stacks
parse with python-multipart. Per stack and user count: requests/s, p50/p95 latency as the client sees it,
time from process start to the first answer, resident memory of the server's process tree after the run,
and whether every answer equals the engine's own transcript for that user. The cells of one user count run
back to back on the two stacks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lightning_asr import client
from lightning_asr.audio import write_wav

LITSERVE_APP = """
import sys
import litserve as ls
from fastapi import HTTPException, Request
from lightning_asr.serving import AdapterServer, ServeError


class TranscribeAPI(ls.LitAPI):
    def __init__(self, base, adapters, tokens, **kwargs):
        super().__init__(**kwargs)
        self.base, self.adapters, self.tokens = base, adapters, tokens

    def setup(self, device):
        self.engine = AdapterServer(
            self.base, self.adapters, language="en", max_new_tokens=self.tokens, cache_size=32
        )
        self.engine.preload_structures()

    def decode_request(self, request: Request):  # annotated Request: LitServe passes the parsed form
        return {"audio": request["audio"].file.read(), "user": request["user"]}

    def batch(self, inputs):
        return inputs

    def predict(self, requests):
        return self.engine.transcribe_many(requests)

    def unbatch(self, outputs):
        return outputs

    def encode_response(self, output):
        if isinstance(output, ServeError):
            raise HTTPException(status_code=output.status, detail=output.message)
        return output

if __name__ == "__main__":  # LitServe spawns its worker, which imports this file again
    base, adapters, port, batch, timeout_ms, tokens = sys.argv[1:7]
    api = TranscribeAPI(
        base, adapters, int(tokens), max_batch_size=int(batch), batch_timeout=float(timeout_ms) / 1000,
        api_path="/transcribe",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=600)
    server.run(port=int(port), log_level="warning", generate_client_file=False)
"""


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = (Path("/proc") / str(current) / "status").read_text()
            total += int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) * 1024
        except (OSError, StopIteration):
            continue
    return total


def form(audio: bytes, user: str) -> tuple[bytes, str]:
    return client.multipart_body([("audio", "audio.wav", audio), ("user", None, user.encode())])


def start(stack: str, args, adapters: Path, audio: bytes) -> tuple[subprocess.Popen, str, float]:
    """The stack's server as a process; the seconds until it answered its first transcription."""
    port = client.free_port()
    if stack == "fastapi":
        command = [sys.executable, "-m", "lightning_asr", "serve", "--base", args.base, "--adapters", str(adapters)]
        command += ["--port", str(port), "--language", "en", "--max-new-tokens", str(args.max_new_tokens)]
        command += ["--cache-size", "32", "--max-queue", "64"]
        command += ["--max-batch-size", str(args.max_batch_size), "--batch-timeout-ms", str(args.batch_timeout_ms)]
    else:
        app = adapters.parent / "litserve_app.py"
        app.write_text(LITSERVE_APP)
        command = [sys.executable, str(app), args.base, str(adapters), str(port)]
        command += [str(args.max_batch_size), str(args.batch_timeout_ms), str(args.max_new_tokens)]
    started = time.perf_counter()
    log = adapters.parent / f"{stack}.log"  # a file, not a pipe: an unread pipe would block a chatty server
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    body, content_type = form(audio, "lora-0")
    deadline = time.monotonic() + 300
    while True:
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{stack} server did not answer within 300 s: {log.read_text()[-2000:]}")
        if process.poll() is not None:
            raise RuntimeError(f"{stack} server exited at start: {log.read_text()[-2000:]}")
        try:
            client.post(url + "/transcribe", body, content_type, timeout=60)
            return process, url, time.perf_counter() - started
        except client.ClientError:  # not listening yet
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="whisper-tiny-random", help="preset or local model directory")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=48, help="requests per cell, at most")
    parser.add_argument("--seconds", type=float, default=15.0, help="time per cell, at most")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=25.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="runs/bench/serving_stacks", help="directory for the JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from weight_separation import export_users, load_test, markdown

    from lightning_asr.models import load_base_model
    from lightning_asr.serving import AdapterServer

    with tempfile.TemporaryDirectory(prefix="serving-stacks-") as tmp:
        tmp = Path(tmp)
        export_users(load_base_model(args.base), tmp / "adapters", "lora", max(args.users))
        rng = np.random.RandomState(0)
        write_wav(tmp / "audio.wav", (0.1 * rng.randn(2 * 16000)).astype(np.float32))
        audio = (tmp / "audio.wav").read_bytes()
        engine = AdapterServer(args.base, tmp / "adapters", language="en", max_new_tokens=args.max_new_tokens)
        expected = {f"lora-{i}": engine.transcribe(audio, user=f"lora-{i}")["text"] for i in range(max(args.users))}
        del engine
        servers, rows = {}, []
        try:
            for stack in ("fastapi", "litserve"):
                servers[stack] = start(stack, args, tmp / "adapters", audio)
            for url in (url for _, url, _ in servers.values()):  # untimed: every user's adapter read once
                for user in expected:
                    client.post(url + "/transcribe", *form(audio, user), timeout=120)
            for users in args.users:
                for stack, (process, url, first) in servers.items():
                    result = load_test(
                        url,
                        tmp / "audio.wav",
                        [f"lora-{i}" for i in range(users)],
                        args.requests,
                        args.seconds,
                        send=lambda user, url=url: client.post(url + "/transcribe", *form(audio, user), timeout=120),
                    )
                    texts = result.pop("texts")
                    rows.append(
                        {
                            "stack": stack,
                            "users": users,
                            **result,
                            "first_answer_s": first,
                            "server_rss_mib": tree_rss_bytes(process.pid) / 2**20,
                            "transcripts_equal": all(t == {expected[u]} for u, t in texts.items()),
                        }
                    )
                    print(f"{stack} users={users}: {result['requests_per_s']:.2f}/s", file=sys.stderr, flush=True)
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(
        f"\nbase {args.base}, LoRA users, 2 s of audio, up to {args.max_new_tokens} new tokens, batches of up to "
        f"{args.max_batch_size} within {args.batch_timeout_ms:g} ms; {os.cpu_count()} CPUs\n"
    )
    columns = [("stack", "stack", "s"), ("users", "users", "d"), ("requests", "requests", "d")]
    columns += [("requests_per_s", "req/s", ".2f"), ("p50_ms", "p50 ms", ".0f"), ("p95_ms", "p95 ms", ".0f")]
    columns += [("first_answer_s", "first answer s", ".1f"), ("server_rss_mib", "server RSS MiB", ".0f")]
    columns += [("transcripts_equal", "equal", "s"), ("errors", "errors", "d")]
    print(markdown(rows, columns))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving_stacks.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(f"\nwrote {out / 'serving_stacks.json'}")
    return 0 if all(r["transcripts_equal"] and not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
