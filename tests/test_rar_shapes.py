"""RAR presets built on the meta device have exactly the official state-dict layout."""

from __future__ import annotations

import pytest
import torch
from refdata import official_shapes

from iarmem.models import registry
from iarmem.models.rar.family import RARFamily, model_config, tokenizer_config

# preset name -> model entry of official_shapes.json
MODELS = {"rar-b": "RAR-B", "rar-l": "RAR-L", "rar-xl": "RAR-XL", "rar-xxl": "RAR-XXL"}
TOKENIZER = "MaskGIT-VQGAN-maskgit-vqgan-imagenet-f16-256"


def layout(module: torch.nn.Module) -> dict[str, list]:
    """key -> [shape, dtype name] in the format of official_shapes.json."""
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()}


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def shapes() -> dict:
    return official_shapes()["models"]


@pytest.fixture(scope="module")
def built() -> dict[str, RARFamily]:
    return {name: registry.build(name, device="meta") for name in MODELS}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_layout(name: str, shapes: dict, built: dict[str, RARFamily]) -> None:
    ref = shapes[MODELS[name]]
    iar = built[name]
    assert all(p.device.type == "meta" for p in iar.parameters())
    assert layout(iar.model) == ref["state_dict"]
    assert list(layout(iar.model)) == list(ref["state_dict"]), "key order differs from the official module"
    assert num_params(iar.model) == ref["num_parameters"]
    assert sum(v.numel() for v in iar.model.state_dict().values()) == ref["num_state_dict_elements"]
    for buf in ref["nonpersistent_buffers_excluded"]:
        assert buf in dict(iar.model.named_buffers()) and buf not in iar.model.state_dict()


@pytest.mark.parametrize("name", list(MODELS))
def test_preset_config_is_official(name: str, shapes: dict) -> None:
    ref = shapes[MODELS[name]]
    preset = registry.get_preset(name)
    official = {"config.model.generator": ref["config.model.generator"],
                "config.model.vq_model.codebook_size": ref["config.model.vq_model.codebook_size"]}
    assert model_config(preset.model_kwargs) == model_config(official)
    tok = shapes[TOKENIZER]
    assert tokenizer_config(preset.tokenizer_kwargs) == tokenizer_config({"config": tok["config"],
                                                                          "quantizer": tok["quantizer"]})
    assert preset.files == (tok["checkpoint_name"], f"{name.replace('-', '_')}.bin")


def test_tokenizer_layout(shapes: dict, built: dict[str, RARFamily]) -> None:
    ref = shapes[TOKENIZER]
    for iar in built.values():
        assert layout(iar.tokenizer) == ref["state_dict"]
        assert list(layout(iar.tokenizer)) == list(ref["state_dict"])
        assert num_params(iar.tokenizer) == ref["num_parameters"]
        assert iar.image_size == ref["config"]["resolution"]


def test_from_official_shapes_layout(shapes: dict) -> None:
    """The layout recorded in official_shapes.json is accepted as is."""
    ref, tok = shapes["RAR-B"], shapes[TOKENIZER]
    with torch.device("meta"):
        iar = RARFamily.from_official(
            {"config": tok["config"], "quantizer": tok["quantizer"]},
            {"config.model.generator": ref["config.model.generator"],
             "config.model.vq_model.codebook_size": ref["config.model.vq_model.codebook_size"]},
        )
    assert layout(iar.model) == ref["state_dict"]
    assert layout(iar.tokenizer) == tok["state_dict"]


def test_official_kwargs_round_trip(built: dict[str, RARFamily]) -> None:
    for iar in built.values():
        with torch.device("meta"):
            again = RARFamily.from_official(*iar.official_kwargs())
        assert layout(again.model) == layout(iar.model)
        assert layout(again.tokenizer) == layout(iar.tokenizer)
        assert again.official_kwargs() == iar.official_kwargs()


def test_describe_state_dict_names_each_preset(built: dict[str, RARFamily]) -> None:
    described = {name: RARFamily.describe_state_dict("model", iar.model.state_dict()) for name, iar in built.items()}
    assert len({tuple(sorted(d.items())) for d in described.values()}) == len(MODELS)
    for name, iar in built.items():
        gen = iar.official_kwargs()[1]["config"]["model"]["generator"]
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "image_seq_len", "condition_num_classes"):
            assert described[name][key] == gen[key]
        assert registry.fitting_presets("rar", "model", iar.model.state_dict()) == [name]


def test_describe_tokenizer(shapes: dict, built: dict[str, RARFamily]) -> None:
    ref = shapes[TOKENIZER]
    held = RARFamily.describe_state_dict("tokenizer", built["rar-b"].tokenizer.state_dict())
    for key in ("hidden_channels", "channel_mult", "num_res_blocks", "num_channels", "z_channels"):
        assert held[key] == ref["config"][key]
    assert held["codebook_size"] == ref["quantizer"]["num_embeddings"]
    assert held["embedding_dim"] == ref["quantizer"]["embedding_dim"]
