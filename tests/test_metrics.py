"""Hand-computed values for every error rate on code-switched pairs."""

import math

import pytest
import torch
from torchmetrics.text import MatchErrorRate
from torchmetrics.utilities.data import dim_zero_sum

from lightning_asr.metrics import (
    CharErrorRate,
    ErrorRate,
    JamoErrorRate,
    MixedErrorRate,
    PerLanguageErrorRate,
    PointOfInterestErrorRate,
    WordErrorRate,
    metrics_for,
)
from lightning_asr.text import TextNormalizer, align


def score(metric, prediction, reference):
    metric.update([prediction], [reference])
    value = metric.compute()
    return {k: float(v) for k, v in value.items()} if isinstance(value, dict) else float(value)


def test_empty_hypothesis_is_all_deletions_in_every_unit():
    reference = "오늘 meeting 했어요"  # mixed: 오 늘 meeting 했 어 요; jamo: 12 Korean + 7 Latin letters
    assert score(MixedErrorRate(lang="ko-en"), "", reference) == 1.0
    assert score(JamoErrorRate(lang="ko-en"), "", reference) == 1.0
    jer = JamoErrorRate(lang="ko-en")
    jer.update([""], [reference])
    assert int(jer.tokens) == 19
    assert score(PerLanguageErrorRate("ko-en"), "", reference) == {"ko": 1.0, "en": 1.0}
    assert score(PointOfInterestErrorRate("ko-en"), "", reference) == 1.0


def test_all_insertions_are_charged_to_the_inserted_language():
    mer = MixedErrorRate(lang="ko-en")
    assert score(mer, "안녕 hello world", "안녕") == 1.0  # 2 insertions over 2 reference syllables
    assert score(PerLanguageErrorRate("ko-en"), "안녕 hello world", "안녕") == {
        "ko": 0.0
    }  # no English in the reference
    assert math.isnan(score(PointOfInterestErrorRate("ko-en"), "안녕 hello world", "안녕"))


def test_mixed_scripts_chinese_english():
    reference, prediction = "我今天有 meeting，很 busy", "我今天有 meet 很 busy"
    assert score(MixedErrorRate(lang="zh-en"), prediction, reference) == pytest.approx(1 / 7)
    assert score(WordErrorRate(lang="zh-en"), prediction, reference) == pytest.approx(1 / 4)  # 我今天有 is one "word"
    assert score(CharErrorRate(lang="zh-en"), prediction, reference) == pytest.approx(3 / 16)
    assert score(PerLanguageErrorRate("zh-en"), prediction, reference) == {"zh": 0.0, "en": 0.5}
    assert score(PointOfInterestErrorRate("zh-en"), prediction, reference) == 0.5


def test_substitution_across_scripts_is_charged_to_the_reference_token():
    # meeting -> 미 (substitution, English) and 팅 inserted (Korean)
    assert score(MixedErrorRate(lang="ko-en"), "회의 미팅", "회의 meeting") == pytest.approx(2 / 3)
    assert score(PerLanguageErrorRate("ko-en"), "회의 미팅", "회의 meeting") == {"ko": 0.5, "en": 1.0}


def test_jamo_error_rate_sees_inside_syllables():
    assert score(CharErrorRate(lang="ko"), "한국오", "한국어") == pytest.approx(1 / 3)
    assert score(JamoErrorRate(lang="ko"), "한국오", "한국어") == pytest.approx(1 / 8)  # ㅇ+ㅓ -> ㅇ+ㅗ


def test_compatibility_jamo_map_can_be_switched_off_to_measure_it():
    typed = "ㅎㅏㄴ국어"  # compatibility jamo, as typed on a keyboard
    assert score(CharErrorRate(lang="ko"), "한국어", typed) == 0.0
    raw = TextNormalizer("ko", korean_jamo_map=False)
    assert score(CharErrorRate(lang="ko", normalizer=raw), "한국어", typed) == pytest.approx(3 / 5)
    assert score(JamoErrorRate(lang="ko", normalizer=raw), "한국어", typed) > 0


def test_corpus_pooling_and_utterance_average_differ():
    predictions, references = ["a b", "y"], ["a b", "x"]
    corpus, per_utterance = WordErrorRate(), WordErrorRate(average="utterance")
    corpus.update(predictions, references)
    per_utterance.update(predictions, references)
    assert float(corpus.compute()) == pytest.approx(1 / 3)
    assert float(per_utterance.compute()) == pytest.approx(1 / 2)


def test_no_update_is_nan_not_a_perfect_score():
    with pytest.warns(UserWarning):
        assert math.isnan(float(WordErrorRate().compute()))


def test_mixed_error_rate_is_not_the_match_error_rate():
    mer = score(MixedErrorRate(lang="ko-en"), "회의 미팅 좋아", "회의 meeting")
    match = MatchErrorRate()
    match.update(["회의 미팅 좋아"], ["회의 meeting"])
    assert mer == pytest.approx(4 / 3)  # 1 substitution + 3 insertions over 3 reference tokens
    assert float(match.compute()) <= 1.0  # Morris' match error rate is bounded by 1: another metric


def test_states_are_sums_so_shards_pool_like_one_process():
    pairs = [("오늘 meet 했어", "오늘 meeting 했어요"), ("", "네"), ("hello 안녕", "안녕")]
    whole = metrics_for("ko-en")
    for metric in whole.values():
        metric.update([p for p, _ in pairs], [r for _, r in pairs])
    shards = [metrics_for("ko-en"), metrics_for("ko-en")]
    for i, (prediction, reference) in enumerate(pairs):
        for metric in shards[i % 2].values():
            metric.update([prediction], [reference])
    for name, metric in whole.items():
        assert all(fx is dim_zero_sum for fx in metric._reductions.values()), name
        shards[0][name].merge_state(shards[1][name])  # what the DDP sum-reduction does across processes
        expected, got = metric.compute(), shards[0][name].compute()
        if isinstance(expected, dict):
            assert expected.keys() == got.keys() and all(torch.isclose(expected[k], got[k]) for k in expected)
        else:
            assert torch.isclose(expected, got), name


def test_metrics_for_each_kind_of_set():
    assert set(metrics_for("en")) == {"wer", "cer"}
    assert set(metrics_for("ko")) == {"wer", "cer", "jer"}
    assert set(metrics_for("zh-en")) == {"wer", "cer", "mer", "per_language", "pier"}
    assert set(metrics_for("ko-en")) == {"wer", "cer", "mer", "jer", "per_language", "pier"}
    with pytest.raises(ValueError, match="unit"):
        ErrorRate("syllables")


def test_alignment_operations():
    assert align(["a", "b", "c"], ["a", "x", "c", "d"]) == [
        ("=", "a", "a"),
        ("S", "b", "x"),
        ("=", "c", "c"),
        ("I", None, "d"),
    ]
    assert align(["a", "b"], []) == [("D", "a", None), ("D", "b", None)]
