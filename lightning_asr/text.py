"""Text normalisation for scoring, and the token units error rates count.

A ``TextNormalizer`` is named and versioned: its ``id`` (e.g. ``basic-v3[ko-en,numbers=keep,t2s=0,jamo=1]``)
is logged with every score, so two numbers are only compared when they were normalised the same way.
Bump ``VERSION`` whenever a rule changes what any text normalises to.

Rules, by the languages in ``lang`` (``en``, ``ko``, ``zh``, or code-switched ``ko-en``/``zh-en``):

every language
    Unicode NFC (never NFKD, which splits Hangul syllables into jamo silently; never NFKC, which fuses
    isolated jamo), lower case, punctuation to spaces (an apostrophe inside a Latin word is kept:
    "don't" stays one word), whitespace collapsed.
English (monolingual ``en``)
    ``numbers="words"`` spells digits out ("25" -> "twenty five", "3.5" -> "three point five");
    ``"keep"`` (default) leaves them. Code-switched sets always keep digits: how "3" is read depends on the
    language around it.
Chinese (``zh`` in ``lang``)
    full-width ASCII to half-width, ideographic space removed, no spaces between CJK characters;
    ``traditional_to_simplified`` converts script (zhconv, ``zh-hans``: characters only, no regional
    vocabulary changes).
Korean (``ko`` in ``lang``)
    Hangul compatibility jamo (U+3131-U+318E, what keyboards type) mapped to conjoining jamo
    (U+1100-U+11FF) before NFC, as an input method composes them, so "ㅎㅏㄴ" and "한" compare equal; ``korean_jamo_map=False`` turns this off
    (to measure what it changes).

Units: ``words`` (whitespace tokens), ``chars`` (characters without spaces), ``mixed`` (each Chinese
character or Hangul syllable one token, each Latin-script word one token: the mixed error rate's unit for
code-switched speech; not Morris' "match error rate" that torchmetrics and jiwer call MER) and ``jamo``
(Korean as conjoining jamo, for the jamo error rate).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

NORMALIZER_NAME, NORMALIZER_VERSION = "basic", 3

# Compatibility jamo -> conjoining jamo: consonants to their initial (choseong) forms, clusters that exist
# only as finals to final (jongseong) forms, vowels to medial (jungseong) forms.
_COMPAT_CONSONANTS = {
    "ㄱ": "ᄀ",
    "ㄲ": "ᄁ",
    "ㄳ": "ᆪ",
    "ㄴ": "ᄂ",
    "ㄵ": "ᆬ",
    "ㄶ": "ᆭ",
    "ㄷ": "ᄃ",
    "ㄸ": "ᄄ",
    "ㄹ": "ᄅ",
    "ㄺ": "ᆰ",
    "ㄻ": "ᆱ",
    "ㄼ": "ᆲ",
    "ㄽ": "ᆳ",
    "ㄾ": "ᆴ",
    "ㄿ": "ᆵ",
    "ㅀ": "ᆶ",
    "ㅁ": "ᄆ",
    "ㅂ": "ᄇ",
    "ㅃ": "ᄈ",
    "ㅄ": "ᆹ",
    "ㅅ": "ᄉ",
    "ㅆ": "ᄊ",
    "ㅇ": "ᄋ",
    "ㅈ": "ᄌ",
    "ㅉ": "ᄍ",
    "ㅊ": "ᄎ",
    "ㅋ": "ᄏ",
    "ㅌ": "ᄐ",
    "ㅍ": "ᄑ",
    "ㅎ": "ᄒ",
}
_COMPAT_VOWELS = {chr(0x314F + i): chr(0x1161 + i) for i in range(21)}
# Final (jongseong) forms in Unicode order: every compatibility consonant but the three without one.
_COMPAT_FINALS = {c: chr(0x11A8 + i) for i, c in enumerate(c for c in _COMPAT_CONSONANTS if c not in "ㄸㅃㅉ")}
COMPAT_TO_CONJOINING = str.maketrans({**_COMPAT_CONSONANTS, **_COMPAT_VOWELS})


def _open_syllable(c: str) -> bool:
    """A vowel or a precomposed syllable without a final consonant: what a final can attach to."""
    return (
        c in _COMPAT_VOWELS or "\u1161" <= c <= "\u1175" or ("\uac00" <= c <= "\ud7a3" and (ord(c) - 0xAC00) % 28 == 0)
    )


def map_compatibility_jamo(text: str) -> str:
    """Compatibility jamo to conjoining jamo, as a keyboard's input method composes them: a consonant after a
    vowel and not before one is a final ("ㅎㅏㄴ" -> "한" once NFC composes), otherwise an initial;
    vowels are medials. Isolated jamo ("ㅋㅋ") stay jamo."""
    out = []
    for i, c in enumerate(text):
        following = text[i + 1] if i + 1 < len(text) else ""
        if c in _COMPAT_FINALS and out and _open_syllable(text[i - 1]) and following not in _COMPAT_VOWELS:
            out.append(_COMPAT_FINALS[c])
        else:
            out.append(c.translate(COMPAT_TO_CONJOINING))
    return "".join(out)


_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HANGUL = r"\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")
_MIXED_TOKEN = re.compile(rf"[{_CJK}]|[{_HANGUL}]|[^\s{_CJK}{_HANGUL}]+")
_APOSTROPHES = "'\u2019"
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def integer_words(n: int) -> str:
    """English words of a non-negative integer: 2025 -> "two thousand twenty five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return f"{integer_words(head)} {name}" + ("" if rest == 0 else " " + integer_words(rest))
    raise AssertionError("unreachable")


