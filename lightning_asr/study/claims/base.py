"""What a named experiment is, and the benchmark strategy entries its variants are made from.

A named experiment is one file in this folder: its profile section (a dataclass), a ``NamedExperiment``
subclass with ``variants`` (the cells it needs), ``judge`` (its claims' verdicts and the rows of its
table), ``figures`` and ``render`` (its part of ``REPRODUCTION.md``), and one line in ``claims/__init__.py``.
"""

from __future__ import annotations

from typing import Any

from lightning_asr.config import ConfigError
from lightning_asr.study.plan import Experiment, Variant
from lightning_asr.study.verdicts import INCONCLUSIVE, ClaimResult, Verdict

BLORA_PAPER, GLORA_PAPER = "BLoRA (seed 000, arXiv 2510.18723)", "GLoRA (seed 001, arXiv 2406.02562)"
# the adapter keys that make two low-rank strategies comparable ("equal rank and targets")
SHAPE_KEYS = ("rank", "alpha", "dropout", "target_modules")
NO_BACKWARD_GAIN = "LoRA did not forget in that seed (F_ref <= 0), so a share of its forgetting is undefined"


class NamedExperiment:
    name = ""  # as profiles and --experiments name it
    key = ""  # its section in a reproduce profile
    section: type | None = None  # the section's dataclass
    claims: dict[str, tuple[str, str]] = {}  # claim id -> (paper, quote)
    needs_histograms = False  # its cells' |delta W| histograms are loaded with them

    def variants(
        self, section: dict, templates: dict[str, dict], strategies: list[dict], sweep_seeds: list[int] | None
    ) -> list[Variant]:
        """The variants this experiment trains (``templates``: the benchmark's entries by method)."""
        raise NotImplementedError

    def primary_arms(self, variants: list[Variant]) -> set[str]:
        """The labels of the variants this experiment's primary claims compare (they get every seed of the
        profile; the other variants ``secondary_seeds`` of them)."""
        return set()

    def after_run(self, records: list[dict], client, context: dict, profile, bench) -> None:
        """Extra per-cell metrics once the cells are trained (set as each record's ``metrics``); ``profile``
        is the reproduce profile, ``bench`` the benchmark config."""

    def report_context(self, section) -> dict:
        """What the report's context needs from this experiment's profile section."""
        return {}

    def judge(self, experiment: Experiment, cells, context: dict) -> tuple[list[ClaimResult], list[dict]]:
        """The verdict of each claim and the rows of this experiment's table."""
        raise NotImplementedError

    def figures(self, rows: list[dict], context: dict, interval: str) -> dict:
        """Figures by file stem (``<stem>.png`` beside the report)."""
        return {}

    def render(self, rows: list[dict], context: dict, figures: dict[str, str]) -> list[str]:
        """This experiment's section of the report (markdown lines)."""
        return []

    def not_run(self) -> list[ClaimResult]:
        """The claims, inconclusive, when the profile leaves this experiment out."""
        return [
            ClaimResult(
                claim_id,
                paper,
                quote,
                "—",
                "—",
                None,
                Verdict(INCONCLUSIVE, f"experiment {self.name} is not in this profile"),
                "—",
            )
            for claim_id, (paper, quote) in self.claims.items()
        ]


# ---- the benchmark's strategy entries as templates ------------------------------------------------------------
def adapter_value(entry: dict, key: str) -> Any:
    """A key of an entry's adapter, else its strategy's default (None where the strategy has no such key)."""
    from lightning_asr.adapters import adapter_config

    adapter = entry.get("adapter", {})
    return adapter[key] if key in adapter else adapter_config({"name": adapter.get("name", "full_ft")}).get(key)


