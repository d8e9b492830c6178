"""Collecting concurrent requests into batches for ``AdapterServer.transcribe_many``."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from lightning_asr.serving.errors import ServeError

log = logging.getLogger(__name__)

# Every torch computation of a serving process runs on this one thread: building the engine, injecting
# structures, decoding. PyTorch's CPU wheels parallelise with libgomp, which stops its worker threads from
# spinning between parallel regions once more OpenMP threads exist than cores: a second thread running
# parallel regions beside another thread's team (e.g. the main thread's, after loading the model there) makes
# every small operation wait for sleeping workers (benchmarks/engine_thread.py measures it).
ENGINE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightning-asr-engine")


def on_engine_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` run on the engine thread (e.g. ``AdapterServer(...)``), its result returned."""
    return ENGINE_THREAD.submit(function, *args, **kwargs).result()


class RequestBatcher:
    """One batch in flight at a time. While the model is idle, a batch is sent when ``max_batch_size``
    requests wait or ``timeout_ms`` after the first one arrived; while it decodes, arrivals wait, and the
    moment it is done they go as the next batch (they have waited a whole decode already). Batches sent as
    soon as their window closes would instead queue on the model lock in small pieces, each costing a full
    decode. A batch size of 1 sends every request alone, as it comes."""

    def __init__(self, engine, max_batch_size: int, timeout_ms: float):
        self.engine, self.max_batch_size, self.timeout = engine, max_batch_size, timeout_ms / 1000
        self.pending: list = []
        self.timer = None
        self.busy = False

    async def submit(self, request: dict) -> dict:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((request, future))
        if not self.busy:
            if len(self.pending) >= self.max_batch_size:
                self.flush()
            elif self.timer is None:
                self.timer = loop.call_later(self.timeout, self.flush)
        result = await future
        if isinstance(result, ServeError):
            raise result
        return result

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.busy or not self.pending:
            return
        batch, self.pending = self.pending[: self.max_batch_size], self.pending[self.max_batch_size :]
        self.busy = True
        asyncio.get_running_loop().create_task(self.run(batch))

    async def run(self, batch: list) -> None:
        try:
            requests = [request for request, _ in batch]
            results = await asyncio.get_running_loop().run_in_executor(
                ENGINE_THREAD, self.engine.transcribe_many, requests
            )
        except Exception as err:  # the engine stays consistent; every request of the batch learns why
            log.exception("batched transcription failed")
            results = [ServeError(500, f"internal error: {err.__class__.__name__}: {err}")] * len(batch)
        finally:
            self.busy = False
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
        self.flush()
