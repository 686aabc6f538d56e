"""Full-size LlamaGen models built on the meta device match the official state-dict layout."""

from __future__ import annotations

import pytest
import torch
from refdata import official_shapes

from iarmem.models import registry
from iarmem.models.llamagen import LlamaGenFamily

SIZES = ("b", "l", "xl", "xxl")


def _gpt_entry(size: str) -> dict:
    models = official_shapes()["models"]
    prefix = f"LlamaGen-GPT-{size.upper()} ("
    matches = [v for k, v in models.items() if k.startswith(prefix)]
    assert len(matches) == 1, f"no single official_shapes entry named {prefix!r}"
    return matches[0]


def _vq_entry() -> dict:
    return official_shapes()["models"]["LlamaGen-VQ-16"]


def _layout(module: torch.nn.Module) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()}


def _vq_kwargs(entry: dict) -> dict:
    return {**entry["ModelArgs"], **entry.get("encoder_decoder_defaults", {})}


@pytest.mark.parametrize("size", SIZES)
def test_preset_matches_official_shapes(size: str) -> None:
    gpt, vq = _gpt_entry(size), _vq_entry()
    iar = registry.build(f"llamagen-{size}", device="meta")
    assert _layout(iar.model) == gpt["state_dict"]
    assert _layout(iar.tokenizer) == vq["state_dict"]
    assert sum(p.numel() for p in iar.model.parameters()) == gpt["num_parameters"]
    assert sum(v.numel() for v in iar.model.state_dict().values()) == gpt["num_state_dict_elements"]
    assert sum(p.numel() for p in iar.tokenizer.parameters()) == vq["num_parameters"]
    assert sum(v.numel() for v in iar.tokenizer.state_dict().values()) == vq["num_state_dict_elements"]
    assert {t.device.type for t in iar.state_dict().values()} == {"meta"}
    p = registry.get_preset(f"llamagen-{size}")
    assert p.params == gpt["readme_params"]


@pytest.mark.parametrize("size", SIZES)
def test_from_official_kwargs_of_the_json(size: str) -> None:
    """The constructor arguments recorded in official_shapes.json rebuild the same layout."""
    gpt, vq = _gpt_entry(size), _vq_entry()
    with torch.device("meta"):
        iar = LlamaGenFamily.from_official(_vq_kwargs(vq), gpt["ModelArgs"])
    assert _layout(iar.model) == gpt["state_dict"]
    assert _layout(iar.tokenizer) == vq["state_dict"]
    assert iar.image_size == 256 and iar.seq_len == gpt["ModelArgs"]["block_size"]
    with torch.device("meta"):
        again = LlamaGenFamily.from_official(*iar.official_kwargs())
    assert _layout(again.model) == gpt["state_dict"] and _layout(again.tokenizer) == vq["state_dict"]


@pytest.mark.parametrize("size", SIZES)
def test_describe_names_the_fitting_preset(size: str) -> None:
    """A file with the official layout (meta tensors from the JSON) is described like the preset."""
    entry = _gpt_entry(size)
    file_sd = {k: torch.empty(shape, dtype=getattr(torch, dt), device="meta")
               for k, (shape, dt) in entry["state_dict"].items()}
    iar = registry.build(f"llamagen-{size}", device="meta")
    held = LlamaGenFamily.describe_state_dict("model", file_sd)
    assert held == LlamaGenFamily.describe_state_dict("model", iar.model.state_dict())
    assert held["dim"] == entry["ModelArgs"]["dim"] and held["n_layer"] == entry["ModelArgs"]["n_layer"]
    fits = registry.fitting_presets("llamagen", "model", file_sd)
    assert f"llamagen-{size}" in fits
    assert all(name.split("-")[1] == size for name in fits)  # no other size fits


def test_describe_tokenizer() -> None:
    vq = _vq_entry()
    file_sd = {k: torch.empty(shape, device="meta") for k, (shape, _) in vq["state_dict"].items()}
    held = LlamaGenFamily.describe_state_dict("tokenizer", file_sd)
    args = vq["ModelArgs"]
    assert held["codebook_size"] == args["codebook_size"]
    assert held["codebook_embed_dim"] == args["codebook_embed_dim"]
    assert held["encoder_ch_mult"] == args["encoder_ch_mult"]
    assert held["ch"] == vq["encoder_decoder_defaults"]["ch"]


def test_presets_point_at_official_files() -> None:
    table = registry.presets()
    for size in SIZES:
        p = table[f"llamagen-{size}"]
        assert p.family == "llamagen" and p.files[0] == "vq_ds16_c2i.pt"
        assert p.model_kwargs["block_size"] == 256 and p.model_kwargs["vocab_size"] == 16384
    assert table["llamagen-b"].files[1] == "c2i_B_256.pt"
    assert table["llamagen-xxl-384"].files[1] == "c2i_XXL_384.pt"
    assert table["llamagen-xxl-384"].model_kwargs["block_size"] == 24 * 24