def strategy_templates(strategies: list[dict]) -> dict[str, dict]:
    """The benchmark's own entries for lora, blora, glora-<type> and full_ft, by that key; low-rank ones it
    lacks are derived from its LoRA entry, so every low-rank strategy has LoRA's rank, alpha, dropout and
    targets. Raises if the benchmark's entries differ in those."""
    templates: dict[str, dict] = {}
    for entry in strategies:
        name = entry.get("adapter", {}).get("name", "full_ft")
        key = f"glora-{adapter_value(entry, 'type')}" if name == "glora" else name
        templates.setdefault(key, dict(entry))
    if "lora" not in templates:
        raise ConfigError("the benchmark profile has no LoRA strategy: every experiment compares against LoRA")
    lora = templates["lora"]
    for key, entry in list(templates.items()):
        if key in ("lora", "full_ft", "frozen"):
            continue
        differing = [k for k in SHAPE_KEYS if adapter_value(entry, k) != adapter_value(lora, k)]
        if differing:
            raise ConfigError(
                f"benchmark strategy {entry['label']!r} differs from LoRA in {differing}: the seeds' "
                "claims are at equal rank and targets — fix: give every low-rank strategy LoRA's values"
            )
    templates.setdefault("blora", {**lora, "label": "blora", "adapter": {**lora["adapter"], "name": "blora"}})
    for glora_type in (1, 2, 3, 4):
        templates.setdefault(
            f"glora-{glora_type}",
            {
                **lora,
                "label": f"glora-{glora_type}",
                "adapter": {**lora["adapter"], "name": "glora", "type": glora_type},
            },
        )
    templates.setdefault("full_ft", {"label": "full_ft", "adapter": {"name": "full_ft"}})
    return templates


def with_adapter(template: dict, **changes) -> dict:
    """``template`` with adapter values changed, labelled ``<template label>-<key><value>`` for each value that
    differs from the template's (an unchanged template keeps its label, and so its cells)."""
    from lightning_asr.study.verdicts import number

    suffix = {"kl_weight": "kl", "prior_std": "prior", "rank": "r", "alpha": "a"}
    differing = {k: v for k, v in changes.items() if adapter_value(template, k) != v}
    if not differing:
        return dict(template)
    label = template["label"] + "".join(f"-{suffix[k]}{number(v)}" for k, v in differing.items())
    return {**template, "label": label, "adapter": {**template["adapter"], **differing}}


def low_rank_settings(entry: dict) -> dict:
    settings = {"rank": adapter_value(entry, "rank")}
    name = adapter_value(entry, "name")
    if name == "blora":
        settings.update(kl_weight=adapter_value(entry, "kl_weight"), prior_std=adapter_value(entry, "prior_std"))
    if name == "glora":
        settings["type"] = adapter_value(entry, "type")
    return settings


def variant_of(
    entry: dict,
    reference: str | None,
    headline: bool = False,
    arm: str = "pretrained",
    method: str | None = None,
    cost_method: str | None = None,
) -> Variant:
    name = adapter_value(entry, "name")
    return Variant(
        label=entry["label"],
        method=method or name,
        entry=entry,
        arm=arm,
        reference=reference,
        settings=low_rank_settings(entry) if name in ("lora", "blora", "glora") else {},
        headline=headline,
        cost_method=cost_method,
    )


def at_rank(template: dict, rank: int) -> dict:
    """The template at another rank with alpha / rank kept, so the update's scale does not change with rank."""
    scale = adapter_value(template, "alpha") / adapter_value(template, "rank")
    changed = with_adapter(template, rank=rank)
    if rank != adapter_value(template, "rank"):
        changed["adapter"]["alpha"] = scale * rank
    return changed


def by_label(strategies: list[dict], label: str) -> dict | None:
    return next((dict(s) for s in strategies if s.get("label") == label), None)


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested dicts key by key."""
    result = dict(base)
    for key, value in changes.items():
        result[key] = merged(result.get(key, {}), value) if isinstance(value, dict) else value
    return result


def settings_text(variant: Variant) -> str:
    from lightning_asr.study.verdicts import number

    shown = {k: v for k, v in variant.settings.items() if k != "rank"}
    return "(" + ", ".join(f"{k} {number(v)}" for k, v in shown.items()) + ")" if shown else ""
