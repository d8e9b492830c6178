"""Reproducing the seeds' claims: named experiments run on the forgetting benchmark, then a report with verdicts.

    make reproduce [PROFILE=embedded|tiny|configs/reproduce/<gpu profile>.yaml] [SEEDS=1,2,3] [ARGS='key=value ...']
    .venv/bin/python benchmarks/reproduce.py --profile embedded [--experiments blora-vs-lora,rank-sweep]
                                             [--report-only] [--check] [--force] [key=value ...]

Named experiments (configs/reproduce/*.yaml sets their grids; lightning_asr/reproduction.py builds them):
  blora-vs-lora        LoRA and BLoRA at equal rank and targets, kl_weight and prior_std swept
  glora-types          LoRA and GLoRA types 1-4 at equal rank and targets
  finetune-vs-scratch  full fine-tuning of the pretrained base vs the same architecture from random weights
  token-normalisation  cells rescored with and without the compatibility-to-conjoining jamo map
  rank-sweep           LoRA, GLoRA type 1 and BLoRA across ranks
Each is a list of benchmark strategies run by ``benchmarks/forgetting.py`` with the profile's seeds. Every run
lives in the benchmark's own MLflow experiment, because finished cells are found there by their tags: a cell
that ``make bench-forgetting`` or another named experiment already trained is reused, never retrained. Per
named experiment, one parent run (``<name>/<experiment>``, tags ``lightning_asr.reproduce`` and
``lightning_asr.reproduce.experiment``) holds the benchmark run of each arm (its own child cells) and
``cells.json``, the cells it used; a ``<name>/report`` run holds ``REPRODUCTION.md`` and its plots, which are
also written to ``reports/<profile>/``. ``--report-only`` rebuilds the report from the latest parent runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from forgetting import Benchmark, digest, git_commit, load_bench_config  # noqa: E402

from lightning_asr import reproduction as rp  # noqa: E402
from lightning_asr import tracking  # noqa: E402
from lightning_asr.config import ConfigError, load_config, to_dict  # noqa: E402


def say(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def load_reproduce_config(profile: str, overrides: list[str] | None = None):
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else ROOT / "configs" / "reproduce" / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(
            f"{path}: no such reproduce profile — fix: use embedded, tiny or a YAML under configs/reproduce/"
        )
    if "strategies" in (OmegaConf.load(path) or {}):
        raise ConfigError(
            f"{path} is a forgetting-benchmark profile — fix: name a reproduce profile "
            "(configs/reproduce/*.yaml), whose 'bench' key points at it"
        )
    return load_config(path, overrides, schema=rp.ReproduceConfig), path


def is_preset(spec: str) -> bool:
    import lightning_asr.models
    from lightning_asr.models.wav2vec2 import CTC_PRESETS

    return spec in lightning_asr.models.PRESETS or spec in CTC_PRESETS


def random_init_base(spec: str, cache_dir: str | Path, seed: int = 0) -> str:
    """The architecture of ``spec`` (a hub id or model directory) with random weights, saved once as a model
    directory with its processor: the 'from scratch' arm of a base that is not a preset."""
    import torch

    from lightning_asr.models import load_model_processor
    from lightning_asr.models.wav2vec2 import is_ctc_spec

    if is_ctc_spec(spec):
        raise ConfigError(
            f"{spec}: a random-weights copy of a CTC model directory or hub id is not supported — fix: "
            "leave finetune-vs-scratch out of 'experiments' or use a preset base"
        )
    target = Path(cache_dir) / f"{Path(spec).name}-random-{digest(spec)[:8]}-seed{seed}"
    if (target / "config.json").exists():
        return str(target)
    model, processor = load_model_processor(spec)
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


def arm_bench(bench, variants: list[rp.Variant], arm: str):
    """The benchmark config of one arm: its strategies, the first as reference, and for the scratch arm the
    base's architecture with random weights (a preset with ``pretrain: false``, else a random-weights copy)."""
    changes: dict = {"strategies": [v.entry for v in variants], "reference": variants[0].label}
    if arm == "scratch":
        spec = bench.base.spec
        changes["base"] = (
            {"pretrain": False}
            if is_preset(spec)
            else {"pretrain": False, "spec": random_init_base(spec, bench.base.cache_dir)}
        )
    return OmegaConf.merge(bench, changes)


def benchmark_groups(experiment: rp.Experiment) -> list[tuple[str, list[int], list[rp.Variant]]]:
    """One benchmark run per (arm, seeds): the variants on every seed first, then the cut sweep points with the
    variants they are compared against (whose cells at those seeds the first run already made)."""
    groups: dict[tuple[str, tuple[int, ...]], list[rp.Variant]] = {}
    for variant in experiment.variants:
        groups.setdefault((variant.arm, tuple(experiment.seeds_of(variant))), []).append(variant)
    result = []
    for (arm, seeds), variants in sorted(
        groups.items(), key=lambda item: (item[0][0] != "pretrained", -len(item[0][1]))
    ):
        labels = {v.label for v in variants}
        references = [experiment.variant(v.reference) for v in variants if v.reference and v.reference not in labels]
        result.append((arm, list(seeds), list({v.label: v for v in references + variants}.values())))
    return result


