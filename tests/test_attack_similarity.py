"""Built-in similarities: SSIM and PSNR sanity, token measures on hand-made token rows."""

from __future__ import annotations

import math

import pytest
import torch

from iarmem.attack.similarity import (
    PSNR_CAP_DB,
    background_ids,
    cosine,
    embed,
    prefix_background,
    psnr,
    ssim,
    token_measures,
)


def _images(n: int = 4, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(n, 3, side, side, generator=g), 3, 1, 1)  # some structure
    return base.clamp(0, 1)


def test_ssim_of_an_image_with_itself_is_one() -> None:
    x = _images()
    torch.testing.assert_close(ssim(x, x), torch.ones(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(ssim(x, x, grey=True), torch.ones(4), atol=1e-6, rtol=0)


def test_ssim_falls_as_noise_grows_and_is_symmetric() -> None:
    x = _images()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    values = [float(ssim(x, (x + s * noise).clamp(0, 1)).mean()) for s in (0.0, 0.02, 0.05, 0.1, 0.3)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    y = (x + 0.1 * noise).clamp(0, 1)
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    assert float(ssim(x, torch.rand(x.shape, generator=g)).mean()) < 0.3


def test_ssim_handles_images_smaller_than_the_window() -> None:
    x = _images(2, side=6)
    assert ssim(x, x).shape == (2,)
    torch.testing.assert_close(ssim(x, x), torch.ones(2), atol=1e-6, rtol=0)


def test_ssim_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 9, 9))


def test_psnr_known_values() -> None:
    x = torch.full((2, 3, 8, 8), 0.5)
    assert float(psnr(x, x)[0]) == pytest.approx(PSNR_CAP_DB)
    assert float(psnr(x, x + 0.1)[0]) == pytest.approx(20.0, abs=1e-4)  # mse 0.01 -> 20 dB
    assert float(psnr(x, x + 0.01)[0]) == pytest.approx(40.0, abs=1e-3)


def test_cosine_of_normalised_features() -> None:
    f = embed(lambda im: im.flatten(1)[:, :5], _images(3))
    torch.testing.assert_close(cosine(f, f), torch.ones(3))
    assert f.norm(dim=1).sub(1).abs().max() < 1e-5


def test_token_measures_on_hand_made_rows() -> None:
    # one 1x1 grid and one 2x2 grid (a VAR-like layout); background is 7 on the first grid, 0 on the second
    grids = [(0, 1), (1, 5)]
    gt = torch.tensor([[7, 0, 0, 3, 4], [7, 0, 0, 0, 5], [7, 0, 1, 0, 0]])
    bg = background_ids(gt, grids)
    assert bg.tolist() == [7, 0, 0, 0, 0]
    gen = torch.tensor([[7, 0, 0, 3, 9], [7, 0, 0, 0, 0], [7, 2, 2, 2, 2]])
    m = token_measures(gen, gt, 1, bg)
    torch.testing.assert_close(m["tokens"], torch.tensor([0.75, 0.75, 0.0]))
    # foreground positions: row 0 -> {3, 4}: 1 of 2; row 1 -> {4}: 0 of 1; row 2 -> {2}: 0 of 1
    torch.testing.assert_close(m["tokens_fg"], torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(m["background_share"], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(prefix_background(gt, 1, bg), torch.ones(3))
    all_bg = token_measures(torch.zeros(1, 5, dtype=torch.long), torch.tensor([[7, 0, 0, 0, 0]]), 1, bg)
    assert math.isnan(float(all_bg["tokens_fg"][0]))
