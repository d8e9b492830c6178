"""faster-whisper (CTranslate2) import: a tiny random Whisper goes to CTranslate2 with ctranslate2's own
converter and comes back through our reader of model.bin, tensor by tensor and transcript by transcript."""

import copy
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperTokenizer

ctranslate2 = pytest.importorskip("ctranslate2")
from ctranslate2.converters import TransformersConverter  # noqa: E402

from lightning_asr.models import ModelSpecError, import_ct2, load_base_model, load_model_processor  # noqa: E402
from lightning_asr.models.import_ct2 import CT2ImportError  # noqa: E402

PROMPT = [50258, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: a second intra-op thread costs more in hand-offs than it saves
    (generation ran three times faster on one thread on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise(model, seed):
    """Every parameter random (biases and layer norms too), so a misplaced tensor cannot hide behind the
    zeros and ones of a fresh initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.1 * noise if "layer_norm.weight" in name else 0.1 * noise)


def to_ct2(hf_dir: Path, out: Path, quantization=None) -> Path:
    converter = TransformersConverter(str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"])
    return Path(converter.convert(str(out), quantization=quantization, force=True))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A tiny random multilingual Whisper saved with its processor, and its CTranslate2 conversions."""
    model, processor = load_model_processor("whisper-tiny-random")
    randomise(model, seed=7)
    model.generation_config.suppress_tokens = [1, 2, 50360]
    model.generation_config.alignment_heads = [[1, 0], [1, 3]]
    model.eval()
    root = tmp_path_factory.mktemp("ct2")
    hf_dir = root / "hf"
    model.save_pretrained(hf_dir)
    processor.save_pretrained(hf_dir)
    processor.feature_extractor.save_pretrained(hf_dir)
    conversions = {}

    def ct2_dir(quantization=None):
        if quantization not in conversions:
            conversions[quantization] = to_ct2(hf_dir, root / f"ct2-{quantization or 'none'}", quantization)
        return conversions[quantization]

    return model, processor, ct2_dir


def features(processor, seed=3):
    """A 2 s synthetic chirp through the feature extractor, and random log-mel features."""
    rate = 16000
    t = np.arange(2 * rate) / rate
    wave = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.1 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)
    chirp = processor.feature_extractor([wave], sampling_rate=rate, return_tensors="pt").input_features
    noise = 0.5 * torch.randn(1, *chirp.shape[1:], generator=torch.Generator().manual_seed(seed))
    return torch.cat([chirp, noise])


def greedy(model, input_features):
    with torch.no_grad():
        return model.generate(
            input_features,
            language="en",
            task="transcribe",
            max_new_tokens=10,
            attention_mask=torch.ones(input_features.shape[0], input_features.shape[-1]),
        )


def test_float32_round_trip_is_exact_and_decodes_identically(original):
    model, processor, ct2_dir = original
    source = ct2_dir(None)
    parsed = import_ct2.read_model_bin(source / "model.bin")
    assert parsed.binary_version == 6 and parsed.spec_name == "WhisperSpec"
    assert parsed.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert {parsed.dtypes[n] for n, v in parsed.variables.items() if v.ndim} == {"float32"}

    imported, imported_processor = import_ct2.import_ct2(source)
    expected, got = model.state_dict(), imported.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    for key in (
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "vocab_size",
        "num_mel_bins",
        "max_source_positions",
        "max_target_positions",
        "decoder_start_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert getattr(imported.config, key) == getattr(model.config, key), key
    assert imported.config.max_source_positions == 300  # the preset's 6 s window, not Whisper's 1500
    assert imported.proj_out.weight is imported.model.decoder.embed_tokens.weight

    generation = imported.generation_config
    assert generation.lang_to_id == model.generation_config.lang_to_id
    assert generation.task_to_id == {"translate": 50358, "transcribe": 50359}
    assert (generation.no_timestamps_token_id, generation.decoder_start_token_id) == (50363, 50258)
    assert generation.begin_suppress_tokens == [220, 50257]
    assert generation.suppress_tokens == [1, 2, 50360]
    assert generation.alignment_heads == [[1, 0], [1, 3]]
    assert imported_processor.feature_extractor.chunk_length == 6
    assert imported_processor.feature_extractor.feature_size == 80

    inputs = features(processor)
    expected_ids, got_ids = greedy(model, inputs), greedy(imported, inputs)
    assert torch.equal(got_ids, expected_ids)
    assert expected_ids.shape[1] >= 5 and not torch.equal(expected_ids[0], expected_ids[1])  # not degenerate

    # CTranslate2's own inference on the same directory agrees with the imported model.
    runtime = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32")
    batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(inputs.numpy()))
    with torch.no_grad():
        encoded = imported.model.encoder(inputs).last_hidden_state.numpy()
    np.testing.assert_allclose(np.array(runtime.encode(batch)), encoded, atol=1e-4)
    for result, ids in zip(runtime.generate(batch, [PROMPT] * 2, beam_size=1, max_length=16), got_ids.tolist()):
        produced = result.sequences_ids[0]
        assert len(produced) >= 4 and produced == ids[: len(produced)]


@pytest.mark.parametrize("quantization", ["float16", "bfloat16"])
def test_half_precision_weights_widen_exactly(original, quantization):
    model, processor, ct2_dir = original
    source = ct2_dir(quantization)
    imported, _ = import_ct2.import_ct2(source)
    assert all(p.dtype == torch.float32 for p in imported.parameters())
    half = getattr(torch, quantization)
    state = imported.state_dict()
    for name, tensor in model.state_dict().items():
        got = state[name]
        torch.testing.assert_close(got, tensor, atol=2e-2, rtol=1e-2)
        assert torch.equal(got, tensor.to(half).float()), name  # the stored rounding, widened losslessly
    if quantization == "bfloat16":
        kept, _ = import_ct2.import_ct2(source, dtype="source")
        assert kept.model.decoder.embed_tokens.weight.dtype == half
    else:
        rounded = copy.deepcopy(model)
        with torch.no_grad():
            for parameter in rounded.parameters():
                parameter.copy_(parameter.to(half).float())
        inputs = features(processor)
        assert torch.equal(greedy(imported, inputs), greedy(rounded, inputs))


def test_load_base_model_converts_a_ct2_directory_once(original, tmp_path, monkeypatch):
    model, _, ct2_dir = original
    cache = tmp_path / "cache"
    monkeypatch.setattr(import_ct2, "ct2_cache_dir", lambda: cache)
    loaded = load_base_model(ct2_dir(None))
    (converted,) = cache.iterdir()
    assert (converted / "model.safetensors").exists() and (converted / "ct2_import.json").exists()
    assert torch.equal(
        loaded.model.encoder.layers[1].self_attn.k_proj.weight, model.model.encoder.layers[1].self_attn.k_proj.weight
    )
    assert loaded.generation_config.lang_to_id["<|ko|>"] == 50264

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(import_ct2, "_write", no_second_conversion)
    again, processor = load_model_processor(ct2_dir(None))
    assert list(cache.iterdir()) == [converted]
    assert Path(processor.tokenizer.name_or_path) == converted  # the converted tokenizer, not the built-in one
    assert processor.tokenizer("hello world").input_ids[-1] == 50257
    assert torch.equal(again.proj_out.weight, model.proj_out.weight)


def test_int8_weights_are_refused(original):
    _, _, ct2_dir = original
    with pytest.raises(CT2ImportError, match=r"int8-quantised.*converted without quantisation"):
        import_ct2.import_ct2(ct2_dir("int8"))


def test_missing_or_foreign_model_bin_is_named(original, tmp_path):
    _, _, ct2_dir = original
    missing = tmp_path / "missing"
    shutil.copytree(ct2_dir(None), missing, ignore=shutil.ignore_patterns("model.bin"))
    with pytest.raises(CT2ImportError, match=re.escape(str(missing / "model.bin"))):
        import_ct2.import_ct2(missing)
    with pytest.raises(ModelSpecError, match=re.escape(str(missing / "model.bin"))):
        load_base_model(missing)

    wrong = tmp_path / "wrong-version"
    shutil.copytree(ct2_dir(None), wrong)
    with open(wrong / "model.bin", "r+b") as handle:
        handle.write(struct.pack("<I", 99))
    with pytest.raises(CT2ImportError, match=re.escape(str(wrong / "model.bin")) + r".*binary version 99"):
        import_ct2.import_ct2(wrong)

    truncated = tmp_path / "truncated"
    shutil.copytree(ct2_dir(None), truncated)
    data = (truncated / "model.bin").read_bytes()
    (truncated / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CT2ImportError, match=re.escape(str(truncated / "model.bin")) + r".*truncated"):
        import_ct2.import_ct2(truncated)


def test_tokenizer_rebuilt_from_vocabulary_txt(original, tmp_path):
    _, processor, ct2_dir = original
    bare = tmp_path / "vocabulary-only"
    shutil.copytree(ct2_dir(None), bare, ignore=shutil.ignore_patterns("tokenizer.json", "vocabulary.json"))
    tokens = import_ct2.read_vocabulary(ct2_dir(None))
    (bare / "vocabulary.txt").write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")
    _, rebuilt = import_ct2.import_ct2(bare)
    text = "어제 그녀는 학교에서 email을 열었어요 你好"
    assert rebuilt.tokenizer(text).input_ids == processor.tokenizer(text).input_ids
    assert rebuilt.tokenizer.convert_ids_to_tokens([50257, 50363, 50364]) == [
        "<|endoftext|>",
        "<|notimestamps|>",
        "<|0.00|>",
    ]


def test_tokenizer_json_without_timestamps_is_completed(original, tmp_path):
    """The hub's tokenizer.json of openai/whisper-* has no timestamp tokens (50,364 entries); CTranslate2's
    converter lists them in the vocabulary, and the import adds them back."""
    _, processor, ct2_dir = original
    short = tmp_path / "short-tokenizer"
    shutil.copytree(ct2_dir(None), short)
    spec = json.loads((short / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not re.fullmatch(r"<\|\d+\.\d\d\|>", t["content"])]
    (short / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    assert len(WhisperTokenizer(tokenizer_file=str(short / "tokenizer.json"))) == 50364
    _, completed = import_ct2.import_ct2(short)
    assert len(completed.tokenizer) == 51865
    assert completed.tokenizer.convert_ids_to_tokens([50363, 50364, 51864]) == [
        "<|notimestamps|>",
        "<|0.00|>",
        "<|30.00|>",
    ]
    assert completed.tokenizer.decode([50364, 2131, 50414], decode_with_timestamps=True) == processor.tokenizer.decode(
        [50364, 2131, 50414], decode_with_timestamps=True
    )


def test_english_only_model_gets_no_language_maps(original, tmp_path):
    """A *.en-shaped vocabulary (51,864 tokens: <|endoftext|> 50256, <|startoftranscript|> 50257,
    <|notimestamps|> 50362) round-trips, and decoding is not prompted with a language token."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    _, processor, _ = original
    tokens = import_ct2.read_vocabulary(original[2](None))
    english = import_ct2.tokenizer_from_vocabulary(tokens[:50256] + tokens[50257:], tmp_path / "vocabulary.json")
    assert len(english) == 51864 and english.convert_tokens_to_ids("<|notimestamps|>") == 50362
    config = WhisperConfig(
        vocab_size=51864,
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=300,
        decoder_start_token_id=50257,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    randomise(model, seed=11)
    model.generation_config = import_ct2.whisper_generation_config(english, {}, 448)
    model.eval()
    hf_dir = tmp_path / "hf-en"
    model.save_pretrained(hf_dir)
    english.save_pretrained(hf_dir)
    processor.feature_extractor.save_pretrained(hf_dir)
    source = to_ct2(hf_dir, tmp_path / "ct2-en")

    out = import_ct2.convert(source, tmp_path / "imported-en")
    imported, imported_processor = load_model_processor(out)
    generation = imported.generation_config
    assert not generation.is_multilingual and not getattr(generation, "lang_to_id", None)
    assert not getattr(generation, "task_to_id", None)
    assert generation.decoder_start_token_id == 50257 and generation.eos_token_id == 50256
    assert generation.no_timestamps_token_id == 50362
    assert len(imported_processor.tokenizer) == 51864
    inputs = features(processor)
    with torch.no_grad():
        got = imported.generate(inputs, max_new_tokens=4, return_dict_in_generate=True).sequences
        expected = model.generate(inputs, max_new_tokens=4)
    assert got[:, :2].tolist() == [[50257, 50362]] * 2  # <|startoftranscript|><|notimestamps|>, no language
    assert torch.equal(got[:, 2:], expected)


def test_cli_refuses_to_overwrite_unless_forced(original, tmp_path, capsys):
    _, _, ct2_dir = original
    out = tmp_path / "hf-out"
    assert import_ct2.main([str(ct2_dir(None)), "--out", str(out)]) == 0
    assert "d_model 64" in capsys.readouterr().out
    loaded, processor = load_model_processor(out)
    assert len(processor.tokenizer) == 51865 and processor.feature_extractor.chunk_length == 6
    assert torch.equal(
        loaded.model.decoder.layers[0].encoder_attn.v_proj.bias,
        original[0].model.decoder.layers[0].encoder_attn.v_proj.bias,
    )
    marker = out / "keep.txt"
    marker.write_text("mine")
    assert import_ct2.main([str(ct2_dir(None)), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and marker.exists()
    assert import_ct2.main([str(ct2_dir(None)), "--out", str(out), "--force"]) == 0
    assert not marker.exists() and (out / "model.safetensors").exists()


@pytest.mark.slow  # two interpreter starts, several seconds each
def test_cli_runs_as_a_module(original, tmp_path):
    _, _, ct2_dir = original
    out = tmp_path / "hf-out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    command = [sys.executable, "-m", "lightning_asr.models.import_ct2", str(ct2_dir(None)), "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert refused.returncode == 2 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert (out / "keep.txt").exists()
    forced = subprocess.run(command + ["--force"], capture_output=True, text=True, env=env, timeout=240)
    assert forced.returncode == 0, forced.stderr
    assert "vocabulary 51865" in forced.stdout and "6 s window" in forced.stdout
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
