"""The one-file rule: a strategy defined and registered here, nowhere else, goes through training, export and
import, the forgetting benchmark's smoke profile and the server (merged and unmerged) like the built-in ones.

The strategy is a learned per-channel scaling of the feed-forward outputs, as in IA3 (Liu et al. 2022):
``y = s * (W x + b)`` with ``s`` starting at one, so the model equals the base at step 0; it merges exactly
into ``W`` and ``b``.
"""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import config_dict
from torch import nn

from lightning_asr.adapters import STRATEGIES, AdapterStrategy, StrategyConfig, matches_any, register
from lightning_asr.audio import read_audio, write_wav


@dataclass
class ChannelScalingConfig(StrategyConfig):
    name: str = "channel-scaling"
    target_modules: list[str] = field(default_factory=lambda: [r"\.fc1$"])  # regular expressions over names


class ScaledLinear(nn.Module):
    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.scale = nn.Parameter(torch.ones(base_layer.out_features))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        return out if self.merged else out * self.scale


@register("channel-scaling", ChannelScalingConfig)
class ChannelScaling(AdapterStrategy):
    mergeable = True

    def attach(self, model, for_training=True):
        super().attach(model, for_training)
        self.target_names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and matches_any(n, list(self.config.target_modules))
        ]
        for name in self.target_names:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, ScaledLinear(model.get_submodule(name)))
        return model

    def layers(self) -> list[ScaledLinear]:
        return [self.model.get_submodule(name) for name in self.target_names]

    def merge_targets(self):
        return [t for layer in self.layers() for t in (layer.base_layer.weight, layer.base_layer.bias)]

    @torch.no_grad()
    def merge(self):
        for layer in self.layers():
            if not layer.merged:
                layer.base_layer.weight.mul_(layer.scale[:, None])
                layer.base_layer.bias.mul_(layer.scale)
                layer.merged = True

    @torch.no_grad()
    def unmerge(self):
        for layer in self.layers():
            if layer.merged:
                layer.base_layer.weight.div_(layer.scale[:, None])
                layer.base_layer.bias.div_(layer.scale)
                layer.merged = False

    def is_merged(self):
        return any(layer.merged for layer in self.layers())

    def delta_weights(self):
        return {
            name: layer.base_layer.weight * (layer.scale[:, None] - 1)
            for name, layer in zip(self.target_names, self.layers())
        }


@pytest.fixture(scope="module", autouse=True)
def registered():
    yield
    STRATEGIES.pop("channel-scaling", None)  # the registry is the process's: leave it as the other tests know it


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    from lightning_asr.module import ASRModule
    from lightning_asr.train import train

    tmp = tmp_path_factory.mktemp("scaling")
    config = config_dict(
        corpus,
        tmp,
        **{
            "adapter.name": "channel-scaling",
            "optim.lr": 0.05,
            "trainer.max_steps": 4,
            "trainer.val_check_interval": 4,
            "trainer.enable_progress_bar": False,
            "decode.max_new_tokens": 6,
        },
    )
    result = train(config)
    module = ASRModule.from_checkpoint(result.best_checkpoint).eval()
    adapter = module.strategy.save_adapter(tmp / "store" / "carol")
    return module, adapter, tmp


def test_trains_exports_and_imports(trained, fixed_batch):
    from lightning_asr.module import ASRModule

    module, adapter, _ = trained
    assert module.strategy.name == "channel-scaling" and module.strategy.target_names
    trainable = dict(module.strategy.trainable_parameters())
    assert trainable and all(name.endswith(".scale") for name in trainable)
    assert any(not torch.allclose(p, torch.ones_like(p)) for p in trainable.values())  # it learned something
    fresh = ASRModule({"model": {"spec": "whisper-tiny-random"}, "adapter": {"name": "channel-scaling"}}).eval()
    with torch.no_grad():
        before = fresh.forward_loss(fixed_batch)[0]
        fresh.strategy.load_adapter(adapter)
        assert torch.allclose(fresh.forward_loss(fixed_batch)[0], module.forward_loss(fixed_batch)[0], atol=1e-6)
        assert not torch.allclose(before, fresh.forward_loss(fixed_batch)[0])
        fresh.strategy.merge()
        assert torch.allclose(fresh.forward_loss(fixed_batch)[0], module.forward_loss(fixed_batch)[0], atol=1e-5)


def test_serves_merged_and_unmerged_like_offline_decoding(trained):
    from lightning_asr.serving import AdapterServer

    module, adapter, tmp = trained
    rng = np.random.RandomState(1)
    write_wav(tmp / "speech.wav", (0.1 * rng.randn(2 * 16000)).astype(np.float32))
    inputs = module.backbone.audio_inputs(module.processor, [read_audio(tmp / "speech.wav")])
    with torch.no_grad():
        expected = module.transcribe(inputs, ["en"])[0][0]
    for mode in ("unmerged", "merged"):
        engine = AdapterServer("whisper-tiny-random", adapter.parent, mode=mode, language="en", max_new_tokens=6)
        before = {name: tensor.clone() for name, tensor in engine.base.state_dict().items()}
        result = engine.transcribe((tmp / "speech.wav").read_bytes(), user="carol")
        assert result["strategy"] == "channel-scaling" and result["mode"] == mode and result["text"] == expected
        assert all(torch.equal(before[name], tensor) for name, tensor in engine.base.state_dict().items())


def test_runs_in_the_benchmark_smoke_profile(corpus, tmp_path, capsys):
    from lightning_asr.study.cli import forgetting_main

    strategies = (
        "strategies=[{label: lora, adapter: {name: lora, rank: 4, alpha: 8}}, "
        "{label: scaling, adapter: {name: channel-scaling}, optim: {lr: 0.05}}]"
    )
    args = [
        "--profile",
        "smoke",
        strategies,
        "reference=lora",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"artifact_root={tmp_path}/artifacts",
        f"output_dir={tmp_path}/runs",
        "corpus.build=false",
        f"corpus.root={corpus}",
        f"base.cache_dir={tmp_path}/bases",
    ]
    assert forgetting_main(args) == 0
    out = capsys.readouterr().out
    assert "cell scaling-seed1: done" in out and "| scaling |" in out
