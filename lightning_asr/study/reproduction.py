"""Running a reproduction: each named experiment of a profile as forgetting-benchmark runs, then the report.

Every run lives in the benchmark's own MLflow experiment, because finished cells are found there by their
tags: a cell that ``make bench-forgetting`` or another named experiment already trained is reused, never
retrained. Per named experiment, one parent run (``<name>/<experiment>``, tags ``TAG_REPRODUCE`` and
``TAG_EXPERIMENT``) holds the benchmark run of each arm (its own child cells) and ``cells.json``, the cells it
used; a ``<name>/report`` run holds ``REPRODUCTION.md`` and its plots, which are also written to
``<report_dir>/<profile>/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from lightning_asr.config import ConfigError, load_config, to_dict
from lightning_asr.models import backbone_for, is_preset
from lightning_asr.study.benchmark import Benchmark
from lightning_asr.study.cells import load_cells, logged_histogram
from lightning_asr.study.claims import EXPERIMENTS
from lightning_asr.study.identity import digest, git_commit
from lightning_asr.study.plan import Experiment, Variant, benchmark_groups, build_plan, reproduce_schema
from lightning_asr.study.profile import ROOT, load_bench_config, profile_path
from lightning_asr.study.report import Report, generate_report
from lightning_asr.study.tracking import TAG_CELLS, TAG_EXPERIMENT, TAG_REPRODUCE


def say(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def load_reproduce_config(profile: str, overrides: list[str] | None = None):
    """A reproduce profile by name (``configs/reproduce/<name>.yaml``) or path, with ``key=value`` overrides."""
    path = profile_path(profile, "reproduce", "embedded, tiny")
    if "strategies" in (OmegaConf.load(path) or {}):
        raise ConfigError(
            f"{path} is a forgetting-benchmark profile — fix: name a reproduce profile "
            "(configs/reproduce/*.yaml), whose 'bench' key points at it"
        )
    return load_config(path, overrides, schema=reproduce_schema()), path


class Reproduction:
    """A reproduce profile over its benchmark: the plan, the runs, the report."""

    def __init__(self, profile: str, overrides: list[str] | None = None, seeds: list[int] | None = None):
        self.config, self.path = load_reproduce_config(profile, overrides)
        self.seeds = list(seeds or self.config.seeds)
        self.bench, self.bench_path = load_bench_config(self.config.bench, list(self.config.bench_overrides))
        strategies = [OmegaConf.to_container(s, resolve=True) for s in self.bench.strategies]
        self.plan = build_plan(to_dict(self.config), strategies, self.seeds)

    def arm_bench(self, variants: list[Variant], arm: str):
        """The benchmark config of one arm: its strategies, the first as reference, and for the scratch arm the
        base's architecture with random weights (a preset with ``pretrain: false``, else a random-weights copy)."""
        changes: dict = {"strategies": [v.entry for v in variants], "reference": variants[0].label, "sweeps": []}
        if arm == "scratch":
            spec = self.bench.base.spec
            changes["base"] = (
                {"pretrain": False}
                if is_preset(spec)
                else {"pretrain": False, "spec": random_init_base(spec, self.bench.base.cache_dir)}
            )
        return OmegaConf.merge(self.bench, changes)

    def check(self) -> list[str]:
        """Validate every cell of every experiment (raises on a bad cell config); the plan and its cost."""
        from lightning_asr.study.plan import plan_lines

        for experiment in self.plan:
            for arm in ("pretrained", "scratch"):
                variants = [v for v in experiment.variants if v.arm == arm]
                if variants and (arm == "pretrained" or is_preset(self.bench.base.spec)):
                    Benchmark(self.arm_bench(variants, arm), self.bench_path).check(self.seeds)
        return plan_lines(self.plan, self.config.cell_seconds)

    def run(
        self, selected: list[str] | None = None, force: bool = False, report_only: bool = False, executor=None
    ) -> tuple[Report, list[str]]:
        """Run the ``selected`` experiments (all by default; none with ``report_only``), then write the report
        for every experiment of the plan. Returns the report and the experiments that failed. An ``executor``
        (``study/executors.py``) runs each benchmark's cells on its workers."""
        from lightning_asr.study import tracking

        unknown = sorted(set(selected or []) - {e.name for e in self.plan})
        if unknown:
            raise ConfigError(
                f"--experiments {unknown}: not in this profile's experiments ({', '.join(e.name for e in self.plan)})"
            )
        client = tracking.client_for(self.bench.tracking_uri)
        experiment_id = tracking.experiment_id(client, self.bench.name, self.bench.artifact_root)
        failed = []
        if not report_only:
            for experiment in self.plan:
                if (selected is None or experiment.name in selected) and not self.run_experiment(
                    experiment, client, experiment_id, force, executor
                ):
                    failed.append(experiment.name)
        return self.write_report(client, experiment_id), failed

    def run_experiment(self, experiment: Experiment, client, experiment_id: str, force: bool, executor=None) -> bool:
        """Run one named experiment under its own parent run; record its cells in ``cells.json`` even when it
        fails part-way, so the report can list what is missing."""
        name = self.config.name
        parent_id = client.create_run(
            experiment_id,
            tags={
                "mlflow.runName": f"{name}/{experiment.name}",
                TAG_REPRODUCE: name,
                TAG_EXPERIMENT: experiment.name,
                "git_commit": git_commit(),
            },
        ).info.run_id
        say(
            f"{experiment.name}: parent run {parent_id}, {len(experiment.variants)} variants x seeds {experiment.seeds}"
        )
        records, base_errors, context, status = [], {}, {}, "FAILED"
        try:
            for arm, seeds, variants in benchmark_groups(experiment):
                benchmark = Benchmark(
                    self.arm_bench(variants, arm),
                    self.bench_path,
                    force,
                    # beside the benchmark's own comparison files (make bench-forgetting), not over them
                    results_prefix=f"{name}-{experiment.name}-{arm}-seeds{len(seeds)}-",
                    parent_tags={
                        "mlflow.parentRunId": parent_id,
                        TAG_REPRODUCE: name,
                        "mlflow.runName": f"{name}/{experiment.name}/{arm} {time.strftime('%Y-%m-%d %H:%M')}",
                    },
                )
                try:
                    benchmark.run(seeds, executor)
                finally:
                    if benchmark.parent_id:
                        run = client.get_run(benchmark.parent_id)
                        base_errors[arm] = {
                            key[len("base/") : -len("/error")]: value
                            for key, value in run.data.metrics.items()
                            if key.startswith("base/") and key.endswith("/error")
                        }
                        context.setdefault("base_model", {})[arm] = run.data.tags.get("base_model", "?")
                    context.update(
                        source_sets=benchmark.source_names,
                        target_set=benchmark.target_name,
                        margins=OmegaConf.to_container(self.bench.statistics.margins),
                    )
                    if "base" in benchmark.target_rows:
                        context.update(target_lang=benchmark.target_lang, target_metric=benchmark.target_metric)
                    known = {(r["label"], r["seed"], r["arm"]) for r in records}
                    records += [
                        {"label": label, "seed": seed, "arm": arm, "run_id": run_id}
                        for (label, seed), run_id in benchmark.cell_runs.items()
                        if (label, seed, arm) not in known
                    ]
            EXPERIMENTS[experiment.name].after_run(records, client, context, self.config, self.bench)
            status = "FINISHED"
        except Exception as err:  # one failed experiment must not hide the others' results: report, go on
            client.set_tag(parent_id, "error", f"{type(err).__name__}: {err}"[:5000])
            say(f"{experiment.name}: FAILED ({type(err).__name__}: {err}); its finished cells are kept")
        finally:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "cells.json").write_text(
                    json.dumps({"context": context, "base_errors": base_errors, "cells": records}, indent=1)
                )
                client.log_artifact(parent_id, str(Path(tmp) / "cells.json"))
            client.set_tag(parent_id, TAG_CELLS, "logged")
            client.set_terminated(parent_id, status)
        return status == "FINISHED"

    def write_report(self, client, experiment_id: str) -> Report:
        config, bench = self.config, self.bench
        cells, context, parents = load_cells(
            client, experiment_id, config.name, self.plan, lambda run_id: delta_w_histogram(client, run_id)
        )
        profile = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        context.update(
            name=config.name,
            profile=str(profile),
            bench=bench.name,
            seeds=self.seeds,
            generated=time.strftime("%Y-%m-%d %H:%M"),
            mlflow=f"experiment `{bench.name}` in `{bench.tracking_uri}`, parent runs tagged "
            f"`{TAG_REPRODUCE}={config.name}`",
        )
        for experiment in EXPERIMENTS.values():
            context.update(experiment.report_context(config.get(experiment.key)) if experiment.section else {})
        base_model = context.get("base_model", {})
        if isinstance(base_model, dict):
            context["base_model"] = ", ".join(f"{arm}: {spec}" for arm, spec in base_model.items())
        out_dir = Path(config.report_dir) / self.path.stem
        report = generate_report(self.plan, cells, context, out_dir)
        tags = {
            "mlflow.runName": f"{config.name}/report",
            TAG_REPRODUCE: config.name,
            TAG_EXPERIMENT: "report",
            "git_commit": git_commit(),
            **{f"verdict/{c.id}": c.verdict.status for c in report.claims},
        }
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        for name, parent in parents.items():
            client.log_param(run_id, f"parent/{name}", parent)
        client.log_metric(run_id, "missing_cells", len(report.missing))
        client.log_artifacts(run_id, str(out_dir))
        client.set_terminated(run_id, "FINISHED")
        return report


