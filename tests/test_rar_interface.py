"""The IAR interface of RAR: generation paths, prefixes, taps, bins, training loss, checkpoints.

Runs on the weights of every rar_* fixture set present and on a small random model (32 px images,
8x8 tokens, a 3-level tokenizer) built from the same classes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from refdata import fixture_sets, load_fixture, strip

from iarmem.errors import UserError
from iarmem.models import Tokens, UnitLayer, registry, tap
from iarmem.models.checkpoint import read_state_dict, write_state_dict
from iarmem.models.rar.family import RARFamily, annealed_random_ratio

SMALL_TOKENIZER = {
    "config": {"channel_mult": [1, 1, 2], "num_resolutions": 3, "dropout": 0.0, "hidden_channels": 32,
               "num_channels": 3, "num_res_blocks": 1, "resolution": 32, "z_channels": 8},
    "quantizer": {"num_embeddings": 32, "embedding_dim": 8, "commitment_cost": 0.25},
}
SMALL_MODEL = {"config": {"model": {
    "generator": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                  "dropout": 0.1, "attn_drop": 0.1, "class_label_dropout": 0.1, "image_seq_len": 64,
                  "condition_num_classes": 5, "guidance_scale": 3.0, "guidance_scale_pow": 2.75,
                  "randomness_anneal_start": 10, "randomness_anneal_end": 20},
    "vq_model": {"codebook_size": 32}}}}


def small_random_rar(seed: int = 0) -> RARFamily:
    """The small config with every parameter perturbed, so adaLN-zero blocks are not invisible."""
    torch.manual_seed(seed)
    iar = RARFamily.from_official(SMALL_TOKENIZER, SMALL_MODEL)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in iar.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() == 1 else 0.5 / p.shape[-1] ** 0.5))
    return iar.eval()


def rebuild(iar: RARFamily, **generator_overrides) -> RARFamily:
    """Same weights, other generator settings (or another size, when the weights are not copied)."""
    tok_kwargs, model_kwargs = iar.official_kwargs()
    model_kwargs["config"]["model"]["generator"].update(generator_overrides)
    return RARFamily.from_official(tok_kwargs, model_kwargs).eval()


@pytest.fixture(scope="module", params=[*fixture_sets("rar"), "random"])
def case(request: pytest.FixtureRequest):
    """(iar, tokens, labels, cfg): a model, real tokens of B images, their labels, a guidance scale."""
    if request.param == "random":
        iar = small_random_rar()
        g = torch.Generator().manual_seed(3)
        images = torch.rand(3, 3, iar.image_size, iar.image_size, generator=g)
        labels = torch.randint(0, iar.num_classes, (3,), generator=g)
        return iar, iar.tokenize(images), labels, 3.0
    meta, tensors = load_fixture(request.param)
    iar = RARFamily.from_official(*RARFamily.kwargs_from_constructors(meta["constructors"]))
    iar.tokenizer.load_state_dict(strip(tensors, "sd.tokenizer."), strict=True)
    iar.model.load_state_dict(strip(tensors, "sd.model."), strict=True)
    iar.eval()
    return iar, iar.tokenize(tensors["in.images"]), tensors["in.labels"], meta["generation"]["args"]["guidance_scale"]


# ---- generation ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_on", [True, False])
def test_full_prefix_reproduces_itself(case, cfg_on: bool) -> None:
    iar, tokens, labels, cfg = case
    out = iar.generate(labels, tokens, iar.seq_len, cfg=cfg if cfg_on else None)
    assert torch.equal(out.ids_BL, tokens.ids_BL)
    out, logits = iar.generate(labels, tokens, iar.seq_len, return_logits=True)
    torch.testing.assert_close(logits, iar.logits(tokens, labels), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix_frac", [0.0, 0.5])
@pytest.mark.parametrize("cfg_on", [True, False])
def test_cached_equals_uncached(case, prefix_frac: float, cfg_on: bool) -> None:
    iar, tokens, labels, cfg = case
    k = int(prefix_frac * iar.seq_len)
    kw = {"cfg": cfg if cfg_on else None, "return_logits": True}
    ids_c, logits_c = iar.generate(labels, tokens, k, use_cache=True, **kw)
    ids_u, logits_u = iar.generate(labels, tokens, k, use_cache=False, **kw)
    assert logits_c.shape == (len(labels), iar.seq_len, iar.vocab_size)
    torch.testing.assert_close(logits_c, logits_u, atol=1e-5, rtol=1e-5)
    assert torch.equal(ids_c.ids_BL, ids_u.ids_BL)


def test_prefix_is_kept_and_logits_match_teacher_forcing(case) -> None:
    iar, tokens, labels, _ = case
    k = max(1, iar.seq_len // 3)
    out, logits = iar.generate(labels, tokens, k, return_logits=True)
    assert torch.equal(out.ids_BL[:, :k], tokens.ids_BL[:, :k])
    # without guidance, every returned row is the teacher-forced logit row of the generated sequence
    torch.testing.assert_close(logits, iar.logits(out, labels), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.ids_BL[:, k:], logits[:, k:].argmax(-1))


def test_sampling_is_reproducible_and_noise_acts(case) -> None:
    iar, _, labels, cfg = case

    def run(seed: int, **kw) -> tuple[Tokens, torch.Tensor]:
        return iar.generate(labels, greedy=False, cfg=cfg, temperature=1.5, top_k=8, top_p=0.9,
                            generator=torch.Generator().manual_seed(seed), return_logits=True, **kw)

    (a, _), (b, _) = run(0), run(0)
    assert torch.equal(a.ids_BL, b.ids_BL)
    assert int(a.ids_BL.min()) >= 0 and int(a.ids_BL.max()) < iar.vocab_size
    (_, clean), (_, noisy) = run(1, use_cache=False), run(1, logit_noise=5.0, use_cache=False)
    assert not torch.allclose(clean[:, 0], noisy[:, 0])


def test_generate_rejects_bad_input(case) -> None:
    iar, tokens, labels, _ = case
    with pytest.raises(ValueError):
        iar.generate(torch.full_like(labels, iar.num_classes))
    with pytest.raises(ValueError):
        iar.generate(labels, None, 2)
    with pytest.raises(ValueError):
        iar.generate(labels, tokens, iar.seq_len + 1)


# ---- teacher forcing, taps, bins --------------------------------------------------------------
def test_logits_deterministic_in_train_mode(case) -> None:
    iar, tokens, labels, _ = case
    ref = iar.logits(tokens, labels)
    try:
        iar.train()
        a, b = iar.logits(tokens, labels), iar.logits(tokens, labels)
        assert all(m.training for m in iar.modules()), "logits() must restore the train flags"
    finally:
        iar.eval()
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref, atol=0, rtol=0)


def test_taps(case) -> None:
    iar, tokens, labels, _ = case
    layers = iar.unit_layers(("fc1", "fc2", "attn.proj"))
    seen: dict[str, torch.Tensor] = {}

    def keep(layer: UnitLayer, act: torch.Tensor) -> None:
        seen[layer.name] = act

    plain = iar.logits(tokens, labels)
    with tap(iar, layers, keep):
        tapped = iar.logits(tokens, labels)
    assert torch.equal(plain, tapped)
    assert sorted(layer.name for layer in layers) == sorted(seen)
    for layer in layers:
        assert seen[layer.name].shape == (len(labels), iar.seq_len, layer.width)
    for m in iar.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    # the fc1 tap is GELU(fc1(.)): re-applying fc2 to it gives the fc2 tap
    for i in range(iar.model.cfg.num_hidden_layers):
        fc2 = iar.model.blocks[i].mlp.fc2
        torch.testing.assert_close(fc2(seen[f"blocks.{i}.mlp.fc1"]), seen[f"blocks.{i}.mlp.fc2"],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("where", [0.0, 0.4, 0.9])
def test_tapped_row_i_sees_tokens_before_i_only(case, where: float) -> None:
    """Row i of a tap is the position that predicts token i: changing token j changes rows j+1.. and no
    earlier row (a tap slice off by one either way fails: row j would change, or row j+1 would not)."""
    iar, tokens, labels, _ = case
    j = int(where * (iar.seq_len - 1))
    layers = iar.unit_layers(("fc1", "attn.proj"))
    other = tokens.ids_BL.clone()
    other[:, j] = (other[:, j] + 1) % iar.vocab_size

    def rows(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        with torch.no_grad(), tap(iar, layers, lambda layer, act: seen.__setitem__(layer.name, act.clone())):
            iar.logits(Tokens(ids, tokens.grids), labels)
        return seen

    a, b = rows(tokens.ids_BL), rows(other)
    for layer in layers:
        assert torch.equal(a[layer.name][:, : j + 1], b[layer.name][:, : j + 1]), layer.name
        assert not torch.allclose(a[layer.name][:, j + 1], b[layer.name][:, j + 1]), layer.name


def test_taps_during_generation(case) -> None:
    iar, _, labels, cfg = case
    shapes: list[tuple[int, ...]] = []
    with tap(iar, iar.unit_layers()[:1], lambda _l, act: shapes.append(tuple(act.shape)), align=False):
        iar.generate(labels, cfg=cfg)
    B, U = len(labels), iar.model.cfg.intermediate_size
    assert shapes[0] == (2 * B, 2, U) and all(s == (2 * B, 1, U) for s in shapes[1:])
    assert len(shapes) == iar.seq_len


def test_unit_layers(case) -> None:
    iar, _, _, _ = case
    cfg = iar.model.cfg
    sd = iar.model.state_dict()
    modules = dict(iar.model.named_modules())
    fc1 = iar.unit_layers()
    assert [u.block for u in fc1] == list(range(cfg.num_hidden_layers))
    for i, u in enumerate(fc1):
        assert u == UnitLayer(name=f"blocks.{i}.mlp.fc1", kind="fc1", block=i, width=cfg.intermediate_size,
                              tap_module=f"blocks.{i}.mlp.act", tap_input=False,
                              exact_params=((f"blocks.{i}.mlp.fc2.weight", 1),),
                              paper_params=((f"blocks.{i}.mlp.fc1.weight", 0),),
                              own_params=((f"blocks.{i}.mlp.fc1.weight", 0), (f"blocks.{i}.mlp.fc1.bias", 0),
                                          (f"blocks.{i}.mlp.fc2.weight", 1)))
    for u in iar.unit_layers(("fc1", "fc2", "attn.proj")):
        assert u.tap_module in modules
        for key, axis in u.paper_params + u.exact_params + u.own_params:
            assert sd[key].shape[axis] == u.width
        assert iar.unit_layer(u.name) == u
    with pytest.raises(ValueError):
        iar.unit_layers(("ffn",))


def test_bins(case) -> None:
    iar, _, _, _ = case
    L = iar.seq_len
    assert iar.default_num_bins == min(16, L)
    for n in (None, 1, 3, L):
        bins = iar.bins(n)
        k = n or iar.default_num_bins
        assert bins.dtype == torch.int64 and bins.shape == (L,)
        assert torch.equal(bins, torch.tensor([i * k // L for i in range(L)]))
        assert int(bins.max()) == k - 1
    with pytest.raises(ValueError):
        iar.bins(L + 1)
    assert iar.tap_slice == slice(1, L + 1)


# ---- training ----------------------------------------------------------------------------------
def test_training_loss_backpropagates(case) -> None:
    iar, tokens, labels, _ = case
    model = copy.deepcopy(iar).train()
    model.set_random_ratio(0.5)
    loss = model.training_loss(tokens, labels, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grad = model.model.blocks[0].mlp.fc1.weight.grad
    assert grad is not None and bool(grad.abs().sum() > 0)


def _raster_loss_in_order(model: RARFamily, ids_L: torch.Tensor, label: torch.Tensor, order_L: torch.Tensor) -> float:
    """The loss of one sample trained in ``order``, computed without the model's order path: a raster pass
    over the permuted tokens through a copy whose position tables are permuted the same way (slot k holds
    token o_k and carries its raster position's embedding; its target-aware row is that of o_k too)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for table in (twin.model.pos_embed, twin.model.target_aware_pos_embed):
            rows = table[0, 2:2 + len(order_L)].clone()
            table[0, 2:2 + len(order_L)] = rows[order_L]
        permuted = ids_L[order_L][None]
        logits = twin.logits(Tokens(permuted, model.grids), label[None])
        return float(F.cross_entropy(logits[0].float(), permuted[0], reduction="sum"))


def test_random_order_trains_each_sample_in_its_drawn_order(case) -> None:
    iar, tokens, labels, _ = case
    model = rebuild(iar, class_label_dropout=0.0)
    model.load_state_dict(iar.state_dict())

    def loss(ratio: float, seed: int = 0) -> torch.Tensor:
        model.set_random_ratio(ratio)
        with torch.no_grad():
            return model.training_loss(tokens, labels, generator=torch.Generator().manual_seed(seed))

    raster = loss(0.0)
    # raster order, no label dropout, eval mode: the loss is the CE of the teacher-forced logits
    ce = F.cross_entropy(model.logits(tokens, labels).flatten(0, 1), tokens.ids_BL.flatten())
    torch.testing.assert_close(raster, ce, atol=1e-6, rtol=1e-6)
    assert torch.equal(loss(1.0, 0), loss(1.0, 0))
    # ratio 1: every sample in its own permutation, the one the generator draws first (no label dropout)
    orders = model.sample_orders(len(labels), torch.Generator().manual_seed(0))
    L = model.seq_len
    assert orders is not None and all(torch.equal(o.sort().values, torch.arange(L)) for o in orders)
    assert not any(torch.equal(o, torch.arange(L)) for o in orders)
    want = sum(_raster_loss_in_order(model, tokens.ids_BL[b], labels[b], orders[b]) for b in range(len(labels)))
    torch.testing.assert_close(loss(1.0, 0), torch.tensor(want / (len(labels) * L)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(loss(1.0), raster)
    with pytest.raises(ValueError):
        model.set_random_ratio(1.5)


def test_random_order_training_is_reproducible_on_several_threads() -> None:
    """The same step twice gives the same gradients bit for bit, on 2 threads (RAR's order embedding once
    used advanced indexing, whose CPU backward adds atomically: every run trained different weights)."""
    iar = rebuild(small_random_rar(), class_label_dropout=0.0)
    iar.load_state_dict(small_random_rar().state_dict())
    iar.set_random_ratio(1.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, iar.vocab_size, (128, iar.seq_len), generator=g)
    labels = torch.randint(0, iar.num_classes, (128,), generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = set()
        for _ in range(8):  # a race: the more repeats, the surer a nondeterministic kernel shows
            iar.zero_grad(set_to_none=True)
            iar.training_loss(ids, labels, generator=torch.Generator().manual_seed(1)).backward()
            seen.add(b"".join(p.grad.numpy().tobytes() for p in iar.model.parameters() if p.grad is not None))
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 1


def test_label_dropout_draws_from_the_generator(case) -> None:
    iar, tokens, labels, _ = case
    model = rebuild(iar, class_label_dropout=1.0)
    model.load_state_dict(iar.state_dict())
    with torch.no_grad():
        dropped = model.training_loss(tokens, labels, generator=torch.Generator().manual_seed(0))
        null = torch.full_like(labels, model.model.cfg.none_condition_id)
        ce = F.cross_entropy(model.model(tokens.ids_BL, null)[:, :-1].flatten(0, 1), tokens.ids_BL.flatten())
    torch.testing.assert_close(dropped, ce, atol=1e-6, rtol=1e-6)


def test_annealed_random_ratio() -> None:
    assert annealed_random_ratio(0, 10, 20) == 1.0
    assert annealed_random_ratio(15, 10, 20) == 0.5
    assert annealed_random_ratio(20, 10, 20) == 0.0
    assert annealed_random_ratio(99, 10, 20) == 0.0
    iar = RARFamily.from_official(SMALL_TOKENIZER, SMALL_MODEL)
    assert iar.random_ratio == 0.0
    assert iar.random_ratio_at(12) == 0.8


# ---- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_checkpoint_round_trip(case, tmp_path: Path, suffix: str) -> None:
    iar, tokens, labels, _ = case
    tok_path = write_state_dict(iar.tokenizer.state_dict(), tmp_path / f"tokenizer{suffix}")
    model_path = write_state_dict(iar.model.state_dict(), tmp_path / f"model{suffix}")
    back = read_state_dict(model_path)
    assert set(back) == set(iar.model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in iar.model.state_dict().items())
    fresh = RARFamily.from_official(*iar.official_kwargs())
    registry.load_weights(fresh, tok_path, model_path)
    assert torch.equal(fresh.eval().logits(tokens, labels), iar.logits(tokens, labels))


def test_wrong_size_checkpoint_is_named(tmp_path: Path) -> None:
    iar = RARFamily.from_official(SMALL_TOKENIZER, SMALL_MODEL)
    layers = iar.model.cfg.num_hidden_layers + 1
    other = rebuild(iar, num_hidden_layers=layers)
    path = write_state_dict(other.model.state_dict(), tmp_path / "deeper.safetensors")
    with pytest.raises(UserError) as err:
        registry.load_weights(iar, model_path=path)
    assert f"num_hidden_layers={layers}" in str(err.value)
    assert "hidden_size=" in str(err.value)


def test_wrong_tokenizer_checkpoint_is_named(tmp_path: Path) -> None:
    iar = RARFamily.from_official(SMALL_TOKENIZER, SMALL_MODEL)
    tok_kwargs, model_kwargs = iar.official_kwargs()
    tok_kwargs["config"]["hidden_channels"] *= 2
    other = RARFamily.from_official(tok_kwargs, model_kwargs)
    path = write_state_dict(other.tokenizer.state_dict(), tmp_path / "wider.bin")
    with pytest.raises(UserError) as err:
        registry.load_weights(iar, tokenizer_path=path)
    assert f"hidden_channels={tok_kwargs['config']['hidden_channels']}" in str(err.value)


def test_official_file_names_its_preset() -> None:
    """A full-size file (meta tensors: only shapes are read) is matched to its preset."""
    big = registry.build("rar-xl", device="meta")
    assert registry.fitting_presets("rar", "model", big.model.state_dict()) == ["rar-xl"]


def test_meta_build_and_small_image_geometry() -> None:
    with torch.device("meta"):
        iar = RARFamily.from_official(SMALL_TOKENIZER, SMALL_MODEL)
    assert iar.model.attn_mask.device.type == "meta"
    assert iar.image_size == 32 and iar.grids == ((8, 8),) and iar.seq_len == 64


def test_bad_kwargs_are_user_errors() -> None:
    gen = SMALL_MODEL["config"]["model"]["generator"]
    with pytest.raises(UserError, match="hidden_size"):
        RARFamily.from_official(SMALL_TOKENIZER, {"generator": {k: v for k, v in gen.items() if k != "hidden_size"},
                                                  "codebook_size": 32})
    with pytest.raises(UserError, match="codebook_size"):
        RARFamily.from_official(SMALL_TOKENIZER, {"generator": gen, "codebook_size": 64})
    with pytest.raises(UserError, match="unknown"):
        RARFamily.from_official({**SMALL_TOKENIZER, "config": {**SMALL_TOKENIZER["config"], "attn": 1}}, SMALL_MODEL)
