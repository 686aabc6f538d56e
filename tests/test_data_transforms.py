"""Per-family preprocessing: shapes, value ranges, seeded reproducibility, grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iarmem.data import (
    FAMILIES,
    ArrayDataset,
    augmentation_generator,
    bundled_mnist,
    load_batch,
    save_grid,
    to_pil,
    transform_for,
)
from iarmem.errors import UserError

RANGES = {"var": (-1.0, 1.0), "rar": (0.0, 1.0), "llamagen": (-1.0, 1.0)}


@pytest.fixture(scope="module")
def mnist():
    return bundled_mnist()


def _noise_dataset(n: int = 6, h: int = 30, w: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), np.arange(n) % 2, name="noise")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("train", [True, False])
def test_shapes_and_ranges(mnist, family: str, train: bool) -> None:
    t = transform_for(family, 32, train)
    x, y = load_batch(mnist, [0, 1500, 4999], t, seed=3, aug_index=1)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [0, 3, 9] and y.dtype == torch.int64
    lo, hi = RANGES[family]
    assert t.value_range == (lo, hi)
    assert x.min() >= lo and x.max() <= hi
    assert x.min() < lo + 0.05 and x.max() > hi - 0.05  # MNIST spans black to white
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey -> 3 equal channels
    assert ((t.to_unit(x) >= 0) & (t.to_unit(x) <= 1)).all()


def test_resize_rules() -> None:
    img = Image.new("RGB", (40, 30))
    assert transform_for("var", 16, True).resized(img).size == (24, 18)  # shorter side round(1.125 * 16)
    assert transform_for("rar", 16, True).resized(img).size == (21, 16)  # torchvision truncates the long side
    big = Image.new("RGB", (100, 80))
    assert transform_for("llamagen", 16, True).resized(big).size == (20, 16)  # BOX halvings then BICUBIC


def test_same_seed_same_augmentation_and_aug_index_changes_it() -> None:
    ds = _noise_dataset()
    for family in FAMILIES:
        t = transform_for(family, 16, True)
        a, _ = load_batch(ds, range(6), t, seed=7, aug_index=0)
        b, _ = load_batch(ds, range(6), t, seed=7, aug_index=0)
        assert torch.equal(a, b)
        others = [load_batch(ds, range(6), t, seed=7, aug_index=k)[0] for k in range(1, 6)]
        assert any(not torch.equal(a, o) for o in others), family
    var = transform_for("var", 16, True)
    for image_id in range(6):
        r = var.resized(ds[image_id][0])
        offsets = {
            (p.top, p.left)
            for p in (var.sample_params(r.width, r.height, augmentation_generator(0, image_id, k)) for k in range(4))
        }
        assert len(offsets) > 1  # VAR's random crop moves with the augmentation index


def test_independent_of_batching_and_global_rng() -> None:
    ds = _noise_dataset()
    t = transform_for("var", 16, True)
    torch.manual_seed(0)
    whole, _ = load_batch(ds, [0, 1, 2, 3], t, seed=5, aug_index=[2, 2, 9, 9])
    torch.manual_seed(123)
    part, _ = load_batch(ds, [2, 3], t, seed=5, aug_index=9)
    assert torch.equal(whole[2:], part)
    other_seed, _ = load_batch(ds, [2, 3], t, seed=6, aug_index=9)
    assert not torch.equal(part, other_seed)


def test_eval_is_deterministic_and_train_needs_a_generator() -> None:
    img = _noise_dataset()[0][0]
    for family in FAMILIES:
        ev = transform_for(family, 16, False)
        assert not ev.random
        assert torch.equal(ev(img), ev(img, torch.Generator().manual_seed(1)))
        with pytest.raises(ValueError, match="torch.Generator"):
            transform_for(family, 16, True)(img)


def test_rar_and_llamagen_flip() -> None:
    img = _noise_dataset(h=16, w=16)[0][0]
    for family in ("rar", "llamagen"):
        t = transform_for(family, 16, True)
        views = [t(img, augmentation_generator(0, 0, k)) for k in range(12)]
        base = transform_for(family, 16, False)(img)
        assert any(torch.equal(v, base) for v in views)
        assert any(torch.equal(v, base.flip(-1)) for v in views)


def test_bad_arguments() -> None:
    with pytest.raises(UserError, match="unknown model family"):
        transform_for("mar", 16, True)
    with pytest.raises(UserError):
        transform_for("var", 0, True)
    with pytest.raises(ValueError):
        load_batch(_noise_dataset(), [0, 1], transform_for("var", 8, True), seed=0, aug_index=[1])


def test_to_pil_and_save_grid(tmp_path: Path) -> None:
    x = torch.rand(5, 3, 8, 6)
    img = to_pil(x[0])
    assert img.mode == "RGB" and img.size == (6, 8)
    assert np.abs(np.asarray(img).astype(float) / 255 - x[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    out = tmp_path / "sub" / "grid.png"
    save_grid(x, out, nrow=3, padding=2)
    with Image.open(out) as g:
        assert g.size == (3 * (6 + 2) + 2, 2 * (8 + 2) + 2)
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary left behind
