"""Unit gates: multiply units' values inside a forward pass, differentiably.

A gate g on a unit multiplies its value (the tap point's output, or input with ``tap_input``)
at every token position, which is exactly what the ``exact`` edit with factor g does to the rest
of the network: gate 0 removes the unit. The loss-aware localizers use this one mechanism, so
what they score is the edit that mitigation will make:

- ``gradient``: gates of 1 (requiring grad) with the unit values kept, so one backward pass gives
  value x gradient (the first-order change of the loss when the unit is removed);
- ``mask``: learned gates in [0, 1] (HardConcrete), the parameters frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from iarmem.models.base import IAR, UnitLayer


@contextlib.contextmanager
def only_trainable(iar: IAR, keys: set[str]) -> Iterator[list[torch.nn.Parameter]]:
    """Gradients for the transformer parameters named ``keys`` only (none for an empty set; the tokenizer's
    never), restored afterwards."""
    params = dict(iar.model.named_parameters())
    frozen = list(iar.tokenizer.parameters())
    before = {k: p.requires_grad for k, p in params.items()}
    before_tok = [p.requires_grad for p in frozen]
    for k, p in params.items():
        p.requires_grad_(k in keys)
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield [params[k] for k in sorted(keys)]
    finally:
        for k, p in params.items():
            p.requires_grad_(before[k])
        for p, b in zip(frozen, before_tok):
            p.requires_grad_(b)


@contextlib.contextmanager
def unit_gates(iar: IAR, layers: Sequence[UnitLayer], gates: dict[str, Tensor] | None = None,
               keep: dict[str, Tensor] | None = None) -> Iterator[None]:
    """For every forward of ``iar.model`` in the block: values of ``layers``' units times ``gates[name]``
    ([U], broadcast over batch and positions; a layer without a gate is left as it is).

    With ``keep``, each layer's gated value [B, T, U] is stored there with its gradient retained,
    so ``keep[name].grad`` holds dLoss/dvalue after a backward pass (the gates must require grad;
    parameters can stay frozen). Hooks are removed on exit, also on error.
    """
    modules = dict(iar.model.named_modules())
    handles: list[RemovableHandle] = []

    def change(layer: UnitLayer) -> Callable[[Tensor], Tensor]:
        def apply(value: Tensor) -> Tensor:
            if gates is not None and layer.name in gates:
                value = value * gates[layer.name].to(value.dtype)
            if keep is not None:
                if not value.requires_grad:
                    raise RuntimeError(f"{layer.name}: keeping values for gradients needs a gate that requires grad")
                value.retain_grad()  # not a leaf: the gradient of every earlier unit still flows through it
                keep[layer.name] = value
            return value
        return apply

    try:
        for layer in layers:
            mod = modules[layer.tap_module]
            f = change(layer)
            if layer.tap_input:
                handles.append(mod.register_forward_pre_hook(lambda _m, args, f=f: (f(args[0]), *args[1:])))
            else:
                handles.append(mod.register_forward_hook(lambda _m, _a, out, f=f: f(out)))
        yield
    finally:
        for h in handles:
            h.remove()
