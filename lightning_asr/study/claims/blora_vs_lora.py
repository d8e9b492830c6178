"""blora-vs-lora: BLoRA against LoRA at equal rank and targets, ``kl_weight`` and ``prior_std`` swept.

Claims B1-B4 of the BLoRA seed: backward gain, forward loss, sparser adapters, 99.7 % of weights below 1e-3.
Neither the paper nor the authors' code says what the 99.7 % is computed on, so B4 is judged under each
reading we can make of it (``B4_READINGS``), and the report says which reading would make it plausible.
A ``blora-paper`` variant trains BLoRA as the authors' code did at paper time (``PAPER_TIME_SETTINGS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_asr.config import ConfigError
from lightning_asr.study import figures as plots
from lightning_asr.study.claims.base import (
    BLORA_PAPER,
    NO_BACKWARD_GAIN,
    NamedExperiment,
    adapter_value,
    settings_text,
    variant_of,
    with_adapter,
)
from lightning_asr.study.report import markdown_table
from lightning_asr.study.verdicts import (
    INCONCLUSIVE,
    ClaimResult,
    Estimate,
    Verdict,
    fmt_estimate,
    judge,
    metric,
    number,
    paired,
    paper_figure_note,
)


@dataclass
class BloraSweepSection:
    kl_weight: list[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3])
    prior_std: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.05])
    # one-at-a-time: each value with the other kept at the benchmark's BLoRA setting; full: every pair
    grid: str = "one-at-a-time"
    paper_variant: bool = True  # train blora-paper (the authors' settings at paper time) beside the default


QUOTES = {
    "B1": "Compared to LoRA, our method achieves a backward gain of 54%",
    "B2": "with only a 4% drop on the new domain",
    "B3": "BLoRA produces substantially sparser adapter weights",
    "B4": "99.7% of weights below 1e-3",
}
# claim -> (what the number is, row key, unit, rule, the paper's own figure)
SPECS = {
    "B1": (
        "backward gain BG = (F_LoRA - F_BLoRA) / F_LoRA, macro over source sets",
        "backward_gain",
        "%",
        "holds if the interval lies above 0 (BLoRA forgets less than LoRA)",
        0.54,
    ),
    "B2": (
        "forward loss FL = (E_tgt(BLoRA) - E_tgt(LoRA)) / E_tgt(LoRA)",
        "forward_loss",
        "%",
        "holds if the interval lies below the paper's 4 % (no larger drop)",
        None,
    ),
    "B3": (
        "share of delta W entries below 1e-3 in magnitude, BLoRA minus LoRA (same seed)",
        "sparsity_gain",
        "%",
        "holds if the interval lies above 0",
        None,
    ),
    "B4": (
        "share of BLoRA's delta W entries below 1e-3 in magnitude",
        "sparsity",
        "%",
        "holds if the interval lies above 99 % (the paper's 99.7 % less 0.7 points for a different model and data)",
        0.997,
    ),
}
# B4 under each reading of "weights below 1e-3": claim id -> (row key, metric, what is counted)
B4_READINGS = {
    "B4": ("sparsity", "sparsity/frac_below_1e-3", "|ΔW| < 1e-3 (absolute)"),
    "B4-rms": ("sparsity_rms", "sparsity/rms_relative/frac_below_1e-3", "|ΔW| < 1e-3 · RMS(W0) of its module"),
    "B4-width": ("sparsity_width", "sparsity/width_scaled/frac_below_1e-3", "|ΔW| < 1e-3 · √(768/d)"),
    "B4-entries": ("factor_sparsity", "sparsity/factors/frac_below_1e-3", "adapter entries (μ of A and B) < 1e-3"),
}
QUOTES.update({claim_id: QUOTES["B4"] for claim_id in B4_READINGS})
SPECS.update(
    {
        claim_id: (f"share of BLoRA's {counted}", key, "%", SPECS["B4"][3], SPECS["B4"][4])
        for claim_id, (key, _, counted) in B4_READINGS.items()
    }
)


def paper_variant(blora: dict) -> dict:
    """The benchmark's BLoRA entry with the authors' paper-time settings."""
    from lightning_asr.adapters.blora import PAPER_TIME_SETTINGS

    return {**blora, "label": "blora-paper", "adapter": {**blora["adapter"], **PAPER_TIME_SETTINGS}}


def plausible_reading(row: dict) -> str:
    """Which reading of B4 comes closest to the paper's 99.7 %, and whether it reaches it."""
    readings = [(B4_READINGS[c][2], row[B4_READINGS[c][0]]) for c in B4_READINGS if row[B4_READINGS[c][0]].n]
    if not readings:
        return ""
    counted, estimate = max(readings, key=lambda r: r[1].mean)
    reaches = "its interval reaches 99 %" if max(estimate.high, estimate.mean) >= 0.99 else "none reaches 99 %"
    return f"closest reading to the paper's 99.7 %: {counted} at {fmt_estimate(estimate, '%')} ({reaches})"


