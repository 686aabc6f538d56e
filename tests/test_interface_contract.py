"""The model interface contract, one suite over all three families (tiny presets, random weights)."""

from __future__ import annotations

import pytest
import torch

from iarmem.models import IAR, Tokens, build, tap

FAMILY_PRESETS = ["tiny-var", "tiny-rar", "tiny-llamagen"]


@pytest.fixture(scope="module", params=FAMILY_PRESETS)
def iar(request) -> IAR:
    torch.manual_seed(0)
    model = build(request.param)
    # random init can leave adaLN gates near zero; spread every weight so each block matters
    with torch.no_grad():
        for p in model.model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _data(iar: IAR, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = iar.from_unit_range(torch.rand(n, 3, iar.image_size, iar.image_size, generator=g))
    return images, torch.randint(0, iar.num_classes, (n,), generator=g)


def _hooks(iar: IAR) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in iar.modules())


def test_shapes(iar: IAR) -> None:
    images, labels = _data(iar)
    tokens = iar.tokenize(images)
    assert isinstance(tokens, Tokens) and tokens.grids == iar.grids
    assert tokens.ids_BL.shape == (3, iar.seq_len) and tokens.ids_BL.dtype == torch.int64
    assert int(tokens.ids_BL.max()) < iar.vocab_size
    assert iar.decode(tokens).shape == images.shape
    with torch.no_grad():
        assert iar.logits(tokens, labels).shape == (3, iar.seq_len, iar.vocab_size)
    assert iar.bins().shape == (iar.seq_len,) and int(iar.bins().max()) == iar.default_num_bins - 1


def test_full_prefix_reproduces_itself_with_teacher_forced_logits(iar: IAR) -> None:
    images, labels = _data(iar)
    tokens = iar.tokenize(images)
    gen, logits = iar.generate(labels, prefix=tokens, prefix_len=iar.generation_steps, return_logits=True)
    assert torch.equal(gen.ids_BL, tokens.ids_BL)
    with torch.no_grad():
        torch.testing.assert_close(logits, iar.logits(tokens, labels), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [None, 2.0])
def test_cached_equals_uncached(iar: IAR, cfg: float | None) -> None:
    _, labels = _data(iar)
    a, la = iar.generate(labels, cfg=cfg, use_cache=True, return_logits=True)
    b, lb = iar.generate(labels, cfg=cfg, use_cache=False, return_logits=True)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.ids_BL, b.ids_BL)


def test_taps_leave_no_trace(iar: IAR) -> None:
    images, labels = _data(iar)
    tokens = iar.tokenize(images)
    with torch.no_grad():
        before = iar.logits(tokens, labels)
    state = {k: v.clone() for k, v in iar.state_dict().items()}
    layers = iar.unit_layers(("fc1", "fc2", "attn.proj"))
    seen: dict[str, tuple[int, ...]] = {}
    with tap(iar, layers, lambda layer, act: seen.__setitem__(layer.name, tuple(act.shape))), torch.no_grad():
        during = iar.logits(tokens, labels)
    assert _hooks(iar) == 0
    assert torch.equal(before, during)
    assert all(torch.equal(v, iar.state_dict()[k]) for k, v in state.items())
    assert seen == {lay.name: (3, iar.seq_len, lay.width) for lay in layers}


def test_unit_layers_point_at_real_weights(iar: IAR) -> None:
    sd = iar.model.state_dict()
    fc1 = iar.unit_layers()
    assert [lay.block for lay in fc1] == list(range(len(fc1)))
    for lay in iar.unit_layers(("fc1", "fc2", "attn.proj")):
        for key, axis in lay.paper_params + lay.exact_params + lay.own_params:
            assert sd[key].shape[axis] == lay.width, (lay.name, key)


def test_training_loss_is_finite_and_backpropagates(iar: IAR) -> None:
    images, labels = _data(iar)
    tokens = iar.tokenize(images)
    loss = iar.training_loss(tokens, labels, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in iar.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    iar.zero_grad(set_to_none=True)
    tl, rec = iar.tokenizer_loss(images)
    assert torch.isfinite(tl) and rec.shape == images.shape


@torch.no_grad()
def test_unconditional_logits_ignore_the_class(iar: IAR) -> None:
    """The unconditional branch (the family's "no class" id) is the same whatever labels are passed, and
    differs from the conditional pass (the class matters in these weights)."""
    images, labels = _data(iar)
    tokens = iar.tokenize(images)
    other = (labels + 1) % iar.num_classes
    uncond = iar.logits(tokens, labels, unconditional=True)
    assert torch.equal(uncond, iar.logits(tokens, other, unconditional=True))
    assert uncond.shape == (3, iar.seq_len, iar.vocab_size)
    assert (uncond - iar.logits(tokens, labels)).abs().max() > 1e-3
    with pytest.raises(ValueError):
        iar.logits(tokens, torch.full_like(labels, iar.num_classes), unconditional=True)
