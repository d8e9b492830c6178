"""The HTTP face of the engine: FastAPI routers, bearer-token authorisation as a dependency, bounded reading
of bodies and forms, and the batching loop every transcription goes through.

``POST /v1/transcribe`` (and ``/transcribe``) takes either

- the audio as the raw body, with ``?user=ID`` (and optionally ``&language=xx``), or
- ``multipart/form-data`` with an ``audio`` file part, and either a ``user`` field or ``adapter`` file parts
  named by their file names (``lightning_asr_adapter.json``, ``lightning_asr_adapter.safetensors`` and, for
  LoRA/BLoRA, ``adapter_config.json`` and ``adapter_model.safetensors``).

``api_keys``: bearer tokens accepted on every route but ``/health`` (none: no authorisation). ``X-User-Key``:
a user's own key, where the store holds one for that user. Every limit comes from the engine's
``ServiceLimits``.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request  # at module level: FastAPI resolves the endpoints' annotations here

from lightning_asr.serving.batcher import ENGINE_THREAD, RequestBatcher
from lightning_asr.serving.errors import ServeError
from lightning_asr.serving.keys import api_key_valid, key_digest
from lightning_asr.serving.store import ADAPTER_FILES

log = logging.getLogger(__name__)


class Timings(BaseModel):
    """Milliseconds per stage of one request (a shared pass's swap and decode are the pass's)."""

    audio: float
    queue: float
    adapter_load: float
    swap: float
    merge: float
    decode: float
    total: float


class Transcription(BaseModel):
    """The one response shape of every transcription, alone or in a shared pass."""

    text: str
    language: str | None
    language_detected: bool
    user: str | None
    adapter_source: str | None  # store, upload, or null for the base
    strategy: str
    mode: str  # merged or unmerged, as served
    cache_hit: bool
    swapped: bool
    batch_rows: int
    windows: int
    audio_seconds: float
    cap_hits: int | None  # null for a shared pass (counted per batch)
    timings_ms: Timings
    note: str | None = None


class Registered(BaseModel):
    """A registered adapter: the id requests name it by (its files' fingerprint)."""

    adapter_id: str
    strategy: str
    bytes: int


class Problem(BaseModel):
    """Every refusal: what went wrong and the fix, and the HTTP status."""

    detail: str
    status: int


REFUSALS = {
    400: "unreadable, empty or corrupt audio; a malformed form; an invalid user id",
    401: "no API key, or no user key where the user has one",
    403: "a wrong API key or user key",
    404: "no adapter for this user in the store",
    409: "an adapter exported for another base model",
    413: "a body, adapter or audio longer than the server's limits",
    422: "an incomplete or mismatched adapter, an unknown language or form field",
    503: "too many requests waiting (see Retry-After)",
}
AUDIO_SCHEMA = {"type": "string", "format": "binary", "description": "WAV or FLAC"}
ADAPTER_PARTS = {
    "type": "array",
    "items": {"type": "string", "format": "binary"},
    "description": "the files of an adapter directory, under their own names",
}
ADAPTER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["adapter"],
                    "properties": {"adapter": ADAPTER_PARTS, "user": {"type": "string"}},
                }
            }
        },
    }
}
TRANSCRIBE_BODY = {  # the route reads the body itself: bounded before it is parsed
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": AUDIO_SCHEMA},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["audio"],
                    "properties": {
                        "audio": AUDIO_SCHEMA,
                        "user": {"type": "string", "description": "a user of the store (or of the upload)"},
                        "language": {"type": "string", "description": "auto, or a language code"},
                        "adapter": ADAPTER_PARTS,
                        "adapter_id": {"type": "string", "description": "a registered adapter's id"},
                    },
                }
            },
        },
    }
}


def problem(err: ServeError, retry_after: int) -> JSONResponse:
    headers = {}
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if err.status == 503:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"detail": err.message, "status": err.status}, status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (read on, discarding, so the client reads the 413)."""
    declared = request.headers.get("content-length")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 16 * limit + 2**26:
            break  # drained enough; the connection is closed after the 413
        else:
            chunks = []
    if size > limit or (declared and declared.isdigit() and int(declared) > limit):
        raise ServeError(
            413,
            f"upload larger than {limit / 2**20:g} MB — fix: send shorter audio, or start the "
            "server with a larger --max-upload-mb",
        )
    return b"".join(chunks)


async def read_form(request: Request, body: bytes):
    """The multipart form of a body already read (and bounded), parsed by python-multipart."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1 + len(ADAPTER_FILES), max_fields=8)
    except Exception as err:  # python-multipart's and starlette's parse errors
        raise ServeError(400, f"malformed multipart body: {err}") from None


