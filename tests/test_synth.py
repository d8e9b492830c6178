import hashlib
import json

from lightning_asr.data.manifest import read_manifest
from lightning_asr.data.synth import CorpusSpec, build_corpus
from lightning_asr.tokenizer import load_tokenizer


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "corpus.json"
    }


def test_same_seed_gives_byte_identical_corpus(tmp_path):
    spec = CorpusSpec(seed=5, train=3, dev=1, test=1, target_train=3, sets=["ko", "ko-en"])
    first = digest(build_corpus(spec, tmp_path / "a", verbose=False))
    second = digest(build_corpus(spec, tmp_path / "b", verbose=False))
    assert first == second and len(first) == 2 * (3 + 1 + 1) + 2 * 3
    other = digest(
        build_corpus(
            CorpusSpec(seed=6, train=3, dev=1, test=1, target_train=3, sets=["ko", "ko-en"]),
            tmp_path / "c",
            verbose=False,
        )
    )
    assert other != first


def test_splits_are_disjoint_and_manifests_valid(corpus):
    for name in ("en", "ko", "zh", "ko-en", "zh-en"):
        splits = {split: read_manifest(corpus / name / f"{split}.jsonl") for split in ("train", "dev", "test")}
        texts = {split: {u.text for u in us} for split, us in splits.items()}
        assert (
            not texts["train"] & texts["test"]
            and not texts["train"] & texts["dev"]
            and not texts["dev"] & texts["test"]
        )
        assert all(u.lang == name and 0.3 < u.duration < 6.0 for us in splits.values() for u in us)
        assert len({u.speaker for us in splits.values() for u in us}) > 3
    assert json.loads((corpus / "corpus.json").read_text())["counts"]["ko-en"]["train"] == 12


def test_source_pools_cover_every_target_token():
    import random

    from lightning_asr.data.text_pools import SENTENCE_MAKERS

    tokenizer = load_tokenizer()
    rng = random.Random(0)
    tokens = {name: set() for name in SENTENCE_MAKERS}
    for name, make in SENTENCE_MAKERS.items():
        for _ in range(800):
            tokens[name].update(tokenizer.encode(make(rng)[0], add_special_tokens=False))
    source = tokens["en"] | tokens["ko"] | tokens["zh"]
    assert tokens["ko-en"] <= source and tokens["zh-en"] <= source
