import re

import pytest
import torch

from lightning_asr.adapters import build_strategy
from lightning_asr.adapters.blora import NOISE_MODES, PAPER_TIME_SETTINGS, GaussianFactor
from lightning_asr.adapters.export import SIDE_JSON, SIDE_TENSORS, AdapterFileError
from lightning_asr.adapters.glora import GLORA_TYPES, GLoRALinear
from lightning_asr.models import load_base_model

STRATEGY_CONFIGS = {
    "full_ft": {"name": "full_ft"},
    "l2sp": {"name": "l2sp", "alpha": 0.1},
    "ewc": {"name": "ewc", "strength": 0.1},
    "lwf": {"name": "lwf"},
    "replay": {"name": "replay"},
    "lora": {"name": "lora", "rank": 4, "alpha": 8},
    **{f"glora{t}": {"name": "glora", "type": t, "rank": 4, "alpha": 8} for t in GLORA_TYPES},
    "blora": {"name": "blora", "rank": 4, "alpha": 8},
    # the BLoRA authors' code at paper time: B as noisy as A, their beta, decay, dropout and log-sigma epsilon
    "blora-paper": {"name": "blora", "rank": 4, "alpha": 8, **PAPER_TIME_SETTINGS},
    "glora3-open": {"name": "glora", "type": 3, "rank": 4, "alpha": 8, "gate_init": 4.0},
    "bottleneck": {"name": "bottleneck", "bottleneck": 8},
    "bottleneck-ffn": {"name": "bottleneck", "bottleneck": 8, "placement": ["feed_forward"], "activation": "gelu"},
}


def adapter_config(**values):
    from lightning_asr.adapters import adapter_config as typed

    return typed(values)


def attached(name_or_values, seed=0):
    values = STRATEGY_CONFIGS[name_or_values] if isinstance(name_or_values, str) else name_or_values
    model = load_base_model("whisper-tiny-random", seed=seed)
    strategy = build_strategy(adapter_config(**values))
    strategy.attach(model)
    return model, strategy


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return {
        "input_features": torch.randn(2, 80, 600),
        "decoder_input_ids": torch.tensor(
            [[50258, 50264, 50359, 50363, 400, 500], [50258, 50259, 50359, 50363, 600, 700]]
        ),
    }


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def randomize_adapter(strategy, scale=0.05):
    with torch.no_grad():
        for _, p in strategy.trainable_parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("name", sorted(STRATEGY_CONFIGS))
def test_every_strategy_equals_the_base_at_step_0(name, batch):
    base = load_base_model("whisper-tiny-random").eval()
    model, strategy = attached(name)
    model.eval()
    assert torch.equal(logits(model, batch), logits(base, batch))
    if name == "blora-paper":  # B's training noise is A's (sigma ~ 0.01): the posterior mean is the base
        return
    model.train()  # BLoRA's training noise on B is ~1e-22 at the start: still the base
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    assert torch.allclose(logits(model, batch), logits(base, batch), atol=1e-6)


@pytest.mark.parametrize("name", sorted(STRATEGY_CONFIGS))
def test_only_adapter_parameters_train(name):
    model, strategy = attached(name)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if name in ("full_ft", "l2sp", "ewc", "lwf", "replay"):
        assert len(trainable) == len(list(model.parameters()))
        return
    assert trainable and all(".lora_" in n or ".glu_" in n or "_gate" in n or ".adapter_" in n for n in trainable)
    wrapped = ("out_proj", "fc2") if name.startswith("bottleneck") else ("q_proj", "v_proj")
    assert all(n.split(".")[-3] in wrapped or n.split(".")[-2] in wrapped for n in trainable)
    counts = strategy.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)


def test_l2sp_penalises_the_squared_distance_to_the_pretrained_weights_in_training_only():
    model, strategy = attached("l2sp")
    model.train()
    assert strategy.regularizer().item() == 0.0
    moved = dict(model.named_parameters())["model.decoder.layers.0.fc1.weight"]
    with torch.no_grad():
        moved.add_(0.5)  # every entry 0.5 from its start: alpha / 2 * n * 0.25
    expected = 0.5 * 0.1 * moved.numel() * 0.25
    penalty = strategy.regularizer()
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()  # the gradient pulls back: alpha * (w - w0)
    assert torch.allclose(moved.grad, torch.full_like(moved, 0.1 * 0.5))
    model.eval()
    assert strategy.regularizer().item() == 0.0
    with pytest.raises(ValueError, match="penalty weight must be >= 0"):
        attached({"name": "l2sp", "alpha": -1.0})


