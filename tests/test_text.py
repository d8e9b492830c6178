import unicodedata

import pytest

from lightning_asr.metrics import ErrorRate
from lightning_asr.text import jamo, normalize, primary_unit, units


def test_korean_keeps_syllables_and_maps_compatibility_jamo():
    assert normalize("안녕하세요, Hello!", "ko") == "안녕하세요 hello"
    assert normalize("ㅎㅏㄴㄱㅜㄱㅇㅓ", "ko") == "한국어"  # typed compatibility jamo compose into syllables
    assert normalize("ㅋㅋ 감사", "ko") == "ᄏᄏ 감사"  # isolated jamo stay jamo (conjoining)
    assert all(unicodedata.name(c).startswith("HANGUL SYLLABLE") for c in normalize("회의실에서", "ko"))
    assert jamo("하") == ["ᄒ", "ᅡ"] and jamo("ㅎㅏ") == ["ᄒ", "ᅡ"]


def test_chinese_full_width_and_spaces_between_characters():
    assert normalize("我们 明天 开 meeting！", "zh-en") == "我们明天开 meeting"
    assert normalize("ＡＢＣ１２３", "zh") == "abc123"


def test_mixed_units_count_each_syllable_character_and_latin_word_once():
    assert units("오늘 meeting을 했어요", "mixed") == ["오", "늘", "meeting", "을", "했", "어", "요"]
    assert units("我们开 code review", "mixed") == ["我", "们", "开", "code", "review"]
    assert primary_unit("ko-en") == "mixed" and primary_unit("ko") == "chars" and primary_unit("en") == "words"


@pytest.mark.parametrize(
    "unit,prediction,expected",
    [("words", "the cat sat", 1 / 4), ("chars", "the cat sat", 4 / 13), ("mixed", "the cat sat", 1 / 4)],
)
def test_error_rates_are_pooled_over_the_corpus(unit, prediction, expected):
    metric = ErrorRate(unit)
    metric.update([prediction], ["the cat sat down"])
    assert float(metric.compute()) == pytest.approx(expected)
    metric.update(["a"], ["a"])  # corpus-level: edits and tokens add up, not the per-utterance rates
    assert float(metric.compute()) == pytest.approx(metric.edits.item() / metric.tokens.item())


def test_normalizer_is_named_and_versioned():
    from lightning_asr.text import NORMALIZER_VERSION, TextNormalizer

    assert TextNormalizer("ko-en").id == f"basic-v{NORMALIZER_VERSION}[ko-en,numbers=keep,t2s=0,jamo=1]"
    with pytest.raises(ValueError, match="numbers"):
        TextNormalizer("en", numbers="digits")


def test_english_numbers_and_apostrophes():
    from lightning_asr.text import TextNormalizer

    assert (
        TextNormalizer("en", numbers="words")("I paid 1,250.5 for 3 cats, didn't I?")
        == "i paid one thousand two hundred fifty point five for three cats didn't i"
    )
    assert TextNormalizer("en")("Room 101.") == "room 101"
    assert TextNormalizer("ko-en", numbers="words")("3개 files") == "3개 files"  # read as Korean: kept


def test_chinese_traditional_to_simplified_is_optional():
    from lightning_asr.text import TextNormalizer

    assert TextNormalizer("zh")("我們 開會") == "我們開會"
    assert TextNormalizer("zh", traditional_to_simplified=True)("我們 開會") == "我们开会"


def test_never_nfkd():
    from lightning_asr.text import TextNormalizer

    text = "회의실 ㄱ"
    assert TextNormalizer("en")(text) == text  # NFKD would split syllables, NFKC would touch the lone jamo


def test_whisper_english_normaliser_scores_as_published_whisper_figures_are():
    """``scoring.english: whisper``: Whisper's EnglishTextNormalizer with its spelling map, on English sets only."""
    from lightning_asr.text import TextNormalizer

    whisper = TextNormalizer("en", english="whisper")
    assert whisper("Mr. Smith met Dr. Jones.") == "mister smith met doctor jones"  # abbreviations
    assert whisper("twenty five people") == "25 people"  # numbers as digits
    assert whisper("The colour of the organisation") == "the color of the organization"  # British spellings
    assert TextNormalizer("en")("Mr. Smith met Dr. Jones.") == "mr smith met dr jones"  # basic stays the default
    assert "english=whisper-english-v1" in whisper.id and "english" not in TextNormalizer("en").id
    code_switched = TextNormalizer("ko-en", english="whisper")
    assert code_switched("회의 colour") == "회의 colour" and "english" not in code_switched.id
    with pytest.raises(ValueError, match="scoring.english"):
        TextNormalizer("en", english="fancy")
