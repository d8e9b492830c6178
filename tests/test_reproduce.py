"""The reproduction report: plan, verdict rules, missing cells, rescoring, rendering, and the tiny profile end to end."""

import json
import math
from pathlib import Path

import pytest

from lightning_asr.config import ConfigError
from lightning_asr.study.cells import Cells, logged_histogram
from lightning_asr.study.claims import EXPERIMENTS
from lightning_asr.study.claims.token_normalisation import count_compatibility_jamo, rescore, to_compatibility_jamo
from lightning_asr.study.plan import Variant, benchmark_groups, build_plan, plan_lines
from lightning_asr.study.report import generate_report
from lightning_asr.study.statistics import UNDECIDABLE
from lightning_asr.study.tracking import TAG_EXPERIMENT
from lightning_asr.study.verdicts import FAILS, HOLDS, INCONCLUSIVE, Estimate, Verdict, combine_verdicts, judge
from lightning_asr.text import TextNormalizer

SOURCES, TARGET = ["en/test", "ko/test"], "ko-en/test"
CONTEXT = {
    "name": "reproduce-test",
    "source_sets": SOURCES,
    "target_set": TARGET,
    "target_lang": "ko-en",
    "target_metric": "mer",
    "seeds": [1, 2, 3],
    "compat_fraction": 0.5,
}
BENCH_STRATEGIES = [
    {"label": "full_ft", "adapter": {"name": "full_ft"}, "optim": {"lr": 3e-4}},
    {"label": "lora", "adapter": {"name": "lora", "rank": 8, "alpha": 16}},
    {"label": "glora-1", "adapter": {"name": "glora", "type": 1, "rank": 8, "alpha": 16}},
    {"label": "blora", "adapter": {"name": "blora", "rank": 8, "alpha": 16, "prior_std": 0.01, "kl_weight": 1e-4}},
]


def profile(**changes) -> dict:
    config = {
        "experiments": list(EXPERIMENTS),
        "seeds": [1, 2, 3],
        "blora_vs_lora": {"kl_weight": [1e-5, 1e-4, 1e-3], "prior_std": [0.005, 0.01, 0.05], "grid": "one-at-a-time"},
        "glora_types": {"types": [1, 2]},
        "finetune_vs_scratch": {"strategy": {"optim": {"lr": 1.5e-3}}},
        "token_normalisation": {"strategies": ["lora"], "compat_fraction": 0.5},
        "rank_sweep": {"ranks": [2, 8], "methods": ["lora", "glora-1", "blora"]},
    }
    config.update(changes)
    return config


def outcome(variant: Variant, seed: int, lora_forgets: bool = True) -> tuple[float, float, float, dict]:
    """Hand-made (en, ko, target) error rates and metrics: BLoRA forgets half of LoRA's forgetting and is
    2-3 % worse on the target; GLoRA type 1 beats LoRA and type 2, as LoRA at GLoRA's starting scale (alpha / 2)
    does (scale, not gating); bottleneck adapters learn less than GLoRA and forget less; fine-tuning beats
    scratch; BLoRA's delta W is sparser than LoRA's, far from 99.7 % below 1e-3 in absolute terms but above
    99 % against RMS(W0)."""
    jitter = 0.002 * (seed - 2)
    method = "glora" if variant.settings.get("scale") == "alpha/2" else variant.method
    forgetting = {
        "lora": 0.10 if lora_forgets else 0.0,
        "blora": 0.05,
        "glora": 0.08,
        "bottleneck": 0.07,
        "full_ft": 0.3,
        "scratch": 0.9,
    }[method]
    target = {"lora": 0.20, "blora": 0.20 * (1.02 + 0.005 * (seed - 2)), "full_ft": 0.05, "scratch": 0.9}.get(method)
    if method == "glora":
        target = 0.17 if variant.settings.get("type", 1) == 1 else 0.19
    if method == "bottleneck":
        target = 0.18
    if method != "blora":
        target += jitter
    metrics = {
        "params/trainable": {"lora": 1000, "blora": 2000, "glora": 1100, "bottleneck": 1020}.get(method, 10**6),
        "sparsity/frac_below_1e-3": {"blora": 0.5 + jitter}.get(method, 0.2 + jitter),
        "sparsity/rms_relative/frac_below_1e-3": {"blora": 0.996 + jitter / 2}.get(method, 0.5 + jitter),
        "sparsity/width_scaled/frac_below_1e-3": {"blora": 0.6 + jitter}.get(method, 0.3 + jitter),
        "sparsity/factors/frac_below_1e-3": 0.1,
    }
    return 0.05 + forgetting, 0.02 + forgetting, target, metrics


