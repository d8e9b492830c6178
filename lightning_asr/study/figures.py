"""The study's figures: matplotlib (Agg), one function per kind of plot. Benchmark cells and the benchmark's
parent run use the first two; the named experiments of the reproduction compose the rest from their rows
(``{"variant": Variant, "<metric>": Estimate, ...}``, see ``claims/``)."""

from __future__ import annotations

import math

from lightning_asr.adapters.sparsity import BIN_EDGES, bin_centers, fractions
from lightning_asr.study.verdicts import Estimate


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- a benchmark cell and the benchmark ------------------------------------------------------------------------
def cell_sparsity_figure(report: dict, title: str):
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
    figure, axis = pyplot().subplots(figsize=(7, 4))
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


def benchmark_tradeoff_figure(rows: list[dict], title: str):
    """Forgetting (x) against adaptation gain (y), one point per strategy, with interval bars."""
    figure, axis = pyplot().subplots(figsize=(6, 4.5))
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


# ---- the named experiments -------------------------------------------------------------------------------------
def error_bar(estimate: Estimate) -> tuple[float, list[list[float]]]:
    """The mean and its interval as matplotlib's asymmetric error bar (none with fewer than two seeds)."""
    mean = estimate.mean
    if estimate.n < 2 or math.isnan(estimate.low):
        return mean, [[0.0], [0.0]]
    return mean, [[mean - estimate.low], [estimate.high - mean]]


