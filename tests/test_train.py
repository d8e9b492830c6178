import os
import subprocess
import sys

import pytest
import torch
from conftest import config_dict, datamodule

from lightning_asr.cli import main
from lightning_asr.config import ConfigError, load_config
from lightning_asr.module import ASRModule


def test_tiny_whisper_overfits_one_batch(corpus, tmp_path):
    torch.manual_seed(0)
    module = ASRModule(config_dict(corpus, tmp_path))
    dm = datamodule(module.processor, [corpus / "en/train.jsonl"], batch_size=4, bucket_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = module.forward_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses


def test_label_positions_loss_equals_the_models_own(corpus, tmp_path):
    module = ASRModule(config_dict(corpus, tmp_path))
    dm = datamodule(module.processor, [corpus / "zh-en/train.jsonl"], batch_size=3)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    ours, n_tokens = module.forward_loss(batch)
    reference = module.model(input_features=batch["input_features"], labels=batch["labels"]).loss
    assert torch.allclose(ours, reference, atol=1e-5) and n_tokens == int((batch["labels"] != -100).sum())


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_decoder_input_dropout_replaces_only_text_inputs_and_only_in_training(corpus, tmp_path, fixed_batch):
    """``model.decoder_input_dropout``: text tokens among the decoder's inputs are replaced by tokens of the
    batch's texts; the prompt, end-of-text and padding never are, targets stay, and evaluation sees no change."""
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    from lightning_asr.models.whisper import PROMPT_INPUTS, replace_text_inputs

    labels, eot = fixed_batch["labels"], 50257
    inputs = shift_tokens_right(labels.masked_fill(labels == -100, eot), eot, 50258)
    text = torch.zeros_like(labels, dtype=torch.bool)
    for row, ids in enumerate(labels.tolist()):
        length = sum(i != -100 for i in ids)  # the prompt's 3 tokens, the text, end-of-text
        text[row, PROMPT_INPUTS:length] = True
    torch.manual_seed(0)
    replaced = replace_text_inputs(inputs, labels, 1.0)
    assert torch.equal(replaced[~text], inputs[~text]) and not torch.equal(replaced[text], inputs[text])
    assert set(replaced[text].tolist()) <= set(inputs[text].tolist())
    assert torch.equal(replace_text_inputs(inputs, labels, 0.0), inputs)

    module = ASRModule(config_dict(corpus, tmp_path, **{"model.decoder_input_dropout": 0.5}))
    module.train()
    torch.manual_seed(0)
    dropped = module.training_step(fixed_batch, 0)
    plain = module.backbone.loss(module.model, fixed_batch)[0]
    assert not torch.allclose(dropped, plain) and torch.equal(module.forward_loss(fixed_batch)[0], plain)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_a_ctc_model_rejects_decoder_input_dropout(corpus, tmp_path, ctc_batch):
    from test_ctc import ctc_config

    module = ASRModule(ctc_config(corpus, tmp_path, **{"model.decoder_input_dropout": 0.1}))
    with pytest.raises(ValueError, match="decoder_input_dropout"):
        module.training_step(ctc_batch, 0)


def test_train_cli_validates_checkpoints_and_evaluate_loads(corpus, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"""
output_dir: {tmp_path / "run"}
data:
  train_manifests: [{corpus}/ko-en/train.jsonl]
  val_manifests: [{corpus}/ko-en/dev.jsonl, {corpus}/ko/dev.jsonl]
  batch_size: 4
trainer:
  max_steps: 4
  val_check_interval: 2
decode:
  max_new_tokens: 8
""")
    assert main(["train", "--config", str(config), "optim.warmup_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "val/ko-en/dev/mer" in out and "val/ko/dev/cer" in out
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert best.exists() and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    # a second run into the same folder is refused, not overwritten; resuming with another config too
    assert main(["train", "--config", str(config)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--resume", "optim.lr=0.5"]) == 2
    assert "trained with another config" in capsys.readouterr().err
    predictions = tmp_path / "pred.jsonl"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(best),
                "--manifest",
                f"{corpus}/en/test.jsonl",
                "--predictions",
                str(predictions),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test/en/test/wer" in out and "normalizer/en/test: basic-v3[en," in out
    assert len(predictions.read_text().splitlines()) == 4
    # the evaluated weights are the checkpoint's, not a fresh random model
    reloaded = ASRModule.from_checkpoint(best)
    fresh = ASRModule(reloaded.config)
    assert not torch.equal(reloaded.model.proj_out.weight, fresh.model.proj_out.weight)


def test_unknown_config_key_names_the_closest_valid_one(tmp_path):
    (tmp_path / "c.yaml").write_text("trainer:\n  max_step: 3\n")
    with pytest.raises(
        ConfigError, match=r"c.yaml: unknown config key 'trainer.max_step'; did you mean 'trainer.max_steps'"
    ):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="command line: unknown config key 'optim.learning_rate'"):
        load_config(overrides=["optim.learning_rate=1"])


@pytest.mark.parametrize(
    "name,glora_type",
    [("full_ft", 1), ("lora", 1), ("glora", 1), ("glora", 2), ("glora", 3), ("glora", 4), ("blora", 1)],
)
def test_a_few_steps_with_each_strategy_lower_the_loss(name, glora_type, corpus, tmp_path, fixed_batch):
    settings = {"adapter.name": name, **({"adapter.rank": 4} if name != "full_ft" else {})}
    config = config_dict(corpus, tmp_path, **settings, **({"adapter.type": glora_type} if name == "glora" else {}))
    torch.manual_seed(0)
    module = ASRModule(config)
    module.train()
    optimizer = torch.optim.AdamW(
        [p for _, p in module.strategy.trainable_parameters()], lr=1e-2 if name != "full_ft" else 1e-3
    )
    losses = []
    for _ in range(8):
        loss = module.forward_loss(fixed_batch)[0] + module.strategy.regularizer()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1 and losses[-1] == min(losses), losses


def test_blora_monte_carlo_decoding_reports_disagreement(corpus, tmp_path, fixed_batch):
    from lightning_asr.adapters.blora import monte_carlo_transcribe

    module = ASRModule(
        config_dict(corpus, tmp_path, **{"adapter.name": "blora", "adapter.rank": 4, "decode.max_new_tokens": 4})
    )
    module.eval()
    with torch.no_grad():
        for layer in module.strategy.layers().values():
            layer.lora_B.rho.fill_(0.0)  # wide posteriors: draws must disagree
            layer.lora_A.rho.fill_(0.0)
    results = monte_carlo_transcribe(module, fixed_batch, fixed_batch["langs"], samples=3)
    assert len(results) == 4 and all(len(r["samples"]) == 3 for r in results)
    assert max(r["disagreement"] for r in results) > 0
    mean_texts, _ = module.transcribe(fixed_batch, fixed_batch["langs"])
    assert [r["text"] for r in results] == mean_texts  # the sample is cleared afterwards


def test_cap_hits_count_only_rows_that_reach_max_new_tokens(corpus, tmp_path, fixed_batch):
    from lightning_asr.models.whisper import count_cap_hits

    module = ASRModule(config_dict(corpus, tmp_path, **{"adapter.name": "frozen", "decode.max_new_tokens": 5}))
    module.eval()
    texts, cap_hits = module.transcribe(fixed_batch, fixed_batch["langs"])
    assert len(texts) == 4 and cap_hits == 4  # an untrained decoder never says end-of-text
    eos = 50257
    finished_early = torch.tensor([[11, 12, 13], [21, 22, eos]])  # generate stripped the last end-of-text
    assert count_cap_hits(finished_early, eos, max_new_tokens=5) == 0
    at_cap = torch.tensor([[1, 2, 3, 4, 5], [1, 2, eos, eos, eos]])
    assert count_cap_hits(at_cap, eos, max_new_tokens=5) == 1


def test_hybrid_ctc_attention_training_keeps_the_head_out_of_the_exported_base(corpus, tmp_path):
    """``model.encoder_ctc_weight``: the encoder's CTC head takes its characters from the training data,
    its loss mixes into training, it rides in the checkpoints, and it is not part of the saved base."""
    from conftest import first_batch

    from lightning_asr.train import train

    config = config_dict(
        corpus,
        tmp_path,
        **{
            "model.encoder_ctc_weight": 0.5,
            "trainer.max_steps": 3,
            "trainer.val_check_interval": 3,
            "trainer.enable_progress_bar": False,
            "decode.max_new_tokens": 4,
        },
    )
    result = train(config)
    module = result.module.eval()
    assert {"어", "e", "m"} <= set(module.config.model.encoder_ctc_units) and module.auxiliary is not None
    batch = first_batch(module.processor, corpus / "ko-en/train.jsonl", 2)
    with torch.no_grad():
        cross_entropy = module.forward_loss(batch)[0]
        hybrid = module.backbone.loss(module.model, batch, module.auxiliary)[0]
        encoded = module.model.model.encoder(batch["input_features"]).last_hidden_state
        ctc = module.auxiliary(encoded, batch["texts"], batch["langs"])
    assert torch.allclose(hybrid, 0.5 * cross_entropy + 0.5 * ctc, atol=1e-5) and ctc > 0
    reloaded = ASRModule.from_checkpoint(result.last_checkpoint)
    assert torch.equal(reloaded.auxiliary.head.weight, module.auxiliary.head.weight)
    module.model.save_pretrained(tmp_path / "base")
    saved = ASRModule({"model": {"spec": str(tmp_path / "base")}, "adapter": {"name": "lora", "rank": 2}})
    assert saved.auxiliary is None and set(saved.model.state_dict()) <= set(module.model.state_dict()) | {
        k for k in saved.model.state_dict() if "lora_" in k or "base_layer" in k
    }


def test_early_stopping_ends_the_run_below_its_bound_and_says_where(corpus, tmp_path):
    from lightning_asr.train import train

    settings = {
        "trainer.max_steps": 12,
        "trainer.val_check_interval": 2,
        "trainer.enable_progress_bar": False,
        "decode.in_validation": False,
    }
    stopped = train(config_dict(corpus, tmp_path / "a", **settings, **{"trainer.early_stopping.stop_below": 1e3}))
    assert stopped.stopped_at_step == 2  # the first validation's loss is below the bound
    patient = train(
        config_dict(corpus, tmp_path / "b", **settings, **{"trainer.early_stopping.patience": 1, "optim.lr": 0.0})
    )
    assert patient.stopped_at_step == 4  # no improvement at all: one more validation, then stop
    # last.ckpt is the last validation's step even without an improvement there (what a resume continues from)
    assert torch.load(patient.last_checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"] == 4
    full = train(config_dict(corpus, tmp_path / "c", **settings))
    assert full.stopped_at_step == 12


def test_stopping_on_dev_errors_ends_the_run_once_every_bound_is_met(corpus, tmp_path, capsys):
    """``trainer.early_stopping.errors_below``: the first validation at which every named set's decoded error
    is within its bound ends the run; a bound not met runs to the cap; a set that is not validated, or
    validation without decoding, is refused before training."""
    from lightning_asr.config import ConfigError
    from lightning_asr.train import train

    settings = {
        "trainer.max_steps": 4,
        "trainer.val_check_interval": 2,
        "trainer.enable_progress_bar": False,
        "decode.max_new_tokens": 4,
    }
    met = train(
        config_dict(corpus, tmp_path / "a", **settings, **{"trainer.early_stopping.errors_below": "{ko-en/dev: 100}"})
    )
    assert met.stopped_at_step == 2 and met.validation["val/ko-en/dev/error"] <= 100
    assert met.best_checkpoint == met.last_checkpoint  # the weights that met the bounds
    assert torch.load(met.last_checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"] == 2
    unmet = train(
        config_dict(corpus, tmp_path / "b", **settings, **{"trainer.early_stopping.errors_below": "{ko-en/dev: 0}"})
    )
    assert unmet.stopped_at_step == 4 and unmet.validation["val/ko-en/dev/error"] > 0
    # a line per validation that reads in a log file: the step of the cap, the errors against their bounds
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[train] step")]
    assert [line.split(",")[0] for line in lines] == ["[train] step 2/4"] * 2 + ["[train] step 4/4"]
    assert "ko-en/dev" in lines[-1] and "(stops at ≤ 0)" in lines[-1] and "left" not in lines[-1]
    assert "(stops at ≤ 100)" in lines[0] and "left at most" in lines[0]
    with pytest.raises(ConfigError, match="en/dev, which is not a validation set.*ko-en/dev"):
        train(config_dict(corpus, tmp_path / "c", **settings, **{"trainer.early_stopping.errors_below": "{en/dev: 1}"}))
    with pytest.raises(ConfigError, match="decode.in_validation=true"):
        train(
            config_dict(
                corpus,
                tmp_path / "d",
                **settings,
                **{"trainer.early_stopping.errors_below": "{ko-en/dev: 1}", "decode.in_validation": False},
            )
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_training_keeps_freed_memory_instead_of_faulting_it_in_again():
    """After ``keep_freed_memory`` a freed 40 MB tensor's pages are reused by the next one; with glibc's own
    thresholds (``LIGHTNING_ASR_GLIBC_MALLOC=1``) each new tensor faults its pages in again."""
    probe = (
        "import resource, torch\n"
        "from lightning_asr.train import keep_freed_memory\n"
        "keep_freed_memory()\n"
        "torch.ones(51865, 192), torch.ones(51865, 192)\n"  # the heap grows to hold one
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5):\n"
        "    torch.ones(51865, 192)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )

    def faults(**env) -> int:
        done = subprocess.run(
            [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True, check=True
        )
        return int(done.stdout.split()[-1])

    pages = 51865 * 192 * 4 // 4096  # one tensor's pages
    assert faults(LIGHTNING_ASR_GLIBC_MALLOC="1") > 4 * pages and faults(LIGHTNING_ASR_GLIBC_MALLOC="0") < pages / 10


def test_on_a_terminal_the_bar_counts_steps_of_the_cap_not_epochs(corpus, tmp_path, monkeypatch):
    import sys

    from lightning_asr.train import StepProgressBar, train

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    seen = []
    original = StepProgressBar.on_train_batch_end

    def record(self, trainer, *args):
        original(self, trainer, *args)
        seen.append((self.train_progress_bar.n, self.train_progress_bar.total, self.train_progress_bar.desc))

    monkeypatch.setattr(StepProgressBar, "on_train_batch_end", record)
    train(config_dict(corpus, tmp_path, **{"trainer.max_steps": 5, "decode.in_validation": False}))
    assert seen[-1][:2] == (5, 5) and all(desc.startswith("steps") for *_, desc in seen)
    assert [n for n, *_ in seen] == [1, 2, 3, 4, 5]  # one epoch is 3 batches: the count runs on across epochs


def test_an_adapter_run_on_a_base_from_files_checkpoints_the_adapter_only_and_refuses_another_base(corpus, tmp_path):
    """A frozen base that loads again from its files is not copied into every checkpoint: the checkpoint keeps
    the adapter and the training state, names the base by its fingerprint, and loading or resuming it puts the
    base's own weights back only if they are the ones it was trained on."""
    from lightning_asr.module import OMITTED_BASE
    from lightning_asr.train import train

    settings = {"trainer.val_check_interval": 2, "trainer.enable_progress_bar": False, "decode.in_validation": False}
    base = ASRModule(config_dict(corpus, tmp_path / "made", **settings))
    base.model.save_pretrained(tmp_path / "base")
    base.processor.save_pretrained(tmp_path / "base")
    lora = {"model.spec": str(tmp_path / "base"), "adapter.name": "lora", "adapter.rank": 2, **settings}
    result = train(config_dict(corpus, tmp_path / "lora", **lora, **{"trainer.max_steps": 2}))
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    kept = checkpoint["state_dict"]
    assert checkpoint[OMITTED_BASE]["keys"] and not set(checkpoint[OMITTED_BASE]["keys"]) & set(kept)
    assert all("lora_" in key for key in kept if key.startswith("model."))
    full = train(
        config_dict(
            corpus, tmp_path / "full", **settings, **{"model.spec": str(tmp_path / "base"), "trainer.max_steps": 2}
        )
    )
    assert os.path.getsize(result.last_checkpoint) * 4 < os.path.getsize(full.last_checkpoint)
    reloaded = ASRModule.from_checkpoint(result.best_checkpoint)
    trained = dict(result.module.named_parameters())
    assert all(torch.equal(p, trained[name]) for name, p in reloaded.named_parameters())
    # resuming restores the checkpoint into a module whose base came from the files (strict loading)
    resumed = train(config_dict(corpus, tmp_path / "lora", **lora, **{"trainer.max_steps": 2}), resume=True)
    assert resumed.stopped_at_step == 2
    assert all(torch.equal(p, trained[name]) for name, p in resumed.module.named_parameters())
    # exported from the adapter-only checkpoint and served over its base's files: the transcript offline decoding gives
    from lightning_asr.audio import read_audio, write_wav
    from lightning_asr.cli import main
    from lightning_asr.serving import AdapterServer

    assert main(["export", "--checkpoint", str(result.best_checkpoint), "--out", str(tmp_path / "store" / "ann")]) == 0
    assert main(["export", "--checkpoint", str(result.best_checkpoint), "--out", str(tmp_path / "store" / "ann")]) == 2
    write_wav(tmp_path / "clip.wav", (0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))).numpy())
    decode = reloaded.config.decode
    server = AdapterServer(
        str(tmp_path / "base"), tmp_path / "store", language="en", max_new_tokens=decode.max_new_tokens
    )
    inputs = reloaded.backbone.audio_inputs(reloaded.processor, [read_audio(tmp_path / "clip.wav")])
    with torch.no_grad():
        expected = reloaded.eval().transcribe(inputs, ["en"])[0][0]
    served = server.transcribe((tmp_path / "clip.wav").read_bytes(), user="ann")
    assert served["strategy"] == "lora" and served["text"] == expected
    with torch.no_grad():  # another base at the same path
        next(base.model.parameters()).add_(0.01)
    base.model.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="holds the adapter only.*weights differ"):
        ASRModule.from_checkpoint(result.best_checkpoint)
