"""Adaptation strategies behind one interface; ``build_strategy(config)`` picks one by ``config.name``."""

from lightning_asr.adapters.base import STRATEGIES, AdapterStrategy, build_strategy, register
from lightning_asr.adapters import full_ft  # noqa: F401  (registers full_ft and frozen)

__all__ = ["STRATEGIES", "AdapterStrategy", "build_strategy", "register"]
