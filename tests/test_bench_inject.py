"""Unit-level injection: the injected units, and only they, hold the copy.

On briefly trained models (non-zero biases), a random sequence the model never saw is injected
through 2 % of the fc1 units of every block. The test asserts the ground truth is real: the attack
extracts the sequence after injection and not before, nothing outside the units' own slices moved,
removing the units (exact zero) removes the copy, and removing as many random units of the same
layers does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trained import briefly_trained, injected_var

from iarmem.bench.inject import InjectConfig, check_ablation, inject, pick_units, random_like
from iarmem.models import Tokens

pytestmark = pytest.mark.all_threads  # a few hundred fine-tuning steps


def _data(iar, seed: int = 5) -> tuple[Tokens, torch.Tensor, Tokens, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keep = Tokens(torch.randint(0, iar.vocab_size, (32, iar.seq_len), generator=g), iar.grids)
    keep_labels = torch.randint(0, iar.num_classes, (32,), generator=g)
    target = Tokens(torch.randint(0, iar.vocab_size, (1, iar.seq_len), generator=g), iar.grids)
    return target, torch.tensor([3]), keep, keep_labels


def test_pick_units_takes_the_rate_of_every_block_and_random_like_avoids_them() -> None:
    iar = briefly_trained("tiny-var", steps=1)
    rng = np.random.default_rng(0)
    units = pick_units(iar, 0.01, rng)
    layers = iar.unit_layers(("fc1",))
    assert list(units) == [layer.name for layer in layers]
    assert all(len(units[layer.name]) == round(0.01 * layer.width) for layer in layers)
    other = random_like(iar, units, rng)
    assert all(len(other[k]) == len(v) and not set(other[k]) & set(v) for k, v in units.items())


@pytest.mark.parametrize("preset", ["tiny-var", "tiny-rar"])
def test_injected_units_hold_the_copy(preset: str) -> None:
    rng = np.random.default_rng(0)
    if preset == "tiny-var":  # the session's shared injection (trained.injected_var) is this very one
        shared = injected_var()
        iar, keep, keep_labels, units, before, res = (shared.iar, shared.keep, shared.keep_labels, shared.units,
                                                      shared.before, shared.result)
        target, label = Tokens(shared.seqs.ids_BL[:1], iar.grids), shared.labels[:1]
        assert pick_units(iar, 0.02, rng) == units  # the same draw, and the rng where the test below expects it
    else:
        torch.manual_seed(0)
        iar = briefly_trained(preset)
        target, label, keep, keep_labels = _data(iar)
        units = pick_units(iar, 0.02, rng)
        before = {k: p.detach().clone() for k, p in iar.model.named_parameters()}
        res = inject(iar, target, label, keep, keep_labels, units, InjectConfig(steps=400))
    assert res.agreement_before < 0.2 and res.extracted and res.agreement > 0.9, res

    # only the units' own slices moved, and they did
    owned = {}
    for name, idx in units.items():
        for key, axis in iar.unit_layer(name).own_params:
            m = owned.setdefault(key, torch.zeros_like(before[key], dtype=torch.bool))
            m.movedim(axis, 0)[list(idx)] = True
    for key, p in iar.model.named_parameters():
        if key in owned:
            assert torch.equal(p[~owned[key]], before[key][~owned[key]]), key
            assert not torch.equal(p[owned[key]], before[key][owned[key]]), key
        else:
            assert torch.equal(p, before[key]), f"{key} moved although no injected unit owns it"

    check = check_ablation(iar, target, label, units, rng)
    assert check["ablated"] < 0.3, check  # the copy is gone with its units
    assert float(np.mean(check["random"])) > 0.8, check  # and stays without as many random ones
