"""finetune-vs-scratch: full fine-tuning of the pretrained base against the same architecture trained from
random weights, both on the code-switched training set alone (claim G3 of the GLoRA seed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_asr.study.claims.base import GLORA_PAPER, NamedExperiment, merged, variant_of
from lightning_asr.study.report import markdown_table
from lightning_asr.study.verdicts import ClaimResult, Estimate, fmt_estimate, judge, metric, paired


@dataclass
class ScratchSection:
    # overrides of the benchmark's full_ft strategy for the arm trained from random weights (a learning rate
    # suited to training from scratch; the fine-tuning one is far too small for it)
    strategy: dict = field(default_factory=lambda: {"optim": {"lr": 1.5e-3}})


QUOTE = "fine-tuning ASR models for code-switching significantly improves performance over training from scratch"


class FinetuneVsScratch(NamedExperiment):
    name, key, section = "finetune-vs-scratch", "finetune_vs_scratch", ScratchSection
    claims = {"G3": (GLORA_PAPER, QUOTE)}

    def variants(self, section, templates, strategies, sweep_seeds):
        full_ft = templates["full_ft"]
        scratch = merged(full_ft, section["strategy"])
        scratch["label"] = "scratch"
        return [
            variant_of(full_ft, None, True),
            variant_of(scratch, None, arm="scratch", method="scratch", cost_method="full_ft"),
        ]

    def judge(self, experiment, cells, context):
        tuned, scratch = experiment.of("full_ft")[0], experiment.of("scratch")[0]
        tuned_values, scratch_values = (
            cells.per_seed(experiment, tuned, context),
            cells.per_seed(experiment, scratch, context),
        )
        gain = Estimate.of(paired(scratch_values, tuned_values, "target_error"))
        rows = [
            {"variant": v, "values": vals, "target_error": metric(vals, "target_error")}
            for v, vals in ((tuned, tuned_values), (scratch, scratch_values))
        ]
        claim = ClaimResult(
            "G3",
            GLORA_PAPER,
            QUOTE,
            "full fine-tuning of the pretrained base vs the same architecture from random weights, "
            "both on the code-switched training set alone, same steps",
            "target error, scratch minus fine-tuned (same seed)",
            gain,
            judge(gain, "greater", 0.0),
            "holds if the interval lies above 0",
        )
        return [claim], rows

    def render(self, rows, context, figures):
        return [
            "## finetune-vs-scratch",
            "",
            "Both arms are full fine-tuning with the same steps and batch on the code-switched training set alone; "
            "`scratch` starts from random weights of the same architecture (its own learning rate, from the profile).",
            "",
            markdown_table(
                ["arm", "target error"], [[row["variant"].label, fmt_estimate(row["target_error"])] for row in rows]
            ),
            "",
        ]
