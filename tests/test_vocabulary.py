"""Tokenizer extension: new tokens train under every strategy and travel with the adapter export."""

import pytest
import torch
from conftest import config_dict

from lightning_asr.module import ASRModule
from lightning_asr.vocabulary import main, suggest_new_tokens

NEW = ["meeting을", "회의실"]


@pytest.mark.parametrize("name", ["lora", "glora", "blora", "full_ft"])
def test_new_token_rows_train_and_are_exported(name, corpus, tmp_path):
    config = config_dict(
        corpus,
        tmp_path,
        **{"adapter.name": name, "adapter.new_tokens": NEW, "decode.max_new_tokens": 4},
        **({"adapter.rank": 4} if name != "full_ft" else {}),
    )
    torch.manual_seed(0)
    module = ASRModule(config)
    tokenizer = module.tokenizer
    ids = tokenizer.convert_tokens_to_ids(NEW)
    assert ids == [51865, 51866] and tokenizer.encode("회의실", add_special_tokens=False) == [51866]
    embedding = module.model.model.decoder.embed_tokens
    base_rows = embedding.base.weight.detach().clone()
    extra = embedding.extra
    assert extra.abs().sum() > 0  # initialised from the pieces' mean embedding, not zeros
    trainable = dict(module.strategy.trainable_parameters())
    assert any(p is extra for p in trainable.values())

    labels = torch.tensor([[50264, 50359, 50363, ids[1], ids[0], 50257]])  # <|ko|><|transcribe|><|notimestamps|> ...
    batch = {"input_features": torch.randn(1, 80, 600), "labels": labels}
    optimizer = torch.optim.AdamW([p for _, p in module.strategy.trainable_parameters()], lr=1e-2)
    before = extra.detach().clone()
    losses = []
    for _ in range(5):
        loss, _ = module.forward_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and not torch.equal(before, extra.detach())
    if name != "full_ft":
        assert torch.equal(embedding.base.weight, base_rows)  # the shared base rows never move

    exported = module.strategy.save_adapter(tmp_path / "adapter")
    fresh = ASRModule(config)
    fresh.strategy.load_adapter(exported)
    module.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(module.forward_loss(batch)[0], fresh.forward_loss(batch)[0], atol=1e-6)
        texts, _ = fresh.transcribe(batch, ["ko"])
    assert isinstance(texts[0], str)


def test_decoding_emits_new_tokens_as_text(corpus, tmp_path):
    module = ASRModule(config_dict(corpus, tmp_path, **{"adapter.name": "lora", "adapter.new_tokens": NEW}))
    assert module.tokenizer.decode([50363, 51866, 51865], skip_special_tokens=True) == "회의실meeting을"
    logits = module.model.proj_out(torch.ones(1, module.model.config.d_model))
    assert logits.shape[-1] == 51867


def test_new_tokens_must_be_new(corpus, tmp_path):
    with pytest.raises(ValueError, match="already a single token"):
        ASRModule(config_dict(corpus, tmp_path, **{"adapter.name": "lora", "adapter.new_tokens": ["the", "회의실"]}))


def test_suggestions_rank_by_decoder_steps_saved(processor, corpus, capsys):
    texts = ["회의실 회의실 회의실 a", "회의실 email을 email을 email을", "the the the the"]
    words = suggest_new_tokens(texts, processor.tokenizer, max_tokens=5, min_count=3, min_pieces=2)
    assert words[0] == "회의실" and "the" not in words and "email을" in words
    assert main(["suggest", str(corpus / "ko-en/train.jsonl"), "--max", "3", "--min-count", "1"]) == 0
    assert capsys.readouterr().out.startswith("adapter:\n  new_tokens: [")
