"""Many users' adapters in one batched pass: each row's transcript equals decoding that request alone, with
mixed strategies, mixed audio lengths and rows without an adapter; strategies that cannot share a pass are
decoded alone and say so."""

import numpy as np
import pytest
import torch
from test_serve import BASE, export_adapter

from lightning_asr.adapters import build_strategy
from lightning_asr.audio import write_wav
from lightning_asr.models import load_base_model
from lightning_asr.serving import AdapterServer
from lightning_asr.serving.bank import bankable, mixable, row_banked
from lightning_asr.serving.engine import STAGES

USERS = {
    "u1": ({"name": "lora", "rank": 4, "alpha": 8}, 11),
    "u2": ({"name": "lora", "rank": 4, "alpha": 8}, 12),
    "u3": ({"name": "lora", "rank": 4, "alpha": 8}, 13),
    "u4": ({"name": "glora", "type": 3, "rank": 4, "alpha": 8}, 14),
    "u5": ({"name": "glora", "type": 3, "rank": 4, "alpha": 8}, 15),
    "u6": ({"name": "blora", "rank": 4, "alpha": 8}, 16),
    "u7": ({"name": "bottleneck", "bottleneck": 8}, 17),
    "u8": ({"name": "bottleneck", "bottleneck": 8}, 18),
    "ft": ({"name": "full_ft"}, 19),
}


@pytest.fixture(scope="module")
def batch_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    for user, (values, seed) in USERS.items():
        export_adapter(root / "adapters" / user, values, seed)
    rng = np.random.RandomState(3)
    audio = {}
    for index, seconds in enumerate((1.0, 2.5, 4.0, 7.5)):  # 7.5 s: two windows of the 6 s encoder
        path = root / f"a{index}.wav"
        write_wav(path, (0.1 * rng.randn(int(seconds * 16000))).astype(np.float32))
        audio[index] = path.read_bytes()
    return {"adapters": root / "adapters", "audio": audio}


def test_rows_of_different_adapters_equal_decoding_each_alone(batch_store):
    server = AdapterServer(BASE, batch_store["adapters"], language="en", max_new_tokens=6, cache_size=16)
    users = [f"u{i}" for i in range(1, 9)]
    requests = [{"audio": batch_store["audio"][i % 4], "user": user} for i, user in enumerate(users)]
    requests.append({"audio": batch_store["audio"][3], "user": None})  # no adapter: the base
    alone = [server.transcribe(r["audio"], user=r["user"]) for r in requests[:-1]]
    together = server.transcribe_many(requests)
    assert [r["text"] for r in together[:-1]] == [r["text"] for r in alone]
    assert len({r["text"] for r in alone}) > 4, (
        "the adapters must change the transcripts for this test to mean anything"
    )
    # four structures (LoRA, GLoRA, BLoRA, bottleneck) and the base shared one pass
    assert {r["batch_rows"] for r in together} == {9} and len(server.slots) == 4
    assert together[-1]["strategy"] == "base" and together[-1]["windows"] == 2
    with torch.no_grad():
        inputs = server.features(batch_store["audio"][3])[0][0]
        expected = server.backbone.decode(
            load_base_model(BASE).eval(), server.processor.tokenizer, inputs, ["en"] * 2, server.decode_config
        )
    assert together[-1]["text"] == "".join(expected[0])
    assert all(set(r["timings_ms"]) == {*STAGES, "total"} for r in together + alone)


def test_full_fine_tuning_cannot_share_a_pass_and_says_so(batch_store):
    server = AdapterServer(BASE, batch_store["adapters"], language="en", max_new_tokens=6)
    alone = server.transcribe(batch_store["audio"][0], user="ft")
    result, refused = server.transcribe_many(
        [{"audio": batch_store["audio"][0], "user": "ft"}, {"audio": batch_store["audio"][0], "user": "nobody"}]
    )
    assert result["text"] == alone["text"] and result["batch_rows"] == 1 and "own" in result["note"]
    assert refused.status == 404  # one refusal does not stop the others


