"""Trigger search: optimise the class conditioning to make one target image likely, then generate from it.

After a pruning-style fix, copies come back under a slightly different prompt (Kowalczuk et al.,
"Finding Dori"). The strongest prompt an attacker who knows the image can try is found by gradient
descent on the conditioning input: the row of the class-embedding table the target's label reads
(``IAR.class_rows``) is optimised with Adam to minimise the teacher-forced loss of the target's
tokens. The weights are never changed for longer than one forward: the row is swapped in and put
back bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iarmem.models.base import IAR, Tokens

TRIGGER_STEPS = 30
TRIGGER_LR = 0.05


@contextlib.contextmanager
def rows_replaced(table: nn.Parameter, rows: Tensor, values: Tensor) -> Iterator[None]:
    """``table[rows]`` are ``values`` inside the block, their original bits afterwards."""
    saved = table.data[rows].clone()
    table.data[rows] = values.to(table.dtype)
    try:
        yield
    finally:
        table.data[rows] = saved


def optimise_trigger(iar: IAR, targets: Tokens, labels: Tensor, steps: int = TRIGGER_STEPS,
                     lr: float = TRIGGER_LR) -> tuple[Tensor, list[float]]:
    """The conditioning rows that make each target most likely ([B, C]), and the mean loss per step.

    ``labels`` must be distinct (each target owns its class's row for the search), so targets of
    different classes are searched together in one batch. Adam on each row's offset from the
    class's own embedding; the loss is the cross-entropy of all of a target's tokens under teacher
    forcing (the class-only positions included: the conditioning acts there first), summed over
    the batch so each row sees only its own target's gradient.
    """
    labels = labels.to(iar.device)
    if len(set(labels.tolist())) != len(labels):
        raise ValueError("optimise_trigger needs one target per class")
    table, rows = iar.class_rows(labels)
    base = table.detach()[rows].clone()
    delta = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    ids = targets.ids_BL.to(iar.device)
    needed = table.requires_grad
    table.requires_grad_(True)
    losses = []
    try:
        for _ in range(steps):
            with torch.enable_grad(), rows_replaced(table, rows, (base + delta).detach()):
                logits = iar.logits(targets, labels)
                loss_B = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none")
                loss = loss_B.view(len(labels), -1).mean(1).sum()
                (grad,) = torch.autograd.grad(loss, table)
            delta.grad = grad[rows].to(delta.dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()) / len(labels))
    finally:
        table.requires_grad_(needed)
    return (base + delta).detach(), losses


@torch.no_grad()
def generate_with_trigger(iar: IAR, gt: Tokens, labels: Tensor, triggers: Tensor, prefix: int, *,
                          logit_noise: float = 0.0, generator: torch.Generator | None = None) -> Tokens:
    """Greedy generation from the first ``prefix`` steps of ``gt``, each class row replaced by its trigger
    (``labels`` distinct, as in :func:`optimise_trigger`); ``logit_noise``: the defense, as for every try."""
    labels = labels.to(iar.device)
    table, rows = iar.class_rows(labels)
    with rows_replaced(table, rows, triggers):
        out = iar.generate(labels, prefix=gt.to(iar.device), prefix_len=prefix, greedy=True, cfg=None,
                           logit_noise=logit_noise, generator=generator)
    assert isinstance(out, Tokens)
    return out
