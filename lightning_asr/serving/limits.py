"""Every bound of the service in one place. The engine enforces the audio length; the HTTP app the body, the
adapter files and the queue; the batcher the batch size and window."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry and how many may wait; every bound is refused with the fix."""

    max_upload_bytes: int = 25 * 2**20  # the whole request body (413)
    max_adapter_bytes: int = 64 * 2**20  # the uploaded adapter files together (413)
    max_audio_seconds: float = 600.0  # audio length per request (413)
    max_queue: int = 16  # requests inside /transcribe (decoding, waiting, uploading) beyond which: 503
    retry_after_seconds: int = 2
    # up to max_batch_size requests are decoded together; while the model is idle a batch waits at most
    # batch_timeout_ms after its first request (1: each request alone, as it comes; see RequestBatcher)
    max_batch_size: int = 1
    batch_timeout_ms: float = 25.0

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_adapter_bytes", "max_audio_seconds", "max_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: a limit must be positive")
        if self.max_queue < 0 or self.batch_timeout_ms < 0 or self.retry_after_seconds < 0:
            raise ValueError("max_queue, batch_timeout_ms and retry_after_seconds cannot be negative")
        if self.max_batch_size > self.max_queue + 1:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} with max_queue {self.max_queue}: a batch could never fill "
                "(the queue counts the requests being decoded) — fix: a max_queue of at least max_batch_size - 1"
            )
