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


def test_a_set_added_later_is_built_alone_and_the_others_stay_byte_identical(tmp_path):
    from lightning_asr.data.synth import CorpusSpec, build_corpus

    spec = CorpusSpec(seed=5, train=3, dev=1, test=1, target_train=3, sets=["ko"])
    build_corpus(spec, tmp_path, verbose=False)
    before = (tmp_path / "ko" / "train.jsonl").read_bytes()
    stamp = (tmp_path / "ko" / "audio" / "train_00000.wav").stat().st_mtime_ns
    build_corpus(
        CorpusSpec(seed=5, train=3, dev=1, test=1, target_train=3, sets=["ko", "ko-en-mixed"]), tmp_path, verbose=False
    )
    assert (tmp_path / "ko" / "train.jsonl").read_bytes() == before
    assert (tmp_path / "ko" / "audio" / "train_00000.wav").stat().st_mtime_ns == stamp  # not synthesised again
    mixed = [line for line in (tmp_path / "ko-en-mixed" / "train.jsonl").read_text().splitlines()]
    assert len(mixed) == 3


def test_the_mixed_target_has_monolingual_and_switched_utterances_in_varied_frames():
    import random

    from lightning_asr.data.synth import utterance_language
    from lightning_asr.data.text_pools import korean_english_mixed

    rng = random.Random(0)
    drawn = [korean_english_mixed(rng) for _ in range(400)]
    langs = [utterance_language(segments, "ko") for _, segments in drawn]
    assert 0.4 < langs.count("ko") / len(langs) < 0.6 and set(langs) == {"ko", "ko-en"}
    # English after the first word, before the verb, at the end, and twice in one sentence
    switched = [segments for _, segments in drawn if len(segments) > 1]
    words_before = {len(segments[0][1].split()) for segments in switched}
    assert {1, 2} <= words_before and any(s[-1][0] == "en" for s in switched) and any(len(s) == 5 for s in switched)


def test_a_larger_test_set_extends_the_smaller_one_and_leaves_the_other_splits_identical(tmp_path, monkeypatch):
    from lightning_asr.data import synth

    monkeypatch.setattr(synth, "CORE_TEST", 2)
    small = tmp_path / "small"
    large = tmp_path / "large"
    build_corpus(CorpusSpec(seed=5, train=3, dev=1, test=2, target_train=3, sets=["ko"]), small, verbose=False)
    build_corpus(CorpusSpec(seed=5, train=3, dev=1, test=5, target_train=3, sets=["ko"]), large, verbose=False)
    before, after = digest(small), digest(large)
    grown = {path for path in after if path not in before}
    assert grown == {f"ko/audio/test_{index:05d}.wav" for index in (2, 3, 4)}
    assert all(before[path] == after[path] for path in before if path.endswith(".wav"))

    def manifest(root, split):
        return (root / "ko" / f"{split}.jsonl").read_text().replace(str(root.resolve()), "")

    assert manifest(small, "train") == manifest(large, "train") and manifest(small, "dev") == manifest(large, "dev")
    assert (
        manifest(large, "test").startswith(manifest(small, "test")) and len(manifest(large, "test").splitlines()) == 5
    )
    texts = {split: {u.text for u in read_manifest(large / "ko" / f"{split}.jsonl")} for split in ("train", "dev")}
    extension = [u.text for u in read_manifest(large / "ko" / "test.jsonl")][2:]
    assert len(set(extension)) == 3 and not set(extension) & (texts["train"] | texts["dev"])