def test_a_bank_row_of_zeros_is_the_base_and_beams_follow_their_rows():
    model = load_base_model(BASE).eval()
    strategy = build_strategy({"name": "lora", "rank": 4, "alpha": 8})
    strategy.attach(model, for_training=False)
    model.eval()  # the injected modules start in training mode; a bank serves inference only
    assert bankable(strategy) is None
    torch.manual_seed(0)
    tensors = {n: torch.randn_like(p) for n, p in strategy.trainable_parameters()}
    features = torch.randn(2, 80, 600)
    ids = torch.tensor([[50258, 50259, 50359, 50363]] * 2)
    with torch.no_grad():
        base = load_base_model(BASE).eval()(input_features=features, decoder_input_ids=ids).logits
        strategy.load_adapter_state_dict(tensors)
        adapted = model(input_features=features, decoder_input_ids=ids).logits
        with row_banked(strategy, [tensors, None], [1, 0]):  # row 0 the base, row 1 the adapter
            mixed = model(input_features=features, decoder_input_ids=ids).logits
    assert torch.allclose(mixed[0], base[0], atol=1e-5) and torch.allclose(mixed[1], adapted[1], atol=1e-5)
    assert not torch.allclose(base[1], adapted[1], atol=1e-3)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize("requests", [40, pytest.param(200, marks=pytest.mark.slow)])
