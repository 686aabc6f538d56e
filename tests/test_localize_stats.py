"""UnitMem statistics against a direct numpy computation from a stored activation array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from iarmem.localize.results import compute_map
from iarmem.localize.stats import (
    BinReducer,
    UnitLayout,
    UnitStats,
    augmentation_mean,
    mean_others,
    median_others,
    unitmem,
)
from iarmem.models.base import UnitLayer

N, A, L, U = 13, 3, 10, 5
BINS = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2, 2])  # VAR-like: 1, 3, 6 tokens


def _acts(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    act_NALU = rng.normal(size=(N, A, L, U)).astype(np.float32)  # signed, like GELU outputs can be
    ids = np.sort(rng.choice(1000, size=N, replace=False)).astype(np.int64)
    return act_NALU, ids


def _expected_mu(act_NALU: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """mu [N, K, U]: mean over augmentations of the per-bin mean of |act|, rounded to float32."""
    a = np.abs(act_NALU.astype(np.float64))
    per_bin = np.stack([a[:, :, bins == k].mean(axis=2) for k in range(bins.max() + 1)], axis=2)  # N A K U
    return per_bin.mean(axis=1).astype(np.float32)


def _feed(act_NALU: np.ndarray, ids: np.ndarray, chunks: list[int], lanes: int = 4) -> UnitStats:
    reducer = BinReducer(BINS)
    stats = UnitStats(reducer.num_bins * U, lanes=lanes)
    lo = 0
    for size in chunks:
        part = torch.from_numpy(act_NALU[lo:lo + size]).reshape(-1, L, U)
        stats.update(np.arange(lo, lo + size), ids[lo:lo + size], augmentation_mean(reducer(part), A))
        lo += size
    assert lo == len(ids)
    return stats


def _layout(width: int = U, bins: int = 3) -> UnitLayout:
    layer = UnitLayer("blocks.0.ffn.fc1", "fc1", 0, width, "blocks.0.ffn.act", False, (), ())
    return UnitLayout.from_layers([layer], bins)


def test_mean_and_median_unitmem_match_a_direct_computation() -> None:
    act, ids = _acts()
    mu = _expected_mu(act, BINS.numpy()).reshape(N, -1).astype(np.float64)  # [N, K*U]
    stats = _feed(act, ids, [N])
    col_max = mu.max(axis=0)
    arg = np.array([ids[np.flatnonzero(mu[:, f] == col_max[f])[0]] for f in range(mu.shape[1])])
    mean_o = (mu.sum(axis=0) - col_max) / (N - 1)
    median_o = np.array([np.median(np.delete(mu[:, f], np.flatnonzero(ids == arg[f])[0]))
                         for f in range(mu.shape[1])])
    np.testing.assert_allclose(stats.max_F.numpy(), col_max, rtol=1e-6)
    np.testing.assert_array_equal(stats.argmax_F.numpy(), arg)
    assert stats.count == N

    values = np.stack([_expected_mu(act[i:i + 1], BINS.numpy()).reshape(-1) for i in range(N)])
    res_mean = compute_map(stats, _layout(), ids, "mean")
    res_median = compute_map(stats, _layout(), ids, "median", median_others(values))
    np.testing.assert_array_equal(median_others(values, chunk_bytes=4 * N * 2), median_others(values))  # chunked
    np.testing.assert_allclose(res_mean.mean_others_F.numpy(), mean_o, rtol=1e-6)
    np.testing.assert_allclose(res_median.median_others_F.numpy(), median_o, rtol=1e-6)
    np.testing.assert_allclose(res_mean.unitmem_F.numpy(), (col_max - mean_o) / (col_max + mean_o), rtol=1e-5)
    np.testing.assert_allclose(res_median.unitmem_F.numpy(), (col_max - median_o) / (col_max + median_o),
                               rtol=1e-5)
    # the file layout: [num_bins, width] per layer, argmax as dataset ids
    t = res_median.tensors()
    assert t["blocks.0.ffn.fc1.unitmem"].shape == (3, U) and t["blocks.0.ffn.fc1.unitmem"].dtype == torch.float32
    assert t["blocks.0.ffn.fc1.argmax"].dtype == torch.int64
    np.testing.assert_array_equal(t["blocks.0.ffn.fc1.argmax"].reshape(-1).numpy(), arg)
    np.testing.assert_array_equal(t["image_ids"].numpy(), ids)


def test_bin_reducer_handles_scattered_bins() -> None:
    bins = torch.tensor([1, 0, 1, 0, 2])
    act = torch.randn(2, 5, 3)
    out = BinReducer(bins)(act)
    np.testing.assert_allclose(out[:, 0].numpy(), act[:, [1, 3]].abs().double().mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[:, 2].numpy(), act[:, 4].abs().double().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="bin 1"):
        BinReducer(torch.tensor([0, 2, 2]))


@pytest.mark.parametrize("chunks", [[1] * N, [3, 3, 3, 3, 1], [5, 7, 1], [2, 11]])
def test_streaming_equals_all_at_once_bit_for_bit(chunks: list[int]) -> None:
    act, ids = _acts(1)
    whole, streamed = _feed(act, ids, [N]), _feed(act, ids, chunks)
    for name in ("sums_SF", "max_F", "argmax_F", "ties_F"):
        assert torch.equal(getattr(whole, name), getattr(streamed, name)), name
    assert whole.count == streamed.count


def test_lanes_make_interleaved_shards_reduce_exactly() -> None:
    """Two ranks (position p on rank p mod 2) reduced by lane-wise addition equal one process."""
    rng = np.random.default_rng(2)
    mu = torch.from_numpy(rng.lognormal(size=(40, 7)).astype(np.float32))
    ids = np.arange(100, 140)
    one = UnitStats(7, lanes=4)
    for lo in range(0, 40, 3):
        one.update(np.arange(lo, min(40, lo + 3)), ids[lo:lo + 3], mu[lo:lo + 3])
    ranks = [UnitStats(7, lanes=4) for _ in range(2)]
    for lo in range(0, 40, 6):  # steps of W x B = 2 x 3 positions
        pos = np.arange(lo, min(40, lo + 6))
        for r, st_ in enumerate(ranks):
            mine = pos[pos % 2 == r]
            st_.update(mine, ids[mine], mu[mine])
    merged = UnitStats(7, lanes=4)
    merged.sums_SF = ranks[0].sums_SF + ranks[1].sums_SF
    for st_ in ranks:
        merged._merge(st_.max_F, st_.argmax_F, st_.ties_F)
    assert torch.equal(merged.total_F(), one.total_F())
    assert torch.equal(merged.max_F, one.max_F) and torch.equal(merged.argmax_F, one.argmax_F)
    assert torch.equal(merged.ties_F, one.ties_F)


def test_edge_cases_one_image_silent_units_and_ties() -> None:
    stats = UnitStats(3)
    stats.update([0], [7], torch.tensor([[0.0, 2.0, 5.0]]))
    others = mean_others(stats.total_F(), stats.max_F, stats.count)
    assert torch.equal(unitmem(stats.max_F, others), torch.zeros(3, dtype=torch.float64))  # N = 1: UnitMem 0
    assert median_others(np.array([[0.0, 2.0, 5.0]], dtype=np.float32)).tolist() == [0.0, 2.0, 5.0]
    # a tied maximum is counted, whatever the order and batching of the images; no image owns it
    tied = UnitStats(3)
    tied.update([0, 1], [9, 4], torch.tensor([[1.0, 3.0, 0.5], [1.0, 2.0, 4.0]]))
    tied.update([2], [2], torch.tensor([[1.0, 3.0, 1.0]]))
    assert tied.argmax_F.tolist() == [2, 2, 4] and tied.ties_F.tolist() == [3, 2, 1]
    assert tied.owner_F().tolist() == [-1, -1, 4]
    later = UnitStats(3)  # a larger value arriving after a tie resets the count
    later.update([0, 1], [9, 4], torch.tensor([[1.0, 3.0, 0.5], [1.0, 3.0, 4.0]]))
    later.update([2], [2], torch.tensor([[1.5, 3.0, 1.0]]))
    assert later.ties_F.tolist() == [1, 3, 1] and later.owner_F().tolist() == [2, -1, 4]
    with pytest.raises(FloatingPointError, match="image 5"):
        UnitStats(1).update([0], [5], torch.tensor([[float("nan")]]))


mu_arrays = st.integers(2, 9).flatmap(
    lambda n: arrays(np.float32, (n, 4), elements=st.floats(0, 100, width=32, allow_subnormal=False)))


@settings(max_examples=60, deadline=None)
@given(mu=mu_arrays, perm_seed=st.integers(0, 2**16), batch=st.integers(1, 4))
def test_unitmem_properties(mu: np.ndarray, perm_seed: int, batch: int) -> None:
    n = len(mu)
    ids = np.arange(n) * 3 + 1

    def run(order: np.ndarray, stat: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stats = UnitStats(4, lanes=3)
        for lo in range(0, n, batch):
            sel = order[lo:lo + batch]
            stats.update(np.arange(lo, lo + len(sel)), ids[sel], torch.from_numpy(mu[sel]))
        med = median_others(mu[order]) if stat == "median" else None
        res = compute_map(stats, _layout(width=4, bins=1), ids[order], stat, med)
        return res.unitmem_F.numpy(), res.max_F.numpy(), res.argmax_F.numpy()

    perm = np.random.default_rng(perm_seed).permutation(n)
    for stat in ("mean", "median"):
        um, mx, arg = run(np.arange(n), stat)
        assert np.all((um >= 0) & (um <= 1))
        um_p, mx_p, arg_p = run(perm, stat)
        np.testing.assert_array_equal(mx, mx_p)  # the max and its (smallest-id) argmax ignore the order
        np.testing.assert_array_equal(arg, arg_p)
        np.testing.assert_allclose(um, um_p, rtol=1e-6, atol=1e-7)
        # a unit driven by a single image (all others silent) has UnitMem 1
        one = mu.copy()
        one[:, 0] = 0.0
        one[n // 2, 0] = 5.0
        stats = UnitStats(4)
        stats.update(np.arange(n), ids, torch.from_numpy(one))
        med = median_others(one) if stat == "median" else None
        assert compute_map(stats, _layout(width=4, bins=1), ids, stat, med).unitmem_F[0] == 1.0
