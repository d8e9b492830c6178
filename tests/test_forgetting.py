import math

import pytest

from lightning_asr.study.forgetting import derived_metrics

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


def test_curve_steps_are_evenly_spaced_with_both_ends():
    from lightning_asr.study.curves import curve_steps

    assert curve_steps(150, 5) == [0, 38, 75, 112, 150] and curve_steps(4, 3) == [0, 2, 4]
