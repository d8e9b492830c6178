"""Text normalisation for scoring, and the token units error rates count.

``normalize`` (name ``basic``, version 2): Unicode NFC (never NFKD, which splits Hangul syllables into
jamo silently), lower case, punctuation removed, whitespace collapsed; for Chinese, full-width ASCII to
half-width and no spaces between CJK characters; for Korean, Hangul compatibility jamo (U+3131-U+318E,
what keyboards type) mapped to conjoining jamo (U+1100-U+11FF) before NFC, so "ㅎㅏ" and "하" compare equal.

Units: ``words`` (whitespace tokens), ``chars`` (characters without spaces) and ``mixed`` (each Chinese
character or Hangul syllable one token, each Latin-script word one token: the mixed error rate's unit for
code-switched speech; not Morris' "match error rate" that torchmetrics and jiwer call MER).
"""

from __future__ import annotations

import re
import unicodedata

NORMALIZER_NAME, NORMALIZER_VERSION = "basic", 2

# Compatibility jamo -> conjoining jamo: consonants to their initial (choseong) forms, clusters that exist
# only as finals to final (jongseong) forms, vowels to medial (jungseong) forms.
_COMPAT_CONSONANTS = {
    "ㄱ": "ᄀ", "ㄲ": "ᄁ", "ㄳ": "ᆪ", "ㄴ": "ᄂ", "ㄵ": "ᆬ", "ㄶ": "ᆭ", "ㄷ": "ᄃ", "ㄸ": "ᄄ", "ㄹ": "ᄅ",
    "ㄺ": "ᆰ", "ㄻ": "ᆱ", "ㄼ": "ᆲ", "ㄽ": "ᆳ", "ㄾ": "ᆴ", "ㄿ": "ᆵ", "ㅀ": "ᆶ", "ㅁ": "ᄆ", "ㅂ": "ᄇ",
    "ㅃ": "ᄈ", "ㅄ": "ᆹ", "ㅅ": "ᄉ", "ㅆ": "ᄊ", "ㅇ": "ᄋ", "ㅈ": "ᄌ", "ㅉ": "ᄍ", "ㅊ": "ᄎ", "ㅋ": "ᄏ",
    "ㅌ": "ᄐ", "ㅍ": "ᄑ", "ㅎ": "ᄒ",
}
COMPAT_TO_CONJOINING = str.maketrans({**_COMPAT_CONSONANTS, **{chr(0x314F + i): chr(0x1161 + i) for i in range(21)}})

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HANGUL = r"\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")
_MIXED_TOKEN = re.compile(rf"[{_CJK}]|[{_HANGUL}]|[^\s{_CJK}{_HANGUL}]+")


def _full_to_half_width(text: str) -> str:
    return "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else ("" if c == "\u3000" else c) for c in text)


def normalize(text: str, lang: str = "") -> str:
    if "ko" in lang:
        text = text.translate(COMPAT_TO_CONJOINING)
    text = unicodedata.normalize("NFC", text)
    if "zh" in lang:
        text = _full_to_half_width(text)
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    text = " ".join(text.split())
    if "zh" in lang:
        text = _SPACE_BETWEEN_CJK.sub("", text)
    return text


def jamo(text: str) -> list[str]:
    """Korean text as conjoining jamo (NFD of syllables), spaces left out: the unit of the jamo error rate."""
    return [c for c in unicodedata.normalize("NFD", text.translate(COMPAT_TO_CONJOINING)) if not c.isspace()]


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


def primary_unit(lang: str) -> str:
    """The error rate a set is judged by: WER for English, CER for Chinese/Korean, MER for code-switched."""
    if "-" in lang:
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