def fake_cells(plan, seeds=(1, 2, 3), skip=(), lora_forgets=True) -> list[dict]:
    cells = []
    for experiment in plan:
        for variant in experiment.variants:
            for seed in seeds:
                if (experiment.name, variant.label, seed) in skip:
                    continue
                en, ko, target, metrics = outcome(variant, seed, lora_forgets)
                base_errors = {"en/test": 0.05, "ko/test": 0.02, TARGET: 0.5 if variant.arm == "pretrained" else 1.0}
                if variant.arm == "scratch":
                    base_errors.update({"en/test": 1.0, "ko/test": 1.0})
                if experiment.name == "token-normalisation":
                    metrics = {
                        **metrics,
                        "compat_jamo/references": 0,
                        "compat_jamo/predictions": 0,
                        "rescored/natural/map/mer": target,
                        "rescored/natural/no-map/mer": target,
                        "rescored/compat/map/mer": target,
                        "rescored/compat/no-map/mer": target + 0.3,
                    }
                cells.append(
                    {
                        "experiment": experiment.name,
                        "label": variant.label,
                        "seed": seed,
                        "status": "finished",
                        "errors": {"en/test": en, "ko/test": ko, TARGET: target},
                        "base_errors": base_errors,
                        "metrics": metrics,
                    }
                )
                if experiment.name == "blora-vs-lora":  # |delta W| counts: 29 bins lie below 1e-3
                    below = round(100 * metrics["sparsity/frac_below_1e-3"])
                    cells[-1]["delta_w_histogram"] = [0] * 28 + [below, 100 - below] + [0] * 16
    return cells


def verdicts(report) -> dict[str, str]:
    return {claim.id: claim.verdict.status for claim in report.claims}


# ---- verdict rules ----------------------------------------------------------------------------------------------
def test_judge_holds_when_the_interval_lies_on_the_claimed_side():
    verdict = judge(Estimate.of([0.50, 0.55, 0.60]), "greater", 0.0)
    assert verdict.status == HOLDS and "above 0" in verdict.reason
    assert judge(Estimate.of([0.02, 0.025, 0.03]), "less", 0.04).status == HOLDS


def test_judge_does_not_hold_when_the_interval_lies_on_the_other_side():
    verdict = judge(Estimate.of([-0.30, -0.25, -0.28]), "greater", 0.0)
    assert verdict.status == FAILS and "against the claim" in verdict.reason
    assert judge(Estimate.of([0.50, 0.52, 0.51]), "greater", 0.99).status == FAILS


def test_judge_is_inconclusive_when_the_interval_contains_the_threshold():
    verdict = judge(Estimate.of([-0.1, 0.2, 0.05]), "greater", 0.0)
    assert verdict.status == INCONCLUSIVE and "contains 0" in verdict.reason
    # identical values: a zero-width interval at the threshold decides nothing
    assert judge(Estimate.of([0.0, 0.0, 0.0]), "greater", 0.0).status == INCONCLUSIVE


def test_judge_is_inconclusive_with_fewer_than_three_seeds_however_large_the_effect():
    verdict = judge(Estimate.of([0.9, 0.95]), "greater", 0.0)
    assert verdict.status == INCONCLUSIVE and "2 seed(s)" in verdict.reason and "3 needed" in verdict.reason


