"""``python -m lightning_asr serve``: load the base once, build the store's structures, serve until interrupted."""

from __future__ import annotations

from lightning_asr.serving.app import create_app
from lightning_asr.serving.batcher import on_engine_thread
from lightning_asr.serving.engine import AdapterServer


def serve(
    base: str,
    adapters: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_keys: list[str] | None = None,
    **engine_options,
) -> None:
    """One process, one worker: one shared base. ``engine_options`` are ``AdapterServer``'s (mode, cache_size,
    limits, ...). Strategies of the user's own modules are registered before (``adapters.load_plugins``, which
    ``python -m lightning_asr serve --plugin`` calls)."""
    import uvicorn

    engine = on_engine_thread(AdapterServer, base, adapters, **engine_options)
    structures = on_engine_thread(engine.preload_structures)
    print(
        f"serving {base} ({engine.mode}) with adapters from {adapters} ({structures} structure(s) injected) "
        f"on http://{host}:{port}",
        flush=True,
    )
    if not api_keys:
        print("no --api-key: anyone who can reach this port can transcribe and upload adapters", flush=True)
    uvicorn.run(create_app(engine, api_keys=api_keys), host=host, port=port, log_level="info", workers=1)
