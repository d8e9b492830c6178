"""Many users' adapters in one batched forward pass over a shared base (multi-adapter batching).

Systems that serve many LoRA adapters (S-LoRA, Punica, vLLM's multi-LoRA) batch requests of different adapters
into one pass: the base matmul is shared, and each row's adapter path is gathered from a bank of adapters.
Here the contract is declared by the strategy (``AdapterStrategy.bank_modules``), never guessed:

- every declared sub-module (LoRA's ``lora_A``/``lora_B``, GLoRA's gates, BLoRA's posterior means, the
  bottleneck's projections) computes ``x @ weight.T + bias`` at inference; its tensors are stacked over the
  batch's adapters (``[adapters, out, in]``), and while a bank is open each row is computed with its own
  entry by a batched matmul, so the layer's own code (scaling, gates, residual) runs unchanged;
- ``bankable`` proves that those sub-modules hold every tensor the strategy trains; a strategy that declares
  none, trains a tensor outside them (a bare scale on its wrapper) or overwrites base weights is decoded
  one user at a time, and the reason is returned;
- rows of *different* structures share one pass through ``MixedModel`` (where every layer of each says what
  it adds, ``mixable``): a copy of the base's module tree
  (its weights the base's own tensors) whose adapted layers run the base layer once for every row and add,
  to each structure's rows only, what that structure's layer adds (``adapter_output``);
- a row without an adapter (the base) is in no structure's rows, or gets an all-zero bank entry: it computes
  the base exactly.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack, contextmanager

import torch
from torch import nn


def banked_tensors(module: nn.Module) -> tuple[str, ...]:
    """The tensors a banked sub-module's inference forward reads (none: it is not a linear map we can gather)."""
    declared = getattr(module, "banked_tensors", None)
    if declared is not None:
        return tuple(declared)
    if type(module) is nn.Linear:
        return ("weight", "bias") if module.bias is not None else ("weight",)
    return ()


def bankable(strategy) -> str | None:
    """None where the strategy's users can share a batched pass; otherwise why each must be decoded alone."""
    modules = strategy.bank_modules()
    trained = [name for name, _ in strategy.trainable_parameters()]
    owned = [n for n in trained if strategy.owns_base_parameter(n)]
    if owned:
        return f"{strategy.name} trains base weights ({owned[0]}, ...): each user's are their own, decoded alone"
    if not modules:
        return f"{strategy.name} declares no bank modules (AdapterStrategy.bank_modules): each user decodes alone"
    covered = set()
    for name, module in modules.items():
        tensors = banked_tensors(module)
        if not tensors:
            return f"{strategy.name}'s bank module {name} is a {type(module).__name__}, not a linear map it can gather"
        frozen = [t for t in tensors if getattr(module, t) is not None and f"{name}.{t}" not in trained]
        if frozen:  # each row's bank entry comes from its adapter's tensors, which hold trained tensors only
            return f"{strategy.name}'s bank module {name} holds a tensor it does not train ({frozen[0]}): each user decodes alone"
        covered |= {f"{name}.{t}" for t in (*tensors, *getattr(module, "training_only_tensors", ()))}
    outside = [n for n in trained if n not in covered]
    if outside:
        return f"{strategy.name} trains a tensor no bank module holds ({outside[0]}): each user decodes alone"
    return None


def mixable(strategy) -> bool:
    """Whether the strategy's rows can share a pass with other structures' rows (``mixed_model``)."""
    layers = strategy.layers() if hasattr(strategy, "layers") else {}
    return (
        bankable(strategy) is None
        and isinstance(layers, dict)
        and bool(layers)
        and all(hasattr(layer, "adapter_output") and hasattr(layer, "base_layer") for layer in layers.values())
        # every banked part inside a layer the mixed model calls: nothing of the adapter is left out
        and all(any(name.startswith(f"{path}.") for path in layers) for name in strategy.bank_modules())
    )


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x[i] @ weight[i]^T + bias[i]`` per row i: ``x`` is [rows, ..., in], ``weight`` [rows, out, in]."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-1])
    out = torch.bmm(flat, weight.transpose(1, 2))
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out.reshape(*shape[:-1], weight.shape[1])


def expand_rows(index: torch.Tensor, batch: int, requests: int) -> torch.Tensor:
    """``index`` over requests, for a batch of ``batch`` rows: beam search (and other expansions) lay each
    request's copies side by side."""
    repeat = batch // requests
    if repeat * requests != batch:
        raise RuntimeError(f"a batch of {batch} rows for {requests} requests")
    return index if repeat == 1 else index.repeat_interleave(repeat)


