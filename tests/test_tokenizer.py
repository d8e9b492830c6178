import copy

import pytest
from transformers import WhisperTokenizer

from lightning_asr.tokenizer import TokenizerError, load_tokenizer, validate_tokenizer


def test_builtin_tokenizer_has_whisper_ids_and_round_trips():
    tokenizer = copy.deepcopy(load_tokenizer())  # the built-in one is shared: change a copy
    assert len(tokenizer) == 51865 and load_tokenizer() is load_tokenizer()
    tokenizer.set_prefix_tokens(language="korean", task="transcribe")
    ids = tokenizer("안녕하세요 hello 你好").input_ids
    assert ids == [50258, 50264, 50359, 50363, 49200, 12831, 15377, 7751, 10930, 2131, 50257]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "안녕하세요 hello 你好"
    assert tokenizer.convert_tokens_to_ids(["<|en|>", "<|zh|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]) == [
        50259,
        50260,
        50363,
        50364,
        51864,
    ]


def test_empty_tokenizer_is_refused():
    empty = WhisperTokenizer()  # what Hugging Face builds, without an error, when files are missing
    with pytest.raises(TokenizerError, match="51865"):
        validate_tokenizer(empty, "an empty directory")


def test_directory_without_tokenizer_files_is_refused(tmp_path):
    with pytest.raises((TokenizerError, OSError, ValueError)):
        load_tokenizer(tmp_path)
