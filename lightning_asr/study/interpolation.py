"""A learning–forgetting curve of a trained model for free: the model between the base (λ = 0) and the adapted
model (λ = 1), scored by teacher-forced cross-entropy on every test set, evaluation only (WiSE-FT; task
arithmetic). A strategy that declares ``scalable`` scales what it adds to each layer by λ, which is exact for
low-rank adapters (W0 + λ·ΔW); one that overwrites base weights (full fine-tuning) is interpolated in parameter
space against the base's weights."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from omegaconf import OmegaConf

LAMBDAS = tuple(round(0.1 * i, 1) for i in range(11))


def cross_entropy_by_set(module, manifests: list[str], utterances: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per test set, in manifest order: each utterance's summed cross-entropy (nats) and label units; of the
    first ``utterances`` of each set only, where that is not 0."""
    from lightning_asr.train import autocast_for, make_datamodule

    data = {"test_manifests": list(manifests), "train_manifests": [], "val_manifests": []}
    datamodule = make_datamodule(OmegaConf.merge(module.config, {"data": data}), module)
    datamodule.setup()
    if utterances:
        for name, rows in datamodule.sets["test"].items():
            datamodule.sets["test"][name] = rows[:utterances]  # cached inputs are indexed by position
    scored = {}
    with autocast_for(module.config, module.device.type):  # the precision the run trains and tests in
        for (name, _), loader in zip(datamodule.eval_sets("test"), datamodule.test_dataloader()):
            rows = []
            for batch in loader:
                batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                nats, units = module.backbone.utterance_losses(module.model, batch)
                rows += zip(batch["lines"], nats.tolist(), units.tolist())
            rows.sort()
            scored[name] = (np.array([r[1] for r in rows]), np.array([r[2] for r in rows], dtype=float))
    return scored


@torch.no_grad()
def interpolation_curve(
    module,
    manifests: list[str],
    base_weights: Callable[[], dict[str, torch.Tensor]],
    lambdas=LAMBDAS,
    known: dict[float, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    utterances: int = 0,
) -> dict:
    """``{"lambda": [...], "sets": {set: {"ce": [per λ, per utterance], "units": [per utterance]}}}``.
    ``base_weights()`` gives the base's parameters by name (asked for only where the strategy is not
    ``scalable``). ``known``: points already scored, by λ (the base's evaluation is λ = 0, the cell's own test
    evaluation λ = 1), each ``{set: (nats, units)}`` in manifest order, used instead of scoring them again.
    ``utterances``: score only the first this many of each set (0: all). The module is left as trained (λ = 1)."""
    known = known or {}
    module.eval()
    strategy = module.strategy
    if strategy.scalable:
        apply = strategy.scale_adaptation
    else:
        base = base_weights()
        parameters = dict(module.model.named_parameters())
        changed = {
            name: (base[name].to(p.dtype), p.detach().clone())
            for name, p in parameters.items()
            if name in base and p.is_floating_point() and not torch.equal(base[name].to(p.dtype), p)
        }

        def apply(factor: float) -> None:
            for name, (start, end) in changed.items():
                parameters[name].copy_(start + factor * (end - start))

    sets: dict[str, dict] = {}
    try:
        for factor in lambdas:
            scored = known.get(factor)
            if scored is None:
                apply(factor)
                scored = cross_entropy_by_set(module, manifests, utterances)
            for name, (nats, units) in scored.items():
                if utterances:
                    nats, units = nats[:utterances], units[:utterances]
                entry = sets.setdefault(name, {"ce": [], "units": units.tolist()})
                entry["ce"].append(nats.tolist())
    finally:
        apply(1.0)
    return {"lambda": list(lambdas), "sets": sets}