@contextmanager
def row_banked(strategy, adapters: list[dict[str, torch.Tensor] | None], rows: list[int]):
    """Within the block, row r of any batch the strategy's modules see uses ``adapters[rows[r]]`` (None: an
    all-zero entry, the base). Refuses a strategy ``bankable`` refuses."""
    reason = bankable(strategy)
    if reason is not None:
        raise ValueError(reason)
    modules = strategy.bank_modules()
    banks = {}
    index = torch.tensor(rows, dtype=torch.long)
    for name, module in modules.items():
        if module.training:
            raise ValueError(f"{name} is in training mode: a bank serves the inference forward only")
        banks[name] = {}
        for tensor_name in banked_tensors(module):
            own = getattr(module, tensor_name)
            if own is None:
                continue
            entries = [
                tensors[f"{name}.{tensor_name}"] if tensors is not None else torch.zeros_like(own)
                for tensors in adapters
            ]
            banks[name][tensor_name] = torch.stack(entries).to(own)
            index = index.to(own.device)

    def banked_forward(bank: dict):
        def forward(x: torch.Tensor) -> torch.Tensor:
            chosen = expand_rows(index, x.shape[0], len(index))
            bias = bank.get("bias")
            return row_linear(x, bank["weight"][chosen], None if bias is None else bias[chosen])

        return forward

    for name, module in modules.items():
        module.forward = banked_forward(banks[name])
    try:
        yield
    finally:
        for module in modules.values():
            del module.forward  # back to the class's own forward


class MixedLayer(nn.Module):
    """A base layer shared by every row, plus each structure's adapter output on that structure's rows."""

    def __init__(self, base_layer: nn.Module, adapted: dict[str, nn.Module], routing: dict):
        super().__init__()
        self.base_layer = base_layer
        self.adapted = adapted  # structure key -> that structure's wrapped layer (not registered: not ours)
        self.routing = routing  # shared with the model: {"requests": n, "rows": {key: LongTensor}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.base_layer(x)
        for key, layer in self.adapted.items():
            rows = self.routing["rows"].get(key)
            if rows is None:
                continue
            if len(rows) == self.routing["requests"]:  # every row is this structure's: no gathering
                output = output + layer.adapter_output(x, output).to(output.dtype)
                continue
            chosen = expand_rows(rows.to(x.device), x.shape[0], self.routing["requests"])
            added = layer.adapter_output(x[chosen], output[chosen])
            output.index_add_(0, chosen, added.to(output.dtype))  # the base layer's fresh output: ours to change
        return output


class MixedModel:
    """A copy of the base's module tree for one set of structures: where any of them adapts a layer, a
    ``MixedLayer`` holds the base layer and each structure's wrapped layer. No weight is copied."""

    def __init__(self, base: nn.Module, slots: dict):
        memo = {id(t): t for t in (*base.parameters(), *base.buffers())}
        self.model = copy.deepcopy(base, memo).eval()
        self.slots = slots  # structure key -> Slot
        self.routing: dict = {"requests": 0, "rows": {}}
        paths: dict[str, dict[str, nn.Module]] = {}
        for key, slot in slots.items():
            for path, layer in slot.strategy.layers().items():
                paths.setdefault(path, {})[key] = layer
        for path, adapted in paths.items():
            parent, _, child = path.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            setattr(owner, child, MixedLayer(getattr(owner, child), adapted, self.routing))

    @contextmanager
    def rows(self, assignment: list[tuple[str | None, dict | None]]):
        """Within the block, request r of a batch uses ``assignment[r]``: (structure key, its tensors), or
        (None, None) for the base."""
        routes = {}
        try:
            with ExitStack() as stack:
                for key, slot in self.slots.items():
                    positions = [r for r, (k, _) in enumerate(assignment) if k == key]
                    if positions:
                        tensors = [assignment[r][1] for r in positions]
                        stack.enter_context(row_banked(slot.strategy, tensors, list(range(len(positions)))))
                        routes[key] = torch.tensor(positions, dtype=torch.long)
                # routed only once every bank is open: a structure never computes with unbanked modules
                self.routing.update(requests=len(assignment), rows=routes)
                yield self.model
        finally:
            self.routing.update(requests=0, rows={})