def run_experiment(
    experiment: rp.Experiment, bench, bench_path: Path, config, client, experiment_id: str, force: bool
) -> bool:
    """Run one named experiment under its own parent run; record its cells in ``cells.json`` even when it
    fails part-way, so the report can list what is missing."""
    parent_id = client.create_run(
        experiment_id,
        tags={
            "mlflow.runName": f"{config.name}/{experiment.name}",
            rp.TAG_REPRODUCE: config.name,
            rp.TAG_EXPERIMENT: experiment.name,
            "git_commit": git_commit(),
        },
    ).info.run_id
    say(f"{experiment.name}: parent run {parent_id}, {len(experiment.variants)} variants x seeds {experiment.seeds}")
    records, base_errors, context, status = [], {}, {}, "FAILED"
    try:
        for arm, seeds, variants in benchmark_groups(experiment):
            benchmark = Benchmark(
                arm_bench(bench, variants, arm),
                bench_path,
                force,
                parent_tags={
                    "mlflow.parentRunId": parent_id,
                    rp.TAG_REPRODUCE: config.name,
                    "mlflow.runName": f"{config.name}/{experiment.name}/{arm} {time.strftime('%Y-%m-%d %H:%M')}",
                },
            )
            try:
                benchmark.run(seeds)
            finally:
                if benchmark.parent_id:
                    run = client.get_run(benchmark.parent_id)
                    base_errors[arm] = {
                        name: value
                        for key, value in run.data.metrics.items()
                        if key.startswith("base/") and key.endswith("/error")
                        for name in [key[len("base/") : -len("/error")]]
                    }
                    context.setdefault("base_model", {})[arm] = run.data.tags.get("base_model", "?")
                context.update(source_sets=benchmark.source_names, target_set=benchmark.target_name)
                if "base" in benchmark.target_rows:
                    from lightning_asr.metrics import METRIC_NAMES
                    from lightning_asr.text import primary_unit

                    context.update(
                        target_lang=benchmark.target_lang,
                        target_metric=METRIC_NAMES[primary_unit(benchmark.target_lang)],
                    )
                records += [
                    {"label": label, "seed": seed, "arm": arm, "run_id": run_id}
                    for (label, seed), run_id in benchmark.cell_runs.items()
                    if not any(r["label"] == label and r["seed"] == seed and r["arm"] == arm for r in records)
                ]
        if experiment.name == "token-normalisation":
            scoring = OmegaConf.to_container(bench.adapt).get("scoring", {})
            for record in records:
                with tempfile.TemporaryDirectory() as tmp:
                    rows = json.loads(
                        Path(client.download_artifacts(record["run_id"], "predictions.json", tmp)).read_text()
                    )
                record["metrics"] = rp.rescore(
                    rows[context["target_set"]],
                    context["target_lang"],
                    scoring,
                    config.token_normalisation.compat_fraction,
                )
        status = "FINISHED"
    except Exception as err:  # one failed experiment must not hide the others' results: report, go on
        client.set_tag(parent_id, "error", f"{type(err).__name__}: {err}"[:5000])
        say(f"{experiment.name}: FAILED ({type(err).__name__}: {err}); its finished cells are kept")
    finally:
        context["compat_fraction"] = config.token_normalisation.compat_fraction
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "cells.json").write_text(
                json.dumps({"context": context, "base_errors": base_errors, "cells": records}, indent=1)
            )
            client.log_artifact(parent_id, str(Path(tmp) / "cells.json"))
        client.set_tag(parent_id, rp.TAG_CELLS, "logged")
        client.set_terminated(parent_id, status)
    return status == "FINISHED"


