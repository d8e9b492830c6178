"""Error rates as torchmetrics ``Metric``s. States are summed counts (edits, reference tokens), so they
reduce correctly across DDP processes with ``dist_reduce_fx="sum"``.

Pooling: ``average="corpus"`` (default) is the sum of edits over the sum of reference tokens;
``average="utterance"`` is the mean of per-utterance rates (an utterance whose normalised reference is
empty counts its edits over one token).

| metric | unit | class |
|---|---|---|
| WER | whitespace words | ``WordErrorRate`` |
| CER | characters, spaces left out | ``CharErrorRate`` |
| MER (mixed error rate) | Han characters and Hangul syllables one token each, Latin words one token each | ``MixedErrorRate`` |
| JER | Korean conjoining jamo | ``JamoErrorRate`` |
| per-language error rates | mixed units, each edit charged to one language (below) | ``PerLanguageErrorRate`` |
| PIER | the embedded language's share: errors on the second language of ``ko-en``/``zh-en`` | ``PointOfInterestErrorRate`` |

Per-language charging, from one minimum-edit alignment of mixed units: a substitution or deletion is
charged to the language of the reference token, an insertion to the language of the inserted token; the
rate of language X is its charged edits over its reference tokens. PIER (Ugan et al. 2025; HiKE scores it
on the English words of Korean-English speech) is that rate for the embedded language: how well the
switched-in words are recognised, which a matrix-dominated MER hides.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lightning_asr.text import (
    TextNormalizer,
    align,
    code_switched,
    edit_distance,
    jamo,
    primary_unit,
    script_language,
    units,
)

METRIC_NAMES = {"words": "wer", "chars": "cer", "mixed": "mer", "jamo": "jer"}
LANGUAGES = ("en", "ko", "zh", "other")


class ErrorRate(Metric):
    """Edit distance over ``unit`` tokens (``words``, ``chars``, ``mixed`` or ``jamo``) of normalised text."""

    higher_is_better = False
    full_state_update = False
    unit: str = ""

    def __init__(
        self,
        unit: str | None = None,
        lang: str = "",
        normalizer: TextNormalizer | None = None,
        average: str = "corpus",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.unit = unit or self.unit
        if self.unit not in METRIC_NAMES:
            raise ValueError(f"unknown unit {self.unit!r}; choose {', '.join(METRIC_NAMES)}")
        if average not in ("corpus", "utterance"):
            raise ValueError(f"average={average!r}: choose corpus or utterance")
        self.lang, self.average = lang, average
        self.normalizer = normalizer or TextNormalizer(lang)
        self.add_state("edits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("rate_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("utterances", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def tokenize(self, text: str) -> list[str]:
        text = self.normalizer(text)
        if self.unit == "jamo":
            return jamo(text, self.normalizer.korean_jamo_map)
        return units(text, self.unit)

    def utterance_counts(self, prediction: str, reference: str) -> tuple[int, int]:
        ref = self.tokenize(reference)
        return edit_distance(ref, self.tokenize(prediction)), len(ref)

    def update(self, predictions: list[str], references: list[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        for prediction, reference in zip(predictions, references):
            edits, tokens = self.utterance_counts(prediction, reference)
            self.edits += edits
            self.tokens += tokens
            self.rate_sum += edits / max(tokens, 1)
            self.utterances += 1

    def compute(self) -> torch.Tensor:
        if self.average == "utterance":
            return (self.rate_sum / self.utterances.clamp(min=1)).float()
        if self.tokens == 0:  # nothing scored yet: no rate, not a perfect one
            return torch.tensor(float("nan"))
        return self.edits.float() / self.tokens.float()


class WordErrorRate(ErrorRate):
    unit = "words"


class CharErrorRate(ErrorRate):
    unit = "chars"


class MixedErrorRate(ErrorRate):
    unit = "mixed"


class JamoErrorRate(ErrorRate):
    unit = "jamo"


class PerLanguageErrorRate(Metric):
    """Error rate per language of mixed-unit tokens; ``compute`` returns ``{lang: rate}`` for every language
    with reference tokens."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, lang: str = "", normalizer: TextNormalizer | None = None, **kwargs):
        super().__init__(**kwargs)
        self.lang = lang
        self.normalizer = normalizer or TextNormalizer(lang)
        self.add_state("edits", default=torch.zeros(len(LANGUAGES), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.zeros(len(LANGUAGES), dtype=torch.long), dist_reduce_fx="sum")

    def utterance_counts(self, prediction: str, reference: str) -> tuple[list[int], list[int]]:
        edits, tokens = [0] * len(LANGUAGES), [0] * len(LANGUAGES)
        ops = align(units(self.normalizer(reference), "mixed"), units(self.normalizer(prediction), "mixed"))
        for op, ref, hyp in ops:
            if ref is not None:
                tokens[LANGUAGES.index(script_language(ref))] += 1
            if op != "=":
                edits[LANGUAGES.index(script_language(ref if ref is not None else hyp))] += 1
        return edits, tokens

    def update(self, predictions: list[str], references: list[str]) -> None:
        for prediction, reference in zip(predictions, references):
            edits, tokens = self.utterance_counts(prediction, reference)
            self.edits += torch.tensor(edits, device=self.edits.device)
            self.tokens += torch.tensor(tokens, device=self.tokens.device)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            lang: self.edits[i].float() / self.tokens[i].float()
            for i, lang in enumerate(LANGUAGES)
            if self.tokens[i] > 0
        }