def number_words(match: re.Match) -> str:
    digits = match.group(0).replace(",", "")
    whole, _, fraction = digits.partition(".")
    words = integer_words(int(whole))
    return words + (" point " + " ".join(_ONES[int(d)] for d in fraction) if fraction else "")


def _full_to_half_width(text: str) -> str:
    return "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else ("" if c == "\u3000" else c) for c in text)


def _is_punctuation(text: str, i: int) -> bool:
    c = text[i]
    if not unicodedata.category(c).startswith("P"):
        return False
    # "don't": an apostrophe between two letters belongs to the word
    return not (c in _APOSTROPHES and 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha())


@dataclass(frozen=True)
class TextNormalizer:
    lang: str = ""
    numbers: str = "keep"  # keep | words (monolingual English only)
    traditional_to_simplified: bool = False
    korean_jamo_map: bool = True
    english: str = "basic"  # basic | whisper (monolingual English only)

    def __post_init__(self):
        if self.numbers not in ("keep", "words"):
            raise ValueError(f"numbers={self.numbers!r}: choose keep or words")
        if self.english not in ENGLISH_NORMALIZERS:
            raise ValueError(f"scoring.english={self.english!r}: choose {' or '.join(ENGLISH_NORMALIZERS)}")

    @classmethod
    def from_scoring(cls, lang: str, scoring) -> TextNormalizer:
        """The normaliser a run's ``scoring`` options (``lightning_asr.config.ScoringConfig``, or a plain
        mapping with any of its keys) ask for."""
        return cls(
            lang,
            scoring.get("numbers", "keep"),
            scoring.get("traditional_to_simplified", False),
            scoring.get("korean_jamo_map", True),
            scoring.get("english", "basic"),
        )

    @property
    def id(self) -> str:
        return (
            f"{NORMALIZER_NAME}-v{NORMALIZER_VERSION}[{self.lang or 'any'},numbers={self.numbers},"
            f"t2s={int(self.traditional_to_simplified)},jamo={int(self.korean_jamo_map)}"
            + (f",english={WHISPER_ENGLISH_ID}" if self.uses_whisper_english else "")
            + "]"
        )

    @property
    def uses_whisper_english(self) -> bool:
        return self.english == "whisper" and self.lang == "en"

    def __call__(self, text: str) -> str:
        if self.uses_whisper_english:
            return " ".join(whisper_english_normalizer()(text).split())
        languages = set(self.lang.split("-"))
        if "ko" in languages and self.korean_jamo_map:
            text = map_compatibility_jamo(text)
        text = unicodedata.normalize("NFC", text)
        if "zh" in languages:
            text = _full_to_half_width(text)
            if self.traditional_to_simplified:
                import zhconv

                text = zhconv.convert(text, "zh-hans")
        text = text.lower()
        if self.numbers == "words" and self.lang == "en":
            text = _NUMBER.sub(lambda m: f" {number_words(m)} ", text)
        text = "".join(" " if _is_punctuation(text, i) else c for i, c in enumerate(text))
        text = " ".join(text.split())
        if "zh" in languages:
            text = _SPACE_BETWEEN_CJK.sub("", text)
        return text


