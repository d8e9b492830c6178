"""What a benchmark writes to MLflow: each finished cell's artifacts, test metrics and λ curve; each cell's
continual-learning metrics against its seed's reference; the parent run's comparison, tables and figures. The
numbers come from the cell's evaluated module or from the ``BenchmarkResult``: nothing here trains, caches or
decides."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lightning_asr.config import flatten, to_dict
from lightning_asr.study import figures, tracking
from lightning_asr.study.forgetting import METRICS_DOC, Scores, derived_metrics, errors
from lightning_asr.study.report import markdown_table
from lightning_asr.study.result import BenchmarkResult

INTERPOLATION = "interpolation.json"  # a cell's λ curve, beside predictions.json
DRIFT_CE = "drift_ce.json"  # a cell's cross-entropy on the base's own source transcripts, over the base's


def log_cell(
    client,
    run_id: str,
    cell: str,
    module,
    config: DictConfig,
    test_metrics: dict,
    step_time: float,
    seconds: dict[str, float],
    interpolation: dict,
    source_names: list[str],
    target_name: str,
) -> None:
    """A finished cell's adapter, config, predictions, λ curve (as an artifact and as step metrics), test
    metrics (error rates and cross-entropy), parameter counts, and its sparsity table and histogram."""
    from lightning_asr.adapters.sparsity import scalar_metrics

    strategy = module.strategy
    report = strategy.sparsity_stats()
    counts = strategy.parameter_counts()
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = strategy.save_adapter(Path(tmp) / "adapter")
        adapter_bytes = sum(f.stat().st_size for f in adapter_dir.iterdir())
        client.log_artifacts(run_id, str(adapter_dir), "adapter")
        (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(config))
        client.log_artifact(run_id, str(Path(tmp) / "config.yaml"))
        (Path(tmp) / "predictions.json").write_text(json.dumps(module.predictions, ensure_ascii=False))
        client.log_artifact(run_id, str(Path(tmp) / "predictions.json"))
        if interpolation:
            (Path(tmp) / INTERPOLATION).write_text(json.dumps(interpolation))
            client.log_artifact(run_id, str(Path(tmp) / INTERPOLATION))
    if interpolation:  # the λ curve as step metrics (step = 10 λ), for MLflow's chart view
        for index, factor in enumerate(interpolation["lambda"]):
            per_set = {
                name: sum(entry["ce"][index]) / sum(entry["units"]) for name, entry in interpolation["sets"].items()
            }
            values = {
                "interpolation/target_ce": per_set[target_name],
                "interpolation/source_ce": float(np.mean([per_set[n] for n in source_names])),
            }
            tracking.log_values(client, run_id, values, step=round(10 * factor))
    metrics = {
        **test_metrics,
        **{f"test/{name}/ce": Scores.from_rows(rows).cross_entropy() for name, rows in module.predictions.items()},
        **scalar_metrics(report),
        "params/trainable": counts["trainable"],
        "params/total": counts["total"],
        "adapter/bytes": adapter_bytes,
        "train/step_time_s": step_time,
        "train/seconds": seconds["train"],
    }
    normalizers = {f"normalizer/{name}": normalizer_id for name, normalizer_id in module.normalizer_ids.items()}
    tracking.log_values(client, run_id, metrics, normalizers)
    if report["overall"]["delta_w"]["count"]:
        settings = ", ".join(f"{k} {v}" for k, v in flatten(to_dict(config.adapter)).items() if k != "name")
        title = f"{cell}: {config.adapter.name} ({settings[:90]}), |delta W|"
        figures.log_figure(client, run_id, figures.cell_sparsity_figure(report, title), "sparsity/histogram")
        client.log_table(run_id, tracking.sparsity_table(report), "sparsity/table.json")
        client.log_dict(run_id, report, "sparsity/report.json")  # histogram counts, for side-by-side plots


def log_cell_metrics(client, result: BenchmarkResult) -> None:
    """Each cell's continual-learning metrics against the base and the reference of its seed (one run each:
    the intervals are the comparison's)."""
    base = errors(result.base)
    for cell in result.cells:
        reference = next((c for c in result.cells if c.label == result.reference and c.seed == cell.seed), None)
        if reference is None:
            continue
        values, _ = derived_metrics(
            base, errors(reference.scores), errors(cell.scores), result.source_sets, result.target_set
        )
        base_ce = np.mean([result.base[n].cross_entropy() for n in result.source_sets])
        values["forgetting_ce"] = float(np.mean([cell.scores[n].cross_entropy() for n in result.source_sets]) - base_ce)
        tracking.log_values(client, cell.run_id, {f"cl/{key}": value for key, value in values.items()})


