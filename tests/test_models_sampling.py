"""Token draws: one generator per row gives each row the draw it would get alone, from the right distribution."""

from __future__ import annotations

import torch

from iarmem.models.sampling import add_logit_noise, pick_tokens


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_per_row_draws_follow_the_distribution_and_never_pick_a_masked_token() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    logits_BlV = logits.expand(4, 2000, 4).clone()
    got = pick_tokens(logits_BlV, greedy=False, generator=_gens([0, 1, 2, 3]))
    freq = torch.bincount(got.flatten(), minlength=4).float() / got.numel()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015), freq  # 8,000 draws: se <= 0.006
    top2 = pick_tokens(logits_BlV, greedy=False, top_k=2, generator=_gens([0, 1, 2, 3]))
    assert set(top2.unique().tolist()) == {0, 1}  # the masked tokens (mass 0) are never drawn
    hot = pick_tokens(torch.tensor([[[0.0, 50.0, 0.0]]]), greedy=False, generator=_gens([7]))
    assert hot.item() == 1


def test_a_row_s_draw_does_not_depend_on_the_rows_beside_it() -> None:
    torch.manual_seed(0)
    logits_BlV = torch.randn(3, 16, 50)
    together = pick_tokens(logits_BlV, greedy=False, generator=_gens([11, 12, 13]))
    alone = pick_tokens(logits_BlV[2:], greedy=False, generator=_gens([13]))
    assert torch.equal(together[2:], alone)
    assert not torch.equal(together[1], together[2])  # different seeds, different draws
    shared = pick_tokens(logits_BlV, greedy=False, generator=torch.Generator().manual_seed(13))
    assert not torch.equal(shared[2:], alone)  # one generator for the batch: the row's draw moves with its place
    noisy = add_logit_noise(logits_BlV, 1.0, _gens([11, 12, 13]))
    assert torch.equal(noisy[2:], add_logit_noise(logits_BlV[2:], 1.0, _gens([13])))
