"""Scoring inside the training framework: language control and the metrics each set is reported with."""

import pytest
import torch
from conftest import config_dict

from lightning_asr.data.datamodule import UtteranceDataset, set_language
from lightning_asr.data.manifest import read_manifest
from lightning_asr.module import ASRModule
from lightning_asr.train import evaluate


@pytest.fixture(scope="module")
def mixed_batch(corpus, processor):
    utterances = [read_manifest(corpus / f"{s}/test.jsonl")[0] for s in ("en", "ko-en", "zh", "zh-en")]
    dataset = UtteranceDataset(utterances)
    from lightning_asr.models import WhisperBackbone

    return WhisperBackbone().collator(processor)([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("language", ["manifest", "auto", "ko"])
def test_mixed_language_batches_decode_under_every_language_control(language, mixed_batch, corpus, tmp_path):
    module = ASRModule(
        config_dict(
            corpus, tmp_path, **{"adapter.name": "frozen", "decode.language": language, "decode.max_new_tokens": 4}
        )
    )
    module.eval()
    with torch.no_grad():
        texts, _ = module.transcribe(mixed_batch, mixed_batch["langs"])
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)


def test_manifest_language_control_prompts_each_utterance_with_its_own_language(
    mixed_batch, corpus, tmp_path, monkeypatch
):
    module = ASRModule(config_dict(corpus, tmp_path, **{"adapter.name": "frozen", "decode.max_new_tokens": 2}))
    seen = {}
    original = module.model.generate

    def spy(*args, **kwargs):
        seen["language"] = kwargs["language"]
        return original(*args, **kwargs)

    monkeypatch.setattr(module.model, "generate", spy)
    module.transcribe(mixed_batch, mixed_batch["langs"])
    assert seen["language"] == ["en", "ko", "zh", "zh"]


def test_a_model_that_favours_timestamps_still_decodes_each_window_once(mixed_batch, corpus, tmp_path, monkeypatch):
    """Decoding prompts with <|notimestamps|>, so timestamp tokens are suppressed: a model that favours them
    cannot make ``generate`` cut a window at a timestamp pair and decode the rest again over some rows only
    (the rows' text would depend on their batch, and batched serving's row-banked adapters would see fewer
    rows than requests)."""
    from lightning_asr.tokenizer import KNOWN_IDS

    module = ASRModule(config_dict(corpus, tmp_path, **{"adapter.name": "frozen", "decode.max_new_tokens": 6}))
    module.eval()
    first_timestamp = KNOWN_IDS["<|notimestamps|>"] + 1

    def favour_timestamps(layer, inputs, logits):
        logits = logits.clone()
        logits[..., first_timestamp:] += 30.0
        return logits

    module.model.proj_out.register_forward_hook(favour_timestamps)
    seen = {}
    original = module.model.generate

    def spy(*args, **kwargs):
        seen["output"] = original(*args, **kwargs)
        return seen["output"]

    monkeypatch.setattr(module.model, "generate", spy)
    with torch.no_grad():
        texts, _ = module.transcribe(mixed_batch, mixed_batch["langs"])
    sequences = seen["output"] if torch.is_tensor(seen["output"]) else seen["output"].sequences
    assert len(texts) == 4 and sequences.shape == (4, 6) and not (sequences >= first_timestamp).any()


def test_unknown_language_control_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="decode.language='korean'.*manifest, auto"):
        ASRModule(config_dict(corpus, tmp_path, **{"decode.language": "korean"}))


def test_set_language_of_mixed_sets():
    assert set_language(["ko", "ko"]) == "ko"
    assert set_language(["zh", "en", "zh-en", "zh"]) == "zh-en"  # ASCEND: monolingual lines inside a CS set
    assert set_language(["zh", "en", "zh"]) == "zh-en"


def test_evaluate_reports_mer_jer_and_the_per_language_split(corpus, tmp_path):
    module = ASRModule(config_dict(corpus, tmp_path, **{"adapter.name": "frozen", "decode.max_new_tokens": 4}))
    results = evaluate(module, [str(corpus / "ko-en/test.jsonl"), str(corpus / "en/test.jsonl")])
    cs = {k.split("/")[-1] for k in results if k.startswith("test/ko-en/test/")}
    assert {"mer", "jer", "cer", "wer", "pier", "err_ko", "err_en", "error"} <= cs
    assert results["test/ko-en/test/error"] == results["test/ko-en/test/mer"]
    assert {k.split("/")[-1] for k in results if k.startswith("test/en/test/")} >= {"wer", "cer", "error"}
    assert "pier" not in {k.split("/")[-1] for k in results if k.startswith("test/en/test/")}
    assert module.normalizer_ids == {
        "ko-en/test": "basic-v3[ko-en,numbers=keep,t2s=0,jamo=1]",
        "en/test": "basic-v3[en,numbers=keep,t2s=0,jamo=1]",
    }
