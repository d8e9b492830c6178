import math

import numpy as np
import pytest

from lightning_asr.study.forgetting import Scores, compare, derived_metrics, mean_interval

SOURCES, TARGET = ["en", "ko"], "ko-en"


def test_signs_absolute_and_relative_on_hand_made_numbers():
    base = {"en": 0.10, "ko": 0.20, "ko-en": 0.60}
    ref = {"en": 0.20, "ko": 0.30, "ko-en": 0.20}  # forgot 0.10 on each source set
    k = {"en": 0.15, "ko": 0.20, "ko-en": 0.25}
    values, reasons = derived_metrics(base, ref, k, SOURCES, TARGET)
    assert values["forgetting/en"] == pytest.approx(0.05)
    assert values["forgetting/ko"] == pytest.approx(0.0)
    assert values["forgetting"] == pytest.approx(0.025)  # macro average
    assert values["relative_forgetting/en"] == pytest.approx(0.5)
    assert values["adaptation_gain"] == pytest.approx(0.35)
    assert values["backward_gain"] == pytest.approx((0.10 - 0.025) / 0.10)  # avoided 75 % of LoRA's forgetting
    assert values["backward_gain/ko"] == pytest.approx(1.0)
    assert values["relative_source_gain/en"] == pytest.approx((0.20 - 0.15) / 0.20)
    assert values["forward_loss"] == pytest.approx((0.25 - 0.20) / 0.20)  # worse than ref on the target: > 0
    assert not reasons


def test_reference_that_did_not_forget_gives_nan_with_a_reason():
    base = {"en": 0.1, "ko": 0.2, "ko-en": 0.5}
    values, reasons = derived_metrics(
        base, dict(base, **{"ko-en": 0.3}), {"en": 0.2, "ko": 0.2, "ko-en": 0.3}, SOURCES, TARGET
    )
    assert math.isnan(values["backward_gain"]) and "did not forget" in reasons["backward_gain"]
    assert values["forgetting"] == pytest.approx(0.05)
    # a reference that improved the source (F_ref < 0) leaves backward gain undefined too, not sign-flipped
    improved = {"en": 0.05, "ko": 0.15, "ko-en": 0.3}
    values, reasons = derived_metrics(base, improved, {"en": 0.2, "ko": 0.3, "ko-en": 0.3}, SOURCES, TARGET)
    assert math.isnan(values["backward_gain"]) and "did not forget" in reasons["backward_gain"]


def scores(errors_per_utterance, tokens=10):
    return Scores(np.array(errors_per_utterance, dtype=float), np.full(len(errors_per_utterance), tokens, dtype=float))


def test_compare_bootstrap_interval_contains_the_point_and_seeds_give_t_intervals():
    base = {"en/test": scores([1] * 20), "ko-en/test": scores([5] * 20)}
    lora = {"en/test": scores([3, 1] * 10), "ko-en/test": scores([1] * 20)}
    full = {"en/test": scores([5, 3] * 10), "ko-en/test": scores([0, 1] * 10)}
    rows, _ = compare(base, {"lora": {1: lora}, "full_ft": {1: full}}, "lora", ["en/test"], "ko-en/test", bootstrap=300)
    row = next(r for r in rows if r["strategy"] == "full_ft")
    assert row["forgetting"] == pytest.approx(0.3) and row["forgetting_low"] <= 0.3 <= row["forgetting_high"]
    assert row["forgetting_high"] - row["forgetting_low"] > 0
    assert row["backward_gain"] == pytest.approx((0.1 - 0.3) / 0.1)
    rows, _ = compare(
        base, {"lora": {1: lora, 2: lora}, "full_ft": {1: full, 2: lora}}, "lora", ["en/test"], "ko-en/test"
    )
    row = next(r for r in rows if r["strategy"] == "full_ft")
    assert (
        row["seeds"] == 2
        and row["forgetting"] == pytest.approx(0.2)
        and row["forgetting_low"] < 0.2 < row["forgetting_high"]
    )


def test_mean_interval_and_missing_reference():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert (
        mean == 2.0
        and low == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-4)
        and high == pytest.approx(2 + 4.3027 / math.sqrt(3), abs=1e-4)
    )
    with pytest.raises(ValueError, match="reference"):
        compare({}, {"full_ft": {}}, "lora", [], "t")


def test_strategies_compared_at_matched_target_error():
    """At the target error the reference ends at, each strategy's source error is read off its own curve
    (linear between points); one that never gets that low is NaN, not extrapolated."""
    from lightning_asr.study.curves import common_level, curve_steps, interpolate_source, matched

    assert curve_steps(150, 5) == [0, 38, 75, 112, 150] and curve_steps(4, 3) == [0, 2, 4]
    lora = [(0, 0.5, 0.2), (50, 0.3, 0.3), (100, 0.2, 0.35)]
    gentle = [(0, 0.5, 0.2), (50, 0.25, 0.22), (100, 0.15, 0.25)]
    slow = [(0, 0.5, 0.2), (100, 0.4, 0.21)]
    assert interpolate_source(lora, 0.25) == pytest.approx(0.325) and math.isnan(interpolate_source(slow, 0.2))
    level, rows = matched({"lora": lora, "gentle": gentle, "slow": slow}, "lora")
    by = {row["strategy"]: row for row in rows}
    assert level == 0.2 and by["lora"]["backward_gain"] == 0.0
    assert by["gentle"]["source_error"] == pytest.approx(0.235) and by["gentle"]["forgetting"] == pytest.approx(0.035)
    assert by["gentle"]["backward_gain"] == pytest.approx((0.15 - 0.035) / 0.15)
    assert by["gentle"]["relative_source_gain"] == pytest.approx((0.35 - 0.235) / 0.35)
    assert math.isnan(by["slow"]["source_error"]) and math.isnan(by["slow"]["backward_gain"])
    # a reference at its final target error before its last point is read there too: against itself, 0 and 0
    early = [(0, 0.5, 0.2), (50, 0.0, 0.3), (100, 0.0, 0.25)]
    level, rows = matched({"early": early, "gentle": gentle}, "early")
    by = {row["strategy"]: row for row in rows}
    assert level == 0.0 and by["early"]["source_error"] == pytest.approx(0.3)
    assert by["early"]["backward_gain"] == 0.0 and by["early"]["relative_source_gain"] == 0.0
    # at the lowest target error every curve reaches (slow's 0.4), no strategy drops out
    curves = {"lora": lora, "gentle": gentle, "slow": slow}
    level, rows = matched(curves, "lora", common_level(curves))
    by = {row["strategy"]: row for row in rows}
    assert level == 0.4 and not any(math.isnan(row["source_error"]) for row in rows)
    assert by["slow"]["source_error"] == pytest.approx(0.21) and by["lora"]["source_error"] == pytest.approx(0.25)
    assert by["slow"]["backward_gain"] == pytest.approx((0.05 - 0.01) / 0.05)
