"""bf16 mixed precision with fp32 adapters, and gradient checkpointing that still reaches encoder adapters."""

import pytest
import torch
from conftest import config_dict

from lightning_asr.module import ASRModule


def grads(module, batch):
    module.zero_grad()
    loss, _ = module.forward_loss(batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in module.strategy.trainable_parameters() if p.grad is not None}


@pytest.mark.parametrize("spec", ["whisper-tiny-random", "wav2vec2-tiny-random"])
def test_gradient_checkpointing_gives_encoder_adapters_the_same_gradients(
    spec, corpus, tmp_path, fixed_batch, ctc_batch
):
    batch = ctc_batch if spec.startswith("wav2vec2") else fixed_batch
    overrides = {
        "model.spec": spec,
        "model.ctc_unit": "jamo",
        "adapter.name": "lora",
        "adapter.rank": 4,
        "adapter.target_modules": "[attn]",
        "adapter.dropout": 0.0,
    }
    torch.manual_seed(0)
    plain = ASRModule(config_dict(corpus, tmp_path, **overrides))
    for _, parameter in plain.strategy.trainable_parameters():  # nonzero B, so every factor gets a gradient
        torch.nn.init.normal_(parameter, std=0.02)
    checkpointed = ASRModule(config_dict(corpus, tmp_path, **overrides, **{"model.gradient_checkpointing": True}))
    checkpointed.load_state_dict(plain.state_dict())
    plain.train(), checkpointed.train()
    if spec.startswith("wav2vec2"):  # no random masking or layer drop: the two passes must see the same network
        for module in (plain, checkpointed):
            module.model.config.mask_time_prob, module.model.config.layerdrop = 0.0, 0.0
            for m in module.model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
                elif isinstance(getattr(m, "dropout", None), float):  # attention dropout is a plain float
                    m.dropout = 0.0
    else:
        plain.eval(), checkpointed.eval()
        checkpointed.model.train()  # checkpointing is active only in training mode
        plain.model.train()
    expected, got = grads(plain, batch), grads(checkpointed, batch)
    encoder = [n for n in expected if "encoder" in n and "lora_" in n]
    assert encoder and set(got) == set(expected)
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-5), name
    assert all(got[n].abs().sum() > 0 for n in encoder)


def test_bf16_mixed_training_keeps_adapters_in_fp32(corpus, tmp_path):
    from lightning_asr.train import train

    config = config_dict(
        corpus,
        tmp_path,
        **{
            "adapter.name": "blora",
            "adapter.rank": 4,
            "trainer.precision": "bf16-mixed",
            "trainer.max_steps": 3,
            "trainer.val_check_interval": 3,
            "trainer.enable_progress_bar": False,
            "decode.max_new_tokens": 4,
        },
    )
    result = train(config)
    module = ASRModule.from_checkpoint(result.last_checkpoint)
    assert {p.dtype for _, p in module.strategy.trainable_parameters()} == {torch.float32}
    assert torch.isfinite(torch.tensor(result.validation["val/loss"]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = {"input_features": torch.randn(1, 80, 600), "labels": torch.tensor([[50259, 50359, 50363, 50257]])}
        loss, _ = module.forward_loss(batch)
        regularizer = module.strategy.regularizer()
    loss.backward()
    assert regularizer.dtype == torch.float32 or regularizer.dtype == torch.float64
    assert all(p.grad is None or p.grad.dtype == torch.float32 for _, p in module.strategy.trainable_parameters())


def test_bf16_falls_back_to_float32_on_a_cpu_without_bfloat16_and_says_so(monkeypatch, capsys):
    from lightning_asr import train

    settings = {"precision": "bf16-mixed", "accelerator": "cpu"}
    monkeypatch.setattr(train, "cpu_has_bfloat16", lambda: True)
    assert train.resolve_precision(settings) == "bf16-mixed" and not capsys.readouterr().out
    monkeypatch.setattr(train, "cpu_has_bfloat16", lambda: False)
    assert train.resolve_precision(settings) == "32-true"
    assert "no bfloat16 instructions; training in 32-true" in capsys.readouterr().out
    assert train.resolve_precision({"precision": "32-true", "accelerator": "cpu"}) == "32-true"


def test_code_outside_the_trainer_runs_in_the_precision_the_run_trains_in(monkeypatch):
    from omegaconf import OmegaConf

    from lightning_asr import train

    monkeypatch.setattr(train, "cpu_has_bfloat16", lambda: True)
    bf16 = OmegaConf.create({"trainer": {"precision": "bf16-mixed", "accelerator": "cpu"}})
    with train.autocast_for(bf16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with train.autocast_for(OmegaConf.create({"trainer": {"precision": "32-true", "accelerator": "cpu"}})):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(train, "cpu_has_bfloat16", lambda: False)  # falls back with the Trainer
    with train.autocast_for(bf16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
