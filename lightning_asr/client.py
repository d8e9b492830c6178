"""Client of ``python -m lightning_asr serve``, on the standard library alone (urllib).

``transcribe(server, audio_path, user="alice")`` sends the audio as the raw body with ``?user=``;
``transcribe(server, audio_path, adapter_dir=...)`` sends the audio and the adapter files (a device that
keeps its adapter itself) as ``multipart/form-data``. Both return the server's JSON response as a dict.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

# The files of an adapter directory (``lightning_asr.adapters.export``), spelled out so that the client
# imports neither torch nor the framework.
ADAPTER_FILES = (
    "lightning_asr_adapter.json",
    "lightning_asr_adapter.safetensors",
    "adapter_config.json",
    "adapter_model.safetensors",
)


class ServerError(RuntimeError):
    """The server refused the request; ``status`` is the HTTP status, ``detail`` its explanation."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class ClientError(RuntimeError):
    """The request could not be sent or answered (no such file, no server there, a malformed URL); the
    message names the problem and the fix."""


def server_url(server: str, path: str) -> str:
    """``server`` + ``path``, refused with the fix where ``server`` is not an http(s) URL."""
    parsed = urllib.parse.urlparse(server)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ClientError(
            f"server URL {server!r} is not an http(s) URL with a host — fix: write it as http://HOST:PORT, "
            "e.g. http://127.0.0.1:8000"
        )
    return server.rstrip("/") + path


def read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ClientError(f"{what} {str(path)!r} does not exist — fix: give the path of an existing file") from None
    except IsADirectoryError:
        raise ClientError(f"{what} {str(path)!r} is a directory — fix: give the path of a file") from None
    except PermissionError:
        raise ClientError(f"{what} {str(path)!r} cannot be read (permission denied) — fix: check its mode") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it), for a server started next on loopback."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def multipart_body(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """``(body, content type)`` of ``multipart/form-data`` from ``(name, file name or None, content)``."""
    boundary = f"lightning-asr-{uuid.uuid4().hex}"
    lines = []
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "application/octet-stream" if filename else "text/plain; charset=utf-8"
        lines.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(lines) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def auth_headers(api_key: str | None = None, user_key: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` for the server's key, ``X-User-Key`` for a user's own."""
    return {
        **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
        **({"X-User-Key": user_key} if user_key else {}),
    }


def post(url: str, body: bytes, content_type: str, timeout: float = 300.0, headers: dict | None = None) -> dict:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            detail = json.loads(raw).get("detail", raw.decode("utf-8", "replace"))
        except ValueError:
            detail = raw.decode("utf-8", "replace")
        raise ServerError(err.code, detail if isinstance(detail, str) else json.dumps(detail)) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise ClientError(
                f"no answer from {url.split('?')[0]} within {timeout:g} s — fix: retry, or pass a larger timeout"
            ) from None
        raise ClientError(
            f"cannot reach {url.split('?')[0]} ({getattr(reason, 'strerror', None) or reason}) — fix: start the "
            "server (python -m lightning_asr serve ...) or check the host and port"
        ) from None


def transcribe(
    server: str,
    audio_path: str | Path,
    user: str | None = None,
    adapter_dir: str | Path | None = None,
    language: str | None = None,
    timeout: float = 300.0,
    api_key: str | None = None,
    user_key: str | None = None,
    adapter_id: str | None = None,
) -> dict:
    """Transcribe one WAV/FLAC file with ``user``'s adapter from the server's store, or with the adapter in
    ``adapter_dir`` (sent along; with ``user`` too where the server requires uploads to name their user), or,
    with neither, with the base model itself. ``adapter_id``: an adapter registered before
    (``register_adapter``), named instead of sent.
    ``api_key``: the server's bearer token; ``user_key``: the user's own key. Raises ``ServerError`` with the
    server's explanation when refused."""
    url = server_url(server, "/v1/transcribe")
    audio = read_file(audio_path, "audio file")
    headers = auth_headers(api_key, user_key)
    if adapter_dir is None:
        query = {
            **({"user": user} if user else {}),
            **({"language": language} if language else {}),
            **({"adapter": adapter_id} if adapter_id else {}),
        }
        return post(f"{url}?{urllib.parse.urlencode(query)}", audio, "application/octet-stream", timeout, headers)
    fields = [("audio", Path(audio_path).name, audio), *adapter_parts(adapter_dir)]
    fields += [("language", None, language.encode())] if language else []
    fields += [("user", None, user.encode())] if user else []
    body, content_type = multipart_body(fields)
    return post(url, body, content_type, timeout, headers)


def adapter_parts(adapter_dir: str | Path) -> list[tuple[str, str, bytes]]:
    """The ``adapter`` parts of a multipart body: the files of an exported adapter directory."""
    directory = Path(adapter_dir)
    files = [
        ("adapter", name, read_file(directory / name, "adapter file"))
        for name in ADAPTER_FILES
        if (directory / name).exists()
    ]
    if not files:
        raise ClientError(
            f"{directory} holds no adapter files ({', '.join(ADAPTER_FILES)}) — fix: give the directory "
            "strategy.save_adapter (or python -m lightning_asr export) wrote"
        )
    return files


def register_adapter(
    server: str,
    adapter_dir: str | Path,
    user: str | None = None,
    timeout: float = 300.0,
    api_key: str | None = None,
    user_key: str | None = None,
) -> dict:
    """Upload an adapter once (``{"adapter_id", "strategy", "bytes"}``); ``transcribe(..., adapter_id=...)``
    then names it instead of sending its files with every request."""
    fields = [*adapter_parts(adapter_dir), *([("user", None, user.encode())] if user else [])]
    body, content_type = multipart_body(fields)
    return post(server_url(server, "/v1/adapters"), body, content_type, timeout, auth_headers(api_key, user_key))


def health(server: str, timeout: float = 30.0) -> dict:
    url = server_url(server, "/v1/health")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.URLError as err:
        raise ClientError(
            f"cannot reach {url} ({err.reason}) — fix: start the server or check the host and port"
        ) from None
