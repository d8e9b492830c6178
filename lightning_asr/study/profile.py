"""A benchmark profile: the YAML under ``configs/bench/`` that names the corpus, the base, the sets, the
strategies, the budget and how the comparison decides, typed by ``BenchConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import lightning_asr
from lightning_asr.config import ConfigError, load_config

ROOT = Path(lightning_asr.__file__).resolve().parents[1]  # a source checkout: configs/ and git


@dataclass
class CorpusSection:
    build: bool = True  # false: use manifests already under ``root`` (<root>/<set>/<split>.jsonl)
    root: str = "data_manifests/synth"
    seed: int = 0
    train: int = 800
    dev: int = 50
    test: int = 50
    target_train: int = 400


@dataclass
class BaseSection:
    spec: str = "whisper-toy"  # preset, local directory or hub id
    pretrain: bool = True  # pretrain a preset on the source training sets (ignored for directories and hub ids)
    train: dict = field(default_factory=dict)  # run-config overrides for pretraining
    require_vocabulary_coverage: bool = True  # stop if a target token never occurs in the source training text
    cache_dir: str = ".cache/bases"
    # the gate: a pretrained base whose error on a source set's dev split is above its bound ({set: bound},
    # e.g. {en: 0.05}) stops the benchmark and is not cached as good (it is kept beside, as <name>.rejected)
    max_dev_error: dict = field(default_factory=dict)


@dataclass
class CurvesSection:
    points: int = 5  # evaluations along each cell's training, step 0 and the last step included (0: none)
    subset: int = 24  # utterances of each source and target dev set, the first ones of each manifest


@dataclass
class StatisticsSection:
    """How the comparison decides (``study/statistics.py``)."""

    replicates: int = 1000  # crossed bootstrap replicates (seeds and utterances resampled together)
    # the seeds a decisive comparison is planned on: --check prints what it can detect there
    decision_seeds: int = 10
    # the learning levels fronts are compared at: the target's cross-entropy per token as fractions of the
    # base's, the same for every strategy (none of them sets the level)
    front_levels: list[float] = field(default_factory=lambda: [0.5, 0.3, 0.2])
    # the λ curves (the fronts) score the first this many utterances of each test set (0: all); their bootstrap
    # weights are those utterances' weights in the test sets' draw, so fronts and end points stay paired
    front_utterances: int = 0
    # label-free drift in likelihood: every cell's (and the base's) teacher-forced cross-entropy on the base's own
    # transcripts of the source test audio, one pass per model; for sources whose transcripts are missing or worse
    # than the base (a real checkpoint on synthetic English), where drift, not forgetting, measures retention
    drift_cross_entropy: bool = False
    # a finished result with several seeds (<target>: the profile's target set) whose measured variance --check
    # turns into minimum detectable differences
    pilot: str = ""
    # equivalence margins ("no difference" within ±margin), in the units of each paired difference
    margins: dict = field(default_factory=lambda: {"forgetting": 0.02, "target_error": 0.005, "source_ce": 0.05})


@dataclass
class ExecutionSection:
    """How cells are dispatched (engineering only: nothing here enters a cell's identity)."""

    # torch threads per cell (0: this machine's cores divided by the workers, at least 1)
    threads_per_cell: int = 0
    gpus_per_cell: int = 0  # GPUs each cell's worker reserves (Ray: num_gpus; SLURM: gpus_per_node)
    retries: int = 2  # how often a cell whose worker died runs again
    # submitit: "local" forces its local executor; empty picks SLURM where sbatch is found, else local
    cluster: str = ""
    slurm: dict = field(default_factory=dict)  # submitit parameters, e.g. {slurm_partition: gpu, timeout_min: 240}


@dataclass
class BenchConfig:
    name: str = "forgetting-embedded"  # the MLflow experiment
    based_on: str | None = None  # a profile whose settings this one starts from
    corpus: CorpusSection = field(default_factory=CorpusSection)
    base: BaseSection = field(default_factory=BaseSection)
    source_sets: list[str] = field(default_factory=lambda: ["en", "ko", "zh"])
    target_set: str = "ko-en"
    # where a set's manifests are, when not <corpus.root>/<set>/<split>.jsonl: {set: {train|dev|test: path}}
    # (importers name splits after the corpus: LibriSpeech's test-clean.jsonl, ASCEND's validation.jsonl)
    manifests: dict = field(default_factory=dict)
    strategies: list[Any] = field(default_factory=list)  # [{label, adapter: {...}, optim: {...}, ...}]
    # knob sweeps, one knob per method: [{label: lora, knob: optim.lr, values: [2.0e-3, 8.0e-3]}] adds a cell per
    # value and seed (label "lora@lr=0.002"); the method's front is the lower envelope of all its cells' λ
    # curves, while its end-point comparison stays the strategy's own setting
    sweeps: list[Any] = field(default_factory=list)
    reference: str = ""  # the label of the strategy the others are compared with (required)
    seeds: list[int] = field(default_factory=lambda: [1])
    adapt: dict = field(default_factory=dict)  # run-config overrides shared by every cell
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlartifacts"
    output_dir: str = "runs/bench"
    statistics: StatisticsSection = field(default_factory=StatisticsSection)
    curves: CurvesSection = field(default_factory=CurvesSection)
    execution: ExecutionSection = field(default_factory=ExecutionSection)  # how cells are dispatched (--executor)
    # measured seconds per cell by strategy (training and evaluation) on the machine the profile is sized for;
    # --check estimates the run's cost from them
    cell_seconds: dict = field(default_factory=dict)


def sweep_entries(bench, where: Path | str = "profile") -> tuple[list[dict], dict[str, str]]:
    """The profile's strategy entries followed by one entry per knob-sweep value, and for each sweep entry the
    label of the method (strategy) it belongs to."""
    entries = [OmegaConf.to_container(entry, resolve=True) for entry in bench.strategies]
    by_label = {entry["label"]: entry for entry in entries}
    methods: dict[str, str] = {}
    sweeps = [OmegaConf.to_container(OmegaConf.create(sweep), resolve=True) for sweep in bench.sweeps]
    swept = [sweep.get("label") for sweep in sweeps]
    for sweep in sweeps:
        unknown = sorted(set(sweep) - {"label", "knob", "values"})
        if unknown or not {"label", "knob", "values"} <= set(sweep):
            raise ConfigError(
                f"{where}: a sweep is {{label, knob, values}}, got {sorted(sweep)} — fix: e.g. "
                "{label: lora, knob: optim.lr, values: [2.0e-3, 8.0e-3]}"
            )
        if sweep["label"] not in by_label:
            raise ConfigError(
                f"{where}: sweep of {sweep['label']!r}, which is not among the strategies {list(by_label)}"
            )
        if swept.count(sweep["label"]) > 1:
            raise ConfigError(f"{where}: {sweep['label']!r} has two sweeps — fix: one knob per method")
        own = OmegaConf.merge(bench.adapt, by_label[sweep["label"]])
        for value in sweep["values"]:
            if OmegaConf.select(own, sweep["knob"]) == value:
                raise ConfigError(
                    f"{where}: sweep of {sweep['label']} {sweep['knob']}={value} is the strategy's own setting — "
                    "fix: leave it out of values (the strategy's own cell is already a point of its front)"
                )
            entry = OmegaConf.create(by_label[sweep["label"]])
            OmegaConf.update(entry, sweep["knob"], value, force_add=True)
            label = f"{sweep['label']}@{sweep['knob'].rsplit('.', 1)[-1]}={value:g}"
            entries.append({**OmegaConf.to_container(entry), "label": label})
            methods[label] = sweep["label"]
    return entries, methods


def profile_path(profile: str, kind: str = "bench", names: str = "embedded, smoke") -> Path:
    """A profile by name (``configs/<kind>/<name>.yaml``) or path."""
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else ROOT / "configs" / kind / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: no such {kind} profile — fix: use {names} or a YAML under configs/{kind}/")
    return path


def load_bench_config(profile: str, overrides: list[str] | None = None):
    """A benchmark profile by name (``configs/bench/<name>.yaml``) or path, with ``key=value`` overrides. A
    profile whose ``based_on`` names another starts from that one's settings (one level)."""
    path = profile_path(profile)
    parent = (OmegaConf.load(path) or {}).get("based_on")
    bench = load_config([profile_path(parent), path] if parent else path, overrides, schema=BenchConfig)
    if any("label" not in entry for entry in bench.strategies):
        raise ConfigError(f"{path}: every entry of 'strategies' needs a 'label'")
    return bench, path