class BloraVsLora(NamedExperiment):
    name, key, section = "blora-vs-lora", "blora_vs_lora", BloraSweepSection
    claims = {claim_id: (BLORA_PAPER, quote) for claim_id, quote in QUOTES.items()}
    needs_histograms = True

    def variants(self, section, templates, strategies, sweep_seeds):
        lora, blora = templates["lora"], templates["blora"]
        if section["grid"] not in ("one-at-a-time", "full"):
            raise ConfigError(f"blora_vs_lora.grid={section['grid']!r}: choose one-at-a-time or full")
        kl0, prior0 = adapter_value(blora, "kl_weight"), adapter_value(blora, "prior_std")
        if section["grid"] == "full":
            pairs = [(kl, prior) for prior in section["prior_std"] for kl in section["kl_weight"]]
        else:
            pairs = [(kl, prior0) for kl in section["kl_weight"]] + [(kl0, prior) for prior in section["prior_std"]]
        entries = [with_adapter(blora, kl_weight=kl, prior_std=prior) for kl, prior in dict.fromkeys(pairs)]
        variants = [variant_of(lora, None)] + [
            variant_of(e, lora["label"], e["label"] == blora["label"]) for e in entries
        ]
        for variant in variants[1:]:
            variant.seeds = None if variant.headline else sweep_seeds
        if section.get("paper_variant", True):  # every seed: it is compared with the default, not swept
            paper = variant_of(paper_variant(blora), lora["label"])
            paper.settings["era"] = "paper"
            variants.append(paper)
        return variants

    def primary_arms(self, variants):
        return {variants[0].label} | {v.label for v in variants if v.method == "blora" and v.headline}

    def judge(self, experiment, cells, context):
        lora = experiment.of("lora")[0]
        lora_values = cells.per_seed(experiment, lora, context)
        rows = []
        for variant in experiment.variants:
            values = cells.per_seed(experiment, variant, context)
            row = {
                "variant": variant,
                "values": values,
                "target_error": metric(values, "target_error"),
                "forgetting": metric(values, "forgetting"),
                **{key: metric(values, name) for key, name, _ in B4_READINGS.values()},
                "relative_norm": metric(values, "sparsity/relative_norm"),
                "effective_rank": metric(values, "sparsity/effective_rank"),
                "weak_components": metric(values, "sparsity/weak_components"),
                "histogram": cells.summed_histogram(experiment, variant),
            }
            if variant.method == "blora":
                row["backward_gain"] = metric(values, "backward_gain")
                row["relative_source_gain"] = metric(values, "relative_source_gain")
                row["forward_loss"] = metric(values, "forward_loss")
                row["sparsity_gain"] = Estimate.of(paired(values, lora_values, "sparsity/frac_below_1e-3"))
                row["verdicts"] = {
                    "B1": judge(row["backward_gain"], "greater", 0.0, undefined_reason=NO_BACKWARD_GAIN),
                    "B2": judge(row["forward_loss"], "less", 0.04),
                    "B3": judge(row["sparsity_gain"], "greater", 0.0),
                    **{c: judge(row[B4_READINGS[c][0]], "greater", 0.99) for c in B4_READINGS},
                }
            rows.append(row)
        headline = next((r for r in rows if r["variant"].headline), None)
        setting = (
            f"BLoRA {settings_text(headline['variant'])} vs LoRA at rank {lora.settings['rank']}, same targets "
            "and budget"
            if headline
            else "the benchmark's BLoRA setting is not in the sweep"
        )
        claims = []
        for claim_id, (measure, key, unit, rule, paper_value) in SPECS.items():
            if headline is None:
                claims.append(
                    ClaimResult(
                        claim_id,
                        BLORA_PAPER,
                        QUOTES[claim_id],
                        setting,
                        measure,
                        None,
                        Verdict(INCONCLUSIVE, setting),
                        rule,
                        unit,
                    )
                )
                continue
            estimate = headline[key]
            note = paper_figure_note(estimate, paper_value) if paper_value is not None else ""
            if claim_id in B4_READINGS:
                note = "; ".join(filter(None, [note, plausible_reading(headline)]))
            claims.append(
                ClaimResult(
                    claim_id,
                    BLORA_PAPER,
                    QUOTES[claim_id],
                    setting,
                    measure,
                    estimate,
                    headline["verdicts"][claim_id],
                    rule,
                    unit,
                    note,
                    self.primary_hypothesis(claim_id, headline, lora, lora_values, experiment, cells, context),
                )
            )
        return claims, rows

    @staticmethod
    def primary_hypothesis(claim_id, headline, lora, lora_values, experiment, cells, context):
        """B1's direction and B2 as tests of the primary family, on paired differences over seeds and
        utterances: B1, BLoRA's forgetting minus LoRA's below 0; B2, BLoRA's target error at most 4 % of LoRA's
        above it (non-inferiority; refused where 4 % is below one token error of the test set)."""
        from lightning_asr.study.statistics import Hypothesis

        margins = context.get("margins", {})
        variant = headline["variant"]
        if "source_sets" not in context:  # no cell ran: nothing to test
            return None
        if claim_id == "B1":
            sets = context["source_sets"]
            difference = cells.paired_difference(experiment, variant, lora, sets)
            if difference is None:
                return None
            return Hypothesis(
                "B1", difference, "less", margins.get("forgetting", 0.02), cells.resolution(experiment, lora, sets)
            )
        if claim_id == "B2":
            sets = [context["target_set"]]
            difference = cells.paired_difference(experiment, variant, lora, sets)
            if difference is None:
                return None
            margin = 0.04 * metric(lora_values, "target_error").mean
            resolution = cells.resolution(experiment, lora, sets)
            return Hypothesis("B2", difference, "less", margin, resolution, kind="non_inferiority")
        return None

    def figures(self, rows, context, interval):
        if not rows:
            return {}
        name = context.get("name", "")
        blora = [
            row["variant"] for row in rows if row["variant"].method == "blora" and "era" not in row["variant"].settings
        ]
        lines = []
        for fixed, swept, style in (("prior_std", "kl_weight", "-"), ("kl_weight", "prior_std", "--")):
            for value in sorted({v.settings[fixed] for v in blora}):
                line = sorted((v for v in blora if v.settings[fixed] == value), key=lambda v: v.settings[swept])
                lines.append((f"{swept} sweep at {fixed} {number(value)}", [v.label for v in line], style))
        return {
            "blora_tradeoff": plots.tradeoff_figure(
                rows, f"{name}: BLoRA settings and LoRA: target error vs forgetting{interval}", "lora", lines
            ),
            "sparsity": plots.share_bars_figure(
                rows,
                [
                    ("sparsity", "|delta W| < 1e-3"),
                    ("sparsity_rms", "|delta W| < 1e-3 RMS(W0)"),
                    ("sparsity_width", "|delta W| < 1e-3 sqrt(768/d)"),
                    ("factor_sparsity", "adapter entries < 1e-3"),
                ],
                f"{name}: share of entries below 1e-3{interval}",
                (0.997, "BLoRA paper: 99.7 %"),
            ),
            "sparsity_histograms": plots.histogram_panels_figure(
                rows, f"{name}: |delta W| histograms, counts summed over seeds", "lora"
            ),
        }

    def render(self, rows, context, figures):
        lines = [
            "## blora-vs-lora: BLoRA against LoRA, kl_weight and prior_std swept",
            "",
            "Backward gain BG = (F_LoRA − F_BLoRA) / F_LoRA; relative source gain = (E_src(LoRA) − E_src(BLoRA)) / "
            "E_src(LoRA); forward loss FL = (E_tgt(BLoRA) − E_tgt(LoRA)) / E_tgt(LoRA). Sparsity, one column per "
            'reading of the paper\'s "weights below 1e-3": |ΔW| entries below 1e-3 (absolute), below 1e-3 · RMS(W0) '
            "of their module, below 1e-3 · √(768/d) (d the model's width, 768 whisper-small's), and the adapter's "
            "own entries below 1e-3; ‖ΔW‖/‖W0‖ (Frobenius, pooled), the effective rank of ΔW (mean over modules) "
            "and the share of its rank components below 1 % of the largest. ★ = the benchmark's setting; "
            "blora-paper = the authors' code at paper time (noisy B, β 5e-5, weight decay 5e-4 on μ and ρ, "
            "dropout 0.05, +1e-6 in log σ).",
            "",
        ]
        table = []
        for row in rows:
            v, verdicts = row["variant"], row.get("verdicts", {})
            swept = [number(v.settings[k]) if k in v.settings else "—" for k in ("kl_weight", "prior_std")]
            table.append(
                [
                    v.label + (" ★" if v.headline else ""),
                    v.settings.get("rank", ""),
                    *swept,
                    fmt_estimate(row["target_error"]),
                    fmt_estimate(row["forgetting"]),
                    *[
                        fmt_estimate(row[key], "%") if key in row else "—"
                        for key in ("backward_gain", "relative_source_gain", "forward_loss")
                    ],
                    *[fmt_estimate(row[B4_READINGS[c][0]], "%") for c in B4_READINGS],
                    fmt_estimate(row["relative_norm"]),
                    fmt_estimate(row["effective_rank"]),
                    fmt_estimate(row["weak_components"], "%"),
                    " / ".join(f"{k} {verdicts[k].status}" for k in SPECS if k in verdicts) or "reference",
                ]
            )
        lines += [
            markdown_table(
                [
                    "variant",
                    "rank",
                    "kl_weight",
                    "prior_std",
                    "target error",
                    "forgetting",
                    "BG vs LoRA",
                    "rel. source gain",
                    "FL vs LoRA",
                    "ΔW < 1e-3",
                    "ΔW < 1e-3·RMS(W0)",
                    "ΔW < 1e-3·√(768/d)",
                    "entries < 1e-3",
                    "‖ΔW‖/‖W0‖",
                    "eff. rank",
                    "weak comp.",
                    "verdicts",
                ],
                table,
            ),
            "",
        ]
        for key in ("blora_tradeoff", "sparsity", "sparsity_histograms"):
            if key in figures:
                lines += [f"![{key}]({figures[key]})", ""]
        return lines
