"""A Whisper encoder cut to a shorter window: the position prefix kept, the processor's window following."""

import numpy as np
import pytest
import torch

from lightning_asr.models.backbone import ModelSpecError
from lightning_asr.models.whisper import load_model_processor


def test_a_cut_window_keeps_the_position_prefix_and_the_processor_follows():
    full, full_processor = load_model_processor("whisper-tiny-random")
    cut, processor = load_model_processor("whisper-tiny-random", encoder_positions=150)
    assert full_processor.feature_extractor.chunk_length == 6 and processor.feature_extractor.chunk_length == 3
    kept = cut.model.encoder.embed_positions.weight
    assert kept.shape[0] == 150 and torch.equal(kept, full.model.encoder.embed_positions.weight[:150])
    features = processor.feature_extractor(
        [np.zeros(16000, dtype=np.float32)], sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert features.shape[-1] == 300
    with torch.no_grad():
        assert cut.model.encoder(features).last_hidden_state.shape[1] == 150
    for bad in (0, 120, 400):
        with pytest.raises(ModelSpecError, match="encoder_positions"):
            load_model_processor("whisper-tiny-random", encoder_positions=bad)


def test_whisper_toy_hears_the_audio_at_the_scale_of_its_positions(fixed_batch):
    """From scratch, the conv stem's output on log-mel input must not vanish under the sinusoidal positions it
    is added to: Whisper's own init (normal, std 0.02) leaves it about 25 times smaller, and pretraining slow
    to start listening (docs/benchmark.md, "Pretraining the embedded base")."""
    import torch.nn.functional as F

    from lightning_asr.models.whisper import preset_model

    encoder = preset_model("whisper-toy", seed=1).model.encoder

    def stem_to_positions() -> float:
        with torch.no_grad():
            stem = F.gelu(encoder.conv2(F.gelu(encoder.conv1(fixed_batch["input_features"]))))
        return stem.std().item() / encoder.embed_positions.weight.std().item()

    assert 0.5 < stem_to_positions() < 2
    assert not encoder.conv1.bias.any() and not encoder.conv2.bias.any()
    for conv in (encoder.conv1, encoder.conv2):  # Whisper's init, as transformers applies it
        torch.nn.init.normal_(conv.weight, std=0.02)
    assert stem_to_positions() < 0.1