def test_concurrent_clients_are_batched_and_each_gets_its_own_adapter(batch_store, requests):
    """8 client threads, 4 users of 4 strategies, 40 (or 200) requests over loopback with a batching window: every
    request answered, each user's transcripts equal to decoding alone, some requests decoded together, and
    memory after the run within 10 % of memory after warm-up."""
    import threading

    from loopback import BackgroundServer

    from lightning_asr import client
    from lightning_asr.serving import ServiceLimits, create_app

    limits = ServiceLimits(max_batch_size=8, batch_timeout_ms=30, max_queue=64)
    server = AdapterServer(BASE, batch_store["adapters"], language="en", max_new_tokens=6, cache_size=16, limits=limits)
    users = ["u1", "u4", "u6", "u7"]  # LoRA, GLoRA type 3, BLoRA, bottleneck
    audio_dir = batch_store["adapters"].parent
    expected = {(u, i): server.transcribe(batch_store["audio"][i], user=u)["text"] for u in users for i in range(3)}
    with BackgroundServer(create_app(server)) as url:
        for user in users:  # warm-up: every structure injected, every adapter cached
            client.transcribe(url, audio_dir / "a0.wav", user=user)
        warm = rss_bytes()
        answers, failures = [], []

        def worker(worker_index: int):
            for step in range(requests // 8):
                user, clip = users[(worker_index + step) % 4], (worker_index + step) % 3
                try:
                    result = client.transcribe(url, audio_dir / f"a{clip}.wav", user=user, timeout=120)
                    answers.append((user, clip, result))
                except Exception as err:  # noqa: BLE001 - reported below
                    failures.append(repr(err))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        after = rss_bytes()
    assert not failures and len(answers) == requests
    assert all(result["text"] == expected[(user, clip)] for user, clip, result in answers)
    assert max(result["batch_rows"] for _, _, result in answers) > 1  # rows of one structure shared a pass
    assert all(result["cache_hit"] for _, _, result in answers)  # every adapter was read in the warm-up
    assert after <= 1.10 * warm, (warm, after)


def test_base_rows_in_merged_mode_and_slots_evicted_within_a_batch(batch_store):
    """Merged mode: a row without an adapter is the base, never the adapter a slot last held; a batch whose
    later requests evict an earlier request's structure still decodes every request."""
    merged = AdapterServer(BASE, batch_store["adapters"], mode="merged", language="en", max_new_tokens=6)
    audio = batch_store["audio"][1]
    merged.transcribe(audio, user="u1")  # the LoRA slot now holds u1's adapter
    with_user, base_row = merged.transcribe_many([{"audio": audio, "user": "u2"}, {"audio": audio, "user": None}])
    lora = next(s for s in merged.slots.values() if s.strategy.name == "lora")
    with torch.no_grad():
        inputs = merged.features(audio)[0][0]
        plain = merged.backbone.decode(
            load_base_model(BASE).eval(), lora.tokenizer, inputs, ["en"], merged.decode_config
        )
    assert base_row["text"] == "".join(plain[0]) and with_user["mode"] == "merged"
    assert with_user["text"] == merged.transcribe(audio, user="u2")["text"]
    small = AdapterServer(BASE, batch_store["adapters"], language="en", max_new_tokens=6, max_structures=1)
    results = small.transcribe_many([{"audio": audio, "user": u} for u in ("u1", "u4", "u7")])
    assert all(isinstance(r, dict) for r in results), results
    assert [r["text"] for r in results] == [small.transcribe(audio, user=u)["text"] for u in ("u1", "u4", "u7")]


@pytest.fixture(scope="module")
def ia3_store(tmp_path_factory, request):
    """Two users of the IA3-shaped plugin strategy (tests/plugins/ia3_scaling.py), loaded as a plugin."""
    import sys
    from pathlib import Path

    from lightning_asr.adapters import STRATEGIES, load_plugins

    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    assert "ia3-scaling" not in STRATEGIES
    assert load_plugins(["ia3_scaling"]) == ["ia3_scaling"]
    root = tmp_path_factory.mktemp("ia3")
    for user, seed in (("ann", 1), ("ben", 2)):
        model = load_base_model(BASE)
        strategy = build_strategy({"name": "ia3-scaling"})
        strategy.attach(model)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, scale in strategy.trainable_parameters():
                scale.copy_(1 + 2 * torch.randn(scale.shape, generator=generator))
        strategy.save_adapter(root / user)
    write_wav(root / "clip.wav", (0.1 * np.random.RandomState(5).randn(32000)).astype(np.float32))
    yield {"adapters": root, "audio": (root / "clip.wav").read_bytes()}
    STRATEGIES.pop("ia3-scaling", None)
    sys.path.remove(str(Path(__file__).parent / "plugins"))


def test_a_strategy_without_a_declared_bank_decodes_each_user_alone(ia3_store):
    """A bare scale on the wrapper: batched four at a time, in both orders and whatever the slot held before,
    every row equals that user's own transcript."""
    from lightning_asr.serving import ServiceLimits

    server = AdapterServer(
        BASE, ia3_store["adapters"], language="en", max_new_tokens=8, limits=ServiceLimits(max_batch_size=4)
    )
    audio = ia3_store["audio"]
    own = {user: server.transcribe(audio, user=user)["text"] for user in ("ann", "ben")}
    assert own["ann"] != own["ben"], "the two scales must change the transcript for this test to mean anything"
    slot = next(iter(server.slots.values()))
    assert "declares no bank modules" in bankable(slot.strategy)
    for held in ("ann", "ben"):
        for order in (["ann", "ben"], ["ben", "ann"], ["ann", "ben", "ben", "ann"]):
            server.transcribe(audio, user=held)  # the slot now holds this user's scale
            results = server.transcribe_many([{"audio": audio, "user": user} for user in order])
            assert [r["text"] for r in results] == [own[user] for user in order], (held, order)
            assert all(r["batch_rows"] == 1 and "declares no bank" in r["note"] for r in results)


def test_a_declared_bank_must_hold_every_trained_tensor(ia3_store):
    """A strategy whose declared bank holds a tensor it does not train (and misses the one it trains) is
    refused a shared pass."""
    from lightning_asr.adapters import STRATEGIES

    ia3 = STRATEGIES["ia3-scaling"]

    class DeclaresTheBaseLayer(ia3):
        def bank_modules(self):
            return {f"{name}.base_layer": layer.base_layer for name, layer in self.layers().items()}

    strategy = DeclaresTheBaseLayer({"name": "ia3-scaling"})
    strategy.attach(load_base_model(BASE).eval(), for_training=False)
    reason = bankable(strategy)
    # the base layer's weight is frozen: a bank of it would gather each user's copy of the shared base
    assert reason is not None and "does not train" in reason and "base_layer" in reason
    with pytest.raises(ValueError, match="does not train"):
        with row_banked(strategy, [None], [0]):
            pass
    lora = STRATEGIES["lora"]

    class BanksAOnly(lora):
        def bank_modules(self):
            return {name: m for name, m in super().bank_modules().items() if name.endswith("lora_A")}

    partial = BanksAOnly({"name": "lora", "rank": 2})
    partial.attach(load_base_model(BASE).eval(), for_training=False)
    assert "no bank module holds" in bankable(partial) and "lora_B" in bankable(partial)


def test_a_plugin_that_cannot_be_imported_is_named_with_the_fix(tmp_path, capsys):
    from lightning_asr.cli import main

    args = ["serve", "--plugin", "no_such_lab.strategies", "--base", BASE, "--adapters", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no_such_lab.strategies" in err and "fix:" in err


def test_batches_decode_on_the_engine_thread(batch_store, monkeypatch):
    """Every torch computation of a serving process runs on one thread: a second thread running parallel
    regions beside another's makes libgomp's workers sleep between operations."""
    import threading

    from loopback import BackgroundServer

    from lightning_asr import client
    from lightning_asr.serving import ServiceLimits, create_app
    from lightning_asr.serving.batcher import on_engine_thread

    server = on_engine_thread(
        AdapterServer, BASE, batch_store["adapters"], language="en", max_new_tokens=4, limits=ServiceLimits()
    )
    threads = set()
    decode = server.decode_windows

    def recording(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return decode(*args, **kwargs)

    monkeypatch.setattr(server, "decode_windows", recording)
    with BackgroundServer(create_app(server)) as url:
        for user in ("u1", "u4"):
            client.transcribe(url, batch_store["adapters"].parent / "a0.wav", user=user)
    assert len(threads) == 1 and next(iter(threads)).startswith("lightning-asr-engine")


def test_an_adapter_cannot_write_a_base_weight(batch_store, tmp_path):
    """An upload whose tensors name a frozen base weight (checksums recomputed, so only the fit check stands in
    the way) is refused, and the base every user shares is unchanged."""
    import hashlib
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from lightning_asr.serving import ServeError

    directory = tmp_path / "crafted"
    shutil.copytree(batch_store["adapters"] / "u1", directory)
    server = AdapterServer(BASE, batch_store["adapters"], language="en", max_new_tokens=6)
    name = "model.encoder.conv1.weight"
    tensors = load_file(str(directory / "lightning_asr_adapter.safetensors"))
    tensors[name] = torch.zeros_like(server.base.get_parameter(name))
    save_file(tensors, str(directory / "lightning_asr_adapter.safetensors"))
    side = json.loads((directory / "lightning_asr_adapter.json").read_text())
    for file in side.get("sha256", {}):
        side["sha256"][file] = hashlib.sha256((directory / file).read_bytes()).hexdigest()
    (directory / "lightning_asr_adapter.json").write_text(json.dumps(side))
    before = server.base.get_parameter(name).clone()
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(ServeError) as refused:
        server.transcribe(batch_store["audio"][0], adapter_files=files)
    assert refused.value.status == 422 and name in refused.value.message
    assert torch.equal(server.base.get_parameter(name), before)


def test_a_strategy_with_a_bank_but_no_adapter_output_shares_a_pass_of_its_own(batch_store, tmp_path):
    """Banked but not mixable: its users share one pass through their slot, each row equal to the user alone."""
    import math
    from dataclasses import dataclass

    from torch import nn

    from lightning_asr.adapters import STRATEGIES, register
    from lightning_asr.adapters.lora import LoRA, LowRankConfig

    class PlainLoRALinear(nn.Module):
        def __init__(self, base_layer: nn.Linear, rank: int):
            super().__init__()
            self.base_layer, self.merged = base_layer, False
            self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))

        def forward(self, x):
            return self.base_layer(x) + self.lora_B(self.lora_A(x))

    @dataclass
    class PlainConfig(LowRankConfig):
        name: str = "plain-lora"

    @register("plain-lora", PlainConfig)
    class PlainLoRA(LoRA):
        mergeable = False

        def make_layer(self, linear):
            return PlainLoRALinear(linear, self.config.rank)

    try:
        for user, seed in (("p1", 1), ("p2", 2), ("p3", 3)):
            export_adapter(tmp_path / user, {"name": "plain-lora", "rank": 4}, seed)
        server = AdapterServer(BASE, tmp_path, language="en", max_new_tokens=6)
        audio = batch_store["audio"][1]
        alone = [server.transcribe(audio, user=u)["text"] for u in ("p1", "p2", "p3")]
        slot = next(iter(server.slots.values()))
        assert bankable(slot.strategy) is None and not mixable(slot.strategy)
        together = server.transcribe_many([{"audio": audio, "user": u} for u in ("p1", "p2", "p3")])
        assert [r["text"] for r in together] == alone and {r["batch_rows"] for r in together} == {3}
        assert len(set(alone)) > 1, "the adapters must change the transcripts for this test to mean anything"
    finally:
        STRATEGIES.pop("plain-lora", None)