def plan_lines(plan: list[rp.Experiment], cell_seconds: dict) -> list[str]:
    """The planned cells per experiment and the time they cost when none is cached (shared cells once)."""
    lines, unique = [], {}
    for experiment in plan:
        lines.append(f"{experiment.name}: seeds {experiment.seeds}")
        for v in experiment.variants:
            shown = ", ".join(f"{k} {rp._number(x)}" for k, x in v.settings.items())
            cut = (
                f"  (seed{'s' if len(v.seeds) > 1 else ''} {', '.join(map(str, v.seeds))} only)"
                if v.seeds is not None
                else ""
            )
            lines.append(
                f"  {v.label:<22} {v.method:<8} {v.arm:<10} {shown}{'  (paper setting)' if v.headline else ''}{cut}"
            )
            for seed in experiment.seeds_of(v):
                unique[(v.arm, v.label, seed)] = v.method
    seconds = [
        cell_seconds.get(method, cell_seconds.get("full_ft" if method == "scratch" else method))
        for method in unique.values()
    ]
    known = [s for s in seconds if s is not None]
    if not known:
        lines.append(f"{len(unique)} distinct cells; cost unknown (the profile sets no cell_seconds)")
        return lines
    total = f"~{sum(known) / 60:.0f} min" + (
        f" (+{len(seconds) - len(known)} cells of unknown cost)" if len(known) < len(seconds) else ""
    )
    lines.append(
        f"{len(unique)} distinct cells; {total} on this machine if none is cached (cell_seconds in the profile)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="embedded", help="embedded, tiny, or a YAML under configs/reproduce/")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3 (default: the profile's)")
    parser.add_argument(
        "--experiments", help=f"comma-separated subset of {','.join(rp.EXPERIMENTS)} to run (the report covers all)"
    )
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the report from MLflow")
    parser.add_argument("--check", action="store_true", help="list the planned cells and their cost; run nothing")
    parser.add_argument("--force", action="store_true", help="retrain every cell in new MLflow runs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the reproduce profile")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded cell drowns the log
    from lightning_asr.cli import _quiet

    _quiet()
    try:
        config, path = load_reproduce_config(args.profile, args.overrides)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(config.seeds)
        bench, bench_path = load_bench_config(config.bench, list(config.bench_overrides))
        strategies = [OmegaConf.to_container(s, resolve=True) for s in bench.strategies]
        plan = rp.build_plan(to_dict(config), strategies, seeds)
        selected = args.experiments.split(",") if args.experiments else [e.name for e in plan]
        unknown = sorted(set(selected) - {e.name for e in plan})
        if unknown:
            raise ConfigError(
                f"--experiments {unknown}: not in this profile's experiments ({', '.join(e.name for e in plan)})"
            )
        if args.check:
            for experiment in plan:
                for arm in ("pretrained", "scratch"):
                    variants = [v for v in experiment.variants if v.arm == arm]
                    if variants and (arm == "pretrained" or is_preset(bench.base.spec)):
                        Benchmark(arm_bench(bench, variants, arm), bench_path).check(
                            seeds
                        )  # raises on a bad cell config
            print("\n".join(plan_lines(plan, config.cell_seconds)))
            return 0
        client = tracking.client_for(bench.tracking_uri)
        experiment_id = tracking.experiment_id(client, bench.name, bench.artifact_root)
        failed = []
        if not args.report_only:
            for experiment in plan:
                if experiment.name in selected and not run_experiment(
                    experiment, bench, bench_path, config, client, experiment_id, args.force
                ):
                    failed.append(experiment.name)
        report = write_report(config, path, bench, plan, client, experiment_id, seeds)
        say(f"report: {report.path} ({len(report.missing)} missing cells)")
        for claim in report.claims:
            say(f"  {claim.id}: {claim.verdict.status} — {claim.verdict.reason[:160]}")
        if failed:
            say(f"failed experiments: {', '.join(failed)} (their MLflow parent runs hold the error)")
            return 1
    except (ValueError, FileExistsError) as err:  # config, manifest, model-spec and adapter errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def delta_w_histogram(client, run_id: str) -> list[int] | None:
    """A cell's overall |delta W| histogram: the one it logged, or for cells logged before the benchmark wrote
    ``sparsity/report.json``, recomputed from its logged adapter and run config on the base it names."""
    logged = rp.logged_histogram(client, run_id)
    if logged is not None:
        return logged
    from lightning_asr.module import ASRModule

    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = OmegaConf.to_container(OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp)))
            module = ASRModule(config)
            module.strategy.load_adapter(client.download_artifacts(run_id, "adapter", tmp))
            return module.strategy.sparsity_stats()["overall"]["delta_w"]["histogram"]
    except Exception as err:  # a deleted base or artifact: that cell's counts are left out of its variant's panel
        say(f"no |delta W| histogram for run {run_id}: {type(err).__name__}: {err}")
        return None


def write_report(config, path: Path, bench, plan, client, experiment_id: str, seeds: list[int]) -> rp.Report:
    cells, context, parents = rp.load_cells(
        client, experiment_id, config.name, plan, lambda run_id: delta_w_histogram(client, run_id)
    )
    context.update(
        name=config.name,
        profile=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        bench=bench.name,
        seeds=seeds,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        compat_fraction=config.token_normalisation.compat_fraction,
        mlflow=f"experiment `{bench.name}` in `{bench.tracking_uri}`, parent runs tagged "
        f"`{rp.TAG_REPRODUCE}={config.name}`",
    )
    base_model = context.get("base_model", {})
    context["base_model"] = (
        ", ".join(f"{arm}: {spec}" for arm, spec in base_model.items()) if isinstance(base_model, dict) else base_model
    )
    out_dir = Path(config.report_dir) / path.stem
    report = rp.generate_report(plan, cells, context, out_dir)
    tags = {
        "mlflow.runName": f"{config.name}/report",
        rp.TAG_REPRODUCE: config.name,
        rp.TAG_EXPERIMENT: "report",
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


if __name__ == "__main__":
    sys.exit(main())
