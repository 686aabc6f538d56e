"""Full-size VAR and its VQ-VAE, built on the meta device, match the official key/shape/dtype map."""

from __future__ import annotations

import pytest
from refdata import official_shapes

from iarmem.models import build
from iarmem.models.registry import fitting_presets


def _shape_map(sd) -> dict:
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()}


@pytest.mark.parametrize("depth", [16, 20, 24, 30])
def test_var_official_shapes(depth: int) -> None:
    ref = official_shapes()["models"][f"VAR-d{depth}"]
    iar = build(f"var-d{depth}", device="meta")
    got = _shape_map(iar.model.state_dict())
    assert got == ref["state_dict"]
    assert sum(p.numel() for p in iar.model.parameters()) == ref["num_parameters"]
    assert sum(v.numel() for v in iar.model.state_dict().values()) == ref["num_state_dict_elements"]
    assert sorted(k for k, _ in iar.model.named_buffers()) == sorted(ref["persistent_buffers"])


def test_vqvae_official_shapes() -> None:
    ref = official_shapes()["models"]["VQVAE-vae_ch160v4096z32"]
    iar = build("var-d16", device="meta")
    assert _shape_map(iar.tokenizer.state_dict()) == ref["state_dict"]
    assert sum(p.numel() for p in iar.tokenizer.parameters()) == ref["num_parameters"]
    assert iar.image_size == 256 and iar.seq_len == 680


@pytest.mark.parametrize("depth", [16, 30])
def test_fitting_preset_is_named(depth: int) -> None:
    sd = build(f"var-d{depth}", device="meta").model.state_dict()
    assert fitting_presets("var", "model", sd) == [f"var-d{depth}"]
