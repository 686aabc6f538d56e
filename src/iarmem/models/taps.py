"""Taps: read unit activations during a forward pass without keeping them or changing the model.

The hook is registered on the module named by ``UnitLayer.tap_module`` (the GELU after fc1, the
input of LlamaGen's w2, ...). Families run their MLPs through those modules on every path, so no
fused kernel can bypass a tap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from torch import Tensor
from torch.utils.hooks import RemovableHandle

from iarmem.models.base import IAR, UnitLayer

TapCallback = Callable[[UnitLayer, Tensor], None]


def aligned(iar: IAR, value: Tensor, what: str = "unit values") -> Tensor:
    """Raw [B, T, U] values of a teacher-forced pass -> [B, L, U], position i the one predicting token i."""
    v = value.reshape(value.shape[0], -1, value.shape[-1])[:, iar.tap_slice]
    if v.shape[1] != iar.seq_len:
        raise RuntimeError(f"{what}: aligned values need a full teacher-forced pass ({iar.seq_len} positions), "
                           f"got {v.shape[1]}; use align=False during generation")
    return v


@contextlib.contextmanager
def tap(
    iar: IAR,
    layers: Sequence[UnitLayer | str],
    callback: TapCallback,
    align: bool = True,
) -> Iterator[None]:
    """Call ``callback(layer, act_BLU)`` for every tapped layer on every forward pass of ``iar.model``.

    With ``align`` (teacher-forced passes), ``act_BLU[:, i]`` is the activation at the position that
    predicts token ``i`` (so L = ``iar.seq_len``); without it the raw [B, T, U] sequence is passed.
    Activations are detached; all hooks are removed on exit, also on error.
    """
    resolved = [iar.unit_layer(x) if isinstance(x, str) else x for x in layers]
    modules = dict(iar.model.named_modules())
    handles: list[RemovableHandle] = []

    def make_hook(layer: UnitLayer) -> Callable:
        def deliver(value: Tensor) -> None:
            act = value.detach()
            flat = act.reshape(act.shape[0], -1, act.shape[-1])
            callback(layer, aligned(iar, flat, f"tap {layer.name}") if align else flat)

        if layer.tap_input:
            return lambda _m, args: deliver(args[0])
        return lambda _m, _args, out: deliver(out)

    try:
        for layer in resolved:
            if layer.tap_module not in modules:
                raise KeyError(f"tap point {layer.tap_module!r} not found in the model")
            mod = modules[layer.tap_module]
            hook = make_hook(layer)
            handles.append(mod.register_forward_pre_hook(hook) if layer.tap_input else mod.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
