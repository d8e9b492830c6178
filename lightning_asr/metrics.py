"""Error rates as torchmetrics ``Metric``s with summed (DDP-safe) edit and token counts.

Corpus-level pooling: sum of edits over sum of reference tokens, not a mean of per-utterance rates.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lightning_asr.text import edit_distance, normalize, units

METRIC_NAMES = {"words": "wer", "chars": "cer", "mixed": "mer", "jamo": "jer"}


class ErrorRate(Metric):
    """Edit distance over ``unit`` tokens (``words``, ``chars`` or ``mixed``) of normalised text."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, unit: str, lang: str = "", **kwargs):
        super().__init__(**kwargs)
        self.unit, self.lang = unit, lang
        self.add_state("edits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def utterance_counts(self, prediction: str, reference: str) -> tuple[int, int]:
        ref = units(normalize(reference, self.lang), self.unit)
        hyp = units(normalize(prediction, self.lang), self.unit)
        return edit_distance(ref, hyp), len(ref)

    def update(self, predictions: list[str], references: list[str]) -> None:
        for prediction, reference in zip(predictions, references):
            edits, tokens = self.utterance_counts(prediction, reference)
            self.edits += edits
            self.tokens += tokens

    def compute(self) -> torch.Tensor:
        return self.edits.float() / self.tokens.clamp(min=1).float()
