"""Briefly trained tiny models for tests of edits and statistics.

A freshly built model has zero biases (and unit norm gains), which hides bugs: "fc1 row x 0" and
"remove the unit" agree when the bias is 0, and a collector that forgets a bias still matches an
independent computation. A few AdamW steps on random tokens move every parameter off its init.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from iarmem.models import IAR, Tokens, build


def briefly_trained(preset: str, steps: int = 25, seed: int = 0) -> IAR:
    """``preset`` after ``steps`` AdamW steps (lr 3e-3) on random tokens and labels; eval mode, on the CPU. Trained
    once per session and arguments (a dozen modules ask for the same ones); every call returns a fresh copy that
    the caller may edit."""
    iar = _built(preset, seed)
    iar.model.load_state_dict(_trained_state(preset, steps, seed))
    return iar.eval()


@functools.cache
def _trained_state(preset: str, steps: int, seed: int) -> dict[str, torch.Tensor]:
    iar = _built(preset, seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, iar.vocab_size, (8, iar.seq_len), generator=gen)
    labels = torch.randint(0, iar.num_classes, (8,), generator=gen)
    opt = torch.optim.AdamW(iar.model.parameters(), lr=3e-3, weight_decay=0.0)
    iar.model.train()
    with torch.enable_grad():
        for _ in range(steps):
            loss = iar.training_loss(Tokens(ids, iar.grids), labels, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for name, p in iar.model.named_parameters():
        if name.endswith(".bias") and p.requires_grad and p.grad is not None:
            assert p.detach().abs().max() > 0, f"{preset}: {name} is still zero after training"
    return iar.model.state_dict()  # this model is dropped: the tensors are the cache's alone


def _built(preset: str, seed: int) -> IAR:
    """``preset`` freshly initialised from ``seed``, the global RNG left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        iar = build(preset)
    return iar


def planted_model_folder(folder: Path) -> Path:
    """A briefly trained tiny-var saved in ``folder`` as `iarmem train` writes it, with a planting manifest
    over 10 ordinary and 2 planted MNIST images (so the commands that localize or inject run quickly)."""
    from iarmem.data import bundled_mnist, make_plan, write_manifest
    from iarmem.models.loading import save_model_folder

    torch.manual_seed(0)
    iar = briefly_trained("tiny-var", steps=25)
    save_model_folder(iar, folder, preset="tiny-var", extra={"training_views": {"views": 1, "seed": 0}})
    ds = bundled_mnist()
    write_manifest(make_plan(ds.labels, num_train=10, plant=2, copies=2, seed=0, dataset=ds.describe()),
                   folder / "manifest.json")
    return folder


def without_manifest(folder: Path, dest: Path) -> Path:
    """A copy of model ``folder`` in ``dest`` with its weights and config but no manifest.json."""
    dest.mkdir()
    for name in ("model.json", "model.safetensors", "tokenizer.safetensors"):
        (dest / name).write_bytes((folder / name).read_bytes())
    return dest


class Injected(NamedTuple):
    iar: IAR
    seqs: Tokens  # [2, L]: the first was injected, the second never learned
    labels: torch.Tensor
    keep: Tokens  # 32 ordinary sequences
    keep_labels: torch.Tensor
    units: dict[str, tuple[int, ...]]  # the injected units (ground truth)
    before: dict[str, torch.Tensor]  # the transformer's parameters before the injection
    result: Any  # the bench's Injection record


@functools.cache
def injected_var() -> Injected:
    """A briefly trained tiny-var that learned one random sequence through 2 % of its fc1 units (ground
    truth), built once per session for the tests of injection, deletion and the localizers. Use it
    read-only (temporary edits)."""
    from iarmem.bench.inject import InjectConfig, inject, pick_units

    torch.manual_seed(0)
    iar = briefly_trained("tiny-var")
    g = torch.Generator().manual_seed(5)
    keep = Tokens(torch.randint(0, iar.vocab_size, (32, iar.seq_len), generator=g), iar.grids)
    keep_labels = torch.randint(0, iar.num_classes, (32,), generator=g)
    seqs = Tokens(torch.randint(0, iar.vocab_size, (2, iar.seq_len), generator=g), iar.grids)
    labels = torch.tensor([3, 7])
    units = pick_units(iar, 0.02, np.random.default_rng(0))
    before = {k: p.detach().clone() for k, p in iar.model.named_parameters()}
    one = Tokens(seqs.ids_BL[:1], iar.grids)
    result = inject(iar, one, labels[:1], keep, keep_labels, units, InjectConfig(steps=400))
    assert result.extracted
    return Injected(iar, seqs, labels, keep, keep_labels, units, before, result)
