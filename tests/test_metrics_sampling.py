"""Sample sets: count, class balance, range and seeding; per-family defaults; the .npz layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iarmem.errors import UserError
from iarmem.metrics import SamplingSettings, default_sampling, load_npz, npz_writer, sample_images, save_npz
from iarmem.metrics.sampling import RAR_OFFICIAL
from iarmem.models import build


@pytest.mark.parametrize("preset", ["tiny-var", "tiny-rar", "tiny-llamagen"])
def test_samples_count_balance_range(preset: str) -> None:
    torch.manual_seed(0)
    iar = build(preset)
    images, labels = sample_images(iar, n_per_class=2, seed=3, classes=[1, 7, 4], batch_size=4)
    assert images.shape == (6, 3, iar.image_size, iar.image_size) and images.dtype == torch.float32
    assert labels.tolist() == [1, 1, 7, 7, 4, 4]  # class-major, balanced
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, (images * 255).round() / 255)  # 8-bit, like the saved files
    again, _ = sample_images(iar, n_per_class=2, seed=3, classes=[1, 7, 4], batch_size=4)
    assert torch.equal(images, again)
    if preset == "tiny-var":  # a random VAR still draws different tokens under another seed
        other, _ = sample_images(iar, n_per_class=2, seed=4, classes=[1, 7, 4], batch_size=4)
        assert not torch.equal(images, other)


def test_default_settings_per_family() -> None:
    var = default_sampling(build("tiny-var", device="meta"))
    assert (var.cfg, var.top_k, var.top_p, var.temperature) == (1.5, 900, 0.96, 1.0)
    lg = default_sampling(build("tiny-llamagen", device="meta"))
    assert (lg.cfg, lg.top_k, lg.top_p, lg.temperature) == (2.0, 0, 1.0, 1.0)
    tiny_rar = default_sampling(build("tiny-rar", device="meta"))
    assert tiny_rar.cfg == 2.0 and tiny_rar.cfg_power == 2.75 and tiny_rar.top_k == 0
    xxl = default_sampling(build("rar-xxl", device="meta"))
    assert (xxl.cfg, xxl.cfg_power, xxl.temperature) == (8.0, 1.2, 1.02)
    assert {v[0] for v in RAR_OFFICIAL.values()} == {"rar-b", "rar-l", "rar-xl", "rar-xxl"}
    assert default_sampling(build("rar-b", device="meta")).cfg == 16.0
    assert "cfg_power" in tiny_rar.generate_kwargs("rar") and "cfg_power" not in var.generate_kwargs("var")


def test_overrides() -> None:
    base = SamplingSettings(1.5, 1.0, 900, 0.96, None, "x")
    assert base.override(cfg=None, top_k=None) is base
    new = base.override(cfg=3.0, top_k=0)
    assert (new.cfg, new.top_k, new.top_p) == (3.0, 0, 0.96) and "overridden: cfg, top_k" in new.source
    assert base.override(no_cfg=True).cfg is None
    with pytest.raises(UserError, match="temperature"):
        base.override(temperature=0.0)
    with pytest.raises(UserError, match="top-p"):
        base.override(top_p=1.5)


def test_npz_layout(tmp_path: Path) -> None:
    images = torch.rand(5, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    save_npz(tmp_path / "s.npz", images, labels=torch.arange(5))
    with np.load(tmp_path / "s.npz") as z:
        arr, labels = z["arr_0"], z["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 8, 6, 3)
    expected = (images.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(arr, expected) and labels.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(load_npz(tmp_path / "s.npz"), arr)


def test_npz_streaming_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    with npz_writer(path, 4, 2, 2) as write:
        write(torch.zeros(3, 3, 2, 2, dtype=torch.uint8))
        write(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert load_npz(path)[3].min() == 255
    with pytest.raises(ValueError, match="announced"), npz_writer(tmp_path / "short.npz", 4, 2, 2) as write:
        write(torch.zeros(3, 3, 2, 2, dtype=torch.uint8))
    assert not (tmp_path / "short.npz").exists() and list(tmp_path.iterdir()) == [path]
    with pytest.raises(UserError, match="arr_0"):
        load_npz(tmp_path / "missing.npz")
