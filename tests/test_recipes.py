"""The GPU recipes cannot run here (hub models, licensed corpora): check that they resolve and validate."""

from pathlib import Path

import pytest

from lightning_asr.config import ConfigError
from lightning_asr.models import PRESETS
from lightning_asr.study.benchmark import Benchmark
from lightning_asr.study.cli import forgetting_main as main
from lightning_asr.study.profile import load_bench_config

ROOT = Path(__file__).resolve().parents[1]

RECIPES = {
    "ascend_whisper_small": ("openai/whisper-small", "ascend/test"),
    "kecs_whisper_tiny": ("openai/whisper-tiny", "kecs/test"),
    "whisper_base_gpu": ("whisper-base", "ko-en/test"),  # the GPU size of the real-base profile
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_resolves_every_cell(recipe, capsys):
    bench, path = load_bench_config(str(ROOT / "configs" / "bench" / f"{recipe}.yaml"))
    benchmark = Benchmark(bench, path)
    spec, target_name = RECIPES[recipe]
    assert bench.base.spec == spec and spec not in PRESETS and not benchmark.base.pretrains
    assert benchmark.target_name == target_name and benchmark.base.source_train_manifests() == []
    lines = benchmark.check(list(bench.seeds))
    cells = [line for line in lines if line.startswith("cell ")]
    assert len(cells) == len(bench.strategies) * len(bench.seeds) == 21
    assert all("bf16-mixed" in line for line in cells)
    assert sum(line.startswith("MISSING") for line in lines) == len(benchmark.test_manifests) + 2  # + train, dev
    assert main(["--profile", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "cell blora-seed3: blora" in out and "21 cells; cost unknown" in out  # no GPU cell was measured


def test_recipe_errors_name_the_key(tmp_path):
    text = (ROOT / "configs" / "bench" / "kecs_whisper_tiny.yaml").read_text()
    bad_split = tmp_path / "bad_split.yaml"
    bad_split.write_text(
        text.replace("    dev: data_manifests/kecs/kecs/dev.jsonl", "    valid: data_manifests/kecs/kecs/dev.jsonl")
    )
    with pytest.raises(ConfigError, match=r"manifests.kecs has \['valid'\]"):
        Benchmark(*load_bench_config(str(bad_split)))
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(text.replace("  scoring: {korean_jamo_map: true}", "  scoring: {korean_jamo_mapping: true}"))
    with pytest.raises(ConfigError, match="did you mean 'scoring.korean_jamo_map'"):
        Benchmark(*load_bench_config(str(bad_key)))


def test_config_identity_ignores_options_at_their_defaults():
    from lightning_asr.config import load_config, to_dict
    from lightning_asr.study.identity import RESULTS_VERSION, config_identity

    config = to_dict(load_config(overrides=["adapter.name=lora", "output_dir=runs/x"]))
    assert config_identity(config) == {"results_version": RESULTS_VERSION, "adapter": {"name": "lora"}}
    older = {k: v for k, v in config.items() if k != "scoring"}  # written before the scoring options existed
    assert config_identity(older) == config_identity(config)
    config["scoring"]["numbers"] = "words"
    assert config_identity(config)["scoring"] == {"numbers": "words"}


def test_every_planned_cell_keeps_the_identity_its_finished_runs_are_found_by():
    """Finished cells are found in MLflow by the hash of what makes their result (``Benchmark.cell_hash``).
    ``tests/data/cell_identities.json`` holds the hash of every planned cell of the tiny and embedded
    reproductions as the code computed it when the study moved into ``lightning_asr/study`` (a placeholder
    stands for the corpus checksum): equal hashes mean every cell trained since is reused, not retrained. A
    deliberate change of what a cell computes bumps ``RESULTS_VERSION`` (or ``CELL_VERSION``, which leaves bases
    cached) and this file with it."""
    import json

    from lightning_asr.study.reproduction import Reproduction

    expected = json.loads((ROOT / "tests" / "data" / "cell_identities.json").read_text())
    got = {}
    for profile in ("tiny", "embedded"):
        reproduction = Reproduction(profile)
        for experiment in reproduction.plan:
            for variant in experiment.variants:
                benchmark = Benchmark(reproduction.arm_bench([variant], variant.arm), reproduction.bench_path)
                benchmark.corpus_checksum = "C"
                for seed in experiment.seeds_of(variant):
                    config = benchmark.cell_config(dict(variant.entry), seed, "BASE")
                    got[f"{profile}/{variant.arm}/{variant.label}-seed{seed}"] = benchmark.cell_hash(config)
    assert got == expected


def test_a_profile_based_on_another_takes_its_settings_and_changes_its_own():
    """``based_on``: the calibration profile is the embedded one (same base, same cached pretraining) with its
    own strategies, name and test splits (the dev sets)."""
    embedded, _ = load_bench_config("embedded")
    calibration, path = load_bench_config("calibration")
    assert calibration.base == embedded.base and calibration.adapt == embedded.adapt
    assert calibration.name != embedded.name and calibration.reference == "lora-all-4e-3"
    benchmark = Benchmark(calibration, path)
    assert all(m.endswith("/dev.jsonl") for m in benchmark.test_manifests)
    assert len(benchmark.check([1])) > len(calibration.strategies)


def test_the_sweep_and_crn_profiles_plan_the_cells_they_describe():
    """``sweeps``: each method at its own setting and two more values of its knob; ``crn``: BLoRA with and without
    LoRA's initial draws, the data order the same."""
    from lightning_asr.adapters import build_strategy

    sweeps, path = load_bench_config("sweeps")
    benchmark = Benchmark(sweeps, path)
    assert len(benchmark.entries) == 15 and set(benchmark.methods.values()) == {e.label for e in sweeps.strategies}
    assert sorted(label for label, method in benchmark.methods.items() if method == "lora") == [
        "lora@lr=0.002",
        "lora@lr=0.008",
    ]
    crn, path = load_bench_config("crn")
    planned = Benchmark(crn, path)
    planned.corpus_checksum = "C"  # no data read: the cells' configs only
    configs = {entry["label"]: planned.cell_config(entry, 2, "whisper-toy") for entry in planned.entries}
    shared, independent = configs["blora"], configs["blora-independent"]
    assert shared.seed == independent.seed == 2 and build_strategy(independent.adapter).config.init_offset > 0
    assert build_strategy(shared.adapter).config.init_offset == 0


def test_real_whisper_profile_plans_its_cells_on_a_6_s_window_without_fetching():
    bench, path = load_bench_config(str(ROOT / "configs" / "bench" / "whisper_base.yaml"))
    benchmark = Benchmark(bench, path)
    assert bench.base.spec == "whisper-base" and not benchmark.base.pretrains and bench.source_sets == ["en"]
    assert bench.adapt["model"]["encoder_positions"] == 300  # the base evaluation and every cell read 6 s
    lines = benchmark.check(list(bench.seeds))
    cells = [line for line in lines if line.startswith("cell ")]
    assert len(cells) == len(bench.strategies) == 4
    # its cost, from the seconds per cell measured on 2 CPU cores
    minutes = sum(bench.cell_seconds[name] for name in ("full_ft", "lora", "glora", "blora")) / 60
    assert f"4 cells; ~{minutes:.0f} min on this machine" in "\n".join(lines)