async def parse_request(
    request: Request, user: str | None, language: str | None, limits, adapter_id: str | None = None, audio_required=True
) -> dict:
    """``transcribe_many``'s request from the HTTP request: audio (where ``audio_required``), user, language, adapter
    files or registered id, user key."""
    body = await read_body(request, limits.max_upload_bytes)
    adapter_files = None
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        audio = body
    else:
        audio = None
        form = await read_form(request, body)
        for name, value in form.multi_items():
            content = await value.read() if isinstance(value, UploadFile) else str(value).encode("utf-8")
            if name == "audio":
                audio = content
            elif name == "user":
                user = content.decode("utf-8", "replace").strip()
            elif name == "language":
                language = content.decode("utf-8", "replace").strip()
            elif name == "adapter_id":
                adapter_id = content.decode("utf-8", "replace").strip()
            elif name == "adapter" and isinstance(value, UploadFile):
                adapter_files = adapter_files or {}
                key = Path(value.filename or "").name
                if key not in ADAPTER_FILES or key != (value.filename or ""):
                    raise ServeError(
                        422,
                        f"adapter part with file name {value.filename!r} — fix: send the files of an "
                        f"adapter directory under their own names ({', '.join(ADAPTER_FILES)})",
                    )
                if key in adapter_files:
                    raise ServeError(422, f"adapter file {key} sent twice — fix: send each file once")
                adapter_files[key] = content
            else:
                raise ServeError(
                    422, f"unexpected form field {name!r} — fix: use audio, user, language, adapter, adapter_id"
                )
        await form.close()
        if audio is None and audio_required:
            raise ServeError(422, "multipart request without an 'audio' part")
        if adapter_files and sum(map(len, adapter_files.values())) > limits.max_adapter_bytes:
            raise ServeError(
                413,
                f"adapter files larger than {limits.max_adapter_bytes / 2**20:g} MB together — fix: export a "
                "smaller adapter, or start the server with a larger --max-adapter-mb",
            )
    return {
        "audio": audio,
        "user": user,
        "adapter_files": adapter_files,
        "adapter_id": adapter_id,
        "language": language,
        "user_key": request.headers.get("x-user-key"),
    }


BEARER = HTTPBearer(auto_error=False, description="the server's API key, where it was started with one")


class Authorise:
    """The dependency every route but ``/health`` and the API page has: a bearer token whose digest is one
    of ``digests`` (none: no authorisation)."""

    def __init__(self, digests: list[str]):
        self.digests = digests

    async def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if not self.digests:
            return
        if credentials is None or not credentials.credentials.strip():
            raise ServeError(401, "this server needs an API key — fix: send 'Authorization: Bearer KEY'")
        if not api_key_valid(credentials.credentials.strip(), self.digests):
            raise ServeError(403, "the API key is not valid for this server")


def create_app(engine, api_keys: list[str] | None = None) -> FastAPI:
    """The FastAPI application over ``engine`` (an ``AdapterServer``), its limits ``engine.limits``."""
    from lightning_asr import __version__

    limits = engine.limits
    digests = [key_digest(k) for k in api_keys or []]
    batcher = RequestBatcher(engine, limits.max_batch_size, limits.batch_timeout_ms)
    waiting = {"count": 0}  # requests inside transcribe (being decoded or waiting for the model)

    public, protected = APIRouter(), APIRouter(dependencies=[Depends(Authorise(digests))])

    @public.get("/health")
    async def health():
        return {**engine.health(), "waiting": waiting["count"]}

    @protected.get("/users")
    async def users():
        return {"users": await run_in_threadpool(engine.users)}

    @protected.post(
        "/transcribe",
        response_model=Transcription,
        responses={status: {"model": Problem, "description": what} for status, what in REFUSALS.items()},
        openapi_extra=TRANSCRIBE_BODY,
    )
    async def transcribe(
        request: Request, user: str | None = None, language: str | None = None, adapter: str | None = None
    ):
        if waiting["count"] > limits.max_queue:
            raise ServeError(
                503,
                f"{waiting['count']} requests are waiting for the model already — fix: retry after the "
                f"Retry-After seconds, or start the server with a larger --max-queue",
            )
        waiting["count"] += 1
        try:
            return await batcher.submit(await parse_request(request, user, language, limits, adapter))
        finally:
            waiting["count"] -= 1

    @protected.post(
        "/adapters",
        response_model=Registered,
        responses={
            status: {"model": Problem, "description": REFUSALS[status]} for status in (400, 401, 403, 409, 413, 422)
        },
        openapi_extra=ADAPTER_BODY,
    )
    async def register(request: Request, user: str | None = None):
        """Upload an adapter once; later requests name it (``?adapter=ID``) instead of sending its files."""
        parsed = await parse_request(request, user, None, limits, audio_required=False)
        if not parsed["adapter_files"]:
            raise ServeError(422, "no adapter files — fix: send the files of an adapter directory as 'adapter' parts")
        register = partial(engine.register_adapter, parsed["adapter_files"], parsed["user"], parsed["user_key"])
        return await asyncio.get_running_loop().run_in_executor(ENGINE_THREAD, register)

    # the API's page works offline: Swagger UI's files come from a package, not a CDN; it and the schema
    # hold no data, so they stay open where an API key guards the rest (its Authorize button takes the key)
    app = FastAPI(title="lightning-asr", version=__version__, docs_url=None, redoc_url=None)
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="lightning-asr API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    for prefix in ("/v1", ""):  # the unversioned routes are the first clients'
        app.include_router(public, prefix=prefix)
        app.include_router(protected, prefix=prefix)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return problem(err, limits.retry_after_seconds)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, err: Exception):
        log.exception("request failed")
        return JSONResponse(
            {"detail": f"internal error: {err.__class__.__name__}: {err}", "status": 500}, status_code=500
        )

    return app
