"""The continual-learning metrics against a 3 × 3 error matrix computed by hand (docs/continual-learning.md)."""

import numpy as np
import pytest

from lightning_asr.study import continual

# rows: the base, after stage 1 (ko-en), after stage 2 (zh-en); columns: the source task, ko-en, zh-en
R = np.array(
    [
        [0.10, 0.60, 0.70],
        [0.08, 0.15, 0.50],  # stage 1 improved the source task a little
        [0.40, 0.25, 0.20],  # stage 2 forgot both earlier tasks
    ]
)
JOINT = [0.14, 0.18]
SINGLE = [0.13, 0.22]


def test_every_metric_matches_the_hand_computed_example_signs_included():
    metrics = continual.StreamMetrics.of(R, joint=JOINT, single=SINGLE)
    np.testing.assert_allclose(metrics.awer, [0.10, (0.08 + 0.15) / 2, (0.40 + 0.25 + 0.20) / 3])
    # backward transfer: positive is improvement (0.10 -> 0.08), negative is forgetting
    np.testing.assert_allclose(metrics.bwt, [0.10 - 0.08, ((0.10 - 0.40) + (0.15 - 0.25)) / 2])
    # Chaudhry: against the best earlier error, so the source task is charged from 0.08, not from 0.10
    np.testing.assert_allclose(metrics.forgetting, [0.08 - 0.10, ((0.40 - 0.08) + (0.25 - 0.15)) / 2])
    np.testing.assert_allclose(metrics.im, [0.15 - 0.14, 0.20 - 0.18])
    np.testing.assert_allclose(metrics.fwt, [0.13 - 0.15, 0.22 - 0.20])
    final = metrics.final()
    assert set(final) == {"awer", "bwt", "forgetting", "im", "fwt"}
    np.testing.assert_allclose(final["bwt"], -0.20)
    np.testing.assert_allclose(final["forgetting"], 0.21)


def test_bootstrap_replicates_of_r_give_replicates_of_every_metric():
    replicates = np.stack([R, R + 0.01, R * 2])
    metrics = continual.StreamMetrics.of(replicates, joint=JOINT, single=SINGLE)
    assert metrics.bwt.shape == (3, 2) and metrics.awer.shape == (3, 3) and metrics.im.shape == (3, 2)
    np.testing.assert_allclose(metrics.bwt[1], continual.bwt(R))  # a constant shift transfers nothing
    np.testing.assert_allclose(metrics.forgetting[2], 2 * continual.forgetting(R))
    np.testing.assert_allclose(
        metrics.final()["awer"], [continual.awer(R)[-1], continual.awer(R)[-1] + 0.01, 2 * continual.awer(R)[-1]]
    )


def test_r_from_per_set_errors_averages_the_source_sets_and_refuses_a_missing_score():
    tasks = [["en/test", "ko/test", "zh/test"], ["ko-en/test"], ["zh-en/test"]]
    rows = [
        {"en/test": 0.0, "ko/test": 0.1, "zh/test": 0.2, "ko-en/test": 0.6, "zh-en/test": 0.7},
        {"en/test": 0.3, "ko/test": 0.1, "zh/test": 0.2, "ko-en/test": 0.1, "zh-en/test": 0.5},
        {"en/test": 0.3, "ko/test": 0.4, "zh/test": 0.2, "ko-en/test": 0.2, "zh-en/test": 0.1},
    ]
    r = continual.task_matrix(rows, tasks)
    np.testing.assert_allclose(r[:, 0], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(r[2], [0.3, 0.2, 0.1])
    del rows[1]["zh-en/test"]
    with pytest.raises(ValueError, match=r"after stage 1: no score for \['zh-en/test'\]"):
        continual.task_matrix(rows, tasks)
    with pytest.raises(ValueError, match="R must be square"):
        continual.task_matrix(rows[:2], tasks)


def test_malformed_inputs_are_refused():
    with pytest.raises(ValueError, match="square"):
        continual.bwt(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least one stage"):
        continual.awer(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="one reference value per stage is needed \\(2\\)"):
        continual.intransigence(R, [0.1])
