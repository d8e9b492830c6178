"""The forgetting benchmark: which adaptation strategy learns the target domain and keeps the source domains?

Stages, each cached or skipped when its result exists:
  0. data and base model: build the synthetic corpus; pretrain the preset base on the source training sets
     (cached under ``base.cache_dir`` by a hash of its config, the corpus checksum and the recipe version);
     a hub id or a local directory skips pretraining.
  1. evaluate the base model on every source and target test set;
  2. adapt: every (strategy, seed) cell trains on the target training set with the same budget, schedule and
     batch; the best checkpoint by target dev loss is kept;
  3. evaluate each adapted model on all test sets;
  4. compare: forgetting, adaptation gain, backward gain and forward loss against the reference strategy
     (``study/forgetting.py`` has the formulas), with intervals.
This file orchestrates the stages and runs the cells; the base model (pretraining, its cache and gate) is
``study/base_model.py``, what is written to MLflow ``study/records.py``, the statistics ``study/summary.py``.
Everything is logged to MLflow: a parent run per invocation, a child run per cell. A rerun reuses finished
cells (found by their tags: the cell's name and the hash of what makes its result, ``cell_hash``) and
resumes an interrupted cell from its last checkpoint, in the same MLflow run; ``force`` trains every cell
again in new runs (old runs stay).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
from omegaconf import DictConfig, OmegaConf

from lightning_asr.config import (
    ConfigError,
    ScoringConfig,
    TrainConfig,
    check_keys,
    flatten,
    structured,
    to_dict,
)
from lightning_asr.data.datamodule import set_language, set_name
from lightning_asr.files import held_lock, write_text_atomic
from lightning_asr.metrics import METRIC_NAMES, score_texts
from lightning_asr.models import backbone_for
from lightning_asr.study import records, tracking
from lightning_asr.study.base_model import BaseModel, say
from lightning_asr.study.curves import LearningCurve
from lightning_asr.study.executors import makespan_text
from lightning_asr.study.forgetting import Scores, label_free_drift
from lightning_asr.study.identity import (
    CELL_VERSION,
    base_identity,
    checksum,
    config_identity,
    digest,
    git_commit,
)
from lightning_asr.study.plan import cost_text
from lightning_asr.study.profile import sweep_entries
from lightning_asr.study.report import markdown_table
from lightning_asr.study.result import BenchmarkResult, CellResult
from lightning_asr.study.tasks import CellSpec
from lightning_asr.text import TextNormalizer, primary_unit

ABANDONED = "abandoned"  # the status tag of a cell's run whose process died before it could be resumed


class Benchmark:
    """One benchmark profile (a ``BenchConfig``) run for some seeds: ``run(seeds)`` goes through the stages and
    returns the comparison rows; ``check(seeds)`` validates every cell without running any."""

    def __init__(
        self,
        bench,
        config_path: Path,
        force: bool = False,
        parent_tags: dict | None = None,
        results_prefix: str = "",
    ):
        self.bench, self.config_path, self.force = bench, config_path, force
        # a caller that runs several benchmarks into one output folder names their comparison files apart
        self.results_prefix = results_prefix
        # extra tags of the parent run (its name, a run to nest under): a caller that groups benchmark runs
        self.parent_tags = dict(parent_tags or {})
        self.parent_id: str | None = None
        self.cell_runs: dict[tuple[str, int], str] = {}  # (label, seed) -> run id of each finished cell
        self.dispatched = False  # the cells ran on an executor's workers: what follows reads them back
        self.root = Path(bench.corpus.root)
        self.out = Path(bench.output_dir) / bench.name
        unknown = sorted(set(bench.manifests) - {*bench.source_sets, bench.target_set})
        if unknown:
            raise ConfigError(f"{config_path}: manifests for {unknown}, which are neither source_sets nor target_set")
        self.source_tests = [self.manifest(s, "test") for s in bench.source_sets]
        self.target = {split: self.manifest(bench.target_set, split) for split in ("train", "dev", "test")}
        self.test_manifests = self.source_tests + [self.target["test"]]
        self.source_names = [set_name(m) for m in self.source_tests]
        self.target_name = set_name(self.target["test"])
        if len(set(self.source_names + [self.target_name])) != len(self.test_manifests):
            raise ConfigError(
                f"{config_path}: two test manifests share the name <folder>/<file> "
                f"({self.source_names + [self.target_name]}) — fix: keep each set in its own folder"
            )
        self.target_rows: dict[str, list[list[dict]]] = {}  # label -> per seed, the target set's predictions
        self.curves: dict[str, dict[int, list[tuple]]] = {}  # label -> seed -> (step, target error, source error)
        self.stopped: dict[str, dict[int, float]] = {}  # label -> seed -> the step training stopped at
        self.base_rows: dict[str, list[dict]] = {}  # the base's per-utterance rows on every test set
        check_keys(OmegaConf.to_container(bench.adapt), TrainConfig, f"{config_path}: adapt")
        self.entries, self.methods = sweep_entries(bench, config_path)  # the strategies, then knob-sweep cells
        labels = [entry["label"] for entry in self.entries]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{config_path}: strategy labels must be unique, got {labels}")
        self.base = BaseModel(bench, config_path, self.manifest, self.out)
        if bench.reference not in labels:
            raise ConfigError(f"{config_path}: reference {bench.reference!r} is not among the strategies {labels}")

    # ---- stage 0 ----------------------------------------------------------------------------------------------
    def prepare_data(self) -> str:
        started = time.perf_counter()
        c = self.bench.corpus
        if c.build:
            from lightning_asr.data.synth import CorpusSpec, build_corpus

            say(f"stage 0: synthetic corpus {self.root}")
            build_corpus(
                CorpusSpec(c.seed, c.train, c.dev, c.test, c.target_train), self.root
            )  # every set: one corpus serves both target profiles
        manifests = sorted({*self.test_manifests, *self.target.values(), *self.base.source_train_manifests()})
        for manifest in manifests:
            if not Path(manifest).exists():
                raise ConfigError(
                    f"{manifest} does not exist — fix: build the corpus (corpus.build: true) or correct corpus.root"
                )
        say(f"stage 0: data ready in {time.perf_counter() - started:.1f} s")
        return checksum(manifests)

    def manifest(self, set_name_: str, split: str) -> str:
        entry = self.bench.manifests.get(set_name_, {})
        unknown = sorted(set(entry) - {"train", "dev", "test"})
        if unknown:
            raise ConfigError(
                f"{self.config_path}: manifests.{set_name_} has {unknown}; splits are train, dev and test"
            )
        return str(entry.get(split) or self.root / set_name_ / f"{split}.jsonl")

    # ---- stages 1-3 -------------------------------------------------------------------------------------------
    def cell_config(self, entry: dict, seed: int, base_spec: str) -> DictConfig:
        """The typed run config of one (strategy entry, seed) cell on ``base_spec``."""
        entry = dict(entry)
        label = entry.pop("label")
        check_keys(entry, TrainConfig, f"{self.config_path}: strategy {label}")
        merged = OmegaConf.merge(
            OmegaConf.structured(TrainConfig),
            self.bench.adapt,
            entry,
            {
                "seed": seed,
                "model": {"spec": base_spec},
                "data": {
                    "train_manifests": [self.target["train"]],
                    # the target's dev set first: its loss picks the best checkpoint and stops training; the
                    # source dev sets' cross-entropy at every validation is the cell's dense forgetting curve
                    "val_manifests": [self.target["dev"]] + [self.manifest(s, "dev") for s in self.bench.source_sets],
                    "test_manifests": [],
                },
            },
        )
        from lightning_asr.adapters import strategy_class

        if strategy_class(merged.adapter.name).reads_source_data and not merged.adapter.get("source_manifests"):
            # a rehearsal or importance baseline reads the data the base learned: its source training sets
            merged.adapter.source_manifests = [self.manifest(s, "train") for s in self.bench.source_sets]
        try:
            config = structured(TrainConfig, merged)
        except ConfigError as err:
            raise ConfigError(f"{self.config_path}: strategy {label}: {err}") from None
        config.output_dir = str(self.out / "cells" / f"{label}-seed{seed}-{self.cell_hash(config)[:8]}")
        return config

    def cell_hash(self, config) -> str:
        """What makes a cell's result: its config, the content of the data (not only the paths) and the utterances
        its λ curve scores."""
        return digest(
            {
                "config": config_identity(config),
                "data": self.corpus_checksum,
                "cell": CELL_VERSION,
                "front_utterances": self.bench.statistics.front_utterances,
                # only where asked for: the identities of cells run without it stay what they were
                **({"drift_cross_entropy": True} if self.bench.statistics.drift_cross_entropy else {}),
            }
        )

    def base_evaluation_path(self, base_spec: str, config) -> Path:
        """Where the base's evaluation is cached: under the base (its files, for a directory), the test sets,
        the decoding settings and the data's checksum."""
        key = digest(
            [base_identity(base_spec), self.test_manifests, to_dict(config.decode), self.corpus_checksum, CELL_VERSION]
        )
        return self.out / f"base-eval-{key[:12]}.json"

    def evaluate_base(self, base_spec: str) -> tuple[dict[str, Scores], dict[str, list[dict]]]:
        """The base's scores on every test set, and its per-utterance rows (cached)."""
        from lightning_asr.adapters import unadapted_strategy
        from lightning_asr.module import ASRModule
        from lightning_asr.train import evaluate

        config = self.cell_config({"label": "base", "adapter": {"name": unadapted_strategy()}}, 0, base_spec)
        cache = self.base_evaluation_path(base_spec, config)
        self.base_cache = cache
        if cache.exists() and not self.force:
            say(f"stage 1: reusing the base evaluation {cache}")
            rows = json.loads(cache.read_text())
        else:
            started = time.perf_counter()
            say(f"stage 1: evaluating the base model on {len(self.test_manifests)} test sets")
            module = ASRModule(config)
            results = evaluate(module, self.test_manifests)
            rows = module.predictions
            write_text_atomic(cache, json.dumps(rows, ensure_ascii=False))  # another run may write it too
            say(
                f"stage 1: base evaluated in {time.perf_counter() - started:.0f} s: "
                + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in sorted(results.items()) if k.endswith("/error"))
            )
        self.target_rows["base"] = [rows[self.target_name]]
        self.base_rows = rows
        if self.bench.statistics.drift_cross_entropy:
            self.base_drift_ce = self.base_drift_cross_entropy(config)
        return {name: Scores.from_rows(r) for name, r in rows.items()}, rows

    # ---- label-free drift in cross-entropy ------------------------------------------------------------------
    def drift_manifests(self) -> tuple[list[str], dict[str, list[int]]]:
        """Each source test set with the base's own transcripts as its text, written once beside the base's
        evaluation (same audio, absolute paths, same set names), and per set the original lines kept: a line the
        base left empty has no transcript to score and is left out."""
        folder = self.base_cache.with_name(self.base_cache.stem + "-drift")
        manifests, kept = [], {}
        from lightning_asr.data.manifest import read_manifest

        for manifest, name in zip(self.source_tests, self.source_names):
            by_line = {row["line"]: row["prediction"] for row in self.base_rows[name]}
            utterances = [u for u in read_manifest(manifest) if by_line.get(u.line, "").strip()]
            kept[name] = [u.line for u in utterances]
            path = folder / f"{name}.jsonl"  # <set folder>/<split>.jsonl: the set keeps its name
            text = "".join(replace(u, text=by_line[u.line]).to_json() + "\n" for u in utterances)
            if not path.exists() or path.read_text(encoding="utf-8") != text:  # a base evaluated again (--force)
                write_text_atomic(path, text)
            manifests.append(str(path))
        return manifests, kept

    def drift_cross_entropy(self, module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per source set, per utterance of the set (in line order): the model's summed cross-entropy (nats) on
        the base's own transcript and its label units; zero for lines the base left empty."""
        from lightning_asr.study.interpolation import cross_entropy_by_set

        manifests, kept = self.drift_manifests()
        scored = cross_entropy_by_set(module, manifests)
        out = {}
        for name in self.source_names:
            nats, units = np.zeros(len(self.base_rows[name])), np.zeros(len(self.base_rows[name]))
            position = {row["line"]: i for i, row in enumerate(self.base_rows[name])}
            index = [position[line] for line in kept[name]]
            nats[index], units[index] = scored[name]
            out[name] = (nats, units)
        return out

    def base_drift_cross_entropy(self, config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The base's cross-entropy on its own transcripts, the zero of every cell's drift (cached)."""
        from lightning_asr.module import ASRModule

        cache = self.base_cache.with_name(self.base_cache.stem + "-drift") / "base-ce.json"
        if cache.exists() and not self.force:
            return {name: (np.array(v[0]), np.array(v[1])) for name, v in json.loads(cache.read_text()).items()}
        started = time.perf_counter()
        scored = self.drift_cross_entropy(ASRModule(config))
        write_text_atomic(cache, json.dumps({name: [n.tolist(), u.tolist()] for name, (n, u) in scored.items()}))
        say(f"stage 1: the base scored on its own transcripts in {time.perf_counter() - started:.0f} s")
        return scored

    def plan(self, seeds: list[int], parent_run_id: str = "") -> list[CellSpec]:
        """Every cell of a run on ``seeds`` (strategies, then knob-sweep points; each over the seeds) as a
        specification a worker can run anywhere (``study/tasks.py``)."""
        profile = OmegaConf.to_yaml(self.bench, resolve=True)
        return [
            CellSpec(profile, str(self.config_path), entry["label"], seed, parent_run_id)
            for entry in self.entries
            for seed in seeds
        ]

    def entry(self, label: str) -> dict:
        """The strategy (or sweep-point) entry of ``label``."""
        for entry in self.entries:
            if entry["label"] == label:
                return entry
        raise ConfigError(
            f"{self.config_path}: no strategy labelled {label!r} (labels: {[e['label'] for e in self.entries]})"
        )

    def find_cell_runs(self, client, experiment: str, cell: str, config_hash: str):
        """The cell's finished runs and its unfinished ones (newest first); runs closed as abandoned are neither."""
        query = f"tags.`{tracking.TAG_CELL}` = '{cell}' and tags.`{tracking.TAG_CONFIG}` = '{config_hash}'"
        runs = client.search_runs([experiment], filter_string=query, order_by=["attributes.start_time DESC"])
        finished = [r for r in runs if r.data.tags.get(tracking.TAG_STATUS) == "finished"]
        unfinished = [r for r in runs if r.data.tags.get(tracking.TAG_STATUS) not in ("finished", ABANDONED)]
        return finished, unfinished

    def run_cell(self, client, experiment: str, parent_id: str, entry: dict, seed: int, base_spec: str) -> CellResult:
        """The cell's result: reused where a run of its identity finished, resumed where one was interrupted with
        a checkpoint, trained otherwise. One process at a time works on a cell (a lock beside its folder, which a
        dead process no longer holds: ``<output>/locks/``), so an unfinished run found under the lock belongs to a
        process that died."""
        config = self.cell_config(entry, seed, base_spec)
        lock = self.out / "locks" / f"{Path(config.output_dir).name}.lock"
        waiting = f"cell {entry['label']}-seed{seed}: another process works on it; waiting ({lock})"
        with held_lock(lock, lambda: say(waiting)):
            return self.run_cell_locked(client, experiment, parent_id, entry, seed, base_spec, config)

    def run_cell_locked(
        self, client, experiment: str, parent_id: str, entry: dict, seed: int, base_spec: str, config
    ) -> CellResult:
        from lightning.pytorch.loggers import MLFlowLogger

        from lightning_asr.module import ASRModule
        from lightning_asr.train import evaluate, train

        label = entry["label"]
        config_hash = self.cell_hash(config)
        cell = f"{label}-seed{seed}"
        finished, unfinished = self.find_cell_runs(client, experiment, cell, config_hash)
        if self.bench.curves.points > 0 and finished:
            # the curve is not part of a result's identity, but a cell reused without one would leave its
            # strategy out of the curves and the matched-target comparison
            with_curve = [r for r in finished if records.cell_curve(client, r.info.run_id)]
            if not with_curve and not self.force:
                say(f"cell {cell}: finished before without a learning curve (curves.points 0); trained again")
            finished = with_curve
        if finished and not self.force:
            run = finished[0]
            say(
                f"cell {cell}: finished on a worker (run {run.info.run_id})"
                if self.dispatched
                else f"cell {cell}: finished before (run {run.info.run_id}), reused"
            )
            if parent_id:
                client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_id)
            with tempfile.TemporaryDirectory() as tmp:
                rows = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions.json", tmp)).read_text())
                artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
                interpolation, drift_ce = (
                    json.loads(Path(client.download_artifacts(run.info.run_id, artifact, tmp)).read_text())
                    if artifact in artifacts
                    else {}
                    for artifact in (records.INTERPOLATION, records.DRIFT_CE)
                )
            self.target_rows.setdefault(label, []).append(rows[self.target_name])
            return self.cell_result(client, run.info.run_id, label, seed, rows, interpolation, drift_ce)
        output = Path(config.output_dir)
        resume = bool(unfinished) and not self.force and (output / "checkpoints" / "last.ckpt").exists()
        for run in unfinished[1:] if resume else unfinished:
            # left by a process that died before the cell's first checkpoint: closed, never reused as finished
            client.set_tag(run.info.run_id, tracking.TAG_STATUS, ABANDONED)
            client.set_terminated(run.info.run_id, "KILLED")
            say(f"cell {cell}: run {run.info.run_id} was left unfinished with nothing to resume; closed as killed")
        if resume:
            run_id = unfinished[0].info.run_id
            say(f"cell {cell}: resuming run {run_id} from {output / 'checkpoints' / 'last.ckpt'}")
            if parent_id:
                client.set_tag(run_id, "mlflow.parentRunId", parent_id)
        else:
            if output.exists():
                shutil.rmtree(output)
            tags = {
                **({"mlflow.parentRunId": parent_id} if parent_id else {}),
                "mlflow.runName": cell,
                tracking.TAG_BENCH: self.bench.name,
                tracking.TAG_CELL: cell,
                tracking.TAG_CONFIG: config_hash,
                tracking.TAG_STATUS: "running",
                "strategy": config.adapter.name,
                "label": label,
                "seed": str(seed),
                "base_model": base_spec,
                "dataset": self.bench.target_set,
                "git_commit": git_commit(),
            }
            run_id = client.create_run(experiment, tags=tags).info.run_id
            tracking.log_values(client, run_id, params=flatten(to_dict(config)))
            say(f"cell {cell}: adapting ({config.adapter.name}, {config.trainer.max_steps} steps) in run {run_id}")
        started = time.perf_counter()
        timer = StepTimer()
        callbacks = [timer]
        curves = self.bench.curves
        if curves.points > 0:
            callbacks.append(
                LearningCurve(
                    [self.manifest(s, "dev") for s in self.bench.source_sets],
                    self.target["dev"],
                    curves.subset,
                    curves.points,
                    config.trainer.max_steps,
                )
            )
        logger = MLFlowLogger(tracking_uri=self.bench.tracking_uri, run_id=run_id)
        result = train(config, resume=resume, force=not resume, logger=logger, extra_callbacks=callbacks)
        train_seconds = time.perf_counter() - started
        tracking.log_values(client, run_id, {"train/stopped_step": result.stopped_at_step})
        module = ASRModule.from_checkpoint(result.best_checkpoint)
        say(
            f"cell {cell}: trained in {train_seconds:.0f} s; evaluating the best checkpoint ({Path(result.best_checkpoint).name})"
        )
        stage = time.perf_counter()
        test_metrics = evaluate(module, self.test_manifests)
        seconds = {"train": train_seconds, "test": time.perf_counter() - stage}
        stage = time.perf_counter()
        interpolation = self.interpolation(module, config, base_spec)
        seconds["interpolation"] = time.perf_counter() - stage
        drift_ce = {}
        if self.bench.statistics.drift_cross_entropy:
            stage = time.perf_counter()
            drift_ce = self.drift_ce_rise(module)
            client.log_dict(run_id, drift_ce, records.DRIFT_CE)
            rise = {f"drift/{name}/ce": sum(v["ce"]) / max(sum(v["units"]), 1) for name, v in drift_ce.items()}
            tracking.log_values(client, run_id, rise)
            seconds["drift"] = time.perf_counter() - stage
        stage = time.perf_counter()
        records.log_cell(
            client,
            run_id,
            cell,
            module,
            config,
            test_metrics,
            timer.median(),
            seconds,
            interpolation,
            self.source_names,
            self.target_name,
        )
        seconds["logging"] = time.perf_counter() - stage
        tracking.log_values(client, run_id, {f"cell/seconds_{key}": value for key, value in seconds.items()})
        client.set_tag(run_id, tracking.TAG_STATUS, "finished")
        client.set_terminated(run_id, "FINISHED")
        say(
            f"cell {cell}: done in {time.perf_counter() - started:.0f} s ("
            + ", ".join(f"{key} {value:.0f} s" for key, value in seconds.items())
            + "): "
            + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in sorted(test_metrics.items()) if k.endswith("/error"))
        )
        self.target_rows.setdefault(label, []).append(module.predictions[self.target_name])
        return self.cell_result(client, run_id, label, seed, module.predictions, interpolation, drift_ce)

    def interpolation(self, module, config, base_spec: str) -> dict:
        """The cell's λ curve on the test sets (``study/interpolation.py``); empty where the backbone cannot
        score utterances by likelihood."""
        from lightning_asr.study.interpolation import interpolation_curve

        if not self.bench.statistics.front_levels:
            return {}

        def base_weights() -> dict:
            model, _ = backbone_for(base_spec).load(config.model)
            return dict(model.named_parameters())

        started = time.perf_counter()

        def scored(rows_by_set: dict[str, list[dict]]) -> dict | None:
            if not all("ce" in r for rows in rows_by_set.values() for r in rows):
                return None
            return {
                name: (np.array([r["ce"] for r in rows]), np.array([r["ce_units"] for r in rows], dtype=float))
                for name, rows in rows_by_set.items()
            }

        # the base's evaluation is λ = 0 and the cell's own test evaluation λ = 1: not scored twice
        known = {0.0: scored(self.base_rows), 1.0: scored(module.predictions)}
        try:
            curve = interpolation_curve(
                module,
                self.test_manifests,
                base_weights,
                known={k: v for k, v in known.items() if v},
                utterances=self.bench.statistics.front_utterances,
            )
        except NotImplementedError:
            return {}
        say(
            f"  λ curve ({len(curve['lambda'])} points, cross-entropy on {len(curve['sets'])} test sets) in "
            f"{time.perf_counter() - started:.0f} s"
        )
        return curve

    def cell_result(
        self, client, run_id: str, label: str, seed: int, predictions: dict, interpolation: dict, drift_ce: dict
    ) -> CellResult:
        dev_curves = {}
        for name in [set_name(self.target["dev"])] + [
            set_name(self.manifest(s, "dev")) for s in self.bench.source_sets
        ]:
            history = client.get_metric_history(run_id, f"val/{name}/loss")
            dev_curves[name] = [[m.step, m.value] for m in sorted(history, key=lambda m: m.step)]
        return CellResult(
            label,
            seed,
            run_id,
            {name: Scores.from_rows(rows) for name, rows in predictions.items()},
            {self.target_name: predictions[self.target_name]},
            interpolation,
            dev_curves,
            records.cell_stopped_step(client, run_id),
            self.drift(predictions, drift_ce),
        )

    def drift(self, predictions: dict[str, list[dict]], drift_ce: dict) -> dict[str, Scores]:
        """Per source set, the cell's label-free drift: its transcripts scored against the base's own, and where
        scored (``drift_ce``, from ``drift_ce_rise``) the rise of its cross-entropy on them over the base's."""
        drift = {}
        for name in self.source_names:
            lang = set_language(row["lang"] for row in self.base_rows[name])
            normalizer = TextNormalizer.from_scoring(lang, self.scoring)
            drift[name] = label_free_drift(
                self.base_rows[name], predictions[name], lang, normalizer, self.scoring.average
            )
            if name in drift_ce:
                drift[name].ce = np.array(drift_ce[name]["ce"], dtype=float)
                drift[name].ce_units = np.array(drift_ce[name]["units"], dtype=float)
        return drift

    def drift_ce_rise(self, module) -> dict[str, dict[str, list[float]]]:
        """Per source set and utterance: the model's cross-entropy (nats) on the base's own transcript minus the
        base's, and the transcript's label units (0 where the base said nothing)."""
        scored = self.drift_cross_entropy(module)
        return {
            name: {"ce": (nats - self.base_drift_ce[name][0]).tolist(), "units": units.tolist()}
            for name, (nats, units) in scored.items()
        }

    def check(self, seeds: list[int], workers: int = 1) -> list[str]:
        """Resolve and validate everything a run would use, without data, models or training: every cell's
        run config and strategy, and where each manifest is expected (missing ones are listed, not errors)."""
        from lightning_asr.adapters import build_strategy

        lines = [
            f"profile {self.config_path}: base {self.bench.base.spec} "
            f"({'pretrained here' if self.base.pretrains else 'used as it is'}), reference {self.bench.reference}"
        ]
        self.corpus_checksum = "unchecked"
        methods = []
        for entry in self.entries:
            for seed in seeds:
                config = self.cell_config(entry, seed, self.bench.base.spec)
                strategy = build_strategy(config.adapter)
                backbone_for(config.model.spec).check_decode(config.decode)
                methods.append(strategy.name)
                lines.append(
                    f"cell {entry['label']}-seed{seed}: {strategy.name}, {config.trainer.max_steps} steps, "
                    f"lr {config.optim.lr}, precision {config.trainer.precision}"
                )
        lines.append(
            f"{len(methods)} cells; {cost_text(methods, self.bench.cell_seconds)}"
            + makespan_text(methods, self.bench.cell_seconds, workers)
            + ("; plus pretraining the base, unless it is cached" if self.base.pretrains else "")
        )
        for manifest in sorted({*self.test_manifests, *self.target.values(), *self.base.source_train_manifests()}):
            lines.append(f"{'found  ' if Path(manifest).exists() else 'MISSING'} {manifest}")
        return lines + self.power_lines(seeds)

    def power_lines(self, seeds: list[int]) -> list[str]:
        """The minimum detectable differences at the run's seeds and at ``statistics.decision_seeds``, from the
        variance measured by the profile's ``statistics.pilot`` (a finished result with several seeds)."""
        from lightning_asr.study import summary

        pilot = self.bench.statistics.pilot.replace("<target>", self.bench.target_set)
        if not pilot:
            return []
        if not Path(pilot).exists():
            return [f"power: no pilot result at {pilot} to measure the variance from (see statistics.pilot)"]
        result = BenchmarkResult.from_json(Path(pilot).read_text())
        if len(result.seeds) < 2:
            return [f"power: the pilot {pilot} has one seed; its variance over seeds is unknown"]
        counts = sorted({n for n in (len(seeds), self.bench.statistics.decision_seeds) if n > 1})
        rows = summary.planned_power(result, counts, self.bench.statistics.replicates)
        measured = min(len(scores.edits) for scores in result.base.values())
        planned = self.bench.corpus.test if self.bench.corpus.build else measured
        if planned != measured:
            rows += summary.planned_power(result, counts, self.bench.statistics.replicates, utterances=planned)
        return [
            f"power (variance measured on {pilot}: {len(result.seeds)} seeds × {len(result.labels)} strategies, "
            f"{measured} test utterances per set"
            + (
                f"; the {planned}-utterance rows scale the utterance component to this profile's test sets"
                if planned != measured
                else ""
            )
            + "):",
            markdown_table(
                [
                    "strategy",
                    "seeds",
                    "test utterances per set",
                    "min. detectable ΔF",
                    "of the reference's forgetting",
                    "the same at 5 %/3 (Holm, 3 primary claims)",
                    "min. detectable ΔE",
                ],
                rows,
            ),
        ]

    # ---- stage 4 ----------------------------------------------------------------------------------------------
    def run(self, seeds: list[int], executor=None) -> BenchmarkResult:
        """Every stage; returns the ``BenchmarkResult`` the comparison was computed from (also logged to the
        parent run as ``result.json`` and written as ``output_dir/<name>/result-<target set>.json``).

        With an ``executor`` (``study/executors.py``), the cells run on its workers once the data, the base and
        its evaluation are ready here (so that no worker pretrains), logging through one tracking server; then
        every cell is read back from the store exactly as a cell finished before is, so the comparison is the
        sequential runner's."""
        if executor is not None and self.force:
            raise ConfigError(
                "--force with a parallel executor: workers that retry a cell must resume it, not start it again — "
                "fix: run --force with the sequential runner (--executor local --workers 1)"
            )
        started = time.perf_counter()
        bench = self.bench
        seconds = {}
        self.corpus_checksum = self.prepare_data()
        seconds["data"] = time.perf_counter() - started
        base_spec = self.base.prepare()
        seconds["base"] = time.perf_counter() - started - seconds["data"]
        client = tracking.client_for(bench.tracking_uri)
        experiment = tracking.experiment_id(client, bench.name, bench.artifact_root)
        parent = client.create_run(
            experiment,
            tags={
                "mlflow.runName": f"{bench.name} {time.strftime('%Y-%m-%d %H:%M')}",
                tracking.TAG_BENCH: bench.name,
                "git_commit": git_commit(),
                "base_model": base_spec,
                "dataset": bench.target_set,
                **self.parent_tags,
            },
        )
        parent_id = self.parent_id = parent.info.run_id
        say(f"MLflow: experiment {bench.name!r}, parent run {parent_id} ({bench.tracking_uri})")
        try:
            stage = time.perf_counter()
            base_scores, base_rows = self.evaluate_base(base_spec)
            seconds["base_eval"] = time.perf_counter() - stage
            base_metrics = {f"base/{name}/error": s.error() for name, s in base_scores.items()}
            base_metrics.update({f"base/{name}/ce": s.cross_entropy() for name, s in base_scores.items()})
            tracking.log_values(client, parent_id, base_metrics)
            result = BenchmarkResult(
                bench.name,
                bench.reference,
                self.source_names,
                self.target_name,
                list(seeds),
                base_scores,
                {self.target_name: base_rows[self.target_name]},
                parent_run_id=parent_id,
                git_commit=git_commit(),
                seconds=seconds,
                methods=dict(self.methods),
            )
            stage = time.perf_counter()
            self.cell_runs = {}
            specs = self.plan(seeds, parent_id)
            if executor is not None:
                self.dispatch(executor, specs)
                self.dispatched = True
                seconds["dispatched"] = time.perf_counter() - stage
            for spec in specs:  # the same cells a worker runs with tasks.run_cell_task
                cell = self.run_cell(client, experiment, parent_id, self.entry(spec.label), spec.seed, base_spec)
                result.cells.append(cell)
                self.cell_runs[(cell.label, spec.seed)] = cell.run_id
                if self.bench.curves.points > 0:
                    self.curves.setdefault(cell.label, {})[spec.seed] = records.cell_curve(client, cell.run_id)
            seconds["cells"] = time.perf_counter() - stage
            seconds["total"] = time.perf_counter() - started
            records.log_cell_metrics(client, result)
            records.log_comparison(
                client,
                result,
                bench,
                self.out,
                self.target_breakdown(),
                self.target_metric,
                self.normalizer().id,
                self.curves,
                self.results_prefix,
            )
            client.set_terminated(parent_id, "FINISHED")
        except BaseException:
            client.set_terminated(parent_id, "FAILED")
            raise
        say(f"benchmark finished in {time.perf_counter() - started:.0f} s")
        say(
            f"results: {self.out / f'{self.results_prefix}comparison-{bench.target_set}.md'} and "
            f"{self.out / f'{self.results_prefix}result-{bench.target_set}.json'}; MLflow parent run {parent_id} in {bench.tracking_uri} "
            f"(make mlflow-ui, then http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent_id})"
        )
        return result

    def dispatch(self, executor, specs: list[CellSpec]) -> None:
        """Run the cells on the executor's workers, logging through one store they can all write to."""
        from lightning_asr.study.executors import for_workers, leaves_machine

        started = time.perf_counter()
        server_log = self.out / "mlflow-server.log"
        with tracking.shared_store(self.bench.tracking_uri, leaves_machine(executor), server_log) as uri:
            say(
                f"cells: {len(specs)} on {executor.name} with {executor.workers} workers, {executor.threads} "
                f"torch threads each, logging through {uri}"
            )
            executor.run(for_workers(specs, uri))
        say(f"cells: {len(specs)} finished on {executor.workers} workers in {time.perf_counter() - started:.0f} s")

    @property
    def target_lang(self) -> str:
        return set_language(row["lang"] for row in self.target_rows["base"][0])

    @property
    def target_metric(self) -> str:
        return METRIC_NAMES[primary_unit(self.target_lang)]

    @property
    def scoring(self):
        return structured(ScoringConfig, OmegaConf.to_container(self.bench.adapt).get("scoring", {}))

    def normalizer(self) -> TextNormalizer:
        return TextNormalizer.from_scoring(self.target_lang, self.scoring)

    def target_breakdown(self) -> tuple[list[str], dict[str, dict[str, float]]]:
        """MER, JER, CER, WER, the per-language split and PIER of the target set for the base and each
        strategy (mean over seeds), recomputed from the logged predictions."""
        breakdown = {}
        lang, normalizer, average = self.target_lang, self.normalizer(), self.scoring.average
        for label, per_seed in self.target_rows.items():
            scores = [
                score_texts([r["prediction"] for r in rows], [r["reference"] for r in rows], lang, normalizer, average)
                for rows in per_seed
            ]
            breakdown[label] = {key: float(np.mean([s.get(key, math.nan) for s in scores])) for key in scores[0]}
        columns = [
            c
            for c in ("mer", "jer", "cer", "wer", "err_ko", "err_zh", "err_en", "err_other", "pier")
            if any(c in values for values in breakdown.values())
        ]
        return columns, {label: {c: values.get(c, math.nan) for c in columns} for label, values in breakdown.items()}


class StepTimer(L.Callback):
    """Wall time of each training step (forward, backward, optimiser), for the ``train/step_time_s`` metric."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._started)

    def median(self) -> float:
        return sorted(self.times)[len(self.times) // 2] if self.times else math.nan
