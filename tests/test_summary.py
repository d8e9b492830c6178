"""The benchmark's comparison as a pure function of a ``BenchmarkResult``: no training, no MLflow."""

import numpy as np
import pytest
from simulated_study import REFERENCE_FORGETTING, SOURCE_SETS, TARGET_SET, simulate

from lightning_asr.study import summary
from lightning_asr.study.forgetting import Scores
from lightning_asr.study.profile import StatisticsSection
from lightning_asr.study.result import BenchmarkResult, CellResult
from lightning_asr.study.statistics import HOLDS, UNDECIDABLE


def simulated_result(seeds: int, forgetting: dict[str, float], rng_seed: int = 0) -> BenchmarkResult:
    rng = np.random.default_rng(rng_seed)
    base, cells = simulate(rng, seeds, forgetting)

    def scores(ratios, row) -> Scores:
        # cross-entropy that follows the error: nats per token grow with the edits
        edits, tokens = ratios.numerator[row], ratios.denominator[row]
        return Scores(edits, tokens, 0.2 * tokens + 3.0 * edits, tokens.copy())

    sets = SOURCE_SETS + [TARGET_SET]
    result = BenchmarkResult(
        "simulated", "lora", SOURCE_SETS, TARGET_SET, list(range(1, seeds + 1)), {s: scores(base[s], 0) for s in sets}
    )
    for label, by_set in cells.items():
        for row, seed in enumerate(result.seeds):
            result.cells.append(
                CellResult(label, seed, f"run-{label}-{seed}", {s: scores(by_set[s], row) for s in sets})
            )
    return result


def test_a_planted_cut_in_forgetting_holds_and_backward_gain_is_a_ratio_of_means():
    result = simulated_result(10, {"lora": REFERENCE_FORGETTING, "blora": 0.5 * REFERENCE_FORGETTING})
    comparison = summary.compare(result, StatisticsSection(replicates=400, front_levels=[]))
    blora = next(s for s in comparison.strategies if s.label == "blora")
    assert blora.vs_reference["forgetting"].verdict == HOLDS
    assert blora.backward_gain.value == pytest.approx(
        1 - blora.forgetting.value / next(s for s in comparison.strategies if s.label == "lora").forgetting.value
    )
    assert blora.backward_gain.low < 0.5 < blora.backward_gain.high
    text = summary.markdown(comparison, result, "MER")
    assert "Against the reference (lora)" in text and "One run" not in text and "holds" in text


def test_one_seed_is_labelled_one_run_everywhere_and_decides_nothing():
    result = simulated_result(1, {"lora": REFERENCE_FORGETTING, "blora": 0.5 * REFERENCE_FORGETTING})
    comparison = summary.compare(result, StatisticsSection(replicates=200, front_levels=[]))
    blora = next(s for s in comparison.strategies if s.label == "blora")
    assert {h.verdict for h in blora.vs_reference.values()} == {UNDECIDABLE}
    text = summary.markdown(comparison, result, "MER")
    assert "**One run.**" in text and text.count("(one run)") >= 6
    assert all(line.endswith("(one run)") for line in summary.closing_lines(comparison, result, "MER"))


def test_a_strategy_without_every_seed_is_left_out_and_named():
    result = simulated_result(3, {"lora": REFERENCE_FORGETTING, "blora": REFERENCE_FORGETTING})
    result.cells = [c for c in result.cells if not (c.label == "blora" and c.seed == 2)]
    comparison = summary.compare(result, StatisticsSection(replicates=200, front_levels=[]))
    assert comparison.missing == ["blora"] and "Left out" in summary.markdown(comparison, result, "MER")


