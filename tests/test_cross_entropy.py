"""Teacher-forced cross-entropy per utterance: pooled over a batch it is the training loss, and the test
predictions carry it beside the edits."""

import pytest
import torch

from lightning_asr.models import load_model_processor


def test_whisper_per_utterance_cross_entropy_pools_to_the_token_mean_loss(fixed_batch):
    model, processor = load_model_processor("whisper-tiny-random")
    from lightning_asr.models import WhisperBackbone

    backbone = WhisperBackbone()
    model.eval()
    with torch.no_grad():
        loss, units = backbone.loss(model, fixed_batch)
        nats, counts = backbone.utterance_losses(model, fixed_batch)
    assert counts.tolist() == (fixed_batch["labels"] != -100).sum(1).tolist()
    assert int(counts.sum()) == units
    assert float(nats.sum() / counts.sum()) == pytest.approx(float(loss), rel=1e-5)
    # each row is its own utterance: scoring one row alone gives its value
    single = {k: v[:1] if torch.is_tensor(v) else v[:1] for k, v in fixed_batch.items()}
    with torch.no_grad():
        alone, _ = backbone.utterance_losses(model, single)
    assert float(alone[0]) == pytest.approx(float(nats[0]), rel=1e-4)


def test_ctc_per_utterance_loss_pools_to_the_models_mean_loss(ctc_batch, corpus, tmp_path):
    from conftest import config_dict

    from lightning_asr.module import ASRModule

    module = ASRModule(
        config_dict(corpus, tmp_path, **{"model.spec": "wav2vec2-tiny-random", "model.ctc_unit": "jamo"})
    )
    module.eval()
    with torch.no_grad():
        nats, counts = module.backbone.utterance_losses(module.model, ctc_batch)
        out = module.model(
            input_values=ctc_batch["input_values"],
            attention_mask=ctc_batch["attention_mask"],
            labels=ctc_batch["labels"],
        )
    assert nats.shape == counts.shape == (2,)
    # transformers' "mean" reduction: each utterance's loss over its label length, averaged over the batch
    assert float((nats / counts).mean()) == pytest.approx(float(out.loss), rel=1e-4)


def test_an_interpolation_point_scored_before_is_reused_and_equals_scoring_it_again(corpus, tmp_path):
    from conftest import config_dict

    from lightning_asr.module import ASRModule
    from lightning_asr.study.interpolation import cross_entropy_by_set, interpolation_curve

    module = ASRModule(config_dict(corpus, tmp_path, **{"adapter.name": "lora", "adapter.rank": 4}))
    with torch.no_grad():
        for layer in module.strategy.layers().values():
            layer.lora_B.weight.normal_(0, 0.05)
    manifests = [str(corpus / "en/test.jsonl"), str(corpus / "ko-en/test.jsonl")]
    lambdas = (0.0, 0.5, 1.0)
    scored = interpolation_curve(module, manifests, dict, lambdas)
    module.strategy.scale_adaptation(0.0)
    base = cross_entropy_by_set(module, manifests)
    module.strategy.scale_adaptation(1.0)
    reused = interpolation_curve(module, manifests, dict, lambdas, known={0.0: base})
    for name, entry in scored["sets"].items():
        assert reused["sets"][name]["units"] == entry["units"]
        for again, first in zip(reused["sets"][name]["ce"], entry["ce"]):
            assert again == pytest.approx(first, rel=1e-6)
    assert scored["sets"][manifests[0].split("/")[-2] + "/test"]["ce"][0] != pytest.approx(
        scored["sets"][manifests[0].split("/")[-2] + "/test"]["ce"][2]
    )  # the adapter moved the model: λ matters
