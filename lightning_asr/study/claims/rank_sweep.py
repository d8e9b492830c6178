"""rank-sweep: LoRA, GLoRA type 1 and BLoRA across ranks, alpha / rank fixed. Extends G1 (R1) and B1 (R2)
to every rank: the GLoRA seed leaves rank as an open question."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_asr.config import ConfigError
from lightning_asr.study import figures as plots
from lightning_asr.study.claims.base import (
    BLORA_PAPER,
    GLORA_PAPER,
    NO_BACKWARD_GAIN,
    NamedExperiment,
    adapter_value,
    at_rank,
    variant_of,
)
from lightning_asr.study.report import markdown_table
from lightning_asr.study.verdicts import ClaimResult, Estimate, combine_verdicts, fmt_estimate, judge, metric, paired


@dataclass
class RankSweepSection:
    ranks: list[int] = field(default_factory=lambda: [2, 8, 32])
    methods: list[str] = field(default_factory=lambda: ["lora", "glora-1", "blora"])


QUOTES = {
    "R1": "GLoRA improves over LoRA (extended here to every rank; the seed leaves rank as an open question)",
    "R2": "BLoRA reduces forgetting relative to LoRA (extended here to every rank)",
}


class RankSweep(NamedExperiment):
    name, key, section = "rank-sweep", "rank_sweep", RankSweepSection
    claims = {"R1": (GLORA_PAPER, QUOTES["R1"]), "R2": (BLORA_PAPER, QUOTES["R2"])}

    def variants(self, section, templates, strategies, sweep_seeds):
        lora = templates["lora"]
        methods = list(dict.fromkeys(["lora", *section["methods"]]))
        unknown = [m for m in methods if m not in templates or m == "full_ft"]
        if unknown:
            raise ConfigError(f"rank_sweep.methods {unknown}: choose lora, blora or glora-<1-4>")
        variants = []
        for rank in section["ranks"]:
            reference = at_rank(lora, rank)["label"]
            for method in methods:
                variant = variant_of(
                    at_rank(templates[method], rank),
                    None if method == "lora" else reference,
                    rank == adapter_value(lora, "rank"),
                )
                variant.seeds = None if variant.headline else sweep_seeds
                variants.append(variant)
        return variants

    def judge(self, experiment, cells, context):
        rows, parts = [], {"R1": [], "R2": []}
        ranks = list(dict.fromkeys(v.settings["rank"] for v in experiment.variants))
        for rank in ranks:
            lora = experiment.of("lora", rank=rank)[0]
            lora_values = cells.per_seed(experiment, lora, context)
            others = [v for v in experiment.variants if v.settings.get("rank") == rank and v.method != "lora"]
            for variant in experiment.of("lora", rank=rank) + others:
                values = cells.per_seed(experiment, variant, context)
                row = {
                    "variant": variant,
                    "values": values,
                    "target_error": metric(values, "target_error"),
                    "forgetting": metric(values, "forgetting"),
                }
                if variant.method == "glora" and variant.settings.get("type") == 1:
                    row["gain"] = Estimate.of(paired(lora_values, values, "target_error"))
                    row["verdict"] = judge(row["gain"], "greater", 0.0)
                    parts["R1"].append((f"rank {rank}", row["verdict"]))
                if variant.method == "blora":
                    row["backward_gain"] = metric(values, "backward_gain")
                    row["verdict"] = judge(row["backward_gain"], "greater", 0.0, undefined_reason=NO_BACKWARD_GAIN)
                    parts["R2"].append((f"rank {rank}", row["verdict"]))
                rows.append(row)
        setting = f"ranks {', '.join(map(str, ranks))}, alpha / rank fixed, same targets and budget"
        claims = [
            ClaimResult(
                "R1",
                GLORA_PAPER,
                QUOTES["R1"],
                setting,
                "target error, LoRA minus GLoRA type 1 at the same rank",
                None,
                combine_verdicts(parts["R1"], "GLoRA type 1 is not in the rank sweep"),
                "holds if it holds at every rank",
            ),
            ClaimResult(
                "R2",
                BLORA_PAPER,
                QUOTES["R2"],
                setting,
                "backward gain of BLoRA over LoRA at the same rank",
                None,
                combine_verdicts(parts["R2"], "BLoRA is not in the rank sweep"),
                "holds if it holds at every rank",
            ),
        ]
        return claims, rows

    def figures(self, rows, context, interval):
        if not rows:
            return {}

        def method(variant) -> str:
            return variant.method + (f"-{variant.settings['type']}" if variant.method == "glora" else "")

        return {
            "rank_sweep": plots.sweep_figure(rows, "rank", method, f"{context.get('name', '')}: rank sweep{interval}")
        }

    def render(self, rows, context, figures):
        lines = [
            "## rank-sweep: LoRA, GLoRA type 1 and BLoRA across ranks",
            "",
            "alpha / rank is kept at the benchmark's value, so the update's scale does not change with rank; each "
            "method is compared with LoRA at the same rank.",
            "",
        ]
        table = [
            [
                row["variant"].settings["rank"],
                row["variant"].label,
                fmt_estimate(row["target_error"]),
                fmt_estimate(row["forgetting"]),
                fmt_estimate(row.get("gain")) if "gain" in row else "—",
                fmt_estimate(row.get("backward_gain"), "%") if "backward_gain" in row else "—",
                row["verdict"].status if "verdict" in row else "reference" if row["variant"].method == "lora" else "—",
            ]
            for row in rows
        ]
        lines += [
            markdown_table(
                ["rank", "variant", "target error", "forgetting", "LoRA − this (target)", "BG vs LoRA", "verdict"],
                table,
            ),
            "",
        ]
        if "rank_sweep" in figures:
            lines += [f"![rank_sweep]({figures['rank_sweep']})", ""]
        return lines
