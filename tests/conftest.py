import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small synthetic corpus (all five sets), built once per test session."""
    from lightning_asr.data.synth import CorpusSpec, build_corpus

    return build_corpus(CorpusSpec(seed=3, train=12, dev=4, test=4, target_train=12), tmp_path_factory.mktemp("corpus") / "synth", verbose=False)


@pytest.fixture(scope="session")
def processor():
    from lightning_asr.models import load_model_processor

    return load_model_processor("whisper-tiny-random")[1]
