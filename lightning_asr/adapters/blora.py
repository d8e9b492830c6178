"""BLoRA: Bayesian LoRA (Ugan et al. 2025, arXiv 2510.18723).

Each entry of A (and, by default, B) has a Gaussian posterior N(mu, sigma^2), sigma = softplus(rho), and a
zero-mean prior N(0, prior_std^2). The loss is ``cross-entropy + kl_weight * KL``:

- KL per entry in closed form, in float64: ``log(p / sigma) + (sigma^2 + mu^2) / (2 p^2) - 1/2``;
- ``kl_reduction: mean`` (the authors' code): each matrix's KL averaged over its entries, summed over
  matrices; ``kl_reduction: elbo`` (the textbook ELBO per example): summed over all entries, divided by
  the number of training examples. Lightning divides each micro-batch loss by the accumulation count, so
  the KL weight does not change with gradient accumulation.

Initialisation: mu_A Kaiming-uniform, mu_B = 0, rho_A ~ U(-5.5, -4.5) (sigma 0.004-0.011), rho_B = -50
(sigma ~ 2e-22), so B starts at zero and the adapted model equals the base at step 0.
Training noise: ``flipout`` (default; one weight-noise draw per forward, decorrelated across examples by
random sign flips), ``reparam`` (one shared weight sample per forward) or ``local_reparam`` (Gaussian noise
on each layer output, with the variance the weight noise implies). Evaluation uses the posterior mean, and
``merge`` folds ``W0 + (alpha / r) * mu_B mu_A`` into the base weights, so inference costs nothing extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_asr.adapters.base import register, training_only
from lightning_asr.adapters.lora import LoRA, LoRALinear, LowRankConfig

NOISE_MODES = ("flipout", "reparam", "local_reparam")


@dataclass
class BLoRAConfig(LowRankConfig):
    name: str = "blora"
    prior_std: float = training_only(0.01)  # N(0, prior_std^2) prior on every entry
    kl_weight: float = training_only(1.0e-4)  # beta in CE + beta * KL
    # mean (the authors': per-matrix mean, summed) or elbo (sum / num_train_examples)
    kl_reduction: str = training_only("mean")
    noise: str = training_only("flipout")  # flipout, reparam or local_reparam
    bayesian_b: bool = True  # B Bayesian too (else only A)
    rho_init: list[float] = training_only(default_factory=lambda: [-5.5, -4.5])  # rho_A ~ U(low, high)
    num_train_examples: int | None = training_only(None)  # elbo: derived from the training data when unset


def random_signs(like: torch.Tensor) -> torch.Tensor:
    """+-1 with equal probability, shaped like ``like`` (integer draws: twice as fast as ``bernoulli_``)."""
    return torch.empty_like(like).random_(2).mul_(2).sub_(1)


class GaussianFactor(nn.Module):
    """A linear map without bias whose weight has a factorised Gaussian posterior (``weight`` is mu)."""

    def __init__(self, in_features: int, out_features: int, bayesian: bool, rho_init: tuple[float, float] | float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bayesian = bayesian
        self.noise = "flipout"
        self.sample: torch.Tensor | None = None  # a fixed posterior draw, for Monte-Carlo decoding
        if bayesian:
            self.rho = nn.Parameter(torch.empty(out_features, in_features))
            with torch.no_grad():
                if isinstance(rho_init, (int, float)):
                    self.rho.fill_(rho_init)
                else:
                    self.rho.uniform_(*rho_init)

    @property
    def sigma(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sample is not None:
            return F.linear(x, self.sample)
        mean = F.linear(x, self.weight)
        if not (self.training and self.bayesian):
            return mean
        sigma = self.sigma
        if self.noise == "reparam":
            return F.linear(x, self.weight + sigma * torch.randn_like(sigma))
        if self.noise == "local_reparam":
            variance = F.linear(x * x, sigma * sigma)
            return mean + variance.clamp_min(1e-30).sqrt() * torch.randn_like(mean)
        # flipout: x mu^T + [(x * R)(sigma * eps)^T] * S with random signs R (input) and S (output)
        signs_in, signs_out = random_signs(x), random_signs(mean)
        return mean + F.linear(x * signs_in, sigma * torch.randn_like(sigma)) * signs_out

    def draw(self) -> torch.Tensor:
        return self.weight + self.sigma * torch.randn_like(self.weight) if self.bayesian else self.weight

    def kl_entries(self, prior_std: float) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, prior_std^2)) per entry, in float64."""
        mu, sigma = self.weight.double(), self.sigma.double()
        return math.log(prior_std) - torch.log(sigma) + (sigma**2 + mu**2) / (2 * prior_std**2) - 0.5


