"""The IAR interface on LlamaGen: generation paths, taps, edits, bins, loss, checkpoint I/O."""

from __future__ import annotations

import copy

import pytest
import torch
from refdata import load_fixture, params_for, strip

from iarmem.errors import UserError
from iarmem.models import UNIT_KINDS, Tokens, load_weights, tap
from iarmem.models.checkpoint import read_state_dict, write_state_dict
from iarmem.models.llamagen import LlamaGenFamily


@pytest.fixture(scope="module", params=params_for("llamagen"))
def case(request):
    """(meta, tensors, iar) with the fixture's weights (the official init would give all-zero logits)."""
    meta, t = load_fixture(request.param)
    iar = LlamaGenFamily.from_official(*LlamaGenFamily.kwargs_from_constructors(meta["constructors"])).eval()
    iar.tokenizer.load_state_dict(strip(t, "sd.tokenizer."), strict=True)
    iar.model.load_state_dict(strip(t, "sd.model."), strict=True)
    return meta, t, iar


def _cfg(meta: dict) -> float:
    return float(meta["generation"]["args"]["cfg_scale"])


def _tokens(t: dict, iar: LlamaGenFamily) -> Tokens:
    return Tokens(t["out.tokens"], iar.grids)


def _no_hooks(module: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


# ---- generation ---------------------------------------------------------------------------
def test_full_prefix_reproduces_itself(case) -> None:
    _, t, iar = case
    tokens = _tokens(t, iar)
    gen, logits = iar.generate(t["in.labels"], tokens, prefix_len=iar.seq_len, return_logits=True)
    assert torch.equal(gen.ids_BL, tokens.ids_BL)
    with torch.no_grad():
        teacher = iar.logits(tokens, t["in.labels"])
    torch.testing.assert_close(logits, teacher, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("prefix_frac", [0, 2])  # prefix of 0 or L // 2 tokens
def test_cache_matches_uncached(case, guided: bool, prefix_frac: int) -> None:
    meta, t, iar = case
    cfg = _cfg(meta) if guided else None
    k = iar.seq_len // prefix_frac if prefix_frac else 0
    runs = [iar.generate(t["in.labels"], _tokens(t, iar), prefix_len=k, cfg=cfg, use_cache=c,
                         return_logits=True) for c in (True, False)]
    (cached, lc), (uncached, lu) = runs
    assert torch.equal(cached.ids_BL, uncached.ids_BL)
    assert lc.shape == (len(t["in.labels"]), iar.seq_len, iar.vocab_size)
    torch.testing.assert_close(lc, lu, atol=1e-5, rtol=0)
    assert torch.equal(lc.argmax(-1)[:, k:], cached.ids_BL[:, k:])  # greedy: argmax of the returned logits


def test_sampling_is_seeded_and_path_independent(case) -> None:
    meta, t, iar = case
    kw = dict(greedy=False, cfg=_cfg(meta), temperature=1.0, top_k=8, top_p=0.9, logit_noise=0.5)
    a = iar.generate(t["in.labels"], generator=torch.Generator().manual_seed(3), **kw)
    b = iar.generate(t["in.labels"], generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert torch.equal(a.ids_BL, b.ids_BL)
    assert int(a.ids_BL.min()) >= 0 and int(a.ids_BL.max()) < iar.vocab_size


def test_prefix_keeps_first_tokens(case) -> None:
    _, t, iar = case
    k = iar.seq_len // 3
    gen = iar.generate(t["in.labels"], _tokens(t, iar), prefix_len=k)
    assert torch.equal(gen.ids_BL[:, :k], t["out.tokens"][:, :k])
    with pytest.raises(ValueError):
        iar.generate(t["in.labels"], None, prefix_len=k)
    with pytest.raises(ValueError):
        iar.generate(t["in.labels"], _tokens(t, iar), prefix_len=iar.seq_len + 1)


def test_guidance_of_one_is_conditional(case) -> None:
    _, t, iar = case
    full = dict(prefix=_tokens(t, iar), prefix_len=iar.seq_len, return_logits=True)
    _, lg = iar.generate(t["in.labels"], cfg=1.0, **full)
    _, lc = iar.generate(t["in.labels"], cfg=None, **full)
    torch.testing.assert_close(lg, lc, atol=1e-5, rtol=0)


def test_kv_cache_chunks_match_one_pass(case) -> None:
    """Appending several tokens after cached ones (explicit mask path) equals one causal pass."""
    _, t, iar = case
    ids, labels = t["out.tokens"][:, :-1], t["in.labels"]
    k, m = iar.seq_len // 4, iar.seq_len // 4
    with torch.no_grad():
        full = iar.model(ids, labels, train=False)
        caches = iar.model.new_caches(len(labels))
        first = iar.model(ids[:, :k], labels, caches=caches, train=False)
        second = iar.model(ids[:, k:k + m], None, caches=caches, train=False)
    torch.testing.assert_close(torch.cat([first, second], 1), full[:, :k + 1 + m], atol=1e-5, rtol=0)


def test_grouped_query_attention(case) -> None:
    _, t, iar = case
    tok_kw, gpt_kw = iar.official_kwargs()
    a = iar.model.args
    kv = a.n_head // 2 if a.n_head % 2 == 0 else 1
    gqa = LlamaGenFamily.from_official(tok_kw, {**gpt_kw, "n_kv_head": kv}).eval()
    assert gqa.model.layers[0].attention.wqkv.weight.shape == ((a.n_head + 2 * kv) * a.head_dim, a.dim)
    torch.nn.init.normal_(gqa.model.output.weight, std=0.5)  # the official zero head gives all-zero logits
    tokens = _tokens(t, iar)
    with torch.no_grad():
        teacher = gqa.logits(tokens, t["in.labels"])
    full = dict(prefix=tokens, prefix_len=iar.seq_len // 2, return_logits=True)
    (g1, l1), (g2, l2) = (gqa.generate(t["in.labels"], use_cache=c, **full) for c in (True, False))
    assert torch.equal(g1.ids_BL, g2.ids_BL)
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=0)
    k = iar.seq_len // 2
    torch.testing.assert_close(l1[:, :k + 1], teacher[:, :k + 1], atol=1e-5, rtol=0)


def test_logits_deterministic_in_train_mode(case) -> None:
    _, t, iar = case
    model = copy.deepcopy(iar).train()
    with torch.no_grad():
        a = model.logits(_tokens(t, iar), t["in.labels"])
        b = iar.logits(_tokens(t, iar), t["in.labels"])
    assert torch.equal(a, b)


# ---- taps and edits ---------------------------------------------------------------------------
def _collect(iar: LlamaGenFamily, t: dict, layers) -> tuple[dict, torch.Tensor]:
    acts: dict[str, torch.Tensor] = {}
    with tap(iar, layers, lambda layer, act: acts.__setitem__(layer.name, act.clone())), torch.no_grad():
        logits = iar.logits(_tokens(t, iar), t["in.labels"])
    return acts, logits


def test_unit_layers(case) -> None:
    _, t, iar = case
    a = iar.model.args
    sd = iar.model.state_dict()
    fc1 = iar.unit_layers()
    assert [u.block for u in fc1] == list(range(a.n_layer))
    for i, u in enumerate(fc1):
        assert (u.name, u.kind, u.width, u.tap_input) == (f"layers.{i}.feed_forward.w3", "fc1",
                                                          a.ffn_hidden_dim, True)
        assert u.tap_module == f"layers.{i}.feed_forward.w2"
        assert u.paper_params == ((f"layers.{i}.feed_forward.w3.weight", 0),)
        assert u.exact_params == ((f"layers.{i}.feed_forward.w2.weight", 1),)
        assert u.own_params == ((f"layers.{i}.feed_forward.w1.weight", 0), (f"layers.{i}.feed_forward.w3.weight", 0),
                                (f"layers.{i}.feed_forward.w2.weight", 1))
    every = iar.unit_layers(UNIT_KINDS)
    assert len(every) == len(UNIT_KINDS) * a.n_layer
    modules = dict(iar.model.named_modules())
    for u in every:
        assert u.tap_module in modules
        for key, axis in u.paper_params + u.exact_params + u.own_params:
            assert sd[key].shape[axis] == u.width
    assert iar.unit_layer("layers.0.attention.wo").kind == "attn.proj"
    with pytest.raises(ValueError):
        iar.unit_layers(("gelu",))


def test_taps_shapes_and_no_side_effects(case) -> None:
    _, t, iar = case
    with torch.no_grad():
        plain = iar.logits(_tokens(t, iar), t["in.labels"])
    layers = iar.unit_layers(UNIT_KINDS)
    acts, tapped = _collect(iar, t, layers)
    assert torch.equal(plain, tapped)
    assert _no_hooks(iar)
    B, L = t["out.tokens"].shape
    for u in layers:
        assert acts[u.name].shape == (B, L, u.width), u.name


def test_fc1_edit_scales_exactly_that_unit(case) -> None:
    _, t, iar = case
    layer = iar.unit_layers()[-1]
    u = layer.width // 3
    before, _ = _collect(iar, t, [layer])
    edited = copy.deepcopy(iar)
    params = dict(edited.model.named_parameters())
    with torch.no_grad():
        for key, axis in layer.paper_params:
            params[key].select(axis, u).mul_(0.5)
    after, _ = _collect(edited, t, [layer])
    b, a = before[layer.name], after[layer.name]
    assert torch.equal(a[..., u], 0.5 * b[..., u])
    others = torch.arange(layer.width) != u
    assert torch.equal(a[..., others], b[..., others])


# ---- layout helpers ---------------------------------------------------------------------------
def test_bins(case) -> None:
    _, _, iar = case
    L = iar.seq_len
    b = iar.bins()
    assert b.dtype == torch.int64 and b.shape == (L,)
    assert iar.default_num_bins == min(16, L)
    assert torch.equal(b, torch.arange(L) * iar.default_num_bins // L)
    assert torch.equal(torch.bincount(b).clamp(max=1), torch.ones(iar.default_num_bins, dtype=torch.int64))
    assert torch.equal(iar.bins(1), torch.zeros(L, dtype=torch.int64))
    assert torch.equal(iar.bins(L), torch.arange(L))
    assert bool((b[1:] >= b[:-1]).all())
    with pytest.raises(ValueError):
        iar.bins(L + 1)
    assert iar.tap_slice == slice(0, L)


def test_training_loss(case) -> None:
    _, t, iar = case
    model = copy.deepcopy(iar).train()
    tokens = _tokens(t, iar)
    loss = model.training_loss(tokens, t["in.labels"], generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("tok_embeddings.weight", "layers.0.feed_forward.w3.weight", "output.weight"):
        grad = model.model.get_parameter(name).grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0), name
    again = model.training_loss(tokens.ids_BL, t["in.labels"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss.detach(), again.detach())  # the generator fixes label and token dropout
    model.eval()
    with torch.no_grad():  # eval mode with label dropout off is the teacher-forced cross-entropy
        model.model.cls_embedding.dropout_prob = 0.0
        ce = torch.nn.functional.cross_entropy(
            model.logits(tokens, t["in.labels"]).flatten(0, 1), tokens.ids_BL.flatten())
        torch.testing.assert_close(model.training_loss(tokens, t["in.labels"]), ce)


def test_tokenizer_loss(case) -> None:
    _, t, iar = case
    model = copy.deepcopy(iar).train()
    loss, recon = model.tokenizer_loss(t["in.images"])
    assert torch.isfinite(loss) and recon.shape == t["in.images"].shape
    loss.backward()
    for name in ("encoder.conv_in.weight", "quantize.embedding.weight", "decoder.conv_out.weight"):
        grad = model.tokenizer.get_parameter(name).grad
        assert grad is not None and bool(grad.abs().sum() > 0), name
    used = model.tokenizer.state_dict().get("quantize.codebook_used")
    if used is not None:  # the official rolling window of recent code ids
        assert torch.equal(used[-t["out.tokens"].numel():], t["out.tokens"].flatten().float())


def test_tokenize_decode_roundtrip_shapes(case) -> None:
    _, t, iar = case
    with torch.no_grad():
        tokens = iar.tokenize(t["in.images"])
        images = iar.decode(tokens)
    assert tokens.grids == iar.grids and images.shape == t["in.images"].shape
    with pytest.raises(ValueError):
        iar.tokenize(t["in.images"][..., :-8, :-8])
    assert iar.pixel_range == (-1.0, 1.0) and iar.family == "llamagen"


# ---- checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_write_and_reload_bit_exact(case, tmp_path, suffix: str) -> None:
    _, t, iar = case
    tok_path = write_state_dict(iar.tokenizer.state_dict(), tmp_path / f"vq{suffix}")
    gpt_path = write_state_dict(iar.model.state_dict(), tmp_path / f"gpt{suffix}")
    fresh = LlamaGenFamily.from_official(*iar.official_kwargs()).eval()
    load_weights(fresh, tok_path, gpt_path)
    for mine, theirs in ((fresh.tokenizer, iar.tokenizer), (fresh.model, iar.model)):
        ref = theirs.state_dict()
        for k, v in mine.state_dict().items():
            assert v.dtype == ref[k].dtype and torch.equal(v, ref[k]), k
    assert read_state_dict(gpt_path).keys() == iar.model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(fresh.logits(_tokens(t, iar), t["in.labels"]),
                           iar.logits(_tokens(t, iar), t["in.labels"]))


def test_checkpoint_of_another_size_is_a_user_error(case, tmp_path) -> None:
    _, _, iar = case
    tok_kw, gpt_kw = iar.official_kwargs()
    bigger = {**gpt_kw, "dim": 2 * gpt_kw["dim"], "n_layer": gpt_kw["n_layer"] + 1}
    other = LlamaGenFamily.from_official(tok_kw, bigger)
    path = write_state_dict(other.model.state_dict(), tmp_path / "other_gpt.pt")
    with pytest.raises(UserError) as err:
        load_weights(iar, model_path=path)
    msg = str(err.value)
    assert str(path) in msg and f"dim={bigger['dim']}" in msg and f"n_layer={bigger['n_layer']}" in msg

    codes = 2 * tok_kw["codebook_size"]
    other = LlamaGenFamily.from_official({**tok_kw, "codebook_size": codes}, {**gpt_kw, "vocab_size": codes})
    path = write_state_dict(other.tokenizer.state_dict(), tmp_path / "other_vq.safetensors")
    with pytest.raises(UserError, match=f"codebook_size={codes}"):
        load_weights(iar, tokenizer_path=path)


def test_clean_state_dict_drops_official_runtime_entries(case) -> None:
    _, t, iar = case
    sd = iar.model.state_dict()
    dirty = {**sd, "freqs_cis": iar.model.freqs_cis, "layers.0.attention.kv_cache.k_cache": torch.zeros(1)}
    assert LlamaGenFamily.clean_state_dict("model", dirty).keys() == sd.keys()
    tok = iar.tokenizer.state_dict()
    assert LlamaGenFamily.clean_state_dict("tokenizer", tok).keys() == tok.keys()


def test_from_official_rejects_unknown_arguments(case) -> None:
    _, _, iar = case
    tok_kw, gpt_kw = iar.official_kwargs()
    with pytest.raises(UserError, match="n_layers"):
        LlamaGenFamily.from_official(tok_kw, {**gpt_kw, "n_layers": 3})
    with pytest.raises(UserError):
        LlamaGenFamily.from_official(tok_kw, {**gpt_kw, "model_type": "t2i"})
    nested = LlamaGenFamily.from_official({"config": {"ModelArgs": tok_kw}}, {"ModelArgs": gpt_kw})
    assert nested.official_kwargs() == iar.official_kwargs()
