"""Text normalisation for scoring, and the token units error rates count.

``normalize`` (name ``basic``, version 1): Unicode NFC (never NFKD, which splits Hangul syllables into
jamo silently), lower case, punctuation removed, whitespace collapsed; for Chinese, full-width ASCII to
half-width and no spaces between CJK characters.

Units: ``words`` (whitespace tokens), ``chars`` (characters without spaces) and ``mixed`` (each Chinese
character or Hangul syllable one token, each Latin-script word one token: the mixed error rate's unit for
code-switched speech; not Morris' "match error rate" that torchmetrics and jiwer call MER).
"""

from __future__ import annotations

import re
import unicodedata

NORMALIZER_NAME, NORMALIZER_VERSION = "basic", 1

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HANGUL = r"\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")
_MIXED_TOKEN = re.compile(rf"[{_CJK}]|[{_HANGUL}]|[^\s{_CJK}{_HANGUL}]+")


def _full_to_half_width(text: str) -> str:
    return "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else ("" if c == "\u3000" else c) for c in text)


def normalize(text: str, lang: str = "") -> str:
    text = unicodedata.normalize("NFC", text)
    if "zh" in lang:
        text = _full_to_half_width(text)
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    text = " ".join(text.split())
    if "zh" in lang:
        text = _SPACE_BETWEEN_CJK.sub("", text)
    return text


def units(text: str, unit: str) -> list[str]:
    if unit == "words":
        return text.split()
    if unit == "chars":
        return [c for c in text if not c.isspace()]
    if unit == "mixed":
        return _MIXED_TOKEN.findall(text)
    raise ValueError(f"unknown unit {unit!r}; choose words, chars or mixed")


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
