"""Sparsity statistics of adapters: how many entries are (near) zero, per module and overall.

For each adapted module: |entries| of the adapter's own tensors ("factors": A, B, gates; BLoRA's means) and
of the effective weight change |delta W| (dense ``s * B A`` for LoRA/BLoRA, the un-gated ``s * B A`` for
GLoRA, ``W - W0`` for full fine-tuning). Each summary holds the fractions below 1e-1 ... 1e-6 and counts in
fixed log-spaced bins, so summaries add up across modules and runs. The headline figure
``delta_w`` fraction below 1e-3 is defined for every strategy and compares them on one footing.

An absolute threshold means less on a narrow model: for the same change in function, low-rank delta W
entries shrink roughly as 1/sqrt(d) to 1/d with the width d. So delta W is also read against its own base
(``readings``, where the strategy knows W0):

- ``rms_relative``: |delta W| below 1e-3 * RMS(W0) of its module;
- ``width_scaled``: |delta W| below 1e-3 * sqrt(768 / d) (768: whisper-small's width, the paper's model): if
  entries shrink as 1/sqrt(d), the paper's 1e-3 at width 768 is 1e-3 * sqrt(768 / d) at width d (2e-3 at 192);
- ``relative_norm``: ||delta W||_F / ||W0||_F, pooled over modules (and per module);
- ``effective_rank``: exp(entropy of delta W's normalised singular values), mean over modules;
- ``weak_components``: share of delta W's rank components (its top-k singular values, k the adapter's rank)
  whose singular value is below 1 % of its largest.
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


REFERENCE_WIDTH = 768  # whisper-small's d_model
READING_THRESHOLD = 1e-3


def module_readings(delta: torch.Tensor, base: torch.Tensor, width: int, components: int | None) -> dict:
    """The width-relative readings of one module's delta W against its W0 (sums, so modules add up)."""
    delta, base = delta.detach().double().cpu(), base.detach().double().cpu()
    rms = float(base.pow(2).mean().sqrt())
    magnitudes = delta.abs()
    singular = torch.linalg.svdvals(delta.reshape(delta.shape[0], -1))  # a conv kernel as out x (in * width)
    k = min(components or singular.numel(), singular.numel())
    top = singular[:k]
    largest = float(top.max()) if k else 0.0
    weights = top / top.sum() if largest > 0 else top
    entropy = -float((weights[weights > 0] * weights[weights > 0].log()).sum()) if largest > 0 else 0.0
    return {
        "count": delta.numel(),
        "below_rms_relative": int((magnitudes < READING_THRESHOLD * rms).sum()),
        "below_width_scaled": int((magnitudes < READING_THRESHOLD * (REFERENCE_WIDTH / width) ** 0.5).sum()),
        "delta_sq": float(delta.pow(2).sum()),
        "base_sq": float(base.pow(2).sum()),
        "effective_rank": float(torch.tensor(entropy).exp()) if largest > 0 else 0.0,
        "components": k,
        "weak_components": int((top < 0.01 * largest).sum()) if largest > 0 else k,
    }


def pooled_readings(modules: dict[str, dict]) -> dict[str, float]:
    """Modules' readings pooled into the figures the report judges."""
    parts = list(modules.values())
    if not parts:
        return {}
    count = sum(m["count"] for m in parts)
    components = sum(m["components"] for m in parts)
    return {
        "rms_relative/frac_below_1e-3": sum(m["below_rms_relative"] for m in parts) / count,
        "width_scaled/frac_below_1e-3": sum(m["below_width_scaled"] for m in parts) / count,
        "relative_norm": (sum(m["delta_sq"] for m in parts) / max(sum(m["base_sq"] for m in parts), 1e-300)) ** 0.5,
        "effective_rank": sum(m["effective_rank"] for m in parts) / len(parts),
        "weak_components": sum(m["weak_components"] for m in parts) / max(components, 1),
    }


def sparsity_report(
    factor_tensors: dict[str, dict[str, torch.Tensor]],
    delta_weights: dict[str, torch.Tensor],
    base_weights: dict[str, torch.Tensor] | None = None,
    width: int | None = None,
    components: int | None = None,
) -> dict:
    """``{"modules": {name: {"factors": ..., "delta_w": ..., "readings": ...}}, "overall": {...},
    "readings": {...}}`` from a strategy's tensors; the readings against W0 where ``base_weights`` and the
    model ``width`` are given."""
    modules = {}
    for name in sorted(set(factor_tensors) | set(delta_weights)):
        entry = {}
        if factor_tensors.get(name):
            entry["factors"] = combine([summarize(t) for t in factor_tensors[name].values()])
        if name in delta_weights:
            entry["delta_w"] = summarize(delta_weights[name])
            if base_weights and width and name in base_weights:
                entry["readings"] = module_readings(delta_weights[name], base_weights[name], width, components)
        modules[name] = entry
    overall = {kind: combine([m[kind] for m in modules.values() if kind in m]) for kind in ("factors", "delta_w")}
    return {
        "thresholds": [threshold_key(t) for t in THRESHOLDS],
        "bin_edges": BIN_EDGES,
        "modules": modules,
        "overall": overall,
        "readings": pooled_readings({n: m["readings"] for n, m in modules.items() if "readings" in m}),
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
    for key, value in report.get("readings", {}).items():  # sparsity/rms_relative/frac_below_1e-3, ...
        metrics[f"sparsity/{key}"] = value
    for factor, summary in report.get("snr", {}).items():  # per factor: sparsity/snr/A/median
        for key, value in summary.items():
            metrics[f"sparsity/snr/{factor}/{key}"] = value
    return metrics