def test_undefined_values_are_left_out_and_named_in_the_reason():
    estimate = Estimate.of([0.5, math.nan, 0.6, math.nan])
    assert (estimate.n, estimate.undefined) == (2, 2) and estimate.mean == pytest.approx(0.55)
    verdict = judge(estimate, "greater", 0.0, undefined_reason="LoRA did not forget")
    assert verdict.status == INCONCLUSIVE and "2 seed(s) undefined (LoRA did not forget)" in verdict.reason


def test_a_claim_of_parts_fails_if_any_part_fails_and_holds_only_if_all_hold():
    holds, fails, open_ = Verdict(HOLDS, ""), Verdict(FAILS, ""), Verdict(INCONCLUSIVE, "wide")
    assert combine_verdicts([("a", holds), ("b", holds)], "-").status == HOLDS
    assert combine_verdicts([("a", holds), ("b", open_), ("c", fails)], "-").status == FAILS
    assert combine_verdicts([("a", holds), ("b", open_)], "-").status == INCONCLUSIVE
    assert combine_verdicts([], "nothing measured").reason == "nothing measured"


# ---- the plan ---------------------------------------------------------------------------------------------------
def test_plan_shares_cells_with_the_benchmark_and_keeps_rank_and_targets_equal():
    plan = {e.name: e for e in build_plan(profile(), BENCH_STRATEGIES)}
    blora = plan["blora-vs-lora"]
    # one-at-a-time: the benchmark's setting once, plus two kl_weight and two prior_std values
    assert [v.label for v in blora.variants] == [
        "lora",
        "blora-kl1e-05",
        "blora",
        "blora-kl0.001",
        "blora-prior0.005",
        "blora-prior0.05",
        "blora-paper",
    ]
    assert [v.headline for v in blora.variants].count(True) == 1 and blora.variant("blora").entry == BENCH_STRATEGIES[3]
    from lightning_asr.adapters.blora import PAPER_TIME_SETTINGS

    paper = blora.variant("blora-paper")
    assert paper.entry["adapter"] == {**BENCH_STRATEGIES[3]["adapter"], **PAPER_TIME_SETTINGS} and paper.seeds is None
    # GLoRA's scale controls: LoRA at alpha / 2 (types 1-3 start there) and alpha / 4 (type 4); types 1, 2 here
    controls = plan["glora-types"].of("lora", scale="alpha/2")
    assert [c.entry["adapter"]["alpha"] for c in controls] == [8] and not plan["glora-types"].of(
        "lora", scale="alpha/4"
    )
    # bottleneck adapters against GLoRA type 1 and LoRA, with LoRA's learning rate and budget
    adapters = plan["glora-vs-adapters"]
    assert [v.label for v in adapters.variants] == ["lora", "glora-1", "bottleneck-9"]
    assert adapters.variants[2].entry["adapter"] == {
        "name": "bottleneck",
        "bottleneck": 9,
        "placement": ["attention", "feed_forward"],
    }
    assert all(v.reference == "lora" and v.entry["adapter"]["rank"] == 8 for v in blora.variants[1:])
    # a type the benchmark lacks is derived from its LoRA entry
    assert plan["glora-types"].variant("glora-2").entry["adapter"] == {
        "name": "glora",
        "type": 2,
        "rank": 8,
        "alpha": 16,
    }
    scratch = plan["finetune-vs-scratch"].variant("scratch")
    assert (
        scratch.arm == "scratch"
        and scratch.entry["optim"]["lr"] == 1.5e-3
        and scratch.entry["adapter"]["name"] == "full_ft"
    )
    sweep = plan["rank-sweep"]
    assert sweep.variant("blora-r2").entry["adapter"]["alpha"] == 4 and sweep.variant("blora-r2").reference == "lora-r2"
    assert sweep.variant("glora-1").entry == BENCH_STRATEGIES[2]  # rank 8 is the benchmark's own cell
    full = build_plan(
        profile(
            experiments=["blora-vs-lora"],
            blora_vs_lora={"kl_weight": [1e-5, 1e-4, 1e-3], "prior_std": [0.005, 0.01, 0.05], "grid": "full"},
        ),
        BENCH_STRATEGIES,
    )
    assert len(full[0].variants) == 1 + 9 + 1  # LoRA, the grid, blora-paper


