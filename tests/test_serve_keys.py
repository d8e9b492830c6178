"""The server's keys and limits over real HTTP on loopback: bearer authorisation, per-user keys, uploads that
name their user, traversal-proof user ids, bounded uploads, adapter files, audio seconds and queue."""

import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from loopback import BackgroundServer
from test_serve import BASE, USERS, export_adapter

from lightning_asr import client
from lightning_asr.audio import write_wav
from lightning_asr.serving import AdapterServer, ServiceLimits, create_app, write_user_key

API_KEY = "service-key-1"


@pytest.fixture(scope="module")
def keyed_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    adapters = root / "adapters"
    for user in ("alice", "gina"):
        export_adapter(adapters / user, *USERS[user])
    write_user_key(adapters / "alice", "alice-secret")  # gina has no key of her own
    write_wav(root / "speech.wav", (0.1 * np.random.RandomState(0).randn(16000)).astype(np.float32))
    write_wav(root / "long.wav", (0.1 * np.random.RandomState(1).randn(5 * 16000)).astype(np.float32))
    return {"root": root, "adapters": adapters, "audio": root / "speech.wav", "long": root / "long.wav"}


def engine(store, **options):
    return AdapterServer(BASE, store["adapters"], language="en", max_new_tokens=8, **options)


@pytest.fixture(scope="module")
def keyed(keyed_store):
    limits = ServiceLimits(max_upload_bytes=2**20, max_adapter_bytes=2**16, max_audio_seconds=3.0, max_queue=16)
    server = engine(keyed_store, limits=limits)
    with BackgroundServer(create_app(server, api_keys=[API_KEY, "service-key-2"])) as url:
        yield url


def status_of(call) -> tuple[int, str]:
    try:
        call()
        return 200, ""
    except client.ServerError as err:
        return err.status, err.detail


