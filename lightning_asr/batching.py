"""Many users' adapters in one batched forward pass over a shared base (multi-adapter batching).

Systems that serve many LoRA adapters (S-LoRA, Punica, vLLM's multi-LoRA, LoRAX) batch requests of
different adapters into one pass: the base matmul is shared, and each row's low-rank path is gathered from a
bank of adapters (their BGMV/SGMV kernels). ``row_banked(slot_strategy, adapters, rows)`` does the same for
any strategy whose adapter modules are linear maps inside wrapped layers (LoRA, BLoRA's posterior mean,
GLoRA with its gates, bottleneck adapters):

- every adapter sub-module (``lora_A``, ``lora_B``, GLoRA's gates, the bottleneck's projections) gets a bank:
  its weight (and bias) stacked over the batch's adapters, ``[adapters, out, in]``;
- while the context is open, each of those sub-modules computes ``x @ W[row]^T + b[row]`` for each row with
  a batched matmul over gathered weights, so the layer's own forward (the LoRA scaling, the gates, the
  residual) is unchanged and the base layer runs once for all rows;
- a row without an adapter gets an all-zero bank entry: LoRA's, GLoRA's and BLoRA's B and the bottleneck's
  up-projection are then zero, so that row computes the base.

A strategy that overwrites base weights (full fine-tuning, ``modules_to_save``, new tokens) cannot share a
pass: ``bankable`` says so, and the server decodes it in its own slot.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def bankable(strategy) -> str | None:
    """None where the strategy's adapters can share a batched pass; otherwise the reason they cannot."""
    base_names = {n for n, _ in strategy.model.named_parameters()} if strategy.model is not None else set()
    layers = strategy.layers() if hasattr(strategy, "layers") else {}
    if not layers:
        return f"{strategy.name} has no adapter layers to bank: its weights are its own (one slot per user)"
    owned = [
        n
        for n, _ in strategy.trainable_parameters()
        if n in base_names and not any(n.startswith(f"{layer}.") for layer in layers)
    ]
    if owned:
        return f"{strategy.name} trains base weights ({owned[0]}, ...): rows cannot share them"
    return None


def adapter_submodules(strategy) -> dict[str, nn.Module]:
    """The adapter's own linear maps inside its layers, by module name (what gets a bank)."""
    found = {}
    trainable = {n for n, _ in strategy.trainable_parameters()}
    for layer_name, layer in strategy.layers().items():
        for name, module in layer.named_modules():
            full = f"{layer_name}.{name}"
            if name and not name.startswith("base_layer") and f"{full}.weight" in trainable:
                found[full] = module
    return found


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x[i] @ weight[i]^T + bias[i]`` per row i: ``x`` is [rows, ..., in], ``weight`` [rows, out, in]."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-1])
    out = torch.bmm(flat, weight.transpose(1, 2))
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out.reshape(*shape[:-1], weight.shape[1])


@contextmanager
def row_banked(strategy, adapters: list[dict[str, torch.Tensor] | None], rows: list[int]):
    """Within the block, row r of any batch the slot's model sees uses ``adapters[rows[r]]`` (None: the base).
    A batch of ``k * len(rows)`` rows (beam search, ``num_beams`` copies of each row, contiguous) repeats
    each row's adapter ``k`` times."""
    modules = adapter_submodules(strategy)
    index = torch.tensor(rows, dtype=torch.long)
    banks = {}
    for name, module in modules.items():
        entries = []
        for tensors in adapters:
            weight = tensors[f"{name}.weight"] if tensors is not None else torch.zeros_like(module.weight)
            bias = module.bias if getattr(module, "bias", None) is not None else None
            if bias is not None:
                bias = tensors[f"{name}.bias"] if tensors is not None else torch.zeros_like(bias)
            entries.append((weight, bias))
        weights = torch.stack([w for w, _ in entries]).to(module.weight)
        biases = torch.stack([b for _, b in entries]).to(module.weight) if entries[0][1] is not None else None
        banks[name] = (weights, biases)

    def banked_forward(name):
        weights, biases = banks[name]

        def forward(x: torch.Tensor) -> torch.Tensor:
            repeat = x.shape[0] // len(index)
            if repeat * len(index) != x.shape[0]:
                raise RuntimeError(f"a batch of {x.shape[0]} rows for {len(index)} requests")
            rows_index = index if repeat == 1 else index.repeat_interleave(repeat)
            return row_linear(x, weights[rows_index], None if biases is None else biases[rows_index])

        return forward

    for name, module in modules.items():
        module.forward = banked_forward(name)
    try:
        yield
    finally:
        for module in modules.values():
            del module.forward  # back to the class's own forward
