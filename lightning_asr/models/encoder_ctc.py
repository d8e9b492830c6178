"""Hybrid CTC/attention training: an auxiliary CTC loss on an encoder-decoder's encoder output.

``model.encoder_ctc_weight`` (lambda) trains ``(1 - lambda) * cross-entropy + lambda * CTC``, the CTC over the
characters of the scoring normaliser's text (the units of ``lightning_asr.models.wav2vec2``), read from
the training manifests into ``model.encoder_ctc_units``. CTC rewards the encoder for what it hears frame by
frame, which an attention decoder with a strong language model learns only late; ESPnet's recipes train
this way for that reason. The head is a linear layer on the encoder output; it trains with the run, is in
its checkpoints, and is not part of an exported base (``save_pretrained`` writes the model alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_asr.models.wav2vec2 import build_ctc_tokens, ctc_target

BLANK, DELIMITER = 0, 1


def encoder_ctc_units(utterances: list) -> list[str]:
    """The characters of the utterances' normalised transcripts (spaces become the word delimiter)."""
    return build_ctc_tokens([(u.text, u.lang) for u in utterances], "chars")


class EncoderCTC(nn.Module):
    def __init__(self, width: int, units: list[str], weight: float):
        super().__init__()
        self.weight = weight  # lambda of the mix (1 - lambda) * cross-entropy + lambda * CTC
        self.index = {unit: i + 2 for i, unit in enumerate(units)}  # 0: blank, 1: the word delimiter
        self.head = nn.Linear(width, len(units) + 2)

    def targets(self, text: str, lang: str) -> list[int]:
        """Unit ids of a transcript; characters outside the units (none, for training transcripts) are left out."""
        return [
            DELIMITER if c == " " else self.index[c]
            for c in ctc_target(text, lang, False)
            if c == " " or c in self.index
        ]

    def forward(self, encoder_states: torch.Tensor, texts: list[str], langs: list[str]) -> torch.Tensor:
        """Mean CTC loss per target unit over the batch (utterances CTC cannot align add nothing)."""
        targets = [torch.tensor(self.targets(t, lang), dtype=torch.long) for t, lang in zip(texts, langs)]
        log_probs = self.head(encoder_states).float().log_softmax(-1).transpose(0, 1)
        frames = torch.full((len(targets),), encoder_states.shape[1], dtype=torch.long)
        return F.ctc_loss(
            log_probs,
            torch.cat(targets),
            frames,
            torch.tensor([len(t) for t in targets]),
            blank=BLANK,
            zero_infinity=True,
        )