def get(url, path, headers=None):
    request = urllib.request.Request(url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def test_bearer_key_guards_every_route_but_health(keyed, keyed_store):
    assert get(keyed, "/health")[0] == 200
    status, body, headers = get(keyed, "/users")
    assert status == 401 and "Authorization: Bearer" in body["detail"] and headers.get("www-authenticate") == "Bearer"
    assert get(keyed, "/users", {"Authorization": "Bearer wrong"})[0] == 403
    assert get(keyed, "/users", {"Authorization": "Bearer service-key-2"})[0] == 200  # any of the keys
    audio = keyed_store["audio"]
    assert status_of(lambda: client.transcribe(keyed, audio, user="gina"))[0] == 401
    assert status_of(lambda: client.transcribe(keyed, audio, user="gina", api_key="nope"))[0] == 403
    assert client.transcribe(keyed, audio, user="gina", api_key=API_KEY)["strategy"] == "glora"


def test_a_user_with_a_key_needs_it(keyed, keyed_store):
    audio = keyed_store["audio"]
    status, detail = status_of(lambda: client.transcribe(keyed, audio, user="alice", api_key=API_KEY))
    assert status == 401 and "X-User-Key" in detail
    wrong = status_of(lambda: client.transcribe(keyed, audio, user="alice", api_key=API_KEY, user_key="gina"))
    assert wrong[0] == 403 and "wrong access key" in wrong[1]
    ok = client.transcribe(keyed, audio, user="alice", api_key=API_KEY, user_key="alice-secret")
    assert ok["user"] == "alice" and ok["strategy"] == "lora"


def test_required_user_keys_apply_to_uploads_too(keyed_store):
    server = engine(keyed_store, require_user_keys=True)
    audio, alice = keyed_store["audio"], keyed_store["adapters"] / "alice"
    with BackgroundServer(create_app(server)) as url:
        assert status_of(lambda: client.transcribe(url, audio, user="gina"))[0] == 403  # gina has no key file
        upload = status_of(lambda: client.transcribe(url, audio, adapter_dir=alice))
        assert upload[0] == 401 and "name its user" in upload[1]
        assert status_of(lambda: client.transcribe(url, audio, user="alice", adapter_dir=alice, user_key="x"))[0] == 403
        result = client.transcribe(url, audio, user="alice", adapter_dir=alice, user_key="alice-secret")
        assert result["adapter_source"] == "upload" and result["user"] == "alice"


@pytest.mark.parametrize(
    "user",
    ["../alice", "..%2Falice", "%2e%2e", "/etc/passwd", "alice\x00", "alice\n", "a" * 200, ".hidden", ""],
)
def test_user_ids_that_could_leave_the_store_are_refused(keyed, keyed_store, user):
    query = urllib.parse.urlencode({"user": user})
    request = urllib.request.Request(
        f"{keyed}/transcribe?{query}",
        data=keyed_store["audio"].read_bytes(),
        method="POST",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400, user


def test_limits_on_audio_adapter_files_and_queue(keyed, keyed_store, tmp_path):
    status, detail = status_of(lambda: client.transcribe(keyed, keyed_store["long"], user="gina", api_key=API_KEY))
    assert status == 413 and "--max-audio-seconds" in detail
    big = tmp_path / "big"
    big.mkdir()
    for name in client.ADAPTER_FILES[:2]:
        (big / name).write_bytes(b"\0" * 2**16)
    status, detail = status_of(lambda: client.transcribe(keyed, keyed_store["audio"], adapter_dir=big, api_key=API_KEY))
    assert status == 413 and "--max-adapter-mb" in detail
    # a malformed multipart body is a 400 from the maintained parser, not a crash
    broken = urllib.request.Request(
        f"{keyed}/transcribe",
        data=b"--x\r\nContent-Disposition: form-data\r\n\r\nabc",
        method="POST",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "multipart/form-data; boundary=x"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(broken)
    assert refused.value.code in (400, 422)


def test_requests_beyond_the_queue_get_503_with_retry_after(keyed_store, monkeypatch):
    server = engine(keyed_store, limits=ServiceLimits(max_queue=1, retry_after_seconds=7))
    release = threading.Event()
    decode = server.decode_windows

    def slow_decode(*args, **kwargs):  # hold the model until the test has filled the queue
        release.wait(timeout=30)
        return decode(*args, **kwargs)

    monkeypatch.setattr(server, "decode_windows", slow_decode)
    audio = keyed_store["audio"]
    with BackgroundServer(create_app(server)) as url:
        results = []
        threads = [
            threading.Thread(
                target=lambda: results.append(status_of(lambda: client.transcribe(url, audio, user="gina")))
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        deadline = threading.Event()
        for _ in range(300):  # until both are inside: one decoding, one waiting
            if client.health(url)["waiting"] == 2:
                break
            deadline.wait(0.05)
        request = urllib.request.Request(f"{url}/transcribe?user=gina", data=audio.read_bytes(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "7"
        release.set()
        for thread in threads:
            thread.join(timeout=60)
    assert [status for status, _ in results] == [200, 200]


def test_the_api_page_works_offline_and_describes_the_real_request(keyed_store):
    """/docs serves Swagger UI's own files (no CDN) and stays reachable where an API key guards the API; the
    schema describes the raw and the multipart request, the response and every refusal."""
    server = engine(keyed_store)
    with BackgroundServer(create_app(server, api_keys=[API_KEY])) as url:
        page = urllib.request.urlopen(url + "/docs").read().decode()
        assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
        assert urllib.request.urlopen(url + "/docs-assets/swagger-ui-bundle.js").status == 200
        schema = json.loads(urllib.request.urlopen(url + "/openapi.json").read())
    route = schema["paths"]["/v1/transcribe"]["post"]
    assert set(route["requestBody"]["content"]) == {"application/octet-stream", "multipart/form-data"}
    form = route["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"audio", "user", "language", "adapter"} <= set(form)
    assert {"200", "400", "401", "403", "404", "409", "413", "422", "503"} <= set(route["responses"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"] and "/transcribe" in schema["paths"]
