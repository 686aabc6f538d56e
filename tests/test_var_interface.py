"""The IAR interface on VAR: generation with prefixes and cache, taps, bins, units, training loss."""

from __future__ import annotations

import pytest
import torch
from refdata import fixture_sets, load_fixture, strip

from iarmem.models import tap
from iarmem.models.var.family import VARFamily, build_vae_var_kwargs


@pytest.fixture(scope="module")
def var() -> VARFamily:
    """The fixture's official weights when present, else a small random VAR of the same shape."""
    names = fixture_sets("var")
    if names:
        meta, t = load_fixture(names[0])
        c = meta["constructors"]
        iar = VARFamily.from_official(c["models.vqvae.VQVAE"], c["models.var.VAR"])
        iar.tokenizer.load_state_dict(strip(t, "sd.tokenizer."))
        iar.model.load_state_dict(strip(t, "sd.model."))
    else:
        torch.manual_seed(0)
        tok, mdl = build_vae_var_kwargs(depth=2, patch_nums=(1, 2, 3, 4), V=128, Cvae=8, ch=32, num_classes=10)
        iar = VARFamily.from_official(tok, mdl)
    return iar.eval()


def _batch(iar: VARFamily, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, iar.image_size, iar.image_size, generator=g) * 2 - 1
    labels = torch.randint(0, iar.num_classes, (n,), generator=g)
    return images, labels


def test_full_prefix_reproduces_itself_and_matches_teacher_forcing(var: VARFamily) -> None:
    images, labels = _batch(var)
    tokens = var.tokenize(images)
    K = len(var.patch_nums)
    gen, logits = var.generate(labels, prefix=tokens, prefix_len=K, return_logits=True)
    assert torch.equal(gen.ids_BL, tokens.ids_BL)
    with torch.no_grad():
        tf = var.logits(tokens, labels)
    torch.testing.assert_close(logits, tf, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [None, 1.5])
def test_cached_and_uncached_decoding_agree(var: VARFamily, cfg: float | None) -> None:
    _, labels = _batch(var)
    a, la = var.generate(labels, cfg=cfg, use_cache=True, return_logits=True)
    b, lb = var.generate(labels, cfg=cfg, use_cache=False, return_logits=True)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.ids_BL, b.ids_BL)


@pytest.mark.parametrize("s", [1, 2])
def test_prefix_scales_are_kept(var: VARFamily, s: int) -> None:
    images, labels = _batch(var, seed=1)
    tokens = var.tokenize(images)
    gen = var.generate(labels, prefix=tokens, prefix_len=s)
    e = tokens.begin_ends[s - 1][1]
    assert torch.equal(gen.ids_BL[:, :e], tokens.ids_BL[:, :e])


def test_sampling_is_seeded_and_top1_is_greedy(var: VARFamily) -> None:
    _, labels = _batch(var)
    draw = [var.generate(labels, greedy=False, top_k=5, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draw[0].ids_BL, draw[1].ids_BL)
    top1 = var.generate(labels, greedy=False, top_k=1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(top1.ids_BL, var.generate(labels).ids_BL)
    noisy = var.generate(labels, logit_noise=100.0, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(noisy.ids_BL, var.generate(labels).ids_BL)


def test_bins_are_scales(var: VARFamily) -> None:
    bins = var.bins()
    assert bins.shape == (var.seq_len,)
    counts = torch.bincount(bins).tolist()
    assert counts == [pn * pn for pn in var.patch_nums]
    assert var.default_num_bins == len(var.patch_nums)
    with pytest.raises(ValueError):
        var.bins(num_bins=len(var.patch_nums) + 1)


def test_unit_layers_name_official_parameters(var: VARFamily) -> None:
    sd = var.model.state_dict()
    layers = var.unit_layers(("fc1", "fc2", "attn.proj"))
    assert [lay.name for lay in layers if lay.kind == "fc1"] == [f"blocks.{i}.ffn.fc1" for i in range(var.model.depth)]
    for lay in layers:
        for key, axis in lay.paper_params + lay.exact_params + lay.own_params:
            assert sd[key].shape[axis] == lay.width
    assert var.unit_layer("blocks.1.ffn.fc1").width == 4 * var.model.C


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_taps_record_without_changing_the_model(var: VARFamily) -> None:
    images, labels = _batch(var)
    tokens = var.tokenize(images)
    with torch.no_grad():
        before = var.logits(tokens, labels)
    seen: dict[str, torch.Tensor] = {}
    layers = var.unit_layers(("fc1", "fc2"))
    with tap(var, layers, lambda layer, act: seen.__setitem__(layer.name, act)), torch.no_grad():
        during = var.logits(tokens, labels)
        assert _hook_count(var) == len(layers)
    assert _hook_count(var) == 0
    assert torch.equal(before, during)
    B, L, C = 3, var.seq_len, var.model.C
    for i, blk in enumerate(var.model.blocks):
        act = seen[f"blocks.{i}.ffn.fc1"]
        assert act.shape == (B, L, 4 * C)
        # the tapped value is the post-GELU fc1 output: fc2 of it is the tapped fc2 output
        torch.testing.assert_close(blk.ffn.fc2(act), seen[f"blocks.{i}.ffn.fc2"], atol=1e-5, rtol=1e-5)


def test_taps_are_removed_on_error(var: VARFamily) -> None:
    images, labels = _batch(var)
    tokens = var.tokenize(images)

    def boom(layer, act):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"), tap(var, var.unit_layers(), boom):
        var.logits(tokens, labels)
    assert _hook_count(var) == 0


def test_training_loss_backpropagates_and_drops_labels(var: VARFamily) -> None:
    images, labels = _batch(var)
    tokens = var.tokenize(images)
    var.model.cfg.cond_drop_rate, keep = 0.0, var.model.cfg.cond_drop_rate
    try:
        loss0 = var.training_loss(tokens, labels, generator=torch.Generator().manual_seed(0))
        var.model.cfg.cond_drop_rate = 1.0
        loss1 = var.training_loss(tokens, labels, generator=torch.Generator().manual_seed(0))
    finally:
        var.model.cfg.cond_drop_rate = keep
    assert torch.isfinite(loss0) and not torch.isclose(loss0, loss1)
    loss0.backward()
    grad = var.model.blocks[0].ffn.fc1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    var.zero_grad(set_to_none=True)
    # the logits pass itself never drops labels, in train mode too
    var.train()
    try:
        with torch.no_grad():
            a, b = var.logits(tokens, labels), var.logits(tokens, labels)
    finally:
        var.eval()
    assert torch.equal(a, b)


def test_small_configs_from_the_same_classes() -> None:
    """32 px images give 8x8 token maps with a 3-level encoder."""
    tok, mdl = build_vae_var_kwargs(depth=2, patch_nums=(1, 2, 4, 8), V=64, Cvae=4, ch=32, num_classes=10)
    tok.update(ch_mult=[1, 2, 2])
    iar = VARFamily.from_official(tok, mdl).eval()
    assert iar.image_size == 32
    tokens = iar.tokenize(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert [s.shape[1] for s in tokens.per_scale()] == [1, 4, 16, 64]
    assert iar.decode(tokens).shape == (2, 3, 32, 32)
    again = VARFamily.from_official(*iar.official_kwargs())
    assert again.official_kwargs() == iar.official_kwargs()
