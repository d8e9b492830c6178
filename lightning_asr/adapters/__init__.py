"""Adaptation strategies behind one interface; ``build_strategy(config)`` picks one by ``config.name``."""

from lightning_asr.adapters import blora, full_ft, glora, lora  # noqa: F401  (each registers its strategies)
from lightning_asr.adapters.base import STRATEGIES, AdapterStrategy, build_strategy, register

__all__ = ["STRATEGIES", "AdapterStrategy", "build_strategy", "register"]
