"""Structures over shared weights: one injected copy of the base per adapter structure (a *slot*), and the
models that mix several structures in one pass.

A slot is a copy of the base's module tree made with ``copy.deepcopy`` whose memo maps every base parameter to
itself, so the copy's base weights are the very same tensors; the strategy then injects its modules into that
copy. Base weights are never duplicated, except those the strategy owns (``owns_base_parameter``: what it
trains and so overwrites with each user's tensors, e.g. every weight of full fine-tuning): those are the
slot's own copies, so no user's weights reach the base every slot shares.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from lightning_asr.adapters import AdapterStrategy, adapter_config, build_strategy
from lightning_asr.config import ConfigError
from lightning_asr.serving.bank import MixedModel, bankable, mixable
from lightning_asr.serving.errors import ServeError
from lightning_asr.serving.store import AdapterStore, structure_key


@dataclass
class Slot:
    """One injected copy of the base for one adapter structure; its base weights are the base's tensors."""

    key: str
    strategy: AdapterStrategy
    model: nn.Module
    tokenizer: object  # the base's, or a copy extended with the adapter's new tokens
    loaded: int | None = None  # token of the adapter whose tensors the slot's parameters hold
    # decided once, when the structure is injected: why its users decode alone (None: they can share a bank),
    # and whether they can share a pass with other structures
    alone_reason: str | None = None
    mixes: bool = False


class Structures:
    """The slots by structure key, the least recently used evicted beyond ``max_structures`` (with the store's
    cached users of that structure), and the mixed models over sets of them."""

    def __init__(self, base: nn.Module, tokenizer, store: AdapterStore, max_structures: int = 8):
        self.base, self.tokenizer, self.store = base, tokenizer, store
        self.max_structures = max(1, max_structures)
        self.slots: OrderedDict[str, Slot] = OrderedDict()
        self.mixed: OrderedDict[tuple, MixedModel] = OrderedDict()  # by the structures it mixes

    def slot(self, side: dict, what: str, key: str | None = None) -> Slot:
        """The slot of the adapter's structure (``key``, from the side file where not given), injected into a
        copy of the base the first time it is seen."""
        key = key or structure_key(side)
        if key in self.slots:
            self.slots.move_to_end(key)
            return self.slots[key]
        try:
            strategy = build_strategy(adapter_config(side["config"], "adapter config", lenient=True))
        except (ConfigError, ValueError, TypeError) as err:
            raise ServeError(422, f"{what}: its adapter config cannot be built here ({err})") from err
        model = copy.deepcopy(self.base, self.shared_memo(strategy))
        try:
            strategy.attach(model, for_training=False)
        except ValueError as err:
            raise ServeError(422, f"{what}: {err}") from err
        if not strategy.trainable_parameters():
            raise ServeError(422, f"{what} is a {strategy.name!r} export: it trains nothing, so it holds no adapter")
        targets = side.get("target_modules")
        if targets is not None and list(targets) != list(strategy.target_names or targets):
            raise ServeError(
                422,
                f"{what} adapts {len(targets)} modules, but its target patterns select "
                f"{len(strategy.target_names)} on this base — fix: export it from this base",
            )
        tokenizer = self.tokenizer
        new_tokens = list(strategy.config.new_tokens or [])
        if new_tokens:  # their embedding rows come with the adapter's tensors; the ids need the words
            from lightning_asr.vocabulary import extend_tokenizer

            tokenizer = copy.deepcopy(tokenizer)
            try:
                extend_tokenizer(tokenizer, new_tokens)
            except ValueError as err:
                raise ServeError(422, f"{what}: {err}") from err
        model.eval()
        slot = Slot(key, strategy, model, tokenizer, alone_reason=bankable(strategy), mixes=mixable(strategy))
        self.slots[key] = slot
        while len(self.slots) > self.max_structures:
            evicted, _ = self.slots.popitem(last=False)
            self.store.forget_structure(evicted)
            for mixes in [k for k in self.mixed if evicted in k]:
                del self.mixed[mixes]
        return slot

    def shared_memo(self, strategy: AdapterStrategy) -> dict:
        """``deepcopy`` memo that makes the copy reuse the base's parameters and buffers, except those the
        strategy owns."""
        memo = {}
        for name, parameter in self.base.named_parameters(remove_duplicate=False):
            if not strategy.owns_base_parameter(name):
                memo[id(parameter)] = parameter
        for buffer in self.base.buffers():
            memo[id(buffer)] = buffer
        return memo

    def mixed_model(self, slots: dict[str, Slot]) -> MixedModel:
        """The model that runs rows of ``slots``' structures (and base rows) in one pass, built once per set."""
        key = tuple(sorted(slots))
        mixed = self.mixed.get(key)
        if mixed is None or any(mixed.slots[k] is not slots[k] for k in key):
            mixed = self.mixed[key] = MixedModel(self.base, slots)
            while len(self.mixed) > self.max_structures:
                self.mixed.popitem(last=False)
        self.mixed.move_to_end(key)
        return mixed
