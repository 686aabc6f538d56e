"""The activation collector on briefly trained models of every family, against a direct computation
(tests/direct_mu.py: plain hooks, activations by hand, rows from the official layouts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from direct_mu import direct_mu, fc1_values
from trained import briefly_trained

from iarmem.data import bundled_mnist
from iarmem.localize.unitmem import MuCollector, localization_bins
from iarmem.models import IAR
from iarmem.tokens import load_views

PRESETS = ("tiny-var", "tiny-rar", "tiny-llamagen")
IDS = np.array([3, 10, 200, 4321])
VIEWS = (0, 1, 3)
SEED = 5


@pytest.fixture(scope="module")
def models() -> dict[str, IAR]:
    return {p: briefly_trained(p) for p in PRESETS}


@pytest.mark.parametrize("keep", [False, True], ids=["class-positions-out", "class-positions-kept"])
@pytest.mark.parametrize("preset", PRESETS)
def test_collector_matches_a_direct_computation(models, preset: str, keep: bool) -> None:
    iar, ds = models[preset], bundled_mnist()
    collector = MuCollector(iar, iar.unit_layers(), localization_bins(iar, None, keep), VIEWS, SEED)
    got = collector(ds, IDS, pad_to=6).double().numpy()
    images, labels = load_views(iar, ds, np.repeat(IDS, len(VIEWS)), np.tile(VIEWS, len(IDS)), SEED)
    want = direct_mu(iar, iar.tokenize(images), labels, len(VIEWS), keep)
    assert got.shape == want.shape == (len(IDS), collector.layout.size)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert np.abs(want[0] - want[1]).max() > 1e-3  # images differ: a collector that ignored them would fail


@pytest.mark.parametrize("preset", PRESETS)
def test_class_only_positions_are_the_same_for_every_image_of_a_class(models, preset: str) -> None:
    """Why they are left out: the first position sees the class alone (two images of one class, any views)."""
    iar, ds = models[preset], bundled_mnist()
    same_class = np.flatnonzero(ds.labels == ds.labels[IDS[0]])[:2]
    images, labels = load_views(iar, ds, same_class, np.array([1, 2]), SEED)
    rows = [v[:, 0] for v in fc1_values(iar, iar.tokenize(images), labels)]
    assert all(torch.equal(r[0], r[1]) for r in rows)
    bins = localization_bins(iar)
    assert int(bins[0]) == -1 and int((bins < 0).sum()) == iar.class_only_positions == 1
    assert int(bins.max()) + 1 == len(set(bins.tolist()) - {-1})