class BayesianLoRALinear(LoRALinear):
    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        bayesian_b: bool = True,
        rho_init_a: tuple[float, float] = (-5.5, -4.5),
        rho_init_b: float = -50.0,
        noise: str = "flipout",
    ):
        self.bayesian_b, self.rho_init_a, self.rho_init_b = bayesian_b, tuple(rho_init_a), rho_init_b
        super().__init__(base_layer, rank, alpha, dropout)
        if noise not in NOISE_MODES:
            raise ValueError(f"unknown BLoRA noise {noise!r}; choose {', '.join(NOISE_MODES)}")
        self.lora_A.noise = self.lora_B.noise = noise

    def make_factors(self) -> None:
        self.lora_A = GaussianFactor(self.in_features, self.rank, True, self.rho_init_a)
        self.lora_B = GaussianFactor(self.rank, self.out_features, self.bayesian_b, self.rho_init_b)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def bayesian_factors(self) -> list[GaussianFactor]:
        return [f for f in (self.lora_A, self.lora_B) if f.bayesian]

    def factors(self) -> dict[str, torch.Tensor]:
        """The posterior means (the entries a merged adapter adds); the variances are not weights."""
        return {name: t for name, t in super().factors().items() if not name.endswith("rho")}


@register("blora", BLoRAConfig)
class BLoRA(LoRA):
    imports_plain_peft = False  # PEFT files hold the posterior means only; the variances are in the side file

    @classmethod
    def derive_from_data(cls, config, utterances) -> dict:
        # the textbook ELBO divides the summed KL by the number of training utterances
        if config.kl_reduction == "elbo" and not config.num_train_examples:
            return {"num_train_examples": len(utterances.train)}
        return {}

    def make_layer(self, linear: nn.Linear) -> BayesianLoRALinear:
        c = self.config
        return BayesianLoRALinear(linear, c.rank, c.alpha, c.dropout, c.bayesian_b, tuple(c.rho_init), -50.0, c.noise)

    def kl(self) -> torch.Tensor:
        """The KL term, reduced as ``config.kl_reduction`` says (float64)."""
        prior_std = self.config.prior_std
        factors = [f for layer in self.layers().values() for f in layer.bayesian_factors()]
        if self.config.kl_reduction == "mean":
            return torch.stack([f.kl_entries(prior_std).mean() for f in factors]).sum()
        if self.config.kl_reduction == "elbo":
            if not self.config.num_train_examples:
                raise ValueError(
                    "kl_reduction 'elbo' needs adapter.num_train_examples (derived from the training data)"
                )
            return torch.stack([f.kl_entries(prior_std).sum() for f in factors]).sum() / self.config.num_train_examples
        raise ValueError(f"unknown kl_reduction {self.config.kl_reduction!r}; choose mean or elbo")

    def regularizer(self) -> torch.Tensor:
        if not self.model.training:
            return super().regularizer()
        return (self.config.kl_weight * self.kl()).float()

    def signal_to_noise(self) -> dict[str, torch.Tensor]:
        """|mu| / sigma of every Bayesian factor entry, by parameter name."""
        return {
            f"{name}.{factor_name}": (factor.weight.abs() / factor.sigma).detach()
            for name, layer in self.layers().items()
            for factor_name, factor in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B))
            if factor.bayesian
        }

    def sparsity_stats(self) -> dict:
        report = super().sparsity_stats()
        snr = torch.cat([v.flatten() for v in self.signal_to_noise().values()]).double()
        report["snr"] = {
            "mean": float(snr.mean()),
            "median": float(snr.median()),
            "frac_below_1": float((snr < 1).double().mean()),
        }
        return report

    def draw_posterior_sample(self) -> None:
        """Fix one posterior draw of every factor (used by eval-mode forwards until ``clear_posterior_sample``)."""
        for layer in self.layers().values():
            for factor in (layer.lora_A, layer.lora_B):
                factor.sample = factor.draw().detach()

    def clear_posterior_sample(self) -> None:
        for layer in self.layers().values():
            layer.lora_A.sample = layer.lora_B.sample = None


@torch.no_grad()
def monte_carlo_transcribe(module, inputs: dict, langs: list[str], samples: int = 8) -> list[dict]:
    """Decode with the posterior mean and with ``samples`` posterior draws. Per utterance: the mean's text,
    the sampled texts, and ``disagreement`` = mean normalised edit distance of the samples to the mean's
    text (0: every draw agrees; high values flag utterances the adapter is unsure of)."""
    from lightning_asr.text import edit_distance

    strategy = module.strategy
    if not isinstance(strategy, BLoRA):
        raise TypeError("Monte-Carlo decoding needs the blora strategy")
    mean_texts, _ = module.transcribe(inputs, langs)
    sampled = []
    for _ in range(samples):
        strategy.draw_posterior_sample()
        try:
            sampled.append(module.transcribe(inputs, langs)[0])
        finally:
            strategy.clear_posterior_sample()
    results = []
    for index, mean_text in enumerate(mean_texts):
        texts = [draw[index] for draw in sampled]
        reference = list(mean_text)
        distances = [edit_distance(reference, list(t)) / max(1, len(reference)) for t in texts]
        results.append({"text": mean_text, "samples": texts, "disagreement": sum(distances) / len(distances)})
    return results
