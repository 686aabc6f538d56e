"""The strong attack: its tries, the trigger search, and known answers on models that copy or emit noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_attack_known import fake
from trained import briefly_trained

from iarmem.attack import AttackSettings, run_attack
from iarmem.attack.generate import default_prefix
from iarmem.attack.strong import strong_tries, trigger_rounds
from iarmem.attack.trigger import optimise_trigger
from iarmem.data import bundled_mnist, make_plan
from iarmem.models import Tokens, build


def test_tries_cover_every_prefix_and_decoding_weakest_first() -> None:
    var, rar = build("tiny-var"), build("tiny-rar")
    tv = strong_tries(var, default_prefix(var))
    assert sorted({t.prefix for t in tv}) == [0, 1, 2, 3, 4, 5]  # 6 scales: prefixes 0..5
    assert [t.sort_key() for t in tv] == sorted(t.sort_key() for t in tv)
    assert {t.kind for t in tv if t.prefix == default_prefix(var)} == {"greedy", "guided", "sampled", "trigger"}
    assert {t.prefix for t in tv if t.trigger} == {0, default_prefix(var)}
    tr = strong_tries(rar, default_prefix(rar))
    assert max(t.prefix for t in tr) == 32 and 0 in {t.prefix for t in tr} and default_prefix(rar) in {
        t.prefix for t in tr}  # raster: 0..50 % of 64 tokens, and the default 15
    assert len(tr) == len(set(tr))


@pytest.mark.parametrize("preset", ["tiny-var", "tiny-rar", "tiny-llamagen"])
def test_trigger_search_makes_the_target_likelier_and_leaves_the_weights(preset: str) -> None:
    iar = briefly_trained(preset)
    before = {k: v.clone() for k, v in iar.model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    target = Tokens(torch.randint(0, iar.vocab_size, (1, iar.seq_len), generator=g), iar.grids)
    targets = Tokens(torch.cat([target.ids_BL, target.ids_BL.flip(1)]), iar.grids)
    rows_found, losses = optimise_trigger(iar, targets, torch.tensor([3, 7]), steps=15, lr=0.1)
    assert losses[-1] < losses[0] - 0.05, losses  # the conditioning alone moves the targets' loss
    table, rows = iar.class_rows(torch.tensor([3, 7]))
    assert rows_found.shape == (2, table.shape[1]) and not torch.equal(rows_found, table[rows].detach())
    assert all(torch.equal(v, before[k]) for k, v in iar.model.state_dict().items())
    with pytest.raises(ValueError, match="one target per class"):
        optimise_trigger(iar, targets, torch.tensor([3, 3]), steps=1)


def test_trigger_rounds_hold_one_target_per_class() -> None:
    labels = np.array([4, 1, 4, 4, 2, 1])
    rounds = trigger_rounds(labels)
    assert [r.tolist() for r in rounds] == [[0, 1, 4], [2, 5], [3]]
    assert all(len(set(labels[r])) == len(r) for r in rounds)


@pytest.fixture(scope="module")
def data():
    ds = bundled_mnist()
    return ds, make_plan(ds.labels, num_train=10, plant=10, copies=2, seed=0, dataset=ds.describe())


STRONG = AttackSettings(top=1, batch_size=16, calibrate=False, strength="strong", trigger_steps=2)


def test_a_copier_is_extracted_at_the_weakest_try_and_noise_never(data) -> None:
    ds, plan = data
    s = run_attack(fake("tiny-rar", "copy"), ds, plan, STRONG)["strong"]
    assert s["extracted"] == 10 and s["default_not_found"] == [] and s["weakest_kind"] == {"greedy": 20}
    assert all(t["prefix"] > 0 or t["own_prompt"] == 10 for t in s["per_try"] if t["kind"] == "greedy")
    noise = run_attack(fake("tiny-var", "noise"), ds, plan, STRONG)["strong"]
    assert noise["extracted"] == 0 and noise["beyond_default"] == [] and noise["heldout_false_positives"] == 0
