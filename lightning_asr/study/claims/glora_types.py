"""glora-types: GLoRA types 1-4 against LoRA at equal rank and targets.

Claims G1 (GLoRA beats LoRA, judged on type 1) and G2 (type 1 is best) of the GLoRA seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_asr.study import figures as plots
from lightning_asr.study.claims.base import GLORA_PAPER, NamedExperiment, variant_of
from lightning_asr.study.report import markdown_table
from lightning_asr.study.verdicts import (
    INCONCLUSIVE,
    ClaimResult,
    Estimate,
    Verdict,
    combine_verdicts,
    fmt_estimate,
    judge,
    metric,
    paired,
)


@dataclass
class GloraTypesSection:
    types: list[int] = field(default_factory=lambda: [1, 2, 3, 4])


QUOTES = {
    "G1": "GLoRA further enhances parameter-efficient fine-tuning compared to conventional LoRA",
    "G2": "Type 1 is often best",
}


class GloraTypes(NamedExperiment):
    name, key, section = "glora-types", "glora_types", GloraTypesSection
    claims = {claim_id: (GLORA_PAPER, quote) for claim_id, quote in QUOTES.items()}

    def variants(self, section, templates, strategies, sweep_seeds):
        lora = templates["lora"]
        return [variant_of(lora, None)] + [
            variant_of(templates[f"glora-{t}"], lora["label"], t == 1) for t in section["types"]
        ]

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
                "params": metric(values, "params/trainable"),
            }
            if variant.method == "glora":
                row["gain"] = Estimate.of(paired(lora_values, values, "target_error"))
                row["extra_params"] = Estimate.of(paired(values, lora_values, "params/trainable"))
                row["verdicts"] = {"G1": judge(row["gain"], "greater", 0.0)}
            rows.append(row)
        type1 = next(
            (r for r in rows if r["variant"].method == "glora" and r["variant"].settings.get("type") == 1), None
        )
        types = ", ".join(str(v.settings["type"]) for v in experiment.of("glora"))
        plural = "s" if len(experiment.of("glora")) > 1 else ""
        setting = f"GLoRA type{plural} {types} vs LoRA, rank {lora.settings['rank']}, same targets and budget"
        claims = []
        if type1 is None:
            claims.append(
                ClaimResult(
                    "G1",
                    GLORA_PAPER,
                    QUOTES["G1"],
                    setting,
                    "—",
                    None,
                    Verdict(INCONCLUSIVE, "GLoRA type 1 is not in the profile"),
                    "—",
                )
            )
        else:
            claims.append(
                ClaimResult(
                    "G1",
                    GLORA_PAPER,
                    QUOTES["G1"],
                    setting + "; judged on type 1",
                    "target error, LoRA minus GLoRA type 1 (same seed)",
                    type1["gain"],
                    type1["verdicts"]["G1"],
                    "holds if the interval lies above 0",
                    "",
                    f"extra trainable parameters over LoRA: {fmt_estimate(type1['extra_params'])}",
                )
            )
        parts, notes = [], []
        for row in rows:
            if type1 is not None and row["variant"].method == "glora" and row is not type1:
                row["type1_lead"] = Estimate.of(paired(row["values"], type1["values"], "target_error"))
                name = f"type {row['variant'].settings['type']}"
                parts.append((name, judge(row["type1_lead"], "greater", 0.0)))
                notes.append(f"{name} minus type 1: {fmt_estimate(row['type1_lead'])}")
        nothing = (
            "GLoRA type 1 is not in the profile" if type1 is None else "no other GLoRA type measured beside type 1"
        )
        claims.append(
            ClaimResult(
                "G2",
                GLORA_PAPER,
                QUOTES["G2"],
                setting,
                "target error of each other type minus type 1's (same seed)",
                None,
                combine_verdicts(parts, nothing),
                "holds if type 1 is better than every other type (each interval above 0)",
                "",
                "; ".join(notes),
            )
        )
        return claims, rows

    def figures(self, rows, context, interval):
        if not rows:
            return {}
        title = f"{context.get('name', '')}: GLoRA types and LoRA: target error{interval}"
        return {"glora": plots.target_bars_figure(rows, title, "lora")}

    def render(self, rows, context, figures):
        lines = [
            "## glora-types: GLoRA types 1-4 against LoRA",
            "",
            "Equal rank and targets; the extra parameters are the gates (`params/trainable`).",
            "",
        ]
        table = []
        for row in rows:
            v = row["variant"]
            table.append(
                [
                    v.label,
                    v.settings.get("type", "—"),
                    fmt_estimate(row["params"]),
                    fmt_estimate(row["extra_params"]) if "extra_params" in row else "—",
                    fmt_estimate(row["target_error"]),
                    fmt_estimate(row.get("gain")) if "gain" in row else "—",
                    fmt_estimate(row.get("type1_lead")) if "type1_lead" in row else "—",
                    fmt_estimate(row["forgetting"]),
                    row["verdicts"]["G1"].status if "verdicts" in row else "reference",
                ]
            )
        lines += [
            markdown_table(
                [
                    "variant",
                    "type",
                    "trainable params",
                    "extra vs LoRA",
                    "target error",
                    "LoRA − this",
                    "this − type 1",
                    "forgetting",
                    "beats LoRA",
                ],
                table,
            ),
            "",
        ]
        if "glora" in figures:
            lines += [f"![glora]({figures['glora']})", ""]
        return lines