def tradeoff_figure(rows: list[dict], title: str, reference: str, lines: list[tuple[str, list[str], str]] = ()):
    """Target error (y) against forgetting (x), one point per variant with interval bars, the ``reference``
    method starred; each of ``lines`` (legend, variant labels in order, line style) joins those variants."""
    figure, axis = pyplot().subplots(figsize=(7, 5))
    points = {}
    for row in rows:
        x, xerr = error_bar(row["forgetting"])
        y, yerr = error_bar(row["target_error"])
        if math.isnan(x) or math.isnan(y):
            continue
        variant = row["variant"]
        points[variant.label] = (x, y)
        marker = "*" if variant.method == reference else "o"
        axis.errorbar(
            [x],
            [y],
            xerr=xerr,
            yerr=yerr,
            fmt=marker,
            markersize=10 if marker == "*" else 6,
            capsize=3,
            color="black" if variant.method == reference else None,
        )
        axis.annotate(variant.label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    for name, labels, style in lines:
        line = [points[label] for label in labels if label in points]
        if len(line) > 1:
            axis.plot([p[0] for p in line], [p[1] for p in line], style, lw=1, label=name)
    axis.set_xlabel("forgetting: source error after - before (macro; lower is better)")
    axis.set_ylabel("target error (lower is better)")
    axis.set_title(title, fontsize=9)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def share_bars_figure(rows: list[dict], bars: list[tuple[str, str]], title: str, line: tuple[float, str] | None = None):
    """Side-by-side bars per variant of the estimates ``bars`` names (row key, legend), fractions in [0, 1],
    with an optional horizontal ``line`` (value, legend) such as a paper's figure."""
    figure, axis = pyplot().subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.5))
    width = 0.8 / len(bars)
    for index, (key, name) in enumerate(bars):
        offset = (index - (len(bars) - 1) / 2) * width
        means, errors = zip(*[error_bar(row[key]) for row in rows]) if rows else ((), ())
        low, high = [e[0][0] for e in errors], [e[1][0] for e in errors]
        axis.bar(
            [i + offset for i in range(len(rows))],
            [0 if math.isnan(m) else m for m in means],
            width,
            yerr=[low, high],
            capsize=3,
            label=name,
        )
    if line is not None:
        axis.axhline(line[0], color="red", ls="--", lw=1, label=line[1])
    axis.set_xticks(range(len(rows)), [row["variant"].label for row in rows], rotation=30, ha="right", fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("fraction of entries")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def histogram_panels_figure(rows: list[dict], title: str, reference: str):
    """|delta W| histograms side by side, one panel per variant (counts summed over its seeds, ``histogram``
    in each row), the ``reference`` method's drawn in grey behind every other panel, the 1e-3 threshold and
    the share below it marked. None without data."""
    drawn = [row for row in rows if row.get("histogram")]
    if not drawn:
        return None
    columns = min(3, len(drawn))
    grid_rows = -(-len(drawn) // columns)
    figure, axes = pyplot().subplots(
        grid_rows,
        columns,
        figsize=(3.4 * columns + 0.6, 2.9 * grid_rows + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    centers = bin_centers()
    behind = next((row["histogram"] for row in drawn if row["variant"].method == reference), None)
    threshold_bin = BIN_EDGES.index(next(edge for edge in BIN_EDGES if edge >= 1e-3 * (1 - 1e-9)))
    for axis in axes.flat[len(drawn) :]:
        axis.set_visible(False)
    for axis, row in zip(axes.flat, drawn):
        counts = row["histogram"]
        total = sum(counts) or 1
        if behind is not None and row["variant"].method != reference:
            axis.plot(centers, [c / (sum(behind) or 1) for c in behind], color="grey", lw=1, label=reference)
        axis.plot(centers, [c / total for c in counts], lw=1.8, label=row["variant"].label)
        axis.axvline(1e-3, color="red", ls="--", lw=1)
        axis.text(
            0.03,
            0.92,
            f"{sum(counts[:threshold_bin]) / total:.1%} < 1e-3",
            transform=axis.transAxes,
            color="red",
            fontsize=8,
        )
        axis.set_xscale("log")
        axis.set_xlim(1e-8, 1)
        axis.set_xlabel("|delta W| entry", fontsize=8)
        axis.set_title(row["variant"].label + (" ★" if row["variant"].headline else ""), fontsize=8)
        axis.legend(fontsize=6, loc="upper right")
    for axis in axes[:, 0]:
        axis.set_ylabel("fraction of entries", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def target_bars_figure(rows: list[dict], title: str, reference: str):
    """Target error per variant with interval bars (the ``reference`` method in grey), trainable parameters
    written above each bar."""
    figure, axis = pyplot().subplots(figsize=(6, 4.5))
    for i, row in enumerate(rows):
        mean, err = error_bar(row["target_error"])
        axis.bar(
            [i],
            [0 if math.isnan(mean) else mean],
            0.6,
            yerr=err,
            capsize=3,
            color="grey" if row["variant"].method == reference else None,
        )
        params = row["params"].mean
        if not math.isnan(params):
            axis.annotate(
                f"{params / 1e3:.0f} k params",
                (i, 0 if math.isnan(mean) else mean),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=7,
            )
    axis.set_xticks(range(len(rows)), [row["variant"].label for row in rows], fontsize=8)
    axis.set_ylabel("target error (lower is better)")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def sweep_figure(rows: list[dict], setting: str, group_of, title: str):
    """Target error and forgetting against a swept ``setting`` (log2 axis), one line per ``group_of(variant)``."""
    figure, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row["variant"]), []).append(row)
    values = sorted({row["variant"].settings[setting] for row in rows})
    for axis, key, name in ((axes[0], "target_error", "target error"), (axes[1], "forgetting", "forgetting (macro)")):
        for group, members in groups.items():
            members = sorted(members, key=lambda r: r["variant"].settings[setting])
            bars = [error_bar(r[key]) for r in members]
            axis.errorbar(
                [r["variant"].settings[setting] for r in members],
                [b[0] for b in bars],
                yerr=[[b[1][0][0] for b in bars], [b[1][1][0] for b in bars]],
                marker="o",
                capsize=3,
                label=group,
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks(values, [str(v) for v in values])
        axis.minorticks_off()
        axis.set_xlabel(setting)
        axis.set_ylabel(f"{name} (lower is better)")
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def curves_figure(curves: dict[str, dict[int, list[tuple]]], title: str):
    """Forgetting (source error minus its step-0 value) against target error along training, one line per
    strategy and seed (seeds share their strategy's colour); each line starts at the base (forgetting 0)."""
    figure, axis = pyplot().subplots(figsize=(7, 5))
    colours = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, by_seed) in enumerate(curves.items()):
        drawn = [curve for _, curve in sorted(by_seed.items()) if curve]
        for number, curve in enumerate(drawn):
            x = [target for _, target, _ in curve]
            y = [source - curve[0][2] for _, _, source in curve]
            axis.plot(
                x,
                y,
                marker="o",
                markersize=3,
                color=colours[index % len(colours)],
                label=label if number == 0 else None,
            )
    axis.axhline(0, color="grey", lw=0.8)
    axis.invert_xaxis()  # training moves right: the target error falls
    axis.set_xlabel("target error (dev subset; lower is better)")
    axis.set_ylabel("forgetting: source error - its step-0 value (dev subsets)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def log_figure(client, run_id: str, figure, stem: str) -> None:
    """A figure in a run as ``<stem>.png`` and, beside it, its vector copy ``<stem>.svg``."""
    client.log_figure(run_id, figure, f"{stem}.png")
    client.log_figure(run_id, figure, f"{stem}.svg")
    pyplot().close(figure)


def fronts_figure(bands: dict[str, dict], levels: list[float], title: str):
    """Every strategy's learning–forgetting front (source cross-entropy against target cross-entropy, mean over
    seeds) with its 95 % band, the declared levels as vertical lines; learning goes to the left."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 5))
    for index, (label, band) in enumerate(bands.items()):
        color = f"C{index % 10}"
        axes.plot(band["levels"], band["mean"], color=color, label=label, linewidth=1.8)
        axes.fill_between(band["levels"], band["low"], band["high"], color=color, alpha=0.15, linewidth=0)
    for level in levels:
        axes.axvline(level, color="0.6", linestyle=":", linewidth=1)
    axes.set_xscale("log")  # the fronts part where the target's cross-entropy is small
    axes.invert_xaxis()
    axes.set_xlabel("target cross-entropy, nats per token, log scale (declared levels dotted; learning to the right)")
    axes.set_ylabel("source cross-entropy at that level (front)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
