"""The interface every adaptation strategy implements, its config, and the registry that selects one by name.

A strategy owns one decision: which weights change and how. It is one class and one config dataclass,
registered together (as PEFT registers ``LoraConfig`` with its tuner)::

    @dataclass
    class ScalingConfig(StrategyConfig):
        name: str = "scaling"
        init: float = 1.0

    @register("scaling", ScalingConfig)
    class Scaling(AdapterStrategy):
        def attach(self, model, for_training=True): ...

The rest of the framework (training, export, serving, the benchmark) only talks to this interface: what a
strategy trains (``trainable_parameters``), which base weights it overwrites (``owns_base_parameter``),
whether it folds into the base (``mergeable``), which settings only matter for training
(``training_only`` fields) and which it derives from the data (``derive_from_data``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_asr.adapters.export import base_fingerprint, read_adapter_tensors, save_adapter
from lightning_asr.adapters.sparsity import sparsity_report
from lightning_asr.config import ConfigError, check_keys, failing_key


def training_only(default=None, default_factory=None):
    """A config field that shapes training only (a regulariser's weight, a noise mode): adapters that differ
    in it have the same modules, so a server puts them in one structure."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"training_only": True})
    return field(default=default, metadata={"training_only": True})


@dataclass
class StrategyConfig:
    """The keys of every strategy (``adapter:`` in a run config)."""

    name: str = "full_ft"
    # parameter-name patterns that train under every strategy and are exported with the adapter (PEFT's
    # modules_to_save), e.g. a CTC output layer made for a new vocabulary
    modules_to_save: list[str] = field(default_factory=list)
    # words the base tokenizer splits badly, added as new tokens whose embedding rows train under every
    # strategy and travel with the adapter export (lightning_asr/vocabulary.py)
    new_tokens: list[str] = field(default_factory=list)


STRATEGIES: dict[str, type[AdapterStrategy]] = {}


def register(name: str, config_class: type = StrategyConfig) -> Callable[[type], type]:
    """Register a strategy class and its config dataclass under ``name`` (``adapter.name`` in a run config)."""

    def decorator(cls: type) -> type:
        cls.name, cls.config_class = name, config_class
        STRATEGIES[name] = cls
        return cls

    return decorator


PLUGIN_GROUP = "lightning_asr.strategies"  # entry points whose modules register strategies when imported


def load_plugins(modules: list[str] | None = None) -> list[str]:
    """Import ``modules`` (dotted paths of the user's own strategy files) and every module an installed
    package names in the ``lightning_asr.strategies`` entry-point group, so the strategies they register are
    known. Returns the modules imported; a module that cannot be imported is an error naming it."""
    import importlib
    from importlib.metadata import entry_points

    names = list(modules or []) + [point.value.split(":")[0] for point in entry_points(group=PLUGIN_GROUP)]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(
                f"strategy plugin {name!r} cannot be imported ({err}) — fix: give a dotted module path on "
                "PYTHONPATH (e.g. my_lab.strategies), or install the package that provides it"
            ) from err
    return names


def strategy_class(name: str) -> type[AdapterStrategy]:
    if name not in STRATEGIES:
        close = difflib.get_close_matches(str(name), list(STRATEGIES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown adapter strategy {name!r} — fix: {hint}choose from {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def adapter_config(values, origin: str = "config", lenient: bool = False) -> DictConfig:
    """``values`` (a dict or DictConfig with ``name``) checked and typed against that strategy's config class.
    ``lenient`` drops keys that belong to another strategy's config: adapter configs written before each
    strategy had its own class held every strategy's keys."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    values = dict(values or {})
    name = values.get("name", StrategyConfig.name)
    if not isinstance(name, str):
        raise ConfigError(
            f"{origin}: 'adapter.name' is {name!r:.40}, not a strategy name — fix: name one of "
            f"{', '.join(sorted(STRATEGIES))}"
        )
    try:
        config_class = strategy_class(name).config_class
    except ConfigError as err:
        raise ConfigError(f"{origin}: 'adapter.name': {err}") from None
    own = {f.name for f in fields(config_class)}
    if lenient:
        others = {f.name for cls in STRATEGIES.values() for f in fields(cls.config_class)}
        values = {k: v for k, v in values.items() if k in own or k not in others}
    for key in values:
        if key not in own:
            holders = sorted(n for n, cls in STRATEGIES.items() if key in {f.name for f in fields(cls.config_class)})
            if holders:
                raise ConfigError(
                    f"{origin}: 'adapter.{key}' is not a setting of the {name} strategy (it belongs to "
                    f"{', '.join(holders)}) — fix: remove it, or set adapter.name to one of those"
                )
    check_keys(values, config_class, origin, "adapter.")
    try:
        return OmegaConf.merge(OmegaConf.structured(config_class), values)
    except Exception as err:  # type errors: rank=abc
        key = getattr(err, "full_key", None) or failing_key(OmegaConf.structured(config_class), values)
        raise ConfigError(
            f"{origin}: invalid value for 'adapter.{key}': {str(err).splitlines()[0]} — fix: give it "
            f"a value of the type {config_class.__name__} declares"
        ) from err


def build_strategy(values) -> AdapterStrategy:
    """The strategy named by ``values["name"]`` (``adapter`` of a run config: a dict or a typed config)."""
    config = adapter_config(values)
    return STRATEGIES[config.name](config)


def unadapted_strategy() -> str:
    """The name of the strategy that evaluates the base model itself (it trains nothing)."""
    return next(name for name, cls in STRATEGIES.items() if cls.unadapted)


def inference_settings(config) -> dict:
    """The config of an adapter without its ``training_only`` fields: what decides its modules' structure."""
    config_class = strategy_class(config["name"]).config_class
    kept = {f.name for f in fields(config_class) if not f.metadata.get("training_only")}
    values = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    return {k: v for k, v in values.items() if k in kept}


def matches_any(name: str, patterns: list[str]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


class AdapterStrategy:
    """Base class: no adapter modules, no regulariser. Subclasses override what they change."""

    name = "base"
    config_class: type = StrategyConfig
    # merge() folds the adaptation into the base weights, so inference costs nothing extra
    mergeable = False
    not_mergeable_reason = "this strategy has nothing to fold into the base weights"
    peft_exports_factors = False  # the tensors alone reproduce the adapted model as a PEFT LoRA
    imports_plain_peft = False  # a directory PEFT wrote (no side file) holds everything this strategy needs
    target_names: list[str] | None = None  # the base modules this strategy wraps, when it wraps some
    unadapted = False  # trains nothing: evaluating it evaluates the base model itself
    # reads the source sets' training data (``source_manifests`` in its config, which the benchmark fills with
    # the base's source training sets where a profile leaves it empty): a rehearsal or importance baseline
    reads_source_data = False
    # scale_adaptation(λ) scales exactly what the strategy adds to the base's layers by λ (0: the base, 1: as
    # trained): a learning–forgetting curve of a trained model for free. A strategy that overwrites base weights
    # cannot, and is interpolated in parameter space instead (W0 + λ·ΔW, with the base's weights at hand).
    scalable = False

    def __init__(self, config):
        typed = isinstance(config, DictConfig) and OmegaConf.get_type(config) is self.config_class
        self.config = config if typed else adapter_config(config)
        self.model: nn.Module | None = None

    @classmethod
    def derive_from_data(cls, config, utterances) -> dict:
        """Settings this strategy takes from the data (e.g. ELBO's example count): a dict of updates to
        ``config`` (empty when nothing is to be derived), applied before the strategy is built.
        ``utterances.train`` and ``.val`` read the run's manifests on first use."""
        return {}

    def attach(self, model: nn.Module, for_training: bool = True) -> nn.Module:
        """Inject this strategy's modules into ``model`` and set ``requires_grad``; return the model. The base is
        fingerprinted first, so adapters saved later refuse to load onto another base. ``for_training=False``
        (serving) skips state kept only for training statistics."""
        self.model = model
        self.base_fingerprint = base_fingerprint(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(self.owns_base_parameter(name))
        new_tokens = list(self.config.new_tokens or [])
        if new_tokens:  # rows for added tokens train under every strategy (lightning_asr/vocabulary.py)
            from lightning_asr.vocabulary import extend_model_vocabulary

            extend_model_vocabulary(model, len(new_tokens)).requires_grad_(True)
        return model

    def scale_adaptation(self, factor: float) -> None:
        """Scale this strategy's contribution to every adapted layer by ``factor`` (see ``scalable``)."""
        raise NotImplementedError(
            f"strategy {self.name!r} does not scale its adaptation: interpolate its parameters against the base's"
        )

    def bank_modules(self) -> dict[str, nn.Module]:
        """The sub-modules a server may gather per row to decode many users of this strategy in one pass
        (``lightning_asr/serving/bank.py``), by module name. Each must compute ``x @ weight.T + bias`` at
        inference from the tensors it lists in ``banked_tensors`` (``nn.Linear``: its weight and bias), and
        together they must hold every trainable tensor, or the server decodes the strategy's users one at a
        time. Wrapped layers that also define ``adapter_output(x, base_output)`` (what the layer adds to its
        base layer's output) share one pass with other such strategies. The default declares none: a new
        strategy's users are decoded alone, each with exactly its own weights."""
        return {}

    def owns_base_parameter(self, name: str) -> bool:
        """Whether this strategy trains (and so overwrites) the base parameter ``name``. Everything else is the
        base's own and may be shared, untouched, by every user of the base (weight separation)."""
        return matches_any(name, list(self.config.modules_to_save or []))

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight decay on matrices, none on vectors (biases, norms, gates' biases).
        A strategy config with its own ``weight_decay`` (set) replaces the run's ``optim.weight_decay``."""
        own = self.config.get("weight_decay")
        weight_decay = weight_decay if own is None else own
        parameters = [p for _, p in self.trainable_parameters()]
        return [
            {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ]

    def prepare(self, module) -> None:
        """Called once before training, with the ``ASRModule`` (its model still the base's weights, also when a
        checkpoint is resumed, and its processor, backbone and run config): a strategy that needs data or a
        frozen copy of its own (EWC's Fisher information on the source sets) makes it here. Default: nothing."""

    def source_manifests(self, purpose: str) -> list[str]:
        """The source sets' training manifests a strategy that ``reads_source_data`` reads (``purpose``: what it
        does with them, for the error when there are none)."""
        if not self.config.get("source_manifests"):
            raise ValueError(
                f"adapter.source_manifests is empty: {self.name} {purpose} — fix: list the source sets' training "
                "manifests (the forgetting benchmark fills them in)"
            )
        return list(self.config.source_manifests)

    def read_source_utterances(self, module, purpose: str, count: int) -> list:
        """The first ``count`` utterances of each of ``source_manifests`` as dataset items (utterance, audio),
        checked as any manifest is; ``module.backbone.collator(module.processor)`` batches them."""
        from lightning_asr.data.datamodule import ManifestDataModule, set_name

        data = ManifestDataModule(module.processor, module.backbone, {"feature_cache": False}, module.config.seed)
        return [
            item
            for manifest in self.source_manifests(purpose)
            for item in data.dataset(set_name(manifest), data.read(manifest)[:count])
        ]

    def regularizer(self, batch: dict | None = None) -> torch.Tensor:
        """Added to the training loss (BLoRA's KL term, L2-SP's and EWC's pull towards the base); zero for
        strategies without one. ``batch``: the training step's batch, for a regulariser that reads the data."""
        return torch.zeros((), device=next(self.model.parameters()).device)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that differ from the base model: all a device needs besides the shared base."""
        return {n: p.detach().clone() for n, p in self.trainable_parameters()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy ``state`` into the model. ``strict``: exactly the trainable parameters, so an adapter never
        writes a frozen (shared) base weight."""
        own = dict(self.model.named_parameters())
        trained = {n for n, _ in self.trainable_parameters()}
        unknown = sorted(set(state) - (trained if strict else set(own)))
        missing = sorted(trained - set(state))
        if strict and (unknown or missing):
            raise KeyError(
                f"adapter state does not fit this {self.name} strategy: unknown {unknown[:5]}, missing {missing[:5]}"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if name in own:
                    own[name].copy_(tensor)

    def is_peft_tensor(self, name: str) -> bool:
        """Whether PEFT's files carry this adapter tensor (where ``peft_exports_factors``)."""
        return False

    def settings_mismatch(self, saved: dict) -> list[str]:
        """Keys of an exported adapter's config (``saved``) that must equal this strategy's for its tensors to
        compute the function they were trained for."""
        return ["new_tokens"] if list(saved.get("new_tokens") or []) != list(self.config.new_tokens or []) else []

    def merge(self) -> None:
        """Fold the adaptation into the base weights for inference (only where ``mergeable``)."""
        raise NotImplementedError(self.not_mergeable_reason)

    def unmerge(self) -> None:
        """Undo ``merge``."""

    def is_merged(self) -> bool:
        return False

    def merge_targets(self) -> list[torch.Tensor]:
        """The base tensors ``merge`` writes into (a server keeps copies and restores them bit for bit)."""
        return []

    def save_adapter(self, directory, overwrite: bool = False):
        """Adapter-only export (safetensors + JSON; PEFT files for LoRA and BLoRA). See ``adapters.export``."""
        return save_adapter(self, directory, overwrite)

    def load_adapter(self, directory, ignore_fingerprint: bool = False) -> None:
        """Load an exported adapter; refuses another strategy, another base model or missing files."""
        self.load_adapter_state_dict(read_adapter_tensors(self, directory, ignore_fingerprint), strict=True)

    def factor_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The adapter's own tensors per adapted module (none for strategies without adapter modules)."""
        return {}

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """The effective change of each adapted weight matrix, by module name."""
        return {}

    def base_weights(self) -> dict[str, torch.Tensor]:
        """W0 of each module in ``delta_weights``, by module name (for readings of delta W against its base)."""
        return {}

    def sparsity_stats(self) -> dict:
        """Histograms of |entries| and fractions below 1e-1 ... 1e-6, per module and overall, and the readings
        of delta W against W0 (``adapters.sparsity``)."""
        config = self.model.config
        width = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
        with torch.no_grad():
            return sparsity_report(
                self.factor_tensors(), self.delta_weights(), self.base_weights(), width, self.config.get("rank")
            )

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for _, p in self.trainable_parameters())
        return {"trainable": trainable, "total": total}
