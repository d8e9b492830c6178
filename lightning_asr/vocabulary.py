"""Tokenizer extension: new tokens for words the base tokenizer splits badly.

Whisper's byte-level BPE spends two or three tokens on many Hangul syllables and on code-switched words
such as "email을"; a decoder that must emit every piece learns them slowly. ``adapter.new_tokens`` adds
whole tokens. The base embedding matrix stays as it is (frozen under every adapter strategy, shared with
the other users of the base); the new rows live in one extra trainable matrix that both the decoder's
input embedding and the tied output projection use, so they train under every strategy and are exported
with the adapter (they are trainable parameters, hence in ``adapter_state_dict``).

New rows start at the mean embedding of the pieces the base tokenizer splits the word into, so an
unadapted model scores the new token like the start of the old piece sequence rather than at random.

    python -m lightning_asr.vocabulary suggest data/kecs/train.jsonl --max 50   # YAML for adapter.new_tokens
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn


class ExtendedEmbedding(nn.Module):
    """``base`` rows for ids below its size, ``extra`` rows above."""

    def __init__(self, base: nn.Embedding, extra: nn.Parameter):
        super().__init__()
        self.base, self.extra = base, extra

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.extra], dim=0)

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + self.extra.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        size = self.base.num_embeddings
        is_new = input_ids >= size
        embedded = self.base(input_ids.masked_fill(is_new, 0))
        if is_new.any():
            new = F.embedding((input_ids - size).clamp(min=0), self.extra)
            embedded = torch.where(is_new.unsqueeze(-1), new.to(embedded.dtype), embedded)
        return embedded


class ExtendedProjection(nn.Module):
    """The tied output projection with logits for the new tokens appended."""

    def __init__(self, base: nn.Linear, extra: nn.Parameter):
        super().__init__()
        self.base, self.extra = base, extra

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.extra], dim=0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.base(hidden), F.linear(hidden, self.extra.to(hidden.dtype))], dim=-1)


def extend_model_vocabulary(model, count: int) -> nn.Parameter:
    """Give a Whisper model ``count`` new token rows (zeros until initialised); returns the new matrix."""
    decoder = model.model.decoder
    if isinstance(decoder.embed_tokens, ExtendedEmbedding):
        raise ValueError("the model's vocabulary is already extended")
    base = decoder.embed_tokens
    extra = nn.Parameter(torch.zeros(count, base.embedding_dim, dtype=base.weight.dtype, device=base.weight.device))
    decoder.embed_tokens = ExtendedEmbedding(base, extra)
    model.proj_out = ExtendedProjection(model.proj_out, extra)
    return extra


def extend_tokenizer(tokenizer, tokens: list[str]) -> list[int]:
    """Add ``tokens`` to ``tokenizer`` (in order, after every existing token); returns their ids."""
    from transformers import AddedToken

    size = len(tokenizer)
    duplicates = [t for t, n in Counter(tokens).items() if n > 1]
    known = [t for t in tokens if len(tokenizer.encode(t, add_special_tokens=False)) == 1]
    if duplicates or known or any(not t.strip() for t in tokens):
        raise ValueError(
            f"adapter.new_tokens must be distinct, non-blank words the tokenizer splits: duplicates "
            f"{duplicates}, already a single token {known[:5]} — fix: remove those from adapter.new_tokens"
        )
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in tokens])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(size, size + len(tokens))):
        raise ValueError(f"new tokens got ids {ids[:5]}..., expected {size}... in order")
    return ids


def initialize_new_rows(model, base_tokenizer_pieces: list[list[int]]) -> None:
    """Each new row = the mean base embedding of the pieces the base tokenizer splits its word into."""
    embedding = model.model.decoder.embed_tokens
    with torch.no_grad():
        for row, pieces in enumerate(base_tokenizer_pieces):
            embedding.extra[row] = embedding.base.weight[pieces].mean(dim=0)


def add_new_tokens(model, tokenizer, tokens: list[str]) -> None:
    """Tokenizer and initial rows for a model whose strategy already extended its vocabulary."""
    pieces = [tokenizer.encode(t, add_special_tokens=False) for t in tokens]  # before the tokens exist
    extend_tokenizer(tokenizer, tokens)
    initialize_new_rows(model, pieces)


def suggest_new_tokens(
    texts: list[str], tokenizer, max_tokens: int = 50, min_count: int = 3, min_pieces: int = 3
) -> list[str]:
    """Whitespace words that occur at least ``min_count`` times and take at least ``min_pieces`` BPE
    tokens, ranked by how many decoder steps a single token would save over the corpus."""
    counts = Counter(word for text in texts for word in text.split())
    savings = []
    for word, count in counts.items():
        pieces = len(tokenizer.encode(word, add_special_tokens=False))
        if count >= min_count and pieces >= min_pieces:
            savings.append(((pieces - 1) * count, word))
    return [word for _, word in sorted(savings, key=lambda s: (-s[0], s[1]))[:max_tokens]]


def main(argv: list[str] | None = None) -> int:
    from lightning_asr.data.manifest import read_manifest
    from lightning_asr.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(prog="python -m lightning_asr.vocabulary", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    suggest = sub.add_parser("suggest", help="words worth a token of their own, as YAML for adapter.new_tokens")
    suggest.add_argument("manifests", nargs="+")
    suggest.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the built-in Whisper one)")
    suggest.add_argument("--max", type=int, default=50)
    suggest.add_argument("--min-count", type=int, default=3)
    suggest.add_argument("--min-pieces", type=int, default=3)
    args = parser.parse_args(argv)
    texts = [u.text for m in args.manifests for u in read_manifest(m)]
    words = suggest_new_tokens(texts, load_tokenizer(args.tokenizer), args.max, args.min_count, args.min_pieces)
    print("adapter:\n  new_tokens: [" + ", ".join(f'"{w}"' for w in words) + "]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