def embedded_language(lang: str) -> str:
    """The switched-in language of a code-switched set: ``en`` for ``ko-en`` (matrix language first)."""
    if not code_switched(lang):
        raise ValueError(f"{lang!r} is not a code-switched language pair like ko-en")
    return lang.split("-")[1]


class PointOfInterestErrorRate(PerLanguageErrorRate):
    """PIER: the error rate on the embedded language's tokens of a code-switched set."""

    def compute(self) -> torch.Tensor:
        i = LANGUAGES.index(embedded_language(self.lang))
        if self.tokens[i] == 0:
            return torch.tensor(float("nan"))
        return self.edits[i].float() / self.tokens[i].float()


def metrics_for(lang: str, normalizer: TextNormalizer | None = None, average: str = "corpus") -> dict[str, Metric]:
    """The metrics a set of language ``lang`` is scored with, by name: WER and CER always; MER for
    code-switched sets, JER where Korean is spoken; per-language error rates and PIER for code-switched sets.
    ``METRIC_NAMES[primary_unit(lang)]`` names the one the set is judged by."""
    normalizer = normalizer or TextNormalizer(lang)
    found = {METRIC_NAMES[u] for u in ("words", "chars", primary_unit(lang))}
    if "ko" in lang.split("-"):
        found.add("jer")
    unit_of = {name: unit for unit, name in METRIC_NAMES.items()}
    metrics: dict[str, Metric] = {name: ErrorRate(unit_of[name], lang, normalizer, average) for name in sorted(found)}
    if code_switched(lang):
        metrics["per_language"] = PerLanguageErrorRate(lang, normalizer)
        metrics["pier"] = PointOfInterestErrorRate(lang, normalizer)
    return metrics


def score_texts(
    predictions: list[str],
    references: list[str],
    lang: str,
    normalizer: TextNormalizer | None = None,
    average: str = "corpus",
) -> dict[str, float]:
    """Every metric of ``metrics_for(lang)`` on one set, with the per-language split as ``err_<lang>``."""
    scores = {}
    for name, metric in metrics_for(lang, normalizer, average).items():
        metric.update(predictions, references)
        value = metric.compute()
        if isinstance(value, dict):
            scores.update({f"err_{language}": float(v) for language, v in value.items()})
        else:
            scores[name] = float(value)
    return scores