def test_ewc_pulls_each_weight_back_by_the_source_data_s_fisher_information(corpus):
    """The Fisher information is estimated on source utterances before training (mean 1 over the trained
    entries, uneven across them); the penalty is strength / 2 · Σ F (w − w0)², zero at the start and in eval."""
    from types import SimpleNamespace

    from lightning_asr.models import WhisperBackbone, load_model_processor

    values = {"name": "ewc", "strength": 0.1, "source_manifests": [f"{corpus}/en/train.jsonl"], "source_utterances": 3}
    model, strategy = attached(values)
    module = SimpleNamespace(
        model=model, processor=load_model_processor("whisper-tiny-random")[1], backbone=WhisperBackbone()
    )
    module.config = SimpleNamespace(seed=0)
    strategy.prepare(module)
    fisher = torch.cat([f.flatten() for f in strategy.fisher.values()])
    assert fisher.mean().item() == pytest.approx(1.0, rel=1e-4) and fisher.std().item() > 0.5
    assert all(p.grad is None for p in model.parameters())  # the estimate leaves no gradient behind
    model.train()
    assert strategy.regularizer().item() == 0.0
    name = "model.decoder.layers.0.fc1.weight"
    moved = dict(model.named_parameters())[name]
    with torch.no_grad():
        moved.add_(0.5)
    expected = 0.5 * 0.1 * float((strategy.fisher[name] * 0.25).sum())
    assert strategy.regularizer().item() == pytest.approx(expected, rel=1e-5)
    model.eval()
    assert strategy.regularizer().item() == 0.0
    _, bare = attached("ewc")
    with pytest.raises(ValueError, match="source_manifests is empty"):
        bare.prepare(module)
    with pytest.raises(ValueError, match="penalty weight must be >= 0"):
        attached({"name": "ewc", "strength": -1.0})


