import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker: the workers share the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small synthetic corpus (all five sets), built once per test session."""
    from lightning_asr.data.synth import CorpusSpec, build_corpus

    return build_corpus(
        CorpusSpec(seed=3, train=12, dev=4, test=4, target_train=12),
        tmp_path_factory.mktemp("corpus") / "synth",
        verbose=False,
    )


@pytest.fixture(scope="session")
def processor():
    from lightning_asr.models import load_model_processor

    return load_model_processor("whisper-tiny-random")[1]


def config_dict(corpus, tmp_path, **overrides) -> dict:
    """A resolved run config on the test corpus (ko-en train/dev), with ``key=value`` overrides."""
    from lightning_asr.config import load_config, to_dict

    base = [
        f"output_dir={tmp_path / 'run'}",
        f"data.train_manifests=[{corpus}/ko-en/train.jsonl]",
        f"data.val_manifests=[{corpus}/ko-en/dev.jsonl]",
        "data.batch_size=4",
        "data.spec_augment.enabled=false",
    ]
    return to_dict(load_config(overrides=base + [f"{k}={v}" for k, v in overrides.items()]))


def datamodule(processor, train=(), backbone=None, seed: int = 0, **data):
    """A ``ManifestDataModule`` over ``train`` manifests (Whisper unless ``backbone``), ``data`` keys as given."""
    from lightning_asr.data.datamodule import ManifestDataModule
    from lightning_asr.models import WhisperBackbone

    data = {"train_manifests": [str(m) for m in train], **data}
    return ManifestDataModule(processor, backbone or WhisperBackbone(), data, seed)


def first_batch(processor, manifest, batch_size: int, backbone=None) -> dict:
    dm = datamodule(processor, [manifest], backbone, batch_size=batch_size, bucket_size=batch_size)
    dm.setup()
    return next(iter(dm.train_dataloader()))


@pytest.fixture(scope="session")
def fixed_batch(corpus, processor):
    """Four ko-en training utterances as a Whisper batch."""
    return first_batch(processor, corpus / "ko-en/train.jsonl", 4)


@pytest.fixture(scope="session")
def ctc_batch(corpus, tmp_path_factory):
    """Two ko-en training utterances as a wav2vec2-CTC batch (jamo vocabulary of the test corpus)."""
    from lightning_asr.module import ASRModule

    module = ASRModule(
        config_dict(
            corpus, tmp_path_factory.mktemp("ctc"), **{"model.spec": "wav2vec2-tiny-random", "model.ctc_unit": "jamo"}
        )
    )
    return first_batch(module.processor, corpus / "ko-en/train.jsonl", 2, module.backbone)


# the longest files first: under pytest-xdist (`make test`) a long file picked up last would run alone at the end
LONGEST_FIRST = ("test_reproduce.py", "test_bench.py", "test_pluggable.py", "test_recipes.py", "test_serve.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: order within a file kept
