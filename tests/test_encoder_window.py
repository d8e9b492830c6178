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