def test_plan_refuses_low_rank_strategies_of_unequal_rank():
    strategies = BENCH_STRATEGIES[:3] + [{"label": "blora", "adapter": {"name": "blora", "rank": 16, "alpha": 16}}]
    with pytest.raises(ConfigError, match="differs from LoRA in \\['rank'\\]"):
        build_plan(profile(), strategies)
    with pytest.raises(ConfigError, match="unknown experiments"):
        build_plan(profile(experiments=["blora-vs-lora", "glora-vs-everything"]), BENCH_STRATEGIES)


# ---- claims from hand-made cells ----------------------------------------------------------------------------------
def test_report_from_hand_made_cells(tmp_path):
    plan = build_plan(profile(), BENCH_STRATEGIES)
    report = generate_report(plan, fake_cells(plan), CONTEXT, tmp_path)
    got = verdicts(report)
    assert got == {
        "B1": HOLDS,
        "B2": HOLDS,
        "B3": HOLDS,
        "B4": FAILS,
        "B4-rms": HOLDS,
        "B4-width": FAILS,
        "B4-entries": FAILS,
        "G1": HOLDS,
        "G2": HOLDS,
        "Q1-target": HOLDS,
        "Q1-forgetting": FAILS,
        "G3": HOLDS,
        "G4": INCONCLUSIVE,
        "R1": HOLDS,
        "R2": HOLDS,
    }
    claims = {c.id: c for c in report.claims}
    assert claims["B1"].estimate.mean == pytest.approx(0.5) and claims["B1"].estimate.n == 3
    assert "the paper's 54 % is above our interval" in claims["B1"].note
    assert claims["G1"].estimate.mean == pytest.approx(0.03)
    assert "extra trainable parameters over LoRA: 100" in claims["G1"].note
    # LoRA at alpha / 2 learns what type 1 learns: scale, not gating, explains type 1's gain
    assert "target — scale: the difference vanishes" in claims["G1"].note
    assert "closest reading to the paper's 99.7 %: |ΔW| < 1e-3 · RMS(W0)" in claims["B4"].note
    assert claims["Q1-target"].estimate.mean == pytest.approx(0.01)
    assert (
        "no compatibility jamo" in claims["G4"].verdict.reason and "nil by construction" in claims["G4"].verdict.reason
    )
    assert report.missing == []
    text = report.path.read_text()
    verdict_rows = [
        line for line in text.splitlines() if line.startswith("| B") or line.startswith("| G") or line.startswith("| R")
    ]
    assert len([r for r in verdict_rows if "**" in r]) == 13  # one verdict row per claim (Q1 rows aside)
    assert "## Missing cells\n\nNone" in text and "How a verdict is reached" in text
    assert "- B4: holds if the interval lies above 99 %" in text and "- R1: holds if it holds at every rank" in text
    figures = ("blora_tradeoff.png", "sparsity.png", "sparsity_histograms.png", "glora.png", "glora_vs_adapters.png")
    for figure in (*figures, "rank_sweep.png"):
        assert (tmp_path / figure).stat().st_size > 1000 and f"]({figure})" in text
    # histograms are summed over seeds: each of LoRA's three seeds holds 20 of 100 entries below 1e-3
    lora_histogram = Cells(plan, fake_cells(plan)).summed_histogram(plan[0], plan[0].variant("lora"))
    assert sum(lora_histogram) == 300 and sum(lora_histogram[:29]) == 60
    assert json.loads((tmp_path / "verdicts.json").read_text())[0]["id"] == "B1"