ENGLISH_NORMALIZERS = ("basic", "whisper")
# Whisper's EnglishTextNormalizer (transformers' port) with the spelling map of openai-whisper 20250625
WHISPER_ENGLISH_ID = "whisper-english-v1"


@functools.lru_cache(maxsize=1)
def whisper_english_normalizer():
    """Whisper's ``EnglishTextNormalizer`` built from its spelling map (``english.json`` of the pinned
    openai-whisper sdist, fetched by ``make setup``)."""
    import json

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from lightning_asr.tokenizer import fetch_english_spelling

    return EnglishTextNormalizer(json.loads(fetch_english_spelling().read_text()))


def normalize(text: str, lang: str = "") -> str:
    """``TextNormalizer(lang)`` with default options."""
    return TextNormalizer(lang)(text)


def jamo(text: str, map_compatibility: bool = True) -> list[str]:
    """Korean text as conjoining jamo (NFD of syllables), spaces left out: the unit of the jamo error rate."""
    if map_compatibility:
        text = unicodedata.normalize("NFC", map_compatibility_jamo(text))
    return [c for c in unicodedata.normalize("NFD", text) if not c.isspace()]


def units(text: str, unit: str) -> list[str]:
    if unit == "jamo":
        return jamo(text)
    if unit == "words":
        return text.split()
    if unit == "chars":
        return [c for c in text if not c.isspace()]
    if unit == "mixed":
        return _MIXED_TOKEN.findall(text)
    raise ValueError(f"unknown unit {unit!r}; choose words, chars, mixed or jamo")


def script_language(token: str) -> str:
    """The language a mixed-unit token is scored under: ``ko`` (Hangul), ``zh`` (Han), ``en`` (Latin
    letters) or ``other`` (digits, symbols)."""
    c = token[0]
    if "\uac00" <= c <= "\ud7a3" or "\u1100" <= c <= "\u11ff" or "\u3130" <= c <= "\u318f":
        return "ko"
    if "\u3400" <= c <= "\u4dbf" or "\u4e00" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff":
        return "zh"
    if any(ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN") for ch in token):
        return "en"
    return "other"


def code_switched(lang: str) -> bool:
    return "-" in lang


def primary_unit(lang: str) -> str:
    """The error rate a set is judged by: WER for English, CER for Chinese/Korean, MER for code-switched."""
    if code_switched(lang):
        return "mixed"
    return "chars" if lang in ("zh", "ko", "ja", "yue", "th") else "words"


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def align(reference: list[str], hypothesis: list[str]) -> list[tuple[str, str | None, str | None]]:
    """A minimum-edit alignment as ``(op, ref_token, hyp_token)`` with op in ``=``, ``S``, ``D``, ``I``.
    Ties prefer a match or substitution, then a deletion, then an insertion (the order sclite uses)."""
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = i
    for j in range(cols):
        cost[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            cost[i][j] = min(
                cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]), cost[i - 1][j] + 1, cost[i][j - 1] + 1
            )
    ops, i, j = [], len(reference), len(hypothesis)
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            ops.append(("=" if reference[i - 1] == hypothesis[j - 1] else "S", reference[i - 1], hypothesis[j - 1]))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            ops.append(("D", reference[i - 1], None))
            i -= 1
        else:
            ops.append(("I", None, hypothesis[j - 1]))
            j -= 1
    return ops[::-1]
