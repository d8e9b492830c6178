"""``REPRODUCTION.md``: every claim's verdict, the rules (``verdicts.RULES``), the missing cells, then one
section per named experiment with its table and figures, each rendered by the experiment itself."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lightning_asr.study.cells import Cells
from lightning_asr.study.figures import pyplot
from lightning_asr.study.plan import Experiment
from lightning_asr.study.verdicts import MIN_SEEDS, RULES, ClaimResult, Estimate, fmt_estimate


@dataclass
class Report:
    path: Path
    claims: list[ClaimResult]
    missing: list[tuple]
    figures: list[Path]
    text: str


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A markdown table; floats to 4 significant digits, ``|`` inside cells escaped."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_head(claims: list[ClaimResult], missing: list[tuple], context: dict, plan: list[Experiment]) -> list[str]:
    seeds = context.get("seeds", [])
    lines = [f"# Reproducing the seeds' claims: {context.get('name', 'reproduction')}", ""]
    lines += [
        f"Generated {context.get('generated', '')} by `benchmarks/reproduce.py` (profile `{context.get('profile', '?')}`, "
        f"on the forgetting benchmark `{context.get('bench', '?')}`). Base model: {context.get('base_model', '?')}. "
        f"Source sets: {', '.join(context.get('source_sets', []))}; target set: {context.get('target_set', '?')} "
        f"(judged by {context.get('target_metric', 'mer').upper()}). Seeds: {', '.join(map(str, seeds)) or 'none'}. "
        + (f"MLflow: {context['mlflow']}." if context.get("mlflow") else ""),
        "",
    ]
    if len(seeds) < MIN_SEEDS:
        lines += [f"**Only {len(seeds)} seed(s) planned: every verdict below is inconclusive by rule 2.**", ""]
    cut = sorted({(e.name, v.label, tuple(v.seeds)) for e in plan for v in e.variants if v.seeds is not None})
    for seeds_cut in sorted({c[2] for c in cut}, key=len):
        names = ", ".join(f"{label} ({name})" for name, label, kept in cut if kept == seeds_cut)
        by = "`sweep_seeds`" if len(seeds_cut) == 1 else "`secondary_seeds` (outside the primary family's arms)"
        lines += [
            f"**Cut to seed(s) {', '.join(map(str, seeds_cut))} by the profile's {by}:** {names}."
            + (
                " Their rows show single values, and a claim that needs them is inconclusive by rule 2."
                if len(seeds_cut) == 1
                else ""
            ),
            "",
        ]
    lines += ["## Verdicts", ""]
    table = [
        [
            claim.id,
            f'{claim.paper}: "{claim.quote}"',
            claim.setting,
            claim.measure,
            fmt_estimate(claim.estimate, claim.unit) if claim.estimate else "see the parts",
            "primary" if claim.hypothesis is not None else "exploratory",
            f"**{claim.verdict.status}**",
            claim.verdict.reason + (f". Note: {claim.note}" if claim.note else ""),
        ]
        for claim in claims
    ]
    lines += [
        markdown_table(
            ["#", "claim (seed)", "our setting", "measured", "mean [95 % CI] (seeds)", "family", "verdict", "why"],
            table,
        ),
        "",
    ]
    lines += [RULES, "", PRIMARY_RULES, "", "Per claim:", ""]
    lines += [f"- {claim.id}: {claim.rule}" for claim in claims if claim.rule != "—"]
    lines += ["", "## Missing cells", ""]
    if missing:
        lines += [
            f"{len(missing)} planned cell(s) have no finished result; the claims that need them lose those seeds:",
            "",
        ]
        lines += [f"- {experiment} / {label} / seed {seed}: {why}" for experiment, label, seed, why in missing]
    else:
        lines += ["None: every planned (variant, seed) cell finished."]
    lines.append("")
    return lines


def decide_primary_family(claims: list[ClaimResult]) -> None:
    """The claims that carry a hypothesis form the primary family: decided together with Holm's correction on
    paired seed-and-utterance intervals (``study/statistics.py``). Their verdict replaces the rule-based one
    (the same object, so the experiments' tables show it too); every other claim is exploratory."""
    from lightning_asr.study.statistics import decide

    family = [c for c in claims if c.hypothesis is not None]
    decide([c.hypothesis for c in family])
    names = ", ".join(c.id for c in family)
    for claim in family:
        h = claim.hypothesis
        claim.verdict.status = h.verdict
        claim.verdict.reason = f"{h.reason} [primary family {names}, Holm]"
        e = h.estimate
        claim.estimate = Estimate(e.value, e.low, e.high, e.seeds)
        claim.measure = f"{claim.measure}; decided on the paired difference {h.id}: {PRIMARY_MEASURES.get(h.id, '')}"
        claim.unit = ""


PRIMARY_RULES = """\
**The primary family** (B1's direction, B2, G1) is not judged by the rules above but on paired differences over
seeds and test utterances together (a crossed bootstrap with the same utterances for every strategy; Student t
with Satterthwaite's degrees of freedom), with Holm's correction over the family: *holds* / *does not hold* when
the difference is shown on one side; *equivalent* when the 90 % interval lies inside the declared margin;
*not detected* otherwise, with the minimum detectable difference at 80 % power; *no verdict* for one seed or a
margin below one token error of the test set. A stated size (54 %) is compared with the interval apart from
the direction. Every other claim is exploratory (`lightning_asr/study/statistics.py`)."""

PRIMARY_MEASURES = {
    "B1": "BLoRA's forgetting minus LoRA's (macro source error; < 0 supports the claim)",
    "B2": "BLoRA's target error minus LoRA's (at most +4 % of LoRA's supports the claim)",
    "G1": "GLoRA type 1's target error minus LoRA's (< 0 supports the claim)",
}


def generate_report(plan: list[Experiment], cells: list[dict], context: dict, out_dir: str | Path) -> Report:
    """Write ``REPRODUCTION.md``, its PNG figures and ``verdicts.json`` to ``out_dir`` from per-cell result dicts."""
    from lightning_asr.study.claims import EXPERIMENTS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = Cells(plan, cells)
    planned = {e.name: e for e in plan}
    interval = " (95 % t-interval over seeds)" if len(context.get("seeds", [])) > 1 else " (one seed: no interval)"
    claims, sections, figures = [], [], {}
    for name, named in EXPERIMENTS.items():
        if name not in planned:
            claims += named.not_run()
            continue
        results, rows = named.judge(planned[name], index, context)
        claims += results
        drawn = {}
        for stem, figure in named.figures(rows, context, interval).items():
            if figure is None:
                continue
            figure.savefig(out_dir / f"{stem}.png", dpi=110)
            figure.savefig(out_dir / f"{stem}.svg")  # the vector copy beside each picture
            pyplot().close(figure)
            drawn[stem] = f"{stem}.png"
        figures.update(drawn)
        sections += named.render(rows, context, drawn)
    decide_primary_family(claims)
    text = "\n".join(render_head(claims, index.missing, context, plan) + sections)
    path = out_dir / "REPRODUCTION.md"
    path.write_text(text)
    (out_dir / "verdicts.json").write_text(
        json.dumps(
            [
                {
                    "id": c.id,
                    "verdict": c.verdict.status,
                    "reason": c.verdict.reason,
                    "measure": c.measure,
                    "estimate": None if c.estimate is None else vars(c.estimate),
                }
                for c in claims
            ],
            indent=2,
            default=float,
        )
    )
    return Report(path, claims, index.missing, [out_dir / f for f in figures.values()], text)
