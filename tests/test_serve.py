"""The adapter server over real HTTP on loopback: per-user transcripts equal offline decoding, isolation
under concurrent requests, adapter uploads, refusals that leave the service serving, LRU eviction, and
merged mode restoring the shared base weights bit for bit."""

import contextlib
import io
import json
import threading
import urllib.request

import numpy as np
import pytest
import torch
from loopback import BackgroundServer

from lightning_asr import client
from lightning_asr.adapters import build_strategy
from lightning_asr.audio import read_audio, write_wav
from lightning_asr.models import load_base_model
from lightning_asr.serving import AdapterServer, ServiceLimits, create_app

BASE = "whisper-tiny-random"
DECODE = {"language": "manifest", "max_new_tokens": 12, "num_beams": 1}
USERS = {
    "alice": ({"name": "lora", "rank": 4, "alpha": 8}, 1),
    "bob": ({"name": "lora", "rank": 4, "alpha": 8}, 2),
    "gina": ({"name": "glora", "type": 1, "rank": 4, "alpha": 8}, 3),
    "bella": ({"name": "blora", "rank": 4, "alpha": 8}, 4),
    "nina": ({"name": "lora", "rank": 4, "alpha": 8, "new_tokens": ["회의실", "email을"]}, 5),  # extended vocabulary
    "bert": ({"name": "bottleneck", "bottleneck": 8}, 6),  # another PEFT family, not a LoRA
}
MERGEABLE = ("alice", "bob", "bella")


def export_adapter(directory, values, seed, base_seed=0):
    """An adapter with random nonzero B (so it changes the transcript), exported as a device keeps it."""
    model = load_base_model(BASE, seed=base_seed)
    strategy = build_strategy(values)
    with torch.random.fork_rng():  # A's initialisation too: the same adapters (and transcripts) every run
        torch.manual_seed(seed)
        strategy.attach(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in strategy.trainable_parameters():
            if name.endswith(("lora_B.weight", "adapter_up.weight")) or "gate" in name or "glu" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            elif name.endswith("embed_tokens.extra"):  # large rows: the new tokens get decoded
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 3)
    strategy.save_adapter(directory)


def offline_texts(adapters, audio_path) -> tuple[dict, dict]:
    """What offline decoding returns, unmerged and merged: ASRModule with each adapter loaded, the same
    decode settings (one module per adapter config; merging is undone by copying the kept weights back)."""
    from lightning_asr.module import ASRModule

    unmerged, merged, modules = {}, {}, {}
    for user, (values, _) in USERS.items():
        key = json.dumps(values, sort_keys=True)
        if key not in modules:
            modules[key] = ASRModule({"model": {"spec": BASE}, "adapter": values, "decode": DECODE}).eval()
        module = modules[key]
        features = module.backbone.audio_inputs(module.processor, [read_audio(audio_path)])
        module.strategy.load_adapter(adapters / user)
        with torch.no_grad():
            unmerged[user] = module.transcribe(features, ["en"])[0][0]
            if user in MERGEABLE:
                targets = module.strategy.merge_targets()
                kept = [target.clone() for target in targets]
                module.strategy.merge()
                merged[user] = module.transcribe(features, ["en"])[0][0]
                module.strategy.unmerge()
                for target, weight in zip(targets, kept):
                    target.copy_(weight)
    return unmerged, merged


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    adapters = root / "adapters"
    for user, (values, seed) in USERS.items():
        export_adapter(adapters / user, values, seed)
    export_adapter(adapters / "foreign", USERS["alice"][0], 1, base_seed=7)  # trained on another base
    rng = np.random.RandomState(0)
    write_wav(root / "speech.wav", (0.1 * rng.randn(2 * 16000)).astype(np.float32))
    write_wav(root / "long.wav", (0.1 * rng.randn(8 * 16000)).astype(np.float32))
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(40)))
    offline, merged = offline_texts(adapters, root / "speech.wav")
    return {"root": root, "adapters": adapters, "audio": root / "speech.wav", "offline": offline, "merged": merged}