def test_backward_gain_undefined_when_lora_does_not_forget(tmp_path):
    plan = build_plan(profile(experiments=["blora-vs-lora"]), BENCH_STRATEGIES)
    report = generate_report(plan, fake_cells(plan, lora_forgets=False), CONTEXT, tmp_path)
    b1 = next(c for c in report.claims if c.id == "B1")
    assert b1.verdict.status == INCONCLUSIVE and b1.estimate.undefined == 3 and b1.estimate.n == 0
    assert "LoRA did not forget" in b1.verdict.reason
    assert "no data (3 undefined)" in report.text
    # the other readings stay defined: forward loss still decides
    assert verdicts(report)["B2"] == HOLDS


def test_missing_cells_are_listed_and_cost_their_seeds(tmp_path):
    plan = build_plan(profile(experiments=["blora-vs-lora", "glora-types"]), BENCH_STRATEGIES)
    cells = fake_cells(plan, skip={("blora-vs-lora", "blora", 3), ("glora-types", "lora", 2)})
    cells.append({"experiment": "glora-types", "label": "glora-2", "seed": 9, "status": "finished", "errors": {}})
    cells = [c for c in cells if not (c["experiment"] == "glora-types" and c["label"] == "glora-2" and c["seed"] == 1)]
    cells.append({"experiment": "glora-types", "label": "glora-2", "seed": 1, "status": "run abc deleted"})
    report = generate_report(plan, cells, CONTEXT, tmp_path)
    assert sorted(report.missing) == [
        ("blora-vs-lora", "blora", 3, "not run"),
        ("glora-types", "glora-2", 1, "run abc deleted"),
        ("glora-types", "lora", 2, "not run"),
    ]
    assert (
        "- blora-vs-lora / blora / seed 3: not run" in report.text
        and "3 planned cell(s) have no finished result" in report.text
    )
    got = verdicts(report)
    assert got["B1"] == INCONCLUSIVE and got["G1"] == INCONCLUSIVE  # 2 seeds left in each
    assert "2 seed(s) with a defined value" in next(c for c in report.claims if c.id == "B1").verdict.reason
    assert (
        got["G3"] == INCONCLUSIVE
        and "not in this profile" in next(c for c in report.claims if c.id == "G3").verdict.reason
    )


def test_sweep_points_cut_to_fewer_seeds_keep_every_seed_for_the_claims(tmp_path):
    plan = {e.name: e for e in build_plan(profile(sweep_seeds=1), BENCH_STRATEGIES)}
    blora, ranks = plan["blora-vs-lora"], plan["rank-sweep"]
    assert {v.label: blora.seeds_of(v) for v in blora.variants} == {
        "lora": [1, 2, 3],
        "blora": [1, 2, 3],
        "blora-kl1e-05": [1],
        "blora-kl0.001": [1],
        "blora-prior0.005": [1],
        "blora-prior0.05": [1],
        "blora-paper": [1, 2, 3],  # compared with the default, not a sweep point
    }
    assert {v.label for v in ranks.variants if ranks.seeds_of(v) == [1]} == {"lora-r2", "glora-1-r2", "blora-r2"}
    assert all(
        e.seeds_of(v) == [1, 2, 3]
        for name in ("glora-types", "finetune-vs-scratch")
        for e in [plan[name]]
        for v in e.variants
    )
    # one benchmark run on every seed first, then the cut points with the LoRA cells they are compared against
    groups = [(arm, seeds, [v.label for v in variants]) for arm, seeds, variants in benchmark_groups(blora)]
    assert groups == [
        ("pretrained", [1, 2, 3], ["lora", "blora", "blora-paper"]),
        ("pretrained", [1], ["lora", "blora-kl1e-05", "blora-kl0.001", "blora-prior0.005", "blora-prior0.05"]),
    ]
    assert [g[1] for g in benchmark_groups(ranks)] == [[1, 2, 3], [1]]
    lines = plan_lines(list(plan.values()), {"lora": 100, "glora": 100, "blora": 100, "full_ft": 100})
    assert "  (seed 1 only)" in next(line for line in lines if line.strip().startswith("blora-kl1e-05"))
    # distinct cells: lora, blora, blora-paper x 3 seeds; 4 BLoRA points x 1; glora-1, glora-2, LoRA at alpha / 2,
    # bottleneck adapters x 3; full_ft, scratch x 3; three methods at rank 2 x 1
    assert lines[-1].startswith("34 distinct cells")

    cells = fake_cells(list(plan.values()))
    report = generate_report(
        list(plan.values()),
        [
            c
            for c in cells
            if c["seed"] == 1 or c["label"] in {v.label for e in plan.values() for v in e.variants if v.seeds is None}
        ],
        CONTEXT,
        tmp_path,
    )
    assert report.missing == []  # seeds 2 and 3 of a cut point are not planned, so not missing
    got = verdicts(report)
    assert got["B1"] == HOLDS and got["G1"] == HOLDS and got["R1"] == INCONCLUSIVE and got["R2"] == INCONCLUSIVE
    assert "1 seed(s) with a defined value" in next(c for c in report.claims if c.id == "R1").verdict.reason
    assert "Cut to seed(s) 1 by the profile's `sweep_seeds`" in report.text and "blora-r2 (rank-sweep)" in report.text
    with pytest.raises(ConfigError, match="sweep_seeds=-1"):
        build_plan(profile(sweep_seeds=-1), BENCH_STRATEGIES)


