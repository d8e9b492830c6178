"""Sparsity statistics of adapters: how many entries are (near) zero, per module and overall.

For each adapted module: |entries| of the adapter's own tensors ("factors": A, B, gates; BLoRA's means) and
of the effective weight change |delta W| (dense ``s * B A`` for LoRA/BLoRA, the un-gated ``s * B A`` for
GLoRA, ``W - W0`` for full fine-tuning). Each summary holds the fractions below 1e-1 ... 1e-6 and counts in
fixed log-spaced bins, so summaries add up across modules and runs. The headline figure
``delta_w`` fraction below 1e-3 is defined for every strategy and compares them on one footing.
"""

from __future__ import annotations

import torch

THRESHOLDS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# |w| histogram: bin 0 holds exact zeros and values below 1e-10; then 4 bins per decade up to 10.
BIN_EDGES = [0.0] + [10 ** (e / 4) for e in range(-40, 5)]


def bin_centers() -> list[float]:
    """Where each histogram bin is drawn on a log axis: the zero bin at 1e-11, the last (>= 10) at 15."""
    return (
        [1e-11]
        + [(BIN_EDGES[i] * BIN_EDGES[i + 1]) ** 0.5 for i in range(1, len(BIN_EDGES) - 1)]
        + [BIN_EDGES[-1] * 1.5]
    )


def threshold_key(threshold: float) -> str:
    return f"{threshold:.0e}".replace("e-0", "e-")


def summarize(values: torch.Tensor) -> dict:
    """Counts below each threshold and a histogram of ``|values|``."""
    magnitudes = values.detach().abs().flatten().double().cpu()
    edges = torch.tensor(BIN_EDGES[1:], dtype=torch.float64)
    bins = torch.bucketize(magnitudes, edges, right=True).clamp(max=len(BIN_EDGES) - 1)
    return {
        "count": magnitudes.numel(),
        "below": {threshold_key(t): int((magnitudes < t).sum()) for t in THRESHOLDS},
        "histogram": torch.bincount(bins, minlength=len(BIN_EDGES)).tolist(),
    }


def combine(summaries: list[dict]) -> dict:
    total = {"count": 0, "below": {threshold_key(t): 0 for t in THRESHOLDS}, "histogram": [0] * len(BIN_EDGES)}
    for summary in summaries:
        total["count"] += summary["count"]
        for key, value in summary["below"].items():
            total["below"][key] += value
        total["histogram"] = [a + b for a, b in zip(total["histogram"], summary["histogram"])]
    return total


def fractions(summary: dict) -> dict[str, float]:
    count = summary["count"]
    return {key: (value / count if count else float("nan")) for key, value in summary["below"].items()}


def sparsity_report(factor_tensors: dict[str, dict[str, torch.Tensor]], delta_weights: dict[str, torch.Tensor]) -> dict:
    """``{"modules": {name: {"factors": ..., "delta_w": ...}}, "overall": {...}}`` from a strategy's tensors."""
    modules = {}
    for name in sorted(set(factor_tensors) | set(delta_weights)):
        entry = {}
        if factor_tensors.get(name):
            entry["factors"] = combine([summarize(t) for t in factor_tensors[name].values()])
        if name in delta_weights:
            entry["delta_w"] = summarize(delta_weights[name])
        modules[name] = entry
    overall = {kind: combine([m[kind] for m in modules.values() if kind in m]) for kind in ("factors", "delta_w")}
    return {
        "thresholds": [threshold_key(t) for t in THRESHOLDS],
        "bin_edges": BIN_EDGES,
        "modules": modules,
        "overall": overall,
    }


def scalar_metrics(report: dict) -> dict[str, float]:
    """Flat metrics such as ``sparsity/frac_below_1e-3`` (delta W) and ``sparsity/factors/frac_below_1e-3``."""
    metrics = {}
    for kind in ("delta_w", "factors"):
        summary = report["overall"][kind]
        if not summary["count"]:
            continue
        for key, value in fractions(summary).items():
            metrics[f"sparsity/{kind}/frac_below_{key}"] = value
    for key in report["thresholds"]:
        if f"sparsity/delta_w/frac_below_{key}" in metrics:
            metrics[f"sparsity/frac_below_{key}"] = metrics[f"sparsity/delta_w/frac_below_{key}"]
    for key, value in report.get("snr", {}).items():
        metrics[f"sparsity/snr/{key}"] = value
    return metrics