@pytest.fixture(scope="module")
def served(store):
    limits = ServiceLimits(max_upload_bytes=2**20)
    engine = AdapterServer(
        BASE, store["adapters"], mode="unmerged", cache_size=8, language="en", max_new_tokens=12, limits=limits
    )
    engine.preload_structures()
    with BackgroundServer(create_app(engine)) as url:
        yield url, engine


@pytest.fixture(scope="module")
def merged_served(store):
    engine = AdapterServer(BASE, store["adapters"], mode="merged", cache_size=1, language="en", max_new_tokens=12)
    original = {name: tensor.clone() for name, tensor in engine.base.state_dict().items()}
    with BackgroundServer(create_app(engine)) as url:
        yield url, engine, original


def ask(url, audio, **kwargs):
    return client.transcribe(url, audio, **kwargs)


def test_health_and_users(served):
    url, engine = served
    health = client.health(url)
    assert health["status"] == "ok" and health["base"] == BASE and health["mode"] == "unmerged"
    # lora (alice and bob share it), glora, blora, lora + new tokens, bottleneck
    assert len(health["structures"]) == 5
    with urllib.request.urlopen(url + "/users") as response:
        users = {row["user"]: row for row in json.loads(response.read())["users"]}
    assert users["alice"]["strategy"] == "lora" and "problem" not in users["alice"]
    assert "another base model" in users["foreign"]["problem"]


def test_each_user_gets_what_offline_decoding_returns(served, store):
    url, _ = served
    assert store["offline"]["alice"] != store["offline"]["bob"], "the two LoRA adapters must differ on this audio"
    for user in USERS:
        result = ask(url, store["audio"], user=user)
        assert result["text"] == store["offline"][user], user
        assert result["user"] == user and result["strategy"] == USERS[user][0]["name"]
        assert result["language"] == "en" and result["mode"] == "unmerged"
        assert set(result["timings_ms"]) >= {"adapter_load", "swap", "decode", "total"}
    assert any(word in store["offline"]["nina"] for word in USERS["nina"][0]["new_tokens"])  # extended tokenizer
    again = ask(url, store["audio"], user="alice")
    assert again["cache_hit"] is True and again["timings_ms"]["adapter_load"] == 0


def test_slots_share_the_base_weights(served):
    _, engine = served
    base = {name: p.data_ptr() for name, p in engine.base.named_parameters()}
    for slot in engine.slots.values():
        for name, parameter in slot.model.named_parameters():
            plain = name.replace(".base_layer.", ".")
            if plain in base and not parameter.requires_grad:
                assert parameter.data_ptr() == base[plain], name


def test_concurrent_requests_are_isolated(served, store):
    url, _ = served
    order = ["alice", "bob", "gina", "bob", "alice", "bella", "alice", "bob"]
    results = [None] * len(order)

    def worker(index, user):
        results[index] = ask(url, store["audio"], user=user)

    threads = [threading.Thread(target=worker, args=(i, u)) for i, u in enumerate(order)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for user, result in zip(order, results):
        assert result is not None and result["user"] == user
        assert result["text"] == store["offline"][user], user


def test_adapter_upload_and_cli(served, store):
    url, _ = served
    result = ask(url, store["audio"], adapter_dir=store["adapters"] / "bob")
    assert result["text"] == store["offline"]["bob"]
    assert result["user"] is None and result["adapter_source"] == "upload" and result["cache_hit"] is False
    from lightning_asr.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["transcribe", "--server", url, "--user", "gina", str(store["audio"]), str(store["audio"])]) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2 and all(line["text"] == store["offline"]["gina"] for line in lines)


def test_long_audio_is_decoded_in_windows(served, store):
    url, _ = served
    result = ask(url, store["root"] / "long.wav", user="alice")
    assert result["windows"] == 2 and result["audio_seconds"] == 8.0