def test_report_with_no_cells_at_all_lists_every_planned_cell(tmp_path):
    plan = build_plan(profile(seeds=[1]), BENCH_STRATEGIES)
    report = generate_report(plan, [], {"name": "empty", "seeds": [1]}, tmp_path)
    assert len(report.missing) == sum(len(e.variants) for e in plan)
    assert set(verdicts(report).values()) == {INCONCLUSIVE}
    assert "Only 1 seed(s) planned" in report.text


# ---- token normalisation -----------------------------------------------------------------------------------------
def test_compatibility_spelling_composes_back_under_the_jamo_map():
    text = "주말에 닭을 meeting 했어요 까 쌀"
    respelt = to_compatibility_jamo(text)
    assert count_compatibility_jamo([respelt]) > 0 and not any("\uac00" <= c <= "\ud7a3" for c in respelt)
    assert respelt.startswith("ㅈㅜㅁㅏㄹㅇㅔ ㄷㅏㄺ")
    assert TextNormalizer("ko-en", korean_jamo_map=True)(respelt) == TextNormalizer("ko-en")(text)
    assert TextNormalizer("ko-en", korean_jamo_map=False)(respelt) != TextNormalizer("ko-en")(text)


def test_rescoring_shows_the_map_only_where_compatibility_jamo_exist():
    rows = [
        {"reference": "주말에 회의실에서 budget을 예약했어요", "prediction": "주말에 회의실에서 design을 예약했어요"},
        {"reference": "오늘 선생님이 code review를 했어요", "prediction": "오늘 선생님이 code review를 했어요"},
    ]
    scores = rescore(rows, "ko-en", compat_fraction=1.0)
    assert scores["compat_jamo/references"] == 0 and scores["compat_jamo/rewritten_references"] > 0
    assert scores["rescored/natural/map/mer"] == scores["rescored/natural/no-map/mer"]
    assert scores["rescored/compat/map/mer"] == pytest.approx(scores["rescored/natural/map/mer"])
    assert scores["rescored/compat/no-map/mer"] > scores["rescored/compat/map/mer"]
    assert {"rescored/compat/no-map/cer", "rescored/compat/no-map/jer"} <= set(scores)


