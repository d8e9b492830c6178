"""Finished cells, read back from MLflow, as the per-cell result dicts the report is built from::

    {"experiment": "glora-types", "label": "glora-1", "seed": 1, "status": "finished",
     "errors": {"en/test": 0.04, ..., "ko-en/test": 0.11},        # primary error rate per test set
     "base_errors": {...},                                        # the unadapted model of that cell
     "metrics": {"params/trainable": 110592, "sparsity/frac_below_1e-3": 0.17, ...}}

Each named experiment's parent run lists its cells in ``cells.json``; ``load_cells`` follows those lists.
Tests may write such dicts by hand.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lightning_asr.study.forgetting import derived_metrics
from lightning_asr.study.plan import Experiment, Variant
from lightning_asr.study.statistics import PairedStatistics, Ratios, resolution
from lightning_asr.study.tracking import TAG_CELLS, TAG_EXPERIMENT, TAG_REPRODUCE, TAG_STATUS


class Cells:
    """Finished per-cell results by (experiment, label, seed), and the planned cells that have none."""

    def __init__(self, plan: list[Experiment], cells: list[dict]):
        self.plan = plan
        self.by_key = {}
        for cell in cells:
            if cell.get("status", "finished") == "finished" and cell.get("errors"):
                self.by_key[(cell["experiment"], cell["label"], int(cell["seed"]))] = cell
        reported = {(c["experiment"], c["label"], int(c["seed"])): c for c in cells}
        self.missing = []
        for experiment in plan:
            for variant in experiment.variants:
                for seed in experiment.seeds_of(variant):
                    key = (experiment.name, variant.label, seed)
                    if key not in self.by_key:
                        status = reported.get(key, {}).get("status", "not run")
                        self.missing.append((*key, "no error rates" if status == "finished" else status))

    def get(self, experiment: str, label: str, seed: int) -> dict | None:
        return self.by_key.get((experiment, label, seed))

    def per_seed(self, experiment: Experiment, variant: Variant, context: dict) -> dict[int, dict[str, float]]:
        """Every metric of ``variant`` seed by seed: the benchmark's derived metrics against its reference
        (same seed), the target error, and the cell's own metrics (sparsity, parameters, rescoring)."""
        result = {}
        for seed in experiment.seeds_of(variant):
            cell = self.get(experiment.name, variant.label, seed)
            if cell is None:
                continue
            reference = self.get(experiment.name, variant.reference, seed) if variant.reference else cell
            if reference is None:  # every comparison is paired by seed: without the reference the seed drops out
                continue
            values: dict[str, float] = dict(cell.get("metrics", {}))
            if cell.get("base_errors"):
                derived, _ = derived_metrics(
                    cell["base_errors"],
                    reference["errors"],
                    cell["errors"],
                    context["source_sets"],
                    context["target_set"],
                )
                values.update(derived)
            values["target_error"] = cell["errors"].get(context["target_set"], math.nan)
            result[seed] = values
        return result

    def paired_difference(self, experiment: Experiment, variant: Variant, reference: Variant, sets: list[str]):
        """``variant`` minus ``reference`` in error rate (macro over ``sets``), mean over the seeds both have,
        with its crossed seed-and-utterance interval (``study/statistics.py``); None without per-utterance
        scores."""
        pairs = [
            (self.get(experiment.name, variant.label, seed), self.get(experiment.name, reference.label, seed))
            for seed in experiment.seeds_of(variant)
        ]
        pairs = [(a, b) for a, b in pairs if a and b and a.get("scores") and b.get("scores")]
        if not pairs:
            return None

        def stacked(cells: list[dict]) -> dict[str, Ratios]:
            return {
                name: Ratios.stack(
                    [(np.array(c["scores"][name]["edits"]), np.array(c["scores"][name]["tokens"])) for c in cells]
                )
                for name in sets
            }

        grid = {"k": stacked([a for a, _ in pairs]), "ref": stacked([b for _, b in pairs])}
        base = {name: Ratios(data.numerator[:1], data.denominator[:1]) for name, data in grid["ref"].items()}
        return PairedStatistics(base, grid).difference("k", "ref", sets)

    def resolution(self, experiment: Experiment, variant: Variant, sets: list[str]) -> float:
        """The smallest change of a macro error rate over ``sets``: one token error in the largest set."""
        for seed in experiment.seeds_of(variant):
            cell = self.get(experiment.name, variant.label, seed)
            if cell and cell.get("scores"):
                return resolution([sum(cell["scores"][name]["tokens"]) for name in sets])
        return 0.0

    def summed_histogram(self, experiment: Experiment, variant: Variant) -> list[int] | None:
        """The |delta W| histogram counts of ``variant``'s cells, summed over seeds (None when no cell has one)."""
        found = [
            cell["delta_w_histogram"]
            for seed in experiment.seeds_of(variant)
            for cell in [self.get(experiment.name, variant.label, seed)]
            if cell and cell.get("delta_w_histogram")
        ]
        return [sum(column) for column in zip(*found)] if found else None


