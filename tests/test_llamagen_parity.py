"""LlamaGen against the official reference fixtures (every llamagen_* set present)."""

from __future__ import annotations

import pytest
import torch
from refdata import load_fixture, params_for, strip

from iarmem.models import Tokens, load_weights
from iarmem.models.llamagen import LlamaGenFamily


@pytest.fixture(scope="module", params=params_for("llamagen"))
def case(request, tmp_path_factory):
    """(meta, tensors, iar): the fixture's architecture, loaded strictly from official-format files."""
    meta, t = load_fixture(request.param)
    iar = LlamaGenFamily.from_official(*LlamaGenFamily.kwargs_from_constructors(meta["constructors"])).eval()
    d = tmp_path_factory.mktemp(request.param)
    torch.save(strip(t, "sd.tokenizer."), d / "vq.pt")  # VQ checkpoints: top-level weights
    torch.save({"model": strip(t, "sd.model.")}, d / "gpt.pt")  # GPT checkpoints: under "model"
    load_weights(iar, d / "vq.pt", d / "gpt.pt")
    return meta, t, iar


def _guidance(meta: dict) -> float | None:
    args = meta["generation"]["args"]
    if args.get("cfg_interval", -1) != -1:
        pytest.skip("cfg_interval > -1 (guidance on the first steps only) is not part of the interface")
    return args["cfg_scale"] if args["cfg_scale"] > 1.0 else None  # the official sampler's rule


def test_architecture_matches_derived(case) -> None:
    meta, t, iar = case
    der = meta.get("derived", {})
    L = t["out.tokens"].shape[1]
    assert iar.seq_len == L and iar.image_size == t["in.images"].shape[-1]
    ours = {
        "block_size": iar.seq_len,
        "latent_hw": iar.grids[0][0],
        "downsample": iar.tokenizer.args.downsample,
        "head_dim": iar.model.args.head_dim,
        "ffn_hidden_dim": iar.model.args.ffn_hidden_dim,
        "cls_embedding_rows": iar.model.cls_embedding.embedding_table.weight.shape[0],
        "tokenizer_persistent_buffers": [n for n, _ in iar.tokenizer.named_buffers()],
        "model_persistent_buffers": [n for n, _ in iar.model.named_buffers()],
    }
    for key, value in ours.items():
        if key in der:
            assert value == der[key], key
    for part, module in (("tokenizer", iar.tokenizer), ("model", iar.model)):
        ref = strip(t, f"sd.{part}.")
        assert {k: (v.shape, v.dtype) for k, v in module.state_dict().items()} == {
            k: (v.shape, v.dtype) for k, v in ref.items()}


def test_tokens_exact(case) -> None:
    meta, t, iar = case
    with torch.no_grad():
        z = iar.tokenizer.encode_latent(t["in.images"])
        torch.testing.assert_close(z, t["aux.z"], atol=1e-5, rtol=1e-5)
        tokens = iar.tokenize(t["in.images"])
    assert tokens.ids_BL.dtype == torch.int64
    assert torch.equal(tokens.ids_BL, t["out.tokens"])


def test_decode(case) -> None:
    _, t, iar = case
    with torch.no_grad():
        recon = iar.decode(Tokens(t["out.tokens"], iar.grids))
    torch.testing.assert_close(recon, t["out.recon"], atol=1e-4, rtol=0)


def test_teacher_forced_logits(case) -> None:
    _, t, iar = case
    with torch.no_grad():
        logits = iar.logits(Tokens(t["out.tokens"], iar.grids), t["in.labels"])
    torch.testing.assert_close(logits, t["out.logits"], atol=1e-4, rtol=1e-4)


def test_rope_table(case) -> None:
    _, t, iar = case
    torch.testing.assert_close(iar.model.freqs_cis, t["aux.freqs_cis"], atol=1e-5, rtol=0)
    assert "freqs_cis" not in iar.model.state_dict()


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_exact(case, use_cache: bool) -> None:
    meta, t, iar = case
    keys_before = list(iar.model.state_dict())
    gen = iar.generate(t["in.labels"], greedy=True, cfg=_guidance(meta), use_cache=use_cache)
    assert torch.equal(gen.ids_BL, t["out.gen_tokens"])
    assert list(iar.model.state_dict()) == keys_before  # no KV cache leaks into the state dict


def test_generated_images(case) -> None:
    _, t, iar = case
    with torch.no_grad():
        images = iar.decode(Tokens(t["out.gen_tokens"], iar.grids))
    torch.testing.assert_close(images, t["out.gen_images"], atol=1e-4, rtol=0)


def test_prefix_of_greedy_generation_continues_it(case) -> None:
    """Greedy decoding is a fixed point: any prefix of the official generation leads back to it."""
    meta, t, iar = case
    L = iar.seq_len
    for k in (1, L // 2, L - 1):
        gen = iar.generate(t["in.labels"], Tokens(t["out.gen_tokens"], iar.grids), prefix_len=k,
                           cfg=_guidance(meta))
        assert torch.equal(gen.ids_BL, t["out.gen_tokens"]), k