# ---- the scratch arm of a base that is not a preset ----------------------------------------------------------------
def test_random_init_base_keeps_the_architecture_and_replaces_the_weights(tmp_path):
    import torch

    from lightning_asr.models import load_model_processor
    from lightning_asr.study.reproduction import random_init_base

    model, processor = load_model_processor("whisper-tiny-random", seed=5)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    path = random_init_base(str(tmp_path / "base"), tmp_path / "cache")
    assert random_init_base(str(tmp_path / "base"), tmp_path / "cache") == path  # saved once
    fresh, _ = load_model_processor(path)
    assert fresh.config.d_model == model.config.d_model and fresh.config.encoder_layers == model.config.encoder_layers
    weight = "model.encoder.layers.0.fc1.weight"
    assert not torch.equal(fresh.state_dict()[weight], model.state_dict()[weight])


# ---- the tiny profile end to end -----------------------------------------------------------------------------------
def test_tiny_profile_end_to_end(tmp_path, capsys):
    """`make reproduce PROFILE=tiny` as CI runs it (~1 min on 2 idle cores): every named experiment on the smoke
    benchmark, a report with one verdict per claim, runs grouped under one parent per experiment, a cell shared
    by experiments trained once."""
    from mlflow.tracking import MlflowClient

    from lightning_asr.study.cli import reproduce_main as main

    bench = (
        f"bench_overrides=[curves.points=0,tracking_uri=sqlite:///{tmp_path}/mlflow.db,artifact_root={tmp_path}/artifacts,"
        f"output_dir={tmp_path}/runs,corpus.root={tmp_path}/corpus,base.cache_dir={tmp_path}/bases]"
    )
    args = ["--profile", "tiny", bench, f"report_dir={tmp_path}/reports"]
    assert main(args) == 0
    # each experiment's benchmark runs write their comparisons under their own names, beside (never over) the
    # benchmark's own comparison-<target>.md
    out = tmp_path / "runs" / "forgetting-smoke"
    assert not list(out.glob("comparison-*.md"))
    assert (out / "reproduce-tiny-blora-vs-lora-pretrained-seeds1-comparison-ko-en.md").exists()
    report = tmp_path / "reports" / "tiny" / "REPRODUCTION.md"
    text = report.read_text()
    for claim in (
        "B1",
        "B2",
        "B3",
        "B4",
        "B4-rms",
        "B4-width",
        "B4-entries",
        "G1",
        "G2",
        "Q1-target",
        "G3",
        "G4",
        "R1",
        "R2",
    ):
        rows = [line for line in text.splitlines() if line.startswith(f"| {claim} |")]
        # one seed: the primary family (paired statistics) gives no verdict, the rest are inconclusive by rule
        expected = "| primary | **no verdict** | one run" if claim in ("B1", "B2", "G1") else "**inconclusive**"
        assert len(rows) == 1 and expected in rows[0], claim
    assert "## Missing cells\n\nNone" in text and (tmp_path / "reports" / "tiny" / "blora_tradeoff.png").exists()
    assert "](sparsity_histograms.png)" in text

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("forgetting-smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = {r.data.tags[TAG_EXPERIMENT]: r for r in runs if TAG_EXPERIMENT in r.data.tags}
    assert set(parents) == set(EXPERIMENTS) | {"report"}
    by_id = {r.info.run_id: r for r in runs}
    benchmark_parents = [
        r for r in runs if r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents.values()}
    ]
    experiment_of = {
        r.info.run_id: by_id[r.data.tags["mlflow.parentRunId"]].data.tags[TAG_EXPERIMENT] for r in benchmark_parents
    }
    assert set(experiment_of.values()) == set(EXPERIMENTS)
    assert list(experiment_of.values()).count("finetune-vs-scratch") == 2  # one benchmark run per arm
    lora_cells = [r for r in runs if r.data.tags.get("lightning_asr.cell") == "lora-seed1"]
    assert len(lora_cells) == 1  # blora-vs-lora, glora-types, token-normalisation and rank-sweep share it
    report_run = parents["report"]
    assert {f.path for f in client.list_artifacts(report_run.info.run_id)} >= {
        "REPRODUCTION.md",
        "sparsity.png",
        "verdicts.json",
    }
    assert report_run.data.tags["verdict/B1"] == UNDECIDABLE  # one seed: the primary family decides nothing
    cells = json.loads(
        Path(
            client.download_artifacts(parents["token-normalisation"].info.run_id, "cells.json", str(tmp_path))
        ).read_text()
    )
    assert (
        cells["cells"][0]["metrics"]["compat_jamo/references"] == 0 and cells["context"]["target_set"] == "ko-en/test"
    )

    # the |delta W| histogram a cell logged equals the one recomputed from its logged adapter (cells logged
    # before the benchmark wrote it)
    from lightning_asr.study.reproduction import delta_w_histogram

    blora_cell = next(r for r in runs if r.data.tags.get("lightning_asr.cell") == "blora-seed1")
    logged = logged_histogram(client, blora_cell.info.run_id)
    assert logged and sum(logged) > 1000
    artifact = Path(blora_cell.info.artifact_uri.removeprefix("file://")) / "sparsity" / "report.json"
    artifact.unlink()
    assert logged_histogram(client, blora_cell.info.run_id) is None
    assert delta_w_histogram(client, blora_cell.info.run_id) == logged

    # a cell deleted since is reported missing, in every experiment that used it
    glora = next(r for r in runs if r.data.tags.get("lightning_asr.cell") == "glora-1-seed1")
    client.delete_run(glora.info.run_id)
    capsys.readouterr()
    assert main(args + ["--report-only"]) == 0
    assert "adapting" not in capsys.readouterr().out  # nothing trained
    text = report.read_text()
    assert f"- glora-types / glora-1 / seed 1: run {glora.info.run_id} deleted" in text
    assert f"- glora-vs-adapters / glora-1 / seed 1: run {glora.info.run_id} deleted" in text


