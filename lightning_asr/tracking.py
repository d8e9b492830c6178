"""MLflow helpers for benchmarks: experiments on a sqlite store, runs found by tags, figures and tables.

MLflow has no histogram-over-time API, so sparsity histograms are logged as figures (``log_figure``), tables
(``log_table``) and scalar summaries (``sparsity/frac_below_1e-3``).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lightning_asr.adapters.sparsity import BIN_EDGES, bin_centers, fractions

TAG_BENCH, TAG_CELL, TAG_CONFIG, TAG_STATUS = (
    "lightning_asr.bench",
    "lightning_asr.cell",
    "lightning_asr.config_hash",
    "lightning_asr.status",
)


def client_for(tracking_uri: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("file:") or "://" not in tracking_uri and not tracking_uri.startswith("sqlite"):
        raise ValueError(
            f"tracking URI {tracking_uri!r}: use a database store such as sqlite:///mlflow.db (MLflow's file store is deprecated)"
        )
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client, name: str, artifact_root: str | Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage != "deleted":
        return experiment.experiment_id
    location = (Path(artifact_root) / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def finite_metrics(values: dict) -> dict[str, float]:
    """MLflow rejects NaN in some stores: log only finite numbers (undefined values are explained elsewhere)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def sparsity_figure(report: dict, title: str):
    """Log-scale |w| histograms of delta W per layer group (encoder/decoder self/cross attention, FFN) and
    overall, with the 1e-3 line marked."""
    groups: dict[str, list[int]] = {}
    for name, entry in report["modules"].items():
        if "delta_w" not in entry:
            continue
        side = "encoder" if ".encoder." in name else "decoder"
        kind = "cross-attn" if "encoder_attn" in name else "self-attn" if "self_attn" in name else "other"
        group = groups.setdefault(f"{side} {kind}", [0] * len(BIN_EDGES))
        groups[f"{side} {kind}"] = [a + b for a, b in zip(group, entry["delta_w"]["histogram"])]
    figure, axis = plt.subplots(figsize=(7, 4))
    centers = bin_centers()
    overall = report["overall"]["delta_w"]
    for label, counts in [*sorted(groups.items()), ("overall", overall["histogram"])]:
        total = sum(counts) or 1
        axis.plot(centers, [c / total for c in counts], label=label, lw=2.5 if label == "overall" else 1.2)
    axis.axvline(1e-3, color="red", ls="--", lw=1)
    frac = fractions(overall).get("1e-3", float("nan")) if overall["count"] else float("nan")
    axis.text(1.2e-3, 0.9, f"{frac:.1%} below 1e-3", transform=axis.get_xaxis_transform(), color="red")
    axis.set_xscale("log")
    axis.set_xlabel("|delta W| entry")
    axis.set_ylabel("fraction of entries")
    axis.set_title(title)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def sparsity_table(report: dict) -> dict[str, list]:
    """Column-oriented table for ``log_table``: one row per module and kind, fraction below each threshold."""
    columns: dict[str, list] = {"module": [], "kind": [], "entries": []}
    for threshold in report["thresholds"]:
        columns[f"below_{threshold}"] = []
    rows = [(name, kind, summary) for name, entry in report["modules"].items() for kind, summary in entry.items()]
    rows += [("overall", kind, summary) for kind, summary in report["overall"].items() if summary["count"]]
    for name, kind, summary in rows:
        columns["module"].append(name)
        columns["kind"].append(kind)
        columns["entries"].append(summary["count"])
        for threshold, value in fractions(summary).items():
            columns[f"below_{threshold}"].append(value)
    return columns


def tradeoff_figure(rows: list[dict], title: str):
    """Forgetting (x) against adaptation gain (y), one point per strategy, with interval bars."""
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        x, y = row["forgetting"], row["adaptation_gain"]
        xerr = [[x - row.get("forgetting_low", x)], [row.get("forgetting_high", x) - x]]
        yerr = [[y - row.get("adaptation_gain_low", y)], [row.get("adaptation_gain_high", y) - y]]
        xerr = [[0 if math.isnan(v[0]) else v[0]] for v in xerr]
        yerr = [[0 if math.isnan(v[0]) else v[0]] for v in yerr]
        axis.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=row["strategy"])
        axis.annotate(row["strategy"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.axvline(0, color="grey", lw=0.8)
    axis.set_xlabel("forgetting: source error after - before (macro, lower is better)")
    axis.set_ylabel("adaptation gain: target error before - after")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def markdown_table(columns: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
