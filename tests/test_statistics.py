"""The study's statistics checked against planted truths: simulated per-utterance results of many studies go
through the real code (``lightning_asr/study/statistics.py``), with the variance structure measured on the
embedded benchmark (``tests/simulated_study.py``)."""

import math

import numpy as np
import pytest
from omegaconf import OmegaConf
from simulated_study import REFERENCE_FORGETTING, SOURCE_SETS, TARGET_SET, simulate

from lightning_asr.study.profile import ROOT
from lightning_asr.study.statistics import (
    EQUIVALENT,
    FAILS,
    HOLDS,
    NOT_DETECTED,
    UNDECIDABLE,
    CrossedBootstrap,
    Hypothesis,
    PairedStatistics,
    Ratios,
    decide,
    front_at,
    front_difference,
    holm,
    planned_minimum_detectable,
)

STUDIES = 200


def decision_seeds() -> int:
    """The seed count the embedded profile plans its decisions on."""
    profile = OmegaConf.load(ROOT / "configs" / "bench" / "embedded.yaml")
    return int(profile.statistics.decision_seeds)


def primary_family(rng, seeds: int, blora_forgetting: float) -> list[Hypothesis]:
    """B1's direction (BLoRA forgets less), B2 (BLoRA's target error) and G1 (GLoRA-1's target error)."""
    forgetting = {"lora": REFERENCE_FORGETTING, "blora": blora_forgetting, "glora-1": REFERENCE_FORGETTING}
    base, cells = simulate(rng, seeds, forgetting)
    statistics = PairedStatistics(base, cells, replicates=400, rng_seed=int(rng.integers(1 << 30)))
    return decide(
        [
            Hypothesis("B1", statistics.difference("blora", "lora", SOURCE_SETS), "less", 0.0),
            Hypothesis("B2", statistics.difference("blora", "lora", [TARGET_SET]), "less", 0.0),
            Hypothesis("G1", statistics.difference("glora-1", "lora", [TARGET_SET]), "less", 0.0),
        ]
    )


def test_identical_strategies_give_a_wrong_decisive_verdict_in_at_most_5_percent_of_studies():
    rng = np.random.default_rng(11)
    wrong = sum(
        any(h.verdict in (HOLDS, FAILS) for h in primary_family(rng, decision_seeds(), REFERENCE_FORGETTING))
        for _ in range(STUDIES)
    )
    assert wrong / STUDIES <= 0.05, f"{wrong} of {STUDIES} null studies gave a decisive verdict"


def test_a_30_percent_cut_in_forgetting_is_detected_in_80_percent_of_studies_at_the_profiles_seeds():
    rng = np.random.default_rng(12)
    detected = sum(
        primary_family(rng, decision_seeds(), 0.7 * REFERENCE_FORGETTING)[0].verdict == HOLDS for _ in range(STUDIES)
    )
    assert detected / STUDIES >= 0.80, f"detected in {detected} of {STUDIES} studies"


def test_the_same_effect_at_three_seeds_is_not_detected_and_says_what_it_could_detect():
    rng = np.random.default_rng(13)
    b1 = primary_family(rng, 3, 0.85 * REFERENCE_FORGETTING)[0]
    assert b1.verdict == NOT_DETECTED
    assert "minimum detectable difference" in b1.reason
    assert b1.estimate.minimum_detectable() > 0.05


def test_one_seed_gives_an_interval_conditional_on_the_run_and_no_verdict():
    rng = np.random.default_rng(14)
    (b1, *_) = primary_family(rng, 1, 0.2 * REFERENCE_FORGETTING)
    assert b1.estimate.conditional and b1.verdict == UNDECIDABLE
    assert "(one run)" in b1.estimate.text()
    assert b1.estimate.low < b1.estimate.value < b1.estimate.high  # the utterance bootstrap's interval


def test_the_crossed_interval_is_wider_than_a_seed_only_or_utterance_only_one():
    rng = np.random.default_rng(15)
    base, cells = simulate(rng, 6, {"lora": REFERENCE_FORGETTING, "blora": REFERENCE_FORGETTING})
    estimate = PairedStatistics(base, cells, 600, 0).difference("blora", "lora", SOURCE_SETS)
    assert estimate.se > estimate.se_seeds and estimate.se > estimate.se_utterances
    # planning: more seeds shrink only the seed component
    many = planned_minimum_detectable(estimate.se_seeds, estimate.se_utterances, 6, 10**6)
    floor = (1.959964 + 0.841621) * estimate.se_utterances
    assert many == pytest.approx(floor, rel=0.02)
    assert planned_minimum_detectable(estimate.se_seeds, estimate.se_utterances, 6, 12) < estimate.minimum_detectable()


