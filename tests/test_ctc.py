"""The wav2vec2-CTC backbone: vocabulary, the same strategies, training, evaluation, the benchmark."""

import unicodedata
from pathlib import Path

import pytest
import torch
from conftest import config_dict

from lightning_asr.models.wav2vec2 import build_ctc_tokens, ctc_target, ctc_tokenizer
from lightning_asr.module import ASRModule

ROOT = Path(__file__).resolve().parents[1]


def ctc_config(corpus, tmp_path, **overrides):
    return config_dict(
        corpus, tmp_path, **{"model.spec": "wav2vec2-tiny-random", "model.ctc_unit": "jamo", **overrides}
    )


def test_jamo_vocabulary_is_closed_and_decodes_back_to_syllables():
    pairs = [("회의실에서 Meeting을 했어요!", "ko-en"), ("ㅎㅏㄴ국", "ko")]
    jamo = build_ctc_tokens(pairs, "jamo")
    assert all("\u1100" <= t <= "\u11ff" or t.isascii() for t in jamo) and "!" not in jamo and "M" not in jamo
    chars = build_ctc_tokens(pairs, "chars")
    assert "회" in chars and "한" in chars and len(jamo) < len(chars) + 10
    tokenizer = ctc_tokenizer(jamo)
    target = ctc_target("회의실에서 Meeting을 했어요!", "ko-en", jamo=True)
    ids = tokenizer(target).input_ids
    assert 1 not in ids  # no <unk>
    decoded = tokenizer.decode(ids, group_tokens=False)
    assert unicodedata.normalize("NFC", decoded) == "회의실에서 meeting을 했어요"
    with pytest.raises(ValueError, match="ctc_unit"):
        build_ctc_tokens(pairs, "syllables")


@pytest.mark.parametrize(
    "name,targets", [("lora", "attn"), ("glora", "all-linear"), ("blora", "default"), ("full_ft", "default")]
)
def test_each_strategy_trains_the_ctc_model_and_exports_its_new_output_layer(
    name, targets, corpus, tmp_path, ctc_batch
):
    low_rank = {"adapter.rank": 4, "adapter.target_modules": f"[{targets}]"} if name != "full_ft" else {}
    config = ctc_config(corpus, tmp_path, **{"adapter.name": name, **low_rank})
    torch.manual_seed(0)
    module = ASRModule(config)
    trainable = [n for n, _ in module.strategy.trainable_parameters()]
    assert "lm_head.weight" in trainable  # a new vocabulary: its output layer trains under every strategy
    if name != "full_ft":
        adapted = {n.split(".lora_")[0] for n in trainable if ".lora_" in n}
        expected = {
            "attn": {"q_proj", "k_proj", "v_proj", "out_proj"},
            "default": {"q_proj", "v_proj"},
            "all-linear": {"q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"},
        }[targets]
        assert {n.rsplit(".", 1)[-1] for n in adapted} == expected
        assert not any("feature_extractor" in n for n in trainable)
    module.train()
    optimizer = torch.optim.AdamW([p for _, p in module.strategy.trainable_parameters()], lr=3e-3)
    losses = []
    for _ in range(4):
        loss = module.forward_loss(ctc_batch)[0] + module.strategy.regularizer()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    if name == "full_ft":
        return
    module.eval()
    exported = module.strategy.save_adapter(tmp_path / "adapter")
    fresh = ASRModule(module.config)
    fresh.strategy.load_adapter(exported)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(module.forward_loss(ctc_batch)[0], fresh.forward_loss(ctc_batch)[0], atol=1e-5)
        assert module.decode_batch(ctc_batch)[0] == fresh.decode_batch(ctc_batch)[0]


def test_ctc_train_evaluate_and_checkpoint_reload(corpus, tmp_path):
    from lightning_asr.train import evaluate, train

    config = ctc_config(
        corpus,
        tmp_path,
        **{
            "adapter.name": "lora",
            "trainer.max_steps": 2,
            "trainer.val_check_interval": 2,
            "trainer.enable_progress_bar": False,
        },
    )
    result = train(config)
    module = ASRModule.from_checkpoint(result.best_checkpoint)
    assert (
        module.backbone.name == "wav2vec2" and module.config.model.ctc_tokens
    )  # the vocabulary travels in the checkpoint
    results = evaluate(module, [str(corpus / "ko-en/test.jsonl")])
    assert {"test/ko-en/test/mer", "test/ko-en/test/jer", "test/ko-en/test/pier"} <= set(results)
    assert all(isinstance(row["prediction"], str) for row in module.predictions["ko-en/test"])


# the benchmark's smoke path runs on Whisper in make test; its CTC profile here
@pytest.mark.slow
def test_ctc_smoke_benchmark(corpus, tmp_path):
    from lightning_asr.study.cli import forgetting_main as main

    args = [
        "--profile",
        "smoke_ctc",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"artifact_root={tmp_path}/artifacts",
        f"output_dir={tmp_path}/runs",
        f"corpus.root={corpus}",
        "corpus.build=false",
        f"base.cache_dir={tmp_path}/bases",
    ]
    assert main(args) == 0
    comparison = (tmp_path / "runs" / "forgetting-smoke-ctc" / "comparison.md").read_text()
    assert "| lora |" in comparison and "| full_ft |" in comparison and "pier" in comparison
    base_dir = next((tmp_path / "bases").iterdir())
    assert (base_dir / "vocab.json").exists() and (base_dir / "config.json").exists()