def cell_curve(client, run_id: str) -> list[tuple[int, float, float]]:
    """A cell's (step, target error, source error) points, from its logged curve metrics."""
    from lightning_asr.study.curves import SOURCE, TARGET

    target = {m.step: m.value for m in client.get_metric_history(run_id, TARGET)}
    source = {m.step: m.value for m in client.get_metric_history(run_id, SOURCE)}
    return [(step, target[step], source[step]) for step in sorted(set(target) & set(source))]


def cell_stopped_step(client, run_id: str) -> float:
    history = client.get_metric_history(run_id, "train/stopped_step")
    return history[-1].value if history else math.nan


def log_comparison(
    client,
    result: BenchmarkResult,
    bench,
    out: Path,
    breakdown: tuple[list[str], dict[str, dict[str, float]]],
    target_metric: str,
    normalizer_id: str,
    curves: dict[str, dict[int, list[tuple]]],
    prefix: str = "",
) -> None:
    """The comparison (``study/summary.py``) printed, written under ``out`` (file names start with ``prefix``) and logged to the parent run with the
    result it was computed from, the fronts figure and the target's breakdown in ``target_metric`` (``breakdown``: its columns and,
    per strategy, the target's error rates by unit and language; ``curves``: per strategy and seed, the
    learning curve's (step, target error, source error) points)."""
    import pandas as pd

    from lightning_asr.study import summary

    parent_id = result.parent_run_id
    unit = target_metric.upper()
    comparison = summary.compare(result, bench.statistics)
    breakdown_columns, breakdown = breakdown
    breakdown_markdown = markdown_table(
        ["strategy"] + breakdown_columns,
        [[label] + [f"{row[c]:.3f}" for c in breakdown_columns] for label, row in breakdown.items()],
    )
    text = (
        summary.markdown(comparison, result, unit)
        + f"\n## {result.target_set}: error rates by unit and by language (mean over seeds)\n\n"
        f"err_<lang>: edits charged to that language's tokens over its reference tokens; pier: the embedded "
        f"language's rate. Normaliser: {normalizer_id}.\n\n{breakdown_markdown}\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{prefix}comparison-{bench.target_set}.md").write_text(text)
    result.save(out / f"{prefix}result-{bench.target_set}.json")
    rows = summary.table_rows(comparison)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "comparison.md").write_text(text)
        pd.DataFrame(rows).to_csv(Path(tmp) / "comparison.csv", index=False)
        (Path(tmp) / "metrics.md").write_text("# Metric definitions\n\n" + METRICS_DOC)
        (Path(tmp) / "benchmark_config.yaml").write_text(OmegaConf.to_yaml(bench))
        result.save(Path(tmp) / "result.json")
        client.log_artifacts(parent_id, tmp)
    metrics = {f"{label}/target_{key}": v for label, values in breakdown.items() for key, v in values.items()}
    for s in comparison.strategies:
        metrics.update(
            {
                f"{s.label}/target_error": s.target_error,
                f"{s.label}/adaptation_gain": s.gain.value,
                f"{s.label}/forgetting": s.forgetting.value,
                f"{s.label}/forgetting_low": s.forgetting.low,
                f"{s.label}/forgetting_high": s.forgetting.high,
            }
        )
        if s.forgetting_ce:
            metrics[f"{s.label}/forgetting_ce"] = s.forgetting_ce.value
        for key, hypothesis in s.vs_reference.items():
            metrics[f"{s.label}/delta_{key}"] = hypothesis.estimate.value
        if s.backward_gain:
            metrics[f"{s.label}/backward_gain"] = s.backward_gain.value
        for index, reading in enumerate(s.fronts):
            metrics[f"{s.label}/front{index}_delta_source_ce"] = reading.difference.value
    tracking.log_values(client, parent_id, metrics)
    frame = pd.DataFrame(rows)
    client.log_table(parent_id, frame.where(frame.notna(), None).to_dict(orient="list"), "comparison_table.json")
    tradeoff = figures.benchmark_tradeoff_figure(
        rows, f"{bench.name}: forgetting vs adaptation gain\n({comparison.interval})"
    )
    figures.log_figure(client, parent_id, tradeoff, "tradeoff")
    if comparison.front_curves:
        figure = figures.fronts_figure(
            comparison.front_curves,
            comparison.levels,
            f"{bench.name} ({bench.target_set}): learning–forgetting fronts, λ from base to adapted\n"
            f"bands: 95 % over {comparison.seeds} seed(s) and the test utterances"
            + (" (one run)" if comparison.seeds < 2 else ""),
        )
        figures.log_figure(client, parent_id, figure, "fronts")
    if any(c for by_seed in curves.values() for c in by_seed.values()):
        curves = figures.curves_figure(curves, f"{bench.name}: forgetting along training (dev subsets)")
        figures.log_figure(client, parent_id, curves, "curves")
    print("\n" + text)
    print("In one line per strategy:\n" + "\n".join(summary.closing_lines(comparison, result, unit)))
