"""Run configuration: OmegaConf structured configs. Configs are data: YAML files plus ``key=value`` overrides.

Every key is checked against the schema below before merging, so a typo is an error that names the key,
where it came from and the closest valid key, instead of a setting silently ignored.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@dataclass
class ModelConfig:
    spec: str = "whisper-tiny-random"  # preset, local HF directory or hub id
    tokenizer: str | None = None  # None: the model directory's own, else the built-in one
    init_seed: int = 0  # random weights of presets
    # wav2vec2-CTC: chars, or jamo (Korean as conjoining jamo; lightning_asr/models/wav2vec2.py)
    ctc_unit: str = "chars"
    # wav2vec2-CTC: the vocabulary; built from the manifests when empty
    ctc_tokens: list[str] = field(default_factory=list)
    # Whisper: weight of an auxiliary CTC loss on the encoder output (hybrid CTC/attention training,
    # lightning_asr/models/encoder_ctc.py); its characters are read from the training manifests when empty
    encoder_ctc_weight: float = 0.0
    encoder_ctc_units: list[str] = field(default_factory=list)
    # Whisper, training only: the share of text tokens among the decoder's inputs replaced by a random token of
    # the batch, so that a decoder which predicts a template corpus from its own history must listen sooner
    decoder_input_dropout: float = 0.0
    # recompute activations in the backward pass (less memory, ~30 % more time); adapters in checkpointed
    # layers still get gradients (lightning_asr/module.py, enable_gradient_checkpointing)
    gradient_checkpointing: bool = False
    # Whisper: keep the first N encoder positions (N / 50 s windows; 300 = 6 s): a real checkpoint's 30 s
    # window costs five times the encoder time of 6 s on short utterances (None: the model's own window)
    encoder_positions: int | None = None


@dataclass
class SpecAugmentConfig:
    enabled: bool = True
    freq_masks: int = 2
    freq_mask_param: int = 15
    time_masks: int = 2
    time_mask_param: int = 40


@dataclass
class DataConfig:
    train_manifests: list[str] = field(default_factory=list)
    val_manifests: list[str] = field(default_factory=list)  # the first one is monitored (val/loss)
    test_manifests: list[str] = field(default_factory=list)
    batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 0
    bucket_size: int = 64  # batches are drawn from buckets of this many similar-length utterances
    skip_bad_lines: bool = False
    # keep each manifest's model inputs (Whisper's log-mel windows) beside it, computed once
    # (lightning_asr/data/features.py); SpecAugment still applies
    feature_cache: bool = True
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio


@dataclass
class DecodeConfig:
    num_beams: int = 1
    max_new_tokens: int = 48
    language: str = "manifest"  # per-utterance from the manifest, a fixed code such as "ko", or "auto"
    in_validation: bool = True  # decode during validation (error rates); false: validation loss only


@dataclass
class ScoringConfig:
    """Text normalisation and pooling of error rates (lightning_asr/text.py, lightning_asr/metrics.py)."""

    numbers: str = "keep"  # keep | words: spell digits out in English sets
    # basic | whisper: Whisper's EnglishTextNormalizer (spelling map, "mr" -> "mister", numbers as digits) on
    # monolingual English sets, as published Whisper figures are scored; code-switched sets keep basic
    english: str = "basic"
    traditional_to_simplified: bool = False  # Chinese: score in simplified characters
    korean_jamo_map: bool = True  # Korean: compatibility jamo -> conjoining jamo before scoring
    average: str = "corpus"  # corpus: sum of edits / sum of tokens; utterance: mean of per-utterance rates


@dataclass
class EarlyStoppingConfig:
    """Stop before ``trainer.max_steps`` on the first validation set's loss (``val/loss``): once it is at or
    below ``stop_below``, or after ``patience`` validations that do not lower it by ``min_delta`` (0: never).
    The checkpoint kept is the best one either way. ``errors_below`` (validation set -> bound, e.g.
    ``{en/dev: 0.03}``; needs ``decode.in_validation``): stop once every named set's decoded error is at or
    below its bound."""

    stop_below: float | None = None
    patience: int = 0
    min_delta: float = 0.0
    errors_below: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    max_steps: int = 100  # the cap: early_stopping may end the run sooner
    val_check_interval: int | None = None  # steps between validations; None: once per epoch
    check_val_every_n_epoch: int | None = 1
    limit_val_batches: float | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # ddp: one process per device; see docs/scale-out.md
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class TrainConfig:
    seed: int = 0
    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # one strategy's settings, checked against that strategy's own config class (lightning_asr/adapters/):
    # the shared low-rank keys, BLoRA's and GLoRA's keys each live with their strategy
    adapter: Any = field(default_factory=lambda: {"name": "full_ft"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def check_keys(values: Any, schema: type, origin: str, prefix: str = "") -> None:
    """Raise ``ConfigError`` for the first key of ``values`` that ``schema`` (a dataclass) does not have."""
    if not isinstance(values, dict) or not is_dataclass(schema):
        return
    known = {f.name: f for f in fields(schema)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys here: {', '.join(known)}"
            raise ConfigError(f"{origin}: unknown config key '{dotted}'{hint}")
        factory = known[key].default_factory
        if factory is not MISSING and is_dataclass(factory):
            if not isinstance(value, (dict, DictConfig)):
                raise ConfigError(
                    f"{origin}: '{dotted}' is a section, not a value (got {value!r:.40}) — fix: set "
                    f"its keys, e.g. {dotted}.{fields(factory)[0].name}=..."
                )
            check_keys(value, factory, origin, dotted + ".")


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for override in overrides:
        if not isinstance(override, str) or "=" not in override:
            raise ConfigError(
                f"command line: override {override!r} is not key=value — fix: write it as key=value "
                "(key=null for no value)"
            )
        if not override.split("=", 1)[0].strip():
            raise ConfigError(f"command line: override {override!r} has no key — fix: write it as key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as err:  # omegaconf's grammar or YAML parser errors: "a=${", "a=[1,"
        key = getattr(err, "full_key", None) or _first_bad_key(overrides)
        raise ConfigError(
            f"command line: cannot parse the value of '{key}' ({_first_line(err)}) — fix: quote it "
            "or write it as YAML, e.g. key=[a,b] or key='text'"
        ) from err


def _first_bad_key(overrides: list[str]) -> str:
    for override in overrides:
        try:
            OmegaConf.from_dotlist([override])
        except Exception:
            return override.split("=", 1)[0]
    return "?"


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def failing_key(config: DictConfig, values: dict) -> str:
    """The first dotted key of ``values`` that does not merge into ``config`` on its own."""
    for key, value in flatten(values).items():
        single: Any = value
        for part in reversed(key.split(".")):
            single = {part: single}
        try:
            OmegaConf.merge(config, single)
        except Exception:
            return key
    return "?"


def _origin_of(key: str, sources: list[tuple[str, Any]]) -> str:
    """The last source that sets ``key`` (dotted), which is the one whose value counts."""
    for origin, values in reversed(sources):
        node = values
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return origin
    return "the defaults"


def load_config(
    path: str | Path | list | None = None, overrides: list[str] | None = None, schema: type = TrainConfig
) -> DictConfig:
    """Merge the schema's defaults, YAML files (a path or a list, merged in order) and ``key=value`` overrides;
    unknown keys are errors."""
    config = OmegaConf.structured(schema)
    sources = []
    files = [] if path is None else list(path) if isinstance(path, list) else [path]
    for file in files:  # merged in order
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file does not exist" + (" (it is a folder)" if path.exists() else ""))
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax, invalid UTF-8, an unreadable file
            raise ConfigError(f"{path}: not a readable YAML file ({_first_line(err)}) — fix: correct the YAML") from err
        if not isinstance(loaded, DictConfig):
            raise ConfigError(
                f"{path}: the file holds a {type(loaded).__name__}, not a mapping of keys — fix: write "
                "keys at the top level, e.g. 'trainer:' with 'max_steps: 100' below it"
            )
        sources.append((str(path), loaded))
    if overrides:
        sources.append(("command line", _parse_overrides(overrides)))
    plain = []
    containers = []
    for origin, values in sources:
        try:
            containers.append((origin, OmegaConf.to_container(values, resolve=False)))
        except Exception as err:
            raise ConfigError(f"{origin}: {_first_line(err)}") from err
    typed_adapter = any(f.name == "adapter" for f in fields(schema))
    # the adapter section is checked against the strategy the sources choose in the end, source by source,
    # so that the first bad setting reported is the first one read
    strategy = _chosen_strategy(containers) if typed_adapter else None
    for (origin, container), (_, values) in zip(containers, sources):
        check_keys(container, schema, origin)
        if typed_adapter and isinstance(container, dict) and "adapter" in container:
            _check_adapter_source(container["adapter"], strategy, origin)
        plain.append((origin, container))
        try:
            config = OmegaConf.merge(config, values)
        except Exception as err:  # type errors: "max_steps=abc"
            key = getattr(err, "full_key", None) or failing_key(config, container)
            raise ConfigError(
                f"{origin}: invalid value for '{key}': {_first_line(err)} — fix: give it a value of "
                "the type lightning_asr/config.py declares"
            ) from err
    try:  # interpolations such as ${seed} are resolved when the run starts: a broken one is an error now
        OmegaConf.to_container(config, resolve=True)
    except Exception as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(
            f"{_origin_of(str(key), plain)}: cannot resolve '{key}' ({_first_line(err)}) — fix: "
            "correct the ${...} interpolation or write the value itself"
        ) from err
    if typed_adapter:
        config.adapter = _typed_adapter(config, plain)
    OmegaConf.set_readonly(config, False)
    return config


def _chosen_strategy(containers: list[tuple[str, Any]]):
    """``adapter.name`` as the last source that sets it has it (the default strategy's where none does)."""
    name = None
    for _, container in containers:
        adapter = container.get("adapter") if isinstance(container, dict) else None
        if isinstance(adapter, dict) and "name" in adapter:
            name = adapter["name"]
    return name


def _check_adapter_source(values: Any, strategy, origin: str) -> None:
    """One source's ``adapter`` keys and values against the config class of the strategy chosen in the end."""
    from lightning_asr.adapters import STRATEGIES, adapter_config

    if not isinstance(values, dict):
        raise ConfigError(
            f"{origin}: 'adapter' is a section, not a value (got {values!r:.40}) — fix: set its keys, "
            "e.g. adapter.name=lora"
        )
    unresolved = {k: v for k, v in values.items() if not (isinstance(v, str) and "${" in v)}  # checked once resolved
    if "name" in unresolved:  # a source's own strategy name must name one, even where a later source replaces it
        adapter_config({"name": unresolved["name"]}, origin)
    if isinstance(strategy, str) and strategy in STRATEGIES:  # a bad final name is reported by its own source
        unresolved["name"] = strategy
    adapter_config(unresolved, origin)


def _typed_adapter(config: DictConfig, sources: list[tuple[str, Any]]) -> DictConfig:
    """The merged ``adapter`` section typed by its strategy's config class; an error names its source."""
    from lightning_asr.adapters import adapter_config

    values = OmegaConf.to_container(config.adapter, resolve=True) if config.adapter is not None else {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{_origin_of('adapter', sources)}: 'adapter' is a section, not a value — fix: set its "
            "keys, e.g. adapter.name=lora"
        )
    try:
        return adapter_config(values, origin="config")
    except ConfigError as err:
        key = next((k for k in values if f"'adapter.{k}'" in str(err)), "name")
        raise ConfigError(str(err).replace("config:", f"{_origin_of(f'adapter.{key}', sources)}:", 1)) from None


def structured(schema: type, values, lenient_adapter: bool = False) -> DictConfig:
    """``values`` (a dict, e.g. from a checkpoint, or a DictConfig) checked and typed against ``schema``; a
    run config's ``adapter`` section is typed by its strategy. ``lenient_adapter``: adapter configs written
    before each strategy had its own class (they held every strategy's keys) are accepted."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    check_keys(values, schema, "config")
    try:
        config = OmegaConf.merge(OmegaConf.structured(schema), values)
    except Exception as err:
        raise ConfigError(f"config: {err}") from err
    if "adapter" in config and any(f.name == "adapter" for f in fields(schema)):
        from lightning_asr.adapters import adapter_config

        config.adapter = adapter_config(config.adapter, lenient=lenient_adapter)
    return config


def to_dict(config: DictConfig) -> dict:
    return OmegaConf.to_container(config, resolve=True)


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: for logging configs as parameters."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
