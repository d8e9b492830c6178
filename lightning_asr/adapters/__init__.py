"""Adaptation strategies behind one interface; ``build_strategy(config)`` picks one by ``config.name``.

A strategy is one file: its config dataclass and its class, registered together (``base.register``).
"""

from lightning_asr.adapters import (  # noqa: F401  (each registers its strategies)
    blora,
    bottleneck,
    ewc,
    full_ft,
    glora,
    l2sp,
    lora,
    lwf,
    replay,
)
from lightning_asr.adapters.base import (
    STRATEGIES,
    AdapterStrategy,
    StrategyConfig,
    adapter_config,
    build_strategy,
    inference_settings,
    load_plugins,
    matches_any,
    register,
    strategy_class,
    training_only,
    unadapted_strategy,
)

__all__ = [
    "STRATEGIES",
    "AdapterStrategy",
    "StrategyConfig",
    "adapter_config",
    "build_strategy",
    "inference_settings",
    "load_plugins",
    "matches_any",
    "register",
    "strategy_class",
    "training_only",
    "unadapted_strategy",
]