def test_the_result_round_trips_through_json():
    result = simulated_result(2, {"lora": REFERENCE_FORGETTING, "blora": REFERENCE_FORGETTING})
    result.cells[0].interpolation = {"lambda": [0.0, 1.0], "sets": {}}
    again = BenchmarkResult.from_json(result.to_json())
    assert again.labels == result.labels and again.seeds == result.seeds
    assert again.cells[0].interpolation == result.cells[0].interpolation
    np.testing.assert_array_equal(
        again.cell("blora", 2).scores["ko/test"].edits, result.cell("blora", 2).scores["ko/test"].edits
    )
    assert summary.table_rows(summary.compare(again, StatisticsSection(replicates=100, front_levels=[])))


def test_planned_power_shrinks_with_seeds_and_with_test_utterances():
    result = simulated_result(3, {"lora": REFERENCE_FORGETTING, "blora": REFERENCE_FORGETTING})
    rows = summary.planned_power(result, [3, 10], replicates=300)
    larger = summary.planned_power(result, [3, 10], replicates=300, utterances=300)
    (_, _, utterances, at3, _, _, target3), (_, _, _, at10, share10, holm10, target10) = rows
    assert utterances == 50 and float(at10) < float(at3) and float(target10) < float(target3)
    assert float(share10.rstrip("%")) < float(holm10.rstrip("%"))  # a stricter level needs a larger effect
    assert float(larger[1][3]) < float(at10) and float(larger[1][6]) < float(target10)