def test_lwf_distils_the_student_s_own_logits_towards_the_base_s_on_the_same_batch(fixed_batch):
    """The teacher is the base, frozen before training; the student's logits are the ones its loss computed.
    KL is 0 before any step, T² · KL(teacher ‖ student) at temperature T once a weight moved, and the gradient
    reaches the student; nothing in evaluation or without a batch."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from lightning_asr.models import WhisperBackbone
    from lightning_asr.models.wav2vec2 import Wav2Vec2Backbone

    model, strategy = attached({"name": "lwf", "weight": 0.5, "temperature": 2.0})
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    backbone = WhisperBackbone()
    strategy.prepare(SimpleNamespace(model=model, backbone=backbone))
    model.train()
    backbone.loss(model, fixed_batch)
    assert strategy.regularizer(fixed_batch).item() == pytest.approx(0.0, abs=1e-6)
    moved = dict(model.named_parameters())["model.decoder.layers.0.fc1.weight"]
    with torch.no_grad():
        torch.manual_seed(0)
        moved.add_(torch.randn_like(moved) * 0.5)  # a KL of about 0.01 on the random tiny model
    backbone.loss(model, fixed_batch)
    student = strategy.student_logits.detach().clone()
    penalty = strategy.regularizer(fixed_batch)
    with torch.no_grad():
        teacher = backbone.distillation_logits(strategy.teacher, fixed_batch)
    p_teacher = F.softmax(teacher / 2.0, dim=-1)
    expected = (
        0.5 * 4.0 * float((p_teacher * (p_teacher.log() - F.log_softmax(student / 2.0, dim=-1))).sum() / len(student))
    )
    assert penalty.item() == pytest.approx(expected, rel=1e-4) and penalty.item() > 0
    penalty.backward()
    assert moved.grad.abs().sum() > 0
    assert strategy.regularizer(None).item() == 0.0
    model.eval()
    assert strategy.regularizer(fixed_batch).item() == 0.0
    _, other = attached("lwf")
    with pytest.raises(ValueError, match="does not declare the positions"):
        other.prepare(SimpleNamespace(model=other.model, backbone=Wav2Vec2Backbone()))


def test_replay_adds_the_loss_of_buffer_utterances_drawn_at_each_step(corpus):
    """The buffer is the first k utterances of each source set; each step rehearses a draw of them (from the
    global generator, which training seeds per batch), weighted; nothing in evaluation."""
    from types import SimpleNamespace

    from lightning_asr.models import WhisperBackbone, load_model_processor

    values = {"name": "replay", "source_utterances": 3, "replay_per_step": 2, "weight": 0.5}
    values["source_manifests"] = [f"{corpus}/en/train.jsonl", f"{corpus}/zh/train.jsonl"]
    model, strategy = attached(values)
    module = SimpleNamespace(
        model=model,
        processor=load_model_processor("whisper-tiny-random")[1],
        backbone=WhisperBackbone(),
        config=SimpleNamespace(seed=0),
    )
    strategy.prepare(module)
    assert [u.line for u, _ in strategy.buffer] == [1, 2, 3, 1, 2, 3]
    assert {u.lang for u, _ in strategy.buffer} == {"en", "zh"}
    for dropout in model.modules():
        if isinstance(dropout, torch.nn.Dropout):
            dropout.p = 0.0
    model.train()
    torch.manual_seed(5)
    penalty = strategy.regularizer({})
    torch.manual_seed(5)
    chosen = torch.randperm(6)[:2].tolist()
    expected, _ = module.backbone.loss(model, strategy.collate([strategy.buffer[i] for i in chosen]))
    assert penalty.item() == pytest.approx(0.5 * expected.item(), rel=1e-5) and penalty.requires_grad
    model.eval()
    assert strategy.regularizer({}).item() == 0.0
    _, bare = attached("replay")
    with pytest.raises(ValueError, match="source_manifests is empty"):
        bare.prepare(module)
    with pytest.raises(ValueError, match="replay_per_step=0"):
        attached({"name": "replay", "replay_per_step": 0})


def test_full_ft_frozen_modules():
    _, strategy = attached({"name": "full_ft", "frozen_modules": [r"embed_tokens", r"embed_positions"]})
    names = [n for n, _ in strategy.trainable_parameters()]
    assert names and not any("embed_" in n for n in names)


def test_target_presets_and_no_match_error():
    model, strategy = attached({"name": "lora", "rank": 2, "target_modules": ["all-linear"]})
    assert len(strategy.target_names) == 2 * (4 + 2) + 2 * (
        8 + 2
    )  # per layer: attention q,k,v,out (x2 in the decoder), fc1, fc2
    _, cross = attached({"name": "lora", "rank": 2, "target_modules": ["cross_attn"]})
    assert cross.target_names and all("encoder_attn" in n for n in cross.target_names)
    with pytest.raises(ValueError, match="match no linear layer"):
        attached({"name": "lora", "target_modules": ["no_such_layer"]})


def test_lora_equals_peft_oracle(batch):
    from peft import LoraConfig, get_peft_model

    model, strategy = attached("lora")
    randomize_adapter(strategy)
    oracle = get_peft_model(
        load_base_model("whisper-tiny-random"), LoraConfig(r=4, lora_alpha=8, target_modules=strategy.target_names)
    )
    with torch.no_grad():
        for name, layer in strategy.layers().items():
            peft_layer = oracle.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A.weight)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B.weight)
    model.eval(), oracle.eval()
    assert torch.allclose(logits(model, batch), logits(oracle, batch), atol=1e-6)


@pytest.mark.parametrize("name", ["lora", "blora"])
def test_merge_and_unmerge_are_exact(name, batch):
    model, strategy = attached(name)
    model.eval()
    randomize_adapter(strategy)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    unmerged = logits(model, batch)
    strategy.merge()
    assert torch.allclose(logits(model, batch), unmerged, atol=1e-5)
    strategy.unmerge()
    assert all(torch.allclose(before[n], p, atol=1e-6) for n, p in model.state_dict().items())


def test_glora_cannot_merge():
    _, strategy = attached("glora1")
    with pytest.raises(NotImplementedError, match="cannot be folded"):
        strategy.merge()


@pytest.mark.parametrize("glora_type", sorted(GLORA_TYPES))
def test_glora_parameter_counts_follow_the_documented_formulas(glora_type):
    r, d_in, d_out = 4, 64, 96
    layer = GLoRALinear(torch.nn.Linear(d_in, d_out), rank=r, alpha=8, glora_type=glora_type)
    lora_params = r * d_in + d_out * r
    own = sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("base_layer"))
    expected = {
        1: 2 * r * r + 2 * r,
        2: 2 * r * d_in + d_in,
        3: r * d_out + d_out,
        4: 2 * r * r + 2 * r + r * d_out + d_out,
    }
    assert own - lora_params == expected[glora_type] == layer.extra_parameter_count()


def test_blora_kl_matches_torch_distributions_and_shrinks_mu():
    model, strategy = attached({"name": "blora", "rank": 4, "alpha": 8, "prior_std": 0.05})
    randomize_adapter(strategy, 0.01)
    prior = 0.05
    expected = []
    for layer in strategy.layers().values():
        for factor in layer.bayesian_factors():
            posterior = torch.distributions.Normal(factor.weight.double(), factor.sigma.double())
            expected.append(torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, prior)).mean())
    assert torch.allclose(strategy.kl(), torch.stack(expected).sum())
    assert strategy.kl().dtype == torch.float64
    layer = next(iter(strategy.layers().values()))
    mu_before = layer.lora_A.weight.detach().abs().sum()
    strategy.kl().backward()
    with torch.no_grad():
        layer.lora_A.weight -= 1e-3 * layer.lora_A.weight.grad / layer.lora_A.weight.grad.abs().max()
    assert layer.lora_A.weight.abs().sum() < mu_before


@pytest.mark.parametrize(
    "reduction, count", [("elbo", {"num_train_tokens": 1000}), ("elbo_per_utterance", {"num_train_examples": 100})]
)
def test_blora_elbo_reduction_sums_and_divides_by_the_data_size(reduction, count):
    model, strategy = attached({"name": "blora", "rank": 4, "kl_reduction": reduction, **count})
    total = sum(f.kl_entries(0.01).sum() for layer in strategy.layers().values() for f in layer.bayesian_factors())
    assert torch.allclose(strategy.kl(), total / next(iter(count.values())))


@pytest.mark.parametrize("noise", NOISE_MODES)
def test_noise_modes_have_the_posterior_mean_and_variance(noise):
    torch.manual_seed(0)
    factor = GaussianFactor(6, 3, bayesian=True, rho_init=(-2.0, -1.0))
    with torch.no_grad():
        factor.weight.normal_()
    factor.noise = noise
    factor.train()
    x = torch.randn(1, 6)
    draws = torch.stack([factor(x) for _ in range(20000)]).squeeze(1)
    mean = x @ factor.weight.T
    variance = (x * x) @ (factor.sigma**2).T
    assert torch.allclose(draws.mean(0), mean.squeeze(0), atol=4 * variance.sqrt().max().item() / 20000**0.5)
    assert torch.allclose(draws.var(0), variance.squeeze(0), rtol=0.05)


@pytest.mark.parametrize("name", sorted(STRATEGY_CONFIGS))
def test_export_import_is_bit_exact(name, tmp_path):
    model, strategy = attached(name)
    randomize_adapter(strategy)
    strategy.save_adapter(tmp_path / "adapter")
    fresh, fresh_strategy = attached(name)
    fresh_strategy.load_adapter(tmp_path / "adapter")
    ours = strategy.adapter_state_dict()
    theirs = fresh_strategy.adapter_state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(FileExistsError):
        strategy.save_adapter(tmp_path / "adapter")


@pytest.mark.parametrize("name", ["lora", "blora"])
def test_peft_loads_our_exports_with_equal_logits(name, tmp_path, batch):
    from peft import PeftModel

    model, strategy = attached(name)
    randomize_adapter(strategy)
    model.eval()
    strategy.save_adapter(tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(load_base_model("whisper-tiny-random"), tmp_path / "adapter").eval()
    assert torch.allclose(logits(peft_model, batch), logits(model, batch), atol=1e-5)


def test_plain_peft_lora_directory_imports(tmp_path, batch):
    from peft import LoraConfig, get_peft_model

    _, strategy = attached("lora")
    oracle = get_peft_model(
        load_base_model("whisper-tiny-random"), LoraConfig(r=4, lora_alpha=8, target_modules=strategy.target_names)
    )
    with torch.no_grad():
        for name, parameter in oracle.named_parameters():
            if "lora_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    oracle.save_pretrained(tmp_path / "peft")
    model, strategy = attached("lora")
    strategy.load_adapter(tmp_path / "peft")
    assert torch.allclose(logits(model.eval(), batch), logits(oracle.eval(), batch), atol=1e-5)


@pytest.mark.parametrize("name", ["glora1", "blora"])
def test_missing_side_file_is_refused(name, tmp_path):
    _, strategy = attached(name)
    strategy.save_adapter(tmp_path / "adapter")
    (tmp_path / "adapter" / SIDE_JSON).unlink()
    (tmp_path / "adapter" / SIDE_TENSORS).unlink()
    _, fresh = attached(name)
    with pytest.raises(AdapterFileError, match="no lightning_asr_adapter.json"):
        fresh.load_adapter(tmp_path / "adapter")


def test_other_base_model_or_strategy_is_refused(tmp_path):
    _, strategy = attached("lora")
    strategy.save_adapter(tmp_path / "adapter")
    _, other_base = attached("lora", seed=1)
    with pytest.raises(AdapterFileError, match="weights differ"):
        other_base.load_adapter(tmp_path / "adapter")
    other_base.load_adapter(tmp_path / "adapter", ignore_fingerprint=True)
    _, other_strategy = attached("blora")
    with pytest.raises(AdapterFileError, match="holds a 'lora' adapter"):
        other_strategy.load_adapter(tmp_path / "adapter")


@pytest.mark.parametrize("name", ["lora", "blora", "full_ft"])
def test_sparsity_stats(name):
    _, strategy = attached(name)
    randomize_adapter(strategy, 1e-3)
    report = strategy.sparsity_stats()
    overall = report["overall"]["delta_w"]
    assert overall["count"] > 0 and sum(overall["histogram"]) == overall["count"]
    below = [overall["below"][k] for k in report["thresholds"]]
    assert below == sorted(below, reverse=True)  # fewer entries below smaller thresholds
    assert set(report["modules"]) == set(strategy.delta_weights())
    if name == "blora":
        assert report["snr"]["A"]["median"] > 0 and report["snr"]["B"]["median"] > 0


def test_blora_paper_time_rho_b_gives_b_the_noise_of_a():
    import torch.nn.functional as F

    _, noisy = attached(STRATEGY_CONFIGS["blora-paper"])
    _, default = attached("blora")
    low, high = F.softplus(torch.tensor(-5.5)), F.softplus(torch.tensor(-4.5))
    for layer in noisy.layers().values():
        sigma_b = layer.lora_B.sigma
        assert bool(((sigma_b >= low) & (sigma_b <= high)).all()) and float(sigma_b.std()) > 0
        assert torch.equal(layer.lora_B.weight, torch.zeros_like(layer.lora_B.weight))
    for layer in default.layers().values():
        assert float(layer.lora_B.sigma.max()) < 1e-20  # rho_B = -50: noiseless B


def test_blora_rho_init_b_refuses_a_malformed_interval():
    with pytest.raises(ValueError, match="rho_init_b"):
        attached({"name": "blora", "rank": 4, "rho_init_b": [-4.5, -5.5, 1.0]})


def test_blora_rho_gets_no_weight_decay_unless_asked():
    _, strategy = attached("blora")
    rhos = {id(f.rho) for layer in strategy.layers().values() for f in layer.bayesian_factors()}
    groups = strategy.optimizer_groups(0.01)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert rhos and not rhos & decayed
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for _, p in strategy.trainable_parameters()}
    _, paper = attached(STRATEGY_CONFIGS["blora-paper"])
    rhos = {id(f.rho) for layer in paper.layers().values() for f in layer.bayesian_factors()}
    decayed = {id(p): g["weight_decay"] for g in paper.optimizer_groups(0.01) for p in g["params"]}
    assert all(decayed[r] == 5.0e-4 for r in rhos)  # the adapter's own weight decay, rho included


def test_adapter_weight_decay_overrides_the_optimizer_default():
    _, strategy = attached({"name": "lora", "rank": 4, "weight_decay": 5.0e-4})
    matrices = [g for g in strategy.optimizer_groups(0.01) if g["params"] and g["params"][0].ndim >= 2]
    assert [g["weight_decay"] for g in matrices] == [5.0e-4]


def test_blora_log_sigma_epsilon_bounds_the_noiseless_factors_kl():
    _, strategy = attached("blora")
    factor = next(iter(strategy.layers().values())).lora_B
    assert float(factor.kl_entries(0.01).mean()) > 40  # -log(2e-22) ~ 50
    assert float(factor.kl_entries(0.01, 1e-6).mean()) < 15  # -log(1e-6) ~ 14


def test_blora_snr_is_per_factor():
    _, strategy = attached(STRATEGY_CONFIGS["blora-paper"])
    randomize_adapter(strategy, 1e-3)
    snr = strategy.sparsity_stats()["snr"]
    a = torch.cat([v.flatten() for k, v in strategy.signal_to_noise().items() if k.endswith("lora_A")]).double()
    assert set(snr) == {"A", "B"} and snr["A"]["median"] == pytest.approx(float(a.median()))
    from lightning_asr.adapters.sparsity import scalar_metrics

    metrics = scalar_metrics(strategy.sparsity_stats())
    assert "sparsity/snr/A/median" in metrics and "sparsity/snr/B/median" in metrics


@pytest.mark.parametrize("gate_init", [0.0, 4.0])
def test_glora_gate_init_sets_how_open_the_gates_start(gate_init):
    _, strategy = attached({"name": "glora", "type": 4, "rank": 4, "alpha": 8, "gate_init": gate_init})
    layer = next(iter(strategy.layers().values()))
    for bias in (layer.glu_gate.bias, layer.output_gate.bias):
        assert torch.allclose(torch.sigmoid(bias), torch.full_like(bias, torch.sigmoid(torch.tensor(gate_init))))


def test_bottleneck_counts_and_placement():
    model, strategy = attached("bottleneck-ffn")
    assert strategy.target_names and all(name.endswith("fc2") for name in strategy.target_names)
    width = model.config.d_model
    expected = len(strategy.target_names) * (2 * width * 8 + 8 + width)
    assert strategy.parameter_counts()["trainable"] == expected
    _, both = attached("bottleneck")
    assert any(n.endswith("out_proj") for n in both.target_names) and any(n.endswith("fc2") for n in both.target_names)
    with pytest.raises(NotImplementedError, match="nonlinearity"):
        both.merge()
    with pytest.raises(ValueError, match="placement"):
        attached({"name": "bottleneck", "placement": ["everywhere"]})


def test_docs_glora_table_matches_the_canonical_docstring():
    import re
    from pathlib import Path

    from lightning_asr.adapters import glora

    readme = Path(__file__).resolve().parents[1].joinpath("docs", "strategies.md").read_text()
    rows = [line.split("  ") for line in glora.__doc__.splitlines() if re.match(r"^[1-4]\s{2,}", line)]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row if c.strip()]
        assert "| " + " | ".join(cells) + " |" in readme, cells


@pytest.mark.parametrize("reduction", ["elbo", "elbo_per_utterance"])
def test_blora_elbo_counts_are_derived_from_the_training_data(corpus, processor, tmp_path, reduction):
    from conftest import config_dict

    from lightning_asr.config import TrainConfig, structured
    from lightning_asr.data.manifest import read_manifest
    from lightning_asr.models import WhisperBackbone
    from lightning_asr.models.whisper import WhisperCollator
    from lightning_asr.module import with_data_settings

    values = config_dict(corpus, tmp_path, **{"adapter.name": "blora", "adapter.kl_reduction": reduction})
    derived = with_data_settings(structured(TrainConfig, values), WhisperBackbone()).adapter
    utterances = read_manifest(corpus / "ko-en/train.jsonl")
    if reduction == "elbo":  # every label position the token-mean cross-entropy averages over
        collator = WhisperCollator(processor.feature_extractor, processor.tokenizer)
        assert derived.num_train_tokens == sum(len(collator.label_ids(u)) for u in utterances)
        assert derived.num_train_examples is None
    else:
        assert derived.num_train_examples == len(utterances) and derived.num_train_tokens is None


def test_sparsity_readings_against_the_base_weights():
    from lightning_asr.adapters.sparsity import scalar_metrics

    model, strategy = attached("lora")
    layer = next(iter(strategy.layers().values()))
    with torch.no_grad():  # one module's delta W of rank 1, with a component well above the rest
        for other in strategy.layers().values():
            other.lora_B.weight.zero_()
        layer.lora_B.weight.zero_()
        layer.lora_B.weight[:, 0] = 1.0
    readings = strategy.sparsity_stats()["readings"]
    name = strategy.target_names[0]
    delta, w0 = layer.delta_weight(), layer.base_layer.weight
    report = strategy.sparsity_stats()["modules"][name]["readings"]
    assert report["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert report["weak_components"] == 3  # rank 4: three components at zero
    assert report["delta_sq"] == pytest.approx(float(delta.double().pow(2).sum()))
    expected = float(delta.norm()) / float(
        torch.stack([lyr.base_layer.weight.norm() for lyr in strategy.layers().values()]).norm()
    )
    assert readings["relative_norm"] == pytest.approx(expected, rel=1e-5)
    width = model.config.d_model
    below = (delta.abs() < 1e-3 * (768 / width) ** 0.5).sum() + sum(
        lyr.delta_weight().numel() for lyr in list(strategy.layers().values())[1:]
    )
    total = sum(lyr.delta_weight().numel() for lyr in strategy.layers().values())
    assert readings["width_scaled/frac_below_1e-3"] == pytest.approx(float(below) / total)
    rms = float(w0.pow(2).mean().sqrt())
    assert report["below_rms_relative"] == int((delta.abs() < 1e-3 * rms).sum())
    assert "sparsity/rms_relative/frac_below_1e-3" in scalar_metrics(strategy.sparsity_stats())


def initial_factors(values: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # as seed_everything does before the module is built
    _, strategy = attached(values)
    return {name: layer.lora_A.weight.detach().clone() for name, layer in strategy.layers().items()}


def test_adapter_initialisation_is_common_to_strategies_and_independent_across_modules():
    lora = initial_factors(STRATEGY_CONFIGS["lora"], 3)
    # GLoRA draws gates and BLoRA draws variances too: their A is LoRA's all the same
    for name in ("glora1", "glora2", "blora"):
        other = initial_factors(STRATEGY_CONFIGS[name], 3)
        assert other.keys() == lora.keys()
        assert all(torch.equal(other[module], lora[module]) for module in lora), name
    # a module's A does not depend on which other modules are adapted
    last = sorted(lora)[-1]
    fewer = initial_factors({**STRATEGY_CONFIGS["lora"], "target_modules": [re.escape(last) + "$"]}, 3)
    assert list(fewer) == [last] and all(torch.equal(fewer[module], lora[module]) for module in fewer)
    # another seed, another draw
    assert not torch.equal(initial_factors(STRATEGY_CONFIGS["lora"], 4)[next(iter(lora))], lora[next(iter(lora))])
    # an init offset draws every module independently of the strategies at the run's own seed, and equals the
    # draws at the shifted seed (only the initialisation moves; the data order is the run's)
    first = next(iter(lora))
    offset = initial_factors({**STRATEGY_CONFIGS["blora"], "init_offset": 1000}, 3)
    assert not torch.equal(offset[first], lora[first])
    assert torch.equal(offset[first], initial_factors(STRATEGY_CONFIGS["lora"], 1003)[first])


def test_attaching_an_adapter_leaves_the_global_random_stream_as_it_was():
    model = load_base_model("whisper-tiny-random", seed=0)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_strategy(adapter_config(**STRATEGY_CONFIGS["blora"])).attach(model)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["lora", "glora1", "glora4", "blora", "bottleneck"])
def test_scale_adaptation_moves_the_model_from_the_base_to_the_adapted_one(name, batch):
    base = logits(load_base_model("whisper-tiny-random", seed=0).eval(), batch)
    model, strategy = attached(name)
    randomize_adapter(strategy)
    model.eval()
    adapted = logits(model, batch)
    strategy.scale_adaptation(0.0)
    torch.testing.assert_close(logits(model, batch), base)
    strategy.scale_adaptation(1.0)
    torch.testing.assert_close(logits(model, batch), adapted)
    if name == "lora":  # exact for a linear adapter: the layer's output at λ is W0 x + λ ΔW x
        layer = next(iter(strategy.layers().values()))
        x, delta = torch.randn(3, layer.in_features), layer.delta_weight()
        strategy.scale_adaptation(0.5)
        expected = layer.base_layer(x) + 0.5 * x @ delta.T
        torch.testing.assert_close(layer(x), expected)


def test_a_strategy_that_overwrites_base_weights_refuses_to_scale():
    _, strategy = attached("full_ft")
    with pytest.raises(NotImplementedError, match="interpolate its parameters"):
        strategy.scale_adaptation(0.5)