def raw_post(url, body, query="user=alice", content_type="application/octet-stream"):
    request = urllib.request.Request(
        f"{url}/transcribe?{query}", data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("unknown user", 404, "no adapter for user 'nobody'"),
        ("invalid user id", 400, "invalid user id"),
        ("corrupt audio", 400, "unreadable audio"),
        ("empty audio", 400, "no audio"),
        ("oversize upload", 413, "larger than 1 MB"),
        ("adapter of another base", 409, "weights differ from those the adapter was trained on"),
        ("uploaded adapter of another base", 409, "weights differ from those the adapter was trained on"),
        ("incomplete upload", 422, "lightning_asr_adapter.safetensors"),
        ("truncated upload", 422, "lightning_asr_adapter.safetensors"),
        ("malformed multipart", 400, "malformed multipart body"),
    ],
)
def test_bad_input_is_refused_and_the_service_keeps_serving(served, store, tmp_path, case, status, message):
    url, _ = served
    audio = store["audio"].read_bytes()
    if case == "unknown user":
        got = raw_post(url, audio, "user=nobody")
    elif case == "invalid user id":
        got = raw_post(url, audio, "user=..%2Fadapters")
    elif case == "corrupt audio":
        got = raw_post(url, (store["root"] / "corrupt.wav").read_bytes())
    elif case == "empty audio":
        got = raw_post(url, b"")
    elif case == "oversize upload":
        got = raw_post(url, b"\0" * (2 * 2**20))
    elif case == "adapter of another base":
        got = raw_post(url, audio, "user=foreign")
    elif case == "malformed multipart":  # a part whose headers never end, and no closing boundary
        body = b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n' + audio[:64]
        got = raw_post(url, body, "", "multipart/form-data; boundary=xyz")
    else:
        source = store["adapters"] / ("foreign" if case == "uploaded adapter of another base" else "bob")
        for name in ("lightning_asr_adapter.json", "adapter_config.json", "adapter_model.safetensors"):
            (tmp_path / name).write_bytes((source / name).read_bytes())
        if case != "incomplete upload":
            name = "lightning_asr_adapter.safetensors"
            tensors = (source / name).read_bytes()
            (tmp_path / name).write_bytes(tensors[: len(tensors) // 2] if case == "truncated upload" else tensors)
        try:
            ask(url, store["audio"], adapter_dir=tmp_path)
            got = (200, {})
        except client.ServerError as err:
            got = (err.status, {"detail": err.detail})
    assert got[0] == status, got
    assert message in got[1]["detail"]
    assert ask(url, store["audio"], user="bob")["text"] == store["offline"]["bob"]


def test_a_client_that_disconnects_mid_upload_leaves_the_service_serving(served, store):
    import socket
    import time
    from urllib.parse import urlsplit

    url, _ = served
    address = urlsplit(url)
    audio = store["audio"].read_bytes()
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(
            f"POST /transcribe?user=alice HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(audio)}\r\n\r\n".encode()
            + audio[: len(audio) // 3]
        )
    assert ask(url, store["audio"], user="alice")["text"] == store["offline"]["alice"]
    deadline = time.monotonic() + 10
    while client.health(url)["waiting"] and time.monotonic() < deadline:  # the dropped request is let go
        time.sleep(0.05)
    assert client.health(url)["waiting"] == 0


def test_lru_eviction_and_merged_mode_restore_the_base_exactly(merged_served, store):
    url, engine, original = merged_served
    sequence = ["alice", "bob", "alice", "gina", "bella", "bella"]
    results = [ask(url, store["audio"], user=user) for user in sequence]
    for user, result in zip(sequence, results):
        if user in MERGEABLE:
            assert result["mode"] == "merged" and result["text"] == store["merged"][user], user
        else:  # GLoRA cannot merge: served unmerged, and the response says so
            assert result["mode"] == "unmerged" and "cannot be folded" in result["note"]
            assert result["text"] == store["offline"][user]
    assert [r["cache_hit"] for r in results] == [False, False, False, False, False, True]  # cache size 1
    assert client.health(url)["cached_users"] == ["bella"]
    current = engine.base.state_dict()
    assert all(torch.equal(current[name], tensor) for name, tensor in original.items())


def test_a_failing_merged_decode_still_restores_the_base(merged_served, store, monkeypatch):
    url, engine, original = merged_served

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(engine, "decode_windows", broken)
    status, body = raw_post(url, store["audio"].read_bytes())
    assert status == 500 and "decoder exploded" in body["detail"]
    monkeypatch.undo()
    current = engine.base.state_dict()
    assert all(torch.equal(current[name], tensor) for name, tensor in original.items())
    assert ask(url, store["audio"], user="alice")["text"] == store["merged"]["alice"]


def test_undoing_a_merge_by_subtraction_would_not_restore_the_base(store):
    """Why merged mode copies the kept weights back: W + dW - dW drifts from W in float32."""
    model = load_base_model(BASE)
    strategy = build_strategy(USERS["alice"][0])
    strategy.attach(model)
    strategy.load_adapter(store["adapters"] / "alice")
    before = {name: layer.base_layer.weight.clone() for name, layer in strategy.layers().items()}
    strategy.merge()
    strategy.unmerge()
    assert any(not torch.equal(before[name], layer.base_layer.weight) for name, layer in strategy.layers().items())


def test_modules_to_save_weights_stay_with_their_user(tmp_path, store):
    """Two users on one structure (LoRA plus the decoder's final layer norm as ``modules_to_save``): the slot
    owns its copy of that layer norm, so one user's values reach neither the other user, nor the shared base,
    nor a plain-LoRA user of the same base."""
    from lightning_asr.module import ASRModule

    values = {"name": "lora", "rank": 4, "alpha": 8, "modules_to_save": [r"^model\.decoder\.layer_norm\."]}
    adapters = tmp_path / "adapters"
    for user, seed, norm_scale in (("ann", 11, 4.0), ("ben", 12, 1.0)):  # ann's layer norm differs from the base's
        model = load_base_model(BASE)
        strategy = build_strategy(values)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            strategy.attach(model)
        with torch.no_grad():
            for name, parameter in strategy.trainable_parameters():
                if name.endswith("lora_B.weight"):
                    parameter.normal_(0, 0.5)
                elif name == "model.decoder.layer_norm.weight":
                    parameter.mul_(norm_scale)
        assert {"model.decoder.layer_norm.weight", "model.decoder.layer_norm.bias"} <= set(
            strategy.adapter_state_dict()
        )
        strategy.save_adapter(adapters / user)
    export_adapter(adapters / "alice", USERS["alice"][0], USERS["alice"][1])  # plain LoRA, another structure

    def offline(user: str, config: dict) -> str:
        module = ASRModule({"model": {"spec": BASE}, "adapter": config, "decode": DECODE}).eval()
        module.strategy.load_adapter(adapters / user)
        with torch.no_grad():
            return module.transcribe(
                module.backbone.audio_inputs(module.processor, [read_audio(store["audio"])]), ["en"]
            )[0][0]

    expected = {
        "ann": offline("ann", values),
        "ben": offline("ben", values),
        "alice": offline("alice", USERS["alice"][0]),
    }
    assert expected["ann"] != expected["ben"]
    engine = AdapterServer(BASE, adapters, mode="unmerged", cache_size=8, language="en", max_new_tokens=12)
    base_before = {name: tensor.clone() for name, tensor in engine.base.state_dict().items()}
    audio = store["audio"].read_bytes()
    for user in ("ann", "ben", "alice", "ann", "alice", "ben"):
        assert engine.transcribe(audio, user=user)["text"] == expected[user], user
    assert all(torch.equal(base_before[name], tensor) for name, tensor in engine.base.state_dict().items())
    slot = engine.slots[next(key for key in engine.slots if "modules_to_save" in key and "layer_norm" in key)]
    own, shared = slot.model.model.decoder.layer_norm.weight, engine.base.model.decoder.layer_norm.weight
    assert own.data_ptr() != shared.data_ptr()  # the slot's own copy, not the base's tensor
    assert (
        slot.model.model.decoder.layers[0].fc1.weight.data_ptr()
        == engine.base.model.decoder.layers[0].fc1.weight.data_ptr()
    )


@pytest.mark.slow  # two server processes started from scratch: ~20 s
def test_a_killed_server_restarts_and_serves_the_same_transcripts(store):
    """``serve`` as a process: SIGKILL mid-service (nothing is flushed, no handler runs), then the same command
    again: the store is all the state there is, so every user gets the transcript offline decoding gives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def start():
        port = client.free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "lightning_asr", "serve", "--base", BASE, "--adapters", str(store["adapters"])]
            + ["--port", str(port), "--language", "en", "--max-new-tokens", "12", "--max-batch-size", "4"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                client.health(url, timeout=2)
                return process, url
            except client.ClientError:
                assert process.poll() is None, "the server exited at start"
                time.sleep(0.2)
        process.kill()
        raise AssertionError("the server did not answer /health within 120 s")

    users = ["alice", "gina", "bella", "bert"]
    runs = []
    for _ in range(2):
        process, url = start()
        try:
            runs.append({user: ask(url, store["audio"], user=user)["text"] for user in users})
        finally:
            os.kill(process.pid, signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
    assert runs[0] == runs[1] == {user: store["offline"][user] for user in users}


def test_client_errors_name_the_fix(tmp_path, capsys):
    """No server there, a URL without a scheme, a missing audio file: each a ClientError naming the fix,
    never a Python object's repr; the command line reports each file and goes on."""
    from lightning_asr.cli import main

    audio = tmp_path / "a.wav"
    write_wav(audio, np.zeros(1600, dtype=np.float32))
    url = f"http://127.0.0.1:{client.free_port()}"
    for call, expected in (
        (lambda: client.transcribe(url, audio, user="alice"), "cannot reach"),
        (lambda: client.transcribe("127.0.0.1:8000", audio, user="alice"), "http://HOST:PORT"),
        (lambda: client.transcribe(url, tmp_path / "missing.wav", user="alice"), "does not exist"),
        (lambda: client.transcribe(url, audio, adapter_dir=tmp_path), "holds no adapter files"),
    ):
        with pytest.raises(client.ClientError) as refused:
            call()
        message = str(refused.value)
        assert expected in message and "fix:" in message and "<" not in message, message
    assert main(["transcribe", "--server", url, "--user", "alice", str(tmp_path / "missing.wav"), str(audio)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("does not exist" in r["error"], "cannot reach" in r["error"]) for r in lines] == [(1, 0), (0, 1)]


def test_an_adapter_registered_once_is_named_by_its_fingerprint(served, store):
    """A device uploads its adapter once and then sends only the audio and the adapter's id: the transcript
    offline decoding gives; an unknown id is 404 with the fix."""
    url, _ = served
    registered = client.register_adapter(url, store["adapters"] / "gina")
    again = client.register_adapter(url, store["adapters"] / "gina")
    assert registered["adapter_id"] == again["adapter_id"] and registered["strategy"] == "glora"
    result = ask(url, store["audio"], adapter_id=registered["adapter_id"])
    assert result["text"] == store["offline"]["gina"] and result["adapter_source"] == "registered"
    with pytest.raises(client.ServerError) as refused:
        ask(url, store["audio"], adapter_id="0" * 64)
    assert refused.value.status == 404 and "POST /v1/adapters" in refused.value.detail