def test_the_discriminability_index_is_the_spread_of_strategy_means_over_the_pooled_seed_spread():
    import importlib.util

    from lightning_asr.study.profile import ROOT

    spec = importlib.util.spec_from_file_location("discriminability", ROOT / "benchmarks" / "discriminability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    apart = {"a": [0.1, 0.12, 0.11], "b": [0.3, 0.32, 0.31]}  # means 0.11 and 0.31, seed SD 0.01 each
    assert module.index(apart) == pytest.approx(np.std([0.11, 0.31], ddof=1) / 0.01)
    assert module.index({"a": [0.1, 0.3, 0.2], "b": [0.11, 0.31, 0.21]}) < 0.2  # alike: seeds dominate
    assert np.isnan(module.index({"a": [0.1], "b": [0.2]}))  # one seed: no within-strategy spread


def test_label_free_drift_counts_every_change_from_the_base_transcripts_an_improvement_included():
    from lightning_asr.study.forgetting import label_free_drift

    base = [
        {"line": 1, "prediction": "the cat sat", "reference": "the cat sat"},
        {"line": 2, "prediction": "a dog ran", "reference": "the dog ran"},
    ]
    adapted = [  # line 2 now matches its reference: better by the labels, yet a change from the base
        {"line": 2, "prediction": "the dog ran", "reference": "the dog ran"},
        {"line": 1, "prediction": "the cat sat", "reference": "the cat sat"},
    ]
    drift = label_free_drift(base, adapted, "en")
    assert drift.edits.tolist() == [1, 0] and drift.tokens.tolist() == [3, 3]
    with pytest.raises(ValueError, match="different utterances"):
        label_free_drift(base, adapted[:1], "en")


def test_drift_is_compared_beside_forgetting_and_kept_in_the_result():
    result = simulated_result(3, {"lora": REFERENCE_FORGETTING, "blora": 0.5 * REFERENCE_FORGETTING})
    for cell in result.cells:  # drift that follows the forgetting: edits against the base's transcripts
        cell.drift = {
            name: Scores(np.maximum(cell.scores[name].edits - result.base[name].edits, 0), result.base[name].tokens)
            for name in SOURCE_SETS
        }
    again = BenchmarkResult.from_json(result.to_json())
    np.testing.assert_array_equal(again.cells[1].drift["en/test"].edits, result.cells[1].drift["en/test"].edits)
    comparison = summary.compare(again, StatisticsSection(replicates=300, front_levels=[]))
    lora, blora = (next(s for s in comparison.strategies if s.label == label) for label in ("lora", "blora"))
    assert 0 < blora.drift.value < lora.drift.value
    assert blora.vs_reference["drift"].estimate.value < 0 and not blora.vs_reference["drift"].primary
    assert "drift (no labels)" in summary.markdown(comparison, again, "MER")
    assert (
        summary.compare(simulated_result(3, {"lora": 0.2}), StatisticsSection(front_levels=[])).strategies[0].drift
        is None
    )


def test_drift_in_cross_entropy_is_the_rise_over_the_base_and_shown_only_where_scored():
    result = simulated_result(3, {"lora": REFERENCE_FORGETTING, "blora": 0.5 * REFERENCE_FORGETTING})
    for cell in result.cells:  # nats per token on the base's transcripts rise with the cell's extra edits
        cell.drift = {}
        for name in SOURCE_SETS:
            extra = np.maximum(cell.scores[name].edits - result.base[name].edits, 0)
            tokens = result.base[name].tokens
            cell.drift[name] = Scores(extra, tokens, 2.0 * extra, tokens.copy())
    comparison = summary.compare(
        BenchmarkResult.from_json(result.to_json()), StatisticsSection(replicates=300, front_levels=[])
    )
    lora, blora = (next(s for s in comparison.strategies if s.label == label) for label in ("lora", "blora"))
    expected = np.mean([2.0 * lora.drift.value])  # 2 nats per extra edit, over the same tokens: twice the drift
    assert lora.drift_ce.value == pytest.approx(expected)
    assert 0 < blora.drift_ce.value < lora.drift_ce.value
    assert blora.vs_reference["drift_ce"].estimate.value < 0 and not blora.vs_reference["drift_ce"].primary
    text = summary.markdown(comparison, result, "MER")
    assert "drift in CE (no labels)" in text and "Δdrift in CE" in text
    for cell in result.cells:  # label-free drift in errors only: no column for what was not scored
        cell.drift = {name: Scores(d.edits, d.tokens) for name, d in cell.drift.items()}
    comparison = summary.compare(result, StatisticsSection(replicates=300, front_levels=[]))
    assert comparison.strategies[0].drift_ce is None and comparison.strategies[0].drift is not None
    assert "drift in CE" not in summary.markdown(comparison, result, "MER")


def test_a_knob_sweep_adds_a_cell_per_value_and_refuses_what_it_cannot_mean():
    from omegaconf import OmegaConf

    from lightning_asr.config import ConfigError
    from lightning_asr.study.profile import BenchConfig, sweep_entries

    def bench(sweeps):
        return OmegaConf.merge(
            OmegaConf.structured(BenchConfig),
            {
                "adapt": {"optim": {"lr": 4.0e-3}},
                "strategies": [
                    {"label": "lora", "adapter": {"name": "lora"}},
                    {"label": "blora", "adapter": {"name": "blora", "kl_weight": 1.0e-4}},
                ],
                "sweeps": sweeps,
            },
        )

    entries, methods = sweep_entries(
        bench(
            [
                {"label": "lora", "knob": "optim.lr", "values": [2.0e-3, 8.0e-3]},
                {"label": "blora", "knob": "adapter.kl_weight", "values": [1.0e-3]},
            ]
        )
    )
    assert [e["label"] for e in entries] == ["lora", "blora", "lora@lr=0.002", "lora@lr=0.008", "blora@kl_weight=0.001"]
    assert entries[3]["optim"]["lr"] == 8.0e-3 and entries[4]["adapter"] == {"name": "blora", "kl_weight": 1.0e-3}
    assert methods == {"lora@lr=0.002": "lora", "lora@lr=0.008": "lora", "blora@kl_weight=0.001": "blora"}
    with pytest.raises(ConfigError, match="own setting"):  # the adapt section's lr is lora's own
        sweep_entries(bench([{"label": "lora", "knob": "optim.lr", "values": [4.0e-3]}]))
    with pytest.raises(ConfigError, match="not among the strategies"):
        sweep_entries(bench([{"label": "glora", "knob": "optim.lr", "values": [1.0e-3]}]))
    with pytest.raises(ConfigError, match="one knob per method"):
        sweep_entries(
            bench(
                [
                    {"label": "lora", "knob": "optim.lr", "values": [1.0e-3]},
                    {"label": "lora", "knob": "adapter.rank", "values": [4]},
                ]
            )
        )
    with pytest.raises(ConfigError, match="label, knob, values"):
        sweep_entries(bench([{"label": "lora", "values": [1.0e-3]}]))


def test_a_method_front_is_the_envelope_of_its_sweep_and_joins_no_two_curves():
    from lightning_asr.study.statistics import CrossedBootstrap, Ratios, curve_pair, front_at

    units = np.ones((1, 3, 4))  # one seed, three λ points, four utterances

    def curve(target_rates, source_rates):
        def ratios(rates):
            return Ratios(np.array(rates, dtype=float)[None, :, None] * units, units.copy())

        return {TARGET_SET: ratios(target_rates)}, {name: ratios(source_rates) for name in SOURCE_SETS}

    result = simulated_result(1, {"lora": REFERENCE_FORGETTING})
    result.methods = {"lora@lr=0.008": "lora"}
    curves = {
        "lora": curve([1.0, 0.6, 0.4], [0.10, 0.11, 0.13]),  # never reaches 0.3
        "lora@lr=0.008": curve([1.0, 0.5, 0.2], [0.10, 0.16, 0.30]),
    }
    joined = summary.method_curves(result, curves)
    assert list(joined) == ["lora"] and joined["lora"][0][TARGET_SET].numerator.shape == (1, 7, 4)
    bootstrap = CrossedBootstrap({name: 4 for name in [*SOURCE_SETS, TARGET_SET]}, 1, replicates=5)
    (own_t, _), (own_s, _) = curve_pair(bootstrap, *curves["lora"])
    (t, _), (s, _) = curve_pair(bootstrap, *joined["lora"])
    assert np.isnan(front_at(own_t, own_s, 0.3)).all()
    assert front_at(t, s, 0.3)[0] == pytest.approx(0.16 + (0.30 - 0.16) * (0.3 - 0.5) / (0.2 - 0.5))
    # the NaN point joins no segment from one curve's end to the next one's start: here the segment from
    # (0.4, 0.30) to (1.0, 0.10) would cross 0.45 at 0.283, below the true envelope's 0.2875
    curves = {
        "lora": curve([1.0, 0.6, 0.4], [0.10, 0.25, 0.30]),
        "lora@lr=0.008": curve([1.0, 0.8, 0.5], [0.10, 0.20, 0.40]),  # never reaches 0.45
    }
    (t, _), (s, _) = curve_pair(bootstrap, *summary.method_curves(result, curves)["lora"])
    assert front_at(t, s, 0.45)[0] == pytest.approx(0.25 + (0.30 - 0.25) * (0.45 - 0.6) / (0.4 - 0.6))


def test_the_paired_correlation_of_a_copy_of_the_reference_is_one_and_its_difference_has_no_spread():
    import importlib.util

    from lightning_asr.study.profile import ROOT

    spec = importlib.util.spec_from_file_location("paired_correlation", ROOT / "benchmarks" / "paired_correlation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = simulated_result(4, {"lora": REFERENCE_FORGETTING, "blora": 0.5 * REFERENCE_FORGETTING})
    for cell in result.of("blora"):
        cell.scores = result.cell("lora", cell.seed).scores
    ((kind, label, seeds, _, _, correlation, spread),) = module.rows(result, "error")
    assert (kind, label, seeds, correlation, spread) == ("error", "blora", "4", "+1.00", "0.0000")
    independent = simulated_result(4, {"lora": REFERENCE_FORGETTING, "blora": 0.5 * REFERENCE_FORGETTING})
    ((*_, spread),) = module.rows(independent, "error")
    assert float(spread) > 0.01
