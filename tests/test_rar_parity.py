"""RAR against the official outputs recorded in the reference fixtures (every rar_* set present).

Everything (architecture, inputs, generation arguments, tolerances) comes from the fixture JSON,
so the same tests run unchanged on another fixture set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from refdata import load_fixture, params_for, strip

from iarmem.models import Tokens, registry
from iarmem.models.rar.family import RARFamily

ATOL = 1e-4  # suggested_tolerances: logits and images


@pytest.fixture(scope="module", params=params_for("rar"))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(meta, tensors, iar): the fixture and a model loaded from it through registry.load_weights."""
    meta, tensors = load_fixture(request.param)
    iar = RARFamily.from_official(*RARFamily.kwargs_from_constructors(meta["constructors"]))
    folder: Path = tmp_path_factory.mktemp(request.param)
    tok_path, model_path = folder / "tokenizer.bin", folder / "model.bin"
    torch.save(strip(tensors, "sd.tokenizer."), tok_path)
    torch.save(strip(tensors, "sd.model."), model_path)
    registry.load_weights(iar, tok_path, model_path)
    return meta, tensors, iar.eval()


def test_layout_matches_fixture(case) -> None:
    meta, tensors, iar = case
    derived = meta["derived"]
    for part, module in (("tokenizer", iar.tokenizer), ("model", iar.model)):
        ref = strip(tensors, f"sd.{part}.")
        sd = module.state_dict()
        assert {k: (tuple(v.shape), v.dtype) for k, v in sd.items()} == {
            k: (tuple(v.shape), v.dtype) for k, v in ref.items()}
        buffers = dict(module.named_buffers())
        for name in derived[f"{part}_persistent_buffers"]:
            assert name in sd
        for name in derived[f"{part}_nonpersistent_buffers"]:
            assert name in buffers and name not in sd
    space = derived["token_space"]
    assert iar.model.embeddings.num_embeddings == space["embedding_rows"]
    assert iar.model.cfg.none_condition_id == space["none_condition_id"]
    assert iar.vocab_size == space["mask_token"] == space["image_tokens"][1] + 1
    assert iar.model.pos_embed.shape[1] == iar.model.target_aware_pos_embed.shape[1] == derived["pos_embed_rows"]
    assert iar.model.timesteps_embeddings.shape[1] == derived["timesteps_embeddings_rows"]
    assert iar.seq_len == derived["image_seq_len"]
    assert iar.grids == ((derived["latent_hw"],) * 2,)
    assert iar.image_size == tensors["in.images"].shape[-1]
    labels = tensors["in.labels"]
    assert torch.equal(iar.model.condition_ids(labels), tensors["aux.condition"])
    assert space["class_tokens"] == [int(iar.model.condition_ids(torch.tensor(0))),
                                     int(iar.model.condition_ids(torch.tensor(iar.num_classes - 1)))]


def test_tokenizer(case) -> None:
    _, tensors, iar = case
    with torch.no_grad():
        z = iar.tokenizer.encoder(tensors["in.images"])
    torch.testing.assert_close(z, tensors["aux.z"], atol=1e-5, rtol=1e-5)
    tokens = iar.tokenize(tensors["in.images"])
    assert tokens.grids == iar.grids
    assert torch.equal(tokens.ids_BL, tensors["out.tokens"])
    recon = iar.decode(Tokens(tensors["out.tokens"], iar.grids))
    torch.testing.assert_close(recon, tensors["out.recon"], atol=ATOL, rtol=0)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


def test_teacher_forced_logits(case) -> None:
    _, tensors, iar = case
    tokens, labels, ref = Tokens(tensors["out.tokens"], iar.grids), tensors["in.labels"], tensors["out.logits"]
    L = iar.seq_len
    with torch.no_grad():
        logits = iar.logits(tokens, labels)
        full = iar.official_logits(tokens, labels)
    assert logits.shape == (len(labels), L, iar.vocab_size)
    torch.testing.assert_close(logits, ref[:, :L], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(full, ref, atol=ATOL, rtol=ATOL)  # including the official target-less last row


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_guided_generation(case, use_cache: bool) -> None:
    meta, tensors, iar = case
    args = meta["generation"]["args"]
    gen = iar.generate(tensors["in.labels"], greedy=True, cfg=args["guidance_scale"],
                       cfg_power=args["guidance_scale_pow"], use_cache=use_cache)
    assert gen.grids == iar.grids
    assert torch.equal(gen.ids_BL, tensors["out.gen_tokens"])
    if use_cache == args["kv_cache"]:
        torch.testing.assert_close(iar.decode(gen), tensors["out.gen_images"], atol=ATOL, rtol=0)


def test_default_guidance_power_is_the_config(case) -> None:
    meta, tensors, iar = case
    args = meta["generation"]["args"]
    assert iar.model.cfg.guidance_scale_pow == args["guidance_scale_pow"]
    gen = iar.generate(tensors["in.labels"], cfg=args["guidance_scale"])
    assert torch.equal(gen.ids_BL, tensors["out.gen_tokens"])


def test_from_official_accepts_the_recorded_layouts(case) -> None:
    """The fixture's constructor entries work as is, and official_kwargs rebuilds the same model."""
    meta, _, iar = case
    ctor = meta["constructors"]
    layouts = [(ctor, ctor["modeling.rar.RAR"]), (ctor, ctor), iar.official_kwargs()]
    for tok_kwargs, model_kwargs in layouts:
        with torch.device("meta"):
            other = RARFamily.from_official(tok_kwargs, model_kwargs)
        assert other.official_kwargs() == iar.official_kwargs()
        assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in iar.state_dict().items()}