# the reproduce smoke path is test_tiny_profile_end_to_end; this one checks --experiments
@pytest.mark.slow
def test_tiny_profile_one_experiment(tmp_path):
    """`--experiments` runs a subset: one experiment trained (LoRA and GLoRA type 1 on the smoke benchmark), the
    report written for every claim, the cells of the experiments not run listed as missing."""
    from lightning_asr.study.cli import reproduce_main as main

    bench = (
        f"bench_overrides=[curves.points=0,tracking_uri=sqlite:///{tmp_path}/mlflow.db,artifact_root={tmp_path}/artifacts,"
        f"output_dir={tmp_path}/runs,corpus.root={tmp_path}/corpus,base.cache_dir={tmp_path}/bases]"
    )
    assert main(["--profile", "tiny", bench, f"report_dir={tmp_path}/reports", "--experiments", "glora-types"]) == 0
    text = (tmp_path / "reports" / "tiny" / "REPRODUCTION.md").read_text()
    g1 = [line for line in text.splitlines() if line.startswith("| G1 |")]
    assert len(g1) == 1 and "**no verdict**" in g1[0] and "1 seed" in g1[0]
    missing = text.split("## Missing cells", 1)[1]
    assert "blora-vs-lora / blora" in missing and "glora-types /" not in missing


def test_secondary_seeds_keep_every_seed_for_the_primary_arms_only():
    plan = {e.name: e for e in build_plan(profile(seeds=[1, 2, 3, 4, 5], secondary_seeds=3), BENCH_STRATEGIES)}
    blora = plan["blora-vs-lora"]
    assert blora.seeds_of(blora.variant("lora")) == [1, 2, 3, 4, 5]
    assert blora.seeds_of(next(v for v in blora.variants if v.method == "blora" and v.headline)) == [1, 2, 3, 4, 5]
    assert blora.seeds_of(blora.variant("blora-paper")) == [1, 2, 3]
    glora = plan["glora-types"]
    assert glora.seeds_of(glora.variant("glora-1")) == [1, 2, 3, 4, 5]
    assert glora.seeds_of(glora.variant("glora-2")) == [1, 2, 3]  # the profile here has types 1 and 2
    assert plan["glora-vs-adapters"].seeds_of(plan["glora-vs-adapters"].variant("lora")) == [1, 2, 3]
