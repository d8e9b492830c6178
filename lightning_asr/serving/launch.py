"""``python -m lightning_asr serve``: load the base once, build the store's structures, serve until interrupted."""

from __future__ import annotations

from lightning_asr.serving.app import create_app
from lightning_asr.serving.batcher import on_engine_thread
from lightning_asr.serving.engine import AdapterServer
from lightning_asr.serving.limits import ServiceLimits


def serve(
    base: str,
    adapters: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    mode: str = "unmerged",
    cache_size: int = 8,
    language: str = "auto",
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    device: str = "cpu",
    api_keys: list[str] | None = None,
    require_user_keys: bool = False,
    limits: ServiceLimits | None = None,
) -> None:
    """One process, one worker: one shared base. Strategies of the user's own modules are registered before
    (``adapters.load_plugins``, which ``python -m lightning_asr serve --plugin`` calls)."""
    import uvicorn

    engine = on_engine_thread(
        AdapterServer,
        base,
        adapters,
        mode=mode,
        cache_size=cache_size,
        language=language,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        device=device,
        require_user_keys=require_user_keys,
        limits=limits,
    )
    structures = on_engine_thread(engine.preload_structures)
    print(
        f"serving {base} ({mode}) with adapters from {adapters} ({structures} structure(s) injected) "
        f"on http://{host}:{port}",
        flush=True,
    )
    if not api_keys:
        print("no --api-key: anyone who can reach this port can transcribe and upload adapters", flush=True)
    uvicorn.run(create_app(engine, api_keys=api_keys), host=host, port=port, log_level="info", workers=1)