def random_init_base(spec: str, cache_dir: str | Path, seed: int = 0) -> str:
    """The architecture of ``spec`` (a hub id or model directory) with random weights, saved once as a model
    directory with its processor: the 'from scratch' arm of a base that is not a preset."""
    import torch

    from lightning_asr.config import ModelConfig, structured

    backbone = backbone_for(spec)
    if backbone.name != "whisper":
        raise ConfigError(
            f"{spec}: a random-weights copy of a {backbone.name} model directory or hub id is not "
            "supported — fix: leave finetune-vs-scratch out of 'experiments' or use a preset base"
        )
    target = Path(cache_dir) / f"{Path(spec).name}-random-{digest(spec)[:8]}-seed{seed}"
    if (target / "config.json").exists():
        return str(target)
    model, processor = backbone.load(structured(ModelConfig, {"spec": str(spec)}))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    fresh.generation_config = model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        staging.chmod(0o755)
        fresh.save_pretrained(staging)
        processor.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def delta_w_histogram(client, run_id: str) -> list[int] | None:
    """A cell's overall |delta W| histogram: the one it logged, or for cells logged before the benchmark wrote
    ``sparsity/report.json``, recomputed from its logged adapter and run config on the base it names."""
    logged = logged_histogram(client, run_id)
    if logged is not None:
        return logged
    from lightning_asr.config import TrainConfig, structured
    from lightning_asr.module import ASRModule

    try:
        with tempfile.TemporaryDirectory() as tmp:
            saved = OmegaConf.to_container(OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp)))
            module = ASRModule(structured(TrainConfig, saved, lenient_adapter=True))
            module.strategy.load_adapter(client.download_artifacts(run_id, "adapter", tmp))
            return module.strategy.sparsity_stats()["overall"]["delta_w"]["histogram"]
    except Exception as err:  # a deleted base or artifact: that cell's counts are left out of its variant's panel
        say(f"no |delta W| histogram for run {run_id}: {type(err).__name__}: {err}")
        return None