def cell_from_run(record: dict, run, sets: list[str], base_errors: dict, predictions: dict | None = None) -> dict:
    """A per-cell result dict from a finished child run of the benchmark and its ``cells.json`` record.

    Error rates come from the run's per-utterance predictions (sum of edits over sum of tokens, as the
    benchmark computes them) when given: the logged ``test/<set>/error`` metrics are float32, and a rounding
    residue of 1e-8 against the base's exact error would pass for forgetting and make a backward gain
    divide by it."""
    metrics = run.data.metrics
    cell = dict(record)
    cell["status"] = run.data.tags.get(TAG_STATUS, "unknown")
    if predictions is not None:
        cell["scores"] = {
            name: {"edits": [r["edits"] for r in predictions[name]], "tokens": [r["tokens"] for r in predictions[name]]}
            for name in sets
            if name in predictions
        }
        cell["errors"] = {
            name: sum(r["edits"] for r in predictions[name]) / sum(r["tokens"] for r in predictions[name])
            for name in sets
            if name in predictions and sum(r["tokens"] for r in predictions[name])
        }
    else:
        cell["errors"] = {name: metrics[f"test/{name}/error"] for name in sets if f"test/{name}/error" in metrics}
    if len(cell["errors"]) < len(sets):
        cell["status"] = "no error rates"
    cell["base_errors"] = base_errors
    kept = {k: v for k, v in metrics.items() if k.startswith(("sparsity/", "params/", "test/"))}
    cell["metrics"] = {**kept, **record.get("metrics", {})}
    return cell


def logged_histogram(client, run_id: str) -> list[int] | None:
    """The overall |delta W| histogram a benchmark cell logged (``sparsity/report.json``), or None."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = json.loads(Path(client.download_artifacts(run_id, "sparsity/report.json", tmp)).read_text())
    except Exception:  # cells logged before the report was: the caller may recompute it from the adapter
        return None
    return report.get("overall", {}).get("delta_w", {}).get("histogram")


def load_cells(
    client,
    experiment_id: str,
    name: str,
    plan: list[Experiment],
    histogram: Callable[[str], list[int] | None] | None = None,
) -> tuple[list[dict], dict, dict[str, str]]:
    """Per-cell result dicts of the latest parent run of each named experiment (tagged ``TAG_REPRODUCE`` =
    ``name``), the context they were run in, and those parents' run ids. The cells of experiments that want
    them get their |delta W| histogram from ``histogram(run_id)`` (default: ``logged_histogram``)."""
    from lightning_asr.study.claims import EXPERIMENTS

    histogram = histogram or (lambda run_id: logged_histogram(client, run_id))
    cells, context, parents = [], {}, {}
    for experiment in plan:
        query = (
            f"tags.`{TAG_REPRODUCE}` = '{name}' and tags.`{TAG_EXPERIMENT}` = '{experiment.name}' "
            f"and tags.`{TAG_CELLS}` = 'logged'"
        )
        runs = client.search_runs(
            [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
        )
        if not runs:
            continue
        parent = runs[0]
        parents[experiment.name] = parent.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "cells.json", tmp)).read_text())
        base_models = {**logged.get("context", {}).get("base_model", {}), **context.get("base_model", {})}
        context = {**logged.get("context", {}), **context, "base_model": base_models}
        sets = logged["context"]["source_sets"] + [logged["context"]["target_set"]]
        for record in logged["cells"]:
            record = {**record, "experiment": experiment.name}
            try:
                run = client.get_run(record["run_id"])
                if run.info.lifecycle_stage == "deleted":
                    cells.append({**record, "status": f"run {record['run_id']} deleted"})
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    predictions = json.loads(
                        Path(client.download_artifacts(record["run_id"], "predictions.json", tmp)).read_text()
                    )
            except Exception as err:  # a run or artifact deleted since: the cell is missing, and the report says so
                cells.append({**record, "status": f"run {record['run_id']} unreadable ({type(err).__name__})"})
                continue
            cell = cell_from_run(
                record, run, sets, logged["base_errors"].get(record.get("arm", "pretrained"), {}), predictions
            )
            if EXPERIMENTS[experiment.name].needs_histograms and cell["status"] == "finished":
                cell["delta_w_histogram"] = histogram(record["run_id"])
            cells.append(cell)
    return cells, context, parents
