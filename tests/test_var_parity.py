"""Numerical parity with the official VAR code, driven by every var_* fixture set present."""

from __future__ import annotations

import pytest
import torch
from refdata import load_fixture, params_for, strip

from iarmem.models import load_weights
from iarmem.models.checkpoint import write_state_dict
from iarmem.models.var.family import VARFamily, build_vae_var_kwargs


@pytest.fixture(scope="module", params=params_for("var"))
def case(request, tmp_path_factory):
    meta, t = load_fixture(request.param)
    c = meta["constructors"]
    iar = VARFamily.from_official(c["models.vqvae.VQVAE"], c["models.var.VAR"])
    tmp = tmp_path_factory.mktemp(request.param)
    # official .pth files: a plain VQVAE state dict and a training checkpoint nesting the VAR weights
    torch.save(strip(t, "sd.tokenizer."), tmp / "vae.pth")
    torch.save({"epoch": 1, "trainer": {"var_wo_ddp": strip(t, "sd.model."), "var_opt": {"lr": torch.tensor(1.0)}}},
               tmp / "ar-ckpt.pth")
    load_weights(iar, tmp / "vae.pth", tmp / "ar-ckpt.pth")
    return meta, t, iar.eval(), tmp


def _scales(t: dict, prefix: str, n: int) -> list[torch.Tensor]:
    return [t[f"{prefix}{i}"] for i in range(n)]


def test_factory_kwargs_match_constructors(case) -> None:
    meta, _, _, _ = case
    c = meta["constructors"]
    tok, mdl = build_vae_var_kwargs(**c["models.build_vae_var"])
    assert tok == c["models.vqvae.VQVAE"]
    assert mdl == {k: v for k, v in c["models.var.VAR"].items() if k != "vae_local"}


def test_tokens_identical_at_every_scale(case) -> None:
    meta, t, iar, _ = case
    tokens = iar.tokenize(t["in.images"])
    expected = _scales(t, "out.tokens.scale", len(meta["derived"]["begin_ends"]))
    assert [list(b_e) for b_e in tokens.begin_ends] == meta["derived"]["begin_ends"]
    for got, want in zip(tokens.per_scale(), expected):
        assert torch.equal(got, want)


def test_phi_selection_matches(case) -> None:
    meta, _, iar, _ = case
    q = iar.tokenizer.quantize
    K = len(iar.patch_nums)
    picked = [list(q.quant_resi.qresi_ls).index(q.phi(si)) for si in range(K)]
    assert picked == meta["derived"]["phi_index_per_scale"]


def test_reconstruction(case) -> None:
    meta, t, iar, _ = case
    K = len(meta["derived"]["begin_ends"])
    tokens = iar.tokenize(t["in.images"])
    assert torch.allclose(tokens.ids_BL, torch.cat(_scales(t, "out.tokens.scale", K), 1))
    torch.testing.assert_close(iar.decode(tokens), t["out.recon"], atol=1e-4, rtol=0)


def test_teacher_forcing_input_and_logits(case) -> None:
    meta, t, iar, _ = case
    K = len(meta["derived"]["begin_ends"])
    scales = _scales(t, "out.tokens.scale", K)
    x = iar.tokenizer.quantize.idxBl_to_var_input(scales)
    torch.testing.assert_close(x, t["aux.var_input"], atol=1e-5, rtol=0)
    tokens = iar.tokenize(t["in.images"])
    with torch.no_grad():
        logits = iar.logits(tokens, t["in.labels"])
    torch.testing.assert_close(logits, t["out.logits"], atol=1e-4, rtol=1e-4)


def test_guided_greedy_generation(case) -> None:
    meta, t, iar, _ = case
    args = meta["generation"]["args"]
    assert args["top_k"] == 1 and args["top_p"] == 0.0  # greedy in the official sampler
    K = len(meta["derived"]["begin_ends"])
    gen = iar.generate(t["in.labels"], cfg=args["cfg"], greedy=True)
    for got, want in zip(gen.per_scale(), _scales(t, "out.gen_tokens.scale", K)):
        assert torch.equal(got, want)
    torch.testing.assert_close(iar.to_unit_range(iar.decode(gen)), t["out.gen_images"], atol=1e-4, rtol=0)


def test_saved_model_reloads_bit_exactly(case) -> None:
    meta, t, iar, tmp = case
    for suffix in (".safetensors", ".pth"):
        write_state_dict(iar.model.state_dict(), tmp / f"model{suffix}")
        write_state_dict(iar.tokenizer.state_dict(), tmp / f"tok{suffix}")
        c = meta["constructors"]
        again = VARFamily.from_official(c["models.vqvae.VQVAE"], c["models.var.VAR"])
        load_weights(again, tmp / f"tok{suffix}", tmp / f"model{suffix}")
        for a, b in zip(iar.state_dict().values(), again.state_dict().values()):
            assert torch.equal(a, b)
        # what we save loads into a freshly built official-layout module with strict matching
        fresh = VARFamily.from_official(c["models.vqvae.VQVAE"], c["models.var.VAR"])
        from safetensors.torch import load_file

        if suffix == ".safetensors":
            fresh.model.load_state_dict(load_file(str(tmp / "model.safetensors")), strict=True)
            fresh.tokenizer.load_state_dict(load_file(str(tmp / "tok.safetensors")), strict=True)
        else:
            fresh.model.load_state_dict(torch.load(tmp / "model.pth", weights_only=True), strict=True)