def test_equivalence_needs_the_90_percent_interval_inside_the_margin_and_a_margin_above_the_resolution():
    rng = np.random.default_rng(16)
    base, cells = simulate(rng, 8, {"lora": REFERENCE_FORGETTING, "glora-1": REFERENCE_FORGETTING})
    estimate = PairedStatistics(base, cells, 600, 0).difference("glora-1", "lora", [TARGET_SET])
    wide, narrow, tiny = (
        Hypothesis("wide", estimate, "less", 0.05, resolution=0.001),
        Hypothesis("narrow", estimate, "less", 1e-4, resolution=1e-5),
        Hypothesis("tiny", estimate, "less", 0.0005, resolution=0.001),
    )
    decide([wide, narrow, tiny])
    assert wide.verdict == EQUIVALENT
    assert narrow.verdict == NOT_DETECTED
    assert tiny.verdict == UNDECIDABLE and "resolution" in tiny.reason


def test_holm_adjusts_step_down_and_keeps_order():
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])


def test_a_ratio_of_means_stays_defined_where_per_seed_ratios_explode():
    rng = np.random.default_rng(17)
    base, cells = simulate(rng, 6, {"lora": 0.02, "blora": 0.015})  # a real Whisper's few points of forgetting
    statistics = PairedStatistics(base, cells, 600, 0)
    ratio = statistics.ratio_of_means("blora", "lora", SOURCE_SETS)
    assert math.isfinite(ratio.value) and ratio.low < ratio.value < ratio.high


def test_front_reading_takes_the_lower_envelope_and_reports_non_reaching_curves_as_nan():
    target = np.array([0.9, 0.5, 0.3, 0.35])
    source = np.array([0.1, 0.2, 0.4, 0.3])
    assert front_at(target, source, 0.4) == pytest.approx(0.3)  # the point at 0.35, below the segment's 0.35
    assert front_at(target, source, 0.7) == pytest.approx(0.15)  # on the first segment
    assert math.isnan(front_at(target, source, 0.2))


def lambda_curves(rng, seeds: int, utterances: int = 50, points: int = 11):
    """Cross-entropy along λ for one strategy: the target falls and the sources rise with λ, a training-run
    effect per seed and an utterance effect shared by every model."""
    lambdas = np.linspace(0, 1, points)
    tokens = rng.integers(8, 30, utterances).astype(float)

    def ratios(start, end, spread):
        rows = []
        for _ in range(seeds):
            end_here = end + rng.normal(0, spread)
            per_token = start + (end_here - start) * lambdas[:, None] ** 0.7 + rng.normal(0, 0.05, (points, utterances))
            rows.append(np.clip(per_token, 0.01, None) * tokens)
        return Ratios(np.stack(rows), np.broadcast_to(tokens, (seeds, points, utterances)).copy())

    target = {TARGET_SET: ratios(2.0, 0.3, 0.08)}
    sources = {name: ratios(0.2, 1.0, 0.15) for name in SOURCE_SETS}
    return target, sources


def test_front_reading_shows_no_bias_between_identical_strategies():
    rng = np.random.default_rng(18)
    differences, dropped = [], 0
    seeds = 3
    for _ in range(60):
        curves = {label: lambda_curves(rng, seeds) for label in ("lora", "blora")}
        bootstrap = CrossedBootstrap({name: 50 for name in SOURCE_SETS + [TARGET_SET]}, seeds, 100, 0)
        for level in (1.0, 0.5, 0.35):
            reading = front_difference(bootstrap, curves, "blora", "lora", level)
            dropped += seeds - reading.reached
            if not math.isnan(reading.difference.value):
                differences.append(reading.difference.value)
    assert abs(float(np.median(differences))) <= 0.01  # one point of cross-entropy per token
    assert dropped > 0  # the deepest level is out of reach for some runs, and counted
