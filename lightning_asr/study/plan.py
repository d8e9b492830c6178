"""The plan of a reproduction: named experiments, each a list of variants (benchmark strategy entries) trained
for the same seeds, built by a loop over the registry of named experiments (``claims/``).

A *cell* is one (variant, seed), trained and evaluated by the forgetting benchmark and shared by every
experiment that names the same variant: equal configs get equal labels, so their cells are found again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, make_dataclass
from functools import cache

from lightning_asr.config import ConfigError


@dataclass
class Variant:
    label: str  # the benchmark strategy label, so equal configs share cells across experiments
    method: str  # the strategy (lora, blora, ...), or what the experiment calls the arm (scratch)
    entry: dict  # the benchmark strategy entry (label, adapter, optim, ...)
    arm: str = "pretrained"  # pretrained: adapts the benchmark's base; scratch: its architecture, random weights
    reference: str | None = None  # the variant compared against, seed by seed
    settings: dict = field(default_factory=dict)  # the swept values (rank, kl_weight, prior_std, type)
    headline: bool = False  # the seed paper's own setting
    seeds: list[int] | None = None  # fewer seeds than the experiment's (a cut sweep point); None: all of them
    cost_method: str | None = None  # whose measured cell cost (``cell_seconds``) applies, when not ``method``'s


@dataclass
class Experiment:
    name: str
    variants: list[Variant]
    seeds: list[int]

    def seeds_of(self, variant: Variant) -> list[int]:
        return self.seeds if variant.seeds is None else variant.seeds

    def variant(self, label: str) -> Variant | None:
        return next((v for v in self.variants if v.label == label), None)

    def of(self, method: str, **settings) -> list[Variant]:
        return [
            v for v in self.variants if v.method == method and all(v.settings.get(k) == s for k, s in settings.items())
        ]


@cache
def reproduce_schema() -> type:
    """The reproduce profile's schema: the shared keys plus one section per registered named experiment."""
    from lightning_asr.study.claims import EXPERIMENTS

    sections = [(e.key, e.section, field(default_factory=e.section)) for e in EXPERIMENTS.values() if e.section]
    return make_dataclass(
        "ReproduceConfig",
        [
            ("name", str, field(default="reproduce-embedded")),  # tags the runs and names the report
            ("bench", str, field(default="embedded")),  # the forgetting-benchmark profile every experiment builds on
            ("bench_overrides", list[str], field(default_factory=list)),  # key=value overrides of that profile
            ("seeds", list[int], field(default_factory=lambda: [1, 2, 3])),
            # how many of the seeds the sweep points run on (settings other than the benchmark's); 0: all. The
            # claims judged with an interval always get every seed.
            ("sweep_seeds", int, field(default=0)),
            # how many of the seeds the variants outside the primary family's arms run on (0: all): the primary
            # claims are planned for power (statistics.decision_seeds), the exploratory ones need fewer
            ("secondary_seeds", int, field(default=0)),
            ("experiments", list[str], field(default_factory=lambda: list(EXPERIMENTS))),
            *sections,
            ("cell_seconds", dict, field(default_factory=dict)),  # measured seconds per cell by method (--check)
            ("report_dir", str, field(default="reports")),
        ],
    )


def build_plan(config: dict, strategies: list[dict], seeds: list[int] | None = None) -> list[Experiment]:
    """The named experiments of a reproduce profile (its config as a dict) over a benchmark's strategies."""
    from lightning_asr.study.claims import EXPERIMENTS, strategy_templates

    unknown = sorted(set(config["experiments"]) - set(EXPERIMENTS))
    if unknown:
        raise ConfigError(f"unknown experiments {unknown}; choose from {', '.join(EXPERIMENTS)}")
    seeds = list(seeds or config["seeds"])
    sweep_count = config.get("sweep_seeds", 0)
    if sweep_count < 0:
        raise ConfigError(f"sweep_seeds={sweep_count}: give how many of the seeds sweep points run on (0: all)")
    sweep_seeds = seeds[:sweep_count] if 0 < sweep_count < len(seeds) else None
    templates = strategy_templates(strategies)
    plan = []
    for name, experiment in EXPERIMENTS.items():
        if name in config["experiments"]:
            # the section's defaults for keys the profile leaves out
            section = {**asdict(experiment.section()), **config.get(experiment.key, {})} if experiment.section else {}
            variants = experiment.variants(section, templates, strategies, sweep_seeds)
            plan.append(Experiment(name, variants, seeds))
            if 0 < config.get("secondary_seeds", 0) < len(seeds):
                primary = experiment.primary_arms(variants)
                for variant in variants:
                    if variant.seeds is None and variant.label not in primary:
                        variant.seeds = seeds[: config["secondary_seeds"]]
    return plan


def benchmark_groups(experiment: Experiment) -> list[tuple[str, list[int], list[Variant]]]:
    """One benchmark run per (arm, seeds): the variants on every seed first, then the cut sweep points with the
    variants they are compared against (whose cells at those seeds the first run already made)."""
    groups: dict[tuple[str, tuple[int, ...]], list[Variant]] = {}
    for variant in experiment.variants:
        groups.setdefault((variant.arm, tuple(experiment.seeds_of(variant))), []).append(variant)
    result = []
    for (arm, seeds), variants in sorted(
        groups.items(), key=lambda item: (item[0][0] != "pretrained", -len(item[0][1]))
    ):
        labels = {v.label for v in variants}
        references = [experiment.variant(v.reference) for v in variants if v.reference and v.reference not in labels]
        result.append((arm, list(seeds), list({v.label: v for v in references + variants}.values())))
    return result


def plan_lines(plan: list[Experiment], cell_seconds: dict) -> list[str]:
    """The planned cells per experiment and the time they cost when none is cached (shared cells once)."""
    from lightning_asr.study.verdicts import number

    lines, unique = [], {}
    for experiment in plan:
        lines.append(f"{experiment.name}: seeds {experiment.seeds}")
        for v in experiment.variants:
            shown = ", ".join(f"{k} {number(x)}" for k, x in v.settings.items())
            cut = (
                f"  (seed{'s' if len(v.seeds) > 1 else ''} {', '.join(map(str, v.seeds))} only)"
                if v.seeds is not None
                else ""
            )
            lines.append(
                f"  {v.label:<22} {v.method:<8} {v.arm:<10} {shown}{'  (paper setting)' if v.headline else ''}{cut}"
            )
            for seed in experiment.seeds_of(v):
                unique[(v.arm, v.label, seed)] = v.cost_method or v.method
    lines.append(f"{len(unique)} distinct cells; {cost_text(list(unique.values()), cell_seconds)}")
    return lines


def cost_text(methods: list[str], cell_seconds: dict) -> str:
    """What cells of these methods (one entry per cell) cost on this machine, from the profile's measured
    seconds per cell by method, when none is cached."""
    seconds = [cell_seconds.get(method) for method in methods]
    known = [s for s in seconds if s is not None]
    if not known:
        return "cost unknown (the profile has no cell_seconds for these strategies)"
    unknown = len(seconds) - len(known)
    return f"~{sum(known) / 60:.0f} min on this machine if none is cached (cell_seconds in the profile)" + (
        f"; +{unknown} cells of unknown cost" if unknown else ""
    )
