from conftest import datamodule

from lightning_asr.data.datamodule import IGNORE_INDEX, BucketBatchSampler


def test_collate_shapes_and_per_utterance_label_prefix(corpus, processor):
    dm = datamodule(
        processor,
        [corpus / "en/train.jsonl", corpus / "ko-en/train.jsonl"],
        batch_size=6,
        spec_augment={
            "enabled": True,
            "freq_masks": 1,
            "freq_mask_param": 10,
            "time_masks": 1,
            "time_mask_param": 20,
        },
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_features"].shape == (6, 80, 600)  # whisper-tiny-random: 6 s windows
    tokenizer = processor.tokenizer
    for row, lang, text in zip(batch["labels"].tolist(), batch["langs"], batch["texts"]):
        ids = [i for i in row if i != IGNORE_INDEX]
        assert ids[:3] == tokenizer.convert_tokens_to_ids(
            [f"<|{lang.split('-')[0]}|>", "<|transcribe|>", "<|notimestamps|>"]
        )
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[3:-1]) == text
        assert all(i == IGNORE_INDEX for i in row[len(ids) :])


def test_bucket_sampler_covers_everything_once_and_is_seeded():
    durations = [float(i % 17) for i in range(103)]
    sampler = BucketBatchSampler(durations, batch_size=8, bucket_size=32, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(103)) and len(batches) == len(sampler)
    assert batches == list(BucketBatchSampler(durations, 8, 32, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != batches

    def spread(batches):
        return sum(max(durations[i] for i in b) - min(durations[i] for i in b) for b in batches) / len(batches)

    unsorted = list(BucketBatchSampler(durations, 8, 8, seed=1))  # buckets of one batch: no sorting
    assert spread(batches) < spread(unsorted) / 2  # bucketing groups similar durations


def test_utterance_longer_than_window_is_an_error(tmp_path, processor):
    import json

    import numpy as np
    import pytest
    import soundfile as sf

    from lightning_asr.data.manifest import ManifestError

    sf.write(tmp_path / "long.wav", np.zeros(16000 * 7, dtype=np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"audio_filepath": "long.wav", "duration": 7.0, "text": "x", "lang": "en"}) + "\n"
    )
    with pytest.raises(ManifestError, match="longer than the model's 6 s"):
        datamodule(processor, [tmp_path / "m.jsonl"]).setup()


def test_feature_cache_gives_the_computed_batches_and_follows_the_manifest(corpus, processor, tmp_path):
    """Cached log-mel windows (float16, beside the manifest) give the batches computed from the audio to
    within float16 rounding; an edited manifest gets a new cache file, never the old one's rows."""
    import shutil

    import torch

    shutil.copytree(corpus / "ko-en", tmp_path / "ko-en", ignore=shutil.ignore_patterns(".features"))
    manifest = tmp_path / "ko-en" / "train.jsonl"
    plain = {"batch_size": 4, "spec_augment": {"enabled": False}}
    computed = datamodule(processor, [manifest], feature_cache=False, **plain)
    cached = datamodule(processor, [manifest], **plain)
    computed.setup(), cached.setup()
    files = list((manifest.parent / ".features").glob("train.*.npy"))
    assert len(files) == 1 and cached.inputs["ko-en/train"].shape[1:] == (80, 600)
    for a, b in zip(computed.train_dataloader(), cached.train_dataloader()):
        assert a["texts"] == b["texts"]
        assert torch.allclose(a["input_features"], b["input_features"], atol=1e-3)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(reversed(lines)) + "\n")  # same utterances, another order
    again = datamodule(processor, [manifest], batch_size=4)
    again.setup()
    assert len(list((manifest.parent / ".features").glob("train.*.npy"))) == 2
    first = again.sets["train"]["ko-en/train"][0]
    index = next(i for i, u in enumerate(cached.sets["train"]["ko-en/train"]) if u.text == first.text)
    assert (again.inputs["ko-en/train"][0] == cached.inputs["ko-en/train"][index]).all()
