"""Checkpoint reading refuses what is unsafe or broken with one clear UserError line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from iarmem.errors import UserError
from iarmem.models import load_weights
from iarmem.models.checkpoint import read_state_dict, write_state_dict
from iarmem.models.var.family import VARFamily, build_vae_var_kwargs


class _Exploit:
    """Unpickling this would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, writer in (("legacy.pth", pickle.dump), ("zip.pth", None)):
        path = tmp_path / name
        payload = {"model": {"w": torch.zeros(2)}, "evil": _Exploit(marker)}
        if writer is None:
            torch.save(payload, path)
        else:
            with open(path, "wb") as f:
                writer(payload, f)
        with pytest.raises(UserError, match="refusing to load") as e:
            read_state_dict(path, "VAR model checkpoint")
        assert "\n" not in str(e.value)
        assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "dir", "empty", "truncated", "text", "truncated_st"])
def test_broken_files(tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    st = write_state_dict({"w": torch.randn(64, 64)}, tmp_path / "good.safetensors")
    path = {
        "missing": tmp_path / "nope.pth",
        "dir": tmp_path,
        "empty": tmp_path / "empty.pth",
        "truncated": tmp_path / "trunc.pth",
        "text": tmp_path / "notes.pth",
        "truncated_st": tmp_path / "trunc.safetensors",
    }[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("hello, not a checkpoint\n")
    elif kind == "truncated_st":
        path.write_bytes(st.read_bytes()[:100])
    with pytest.raises(UserError) as e:
        read_state_dict(path, "checkpoint")
    assert "\n" not in str(e.value) and str(path.name) in str(e.value)


def test_nested_and_prefixed_weights_are_unwrapped(tmp_path: Path) -> None:
    sd = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    torch.save({"model": sd, "steps": 3}, tmp_path / "m.pt")
    torch.save({"trainer": {"var_wo_ddp": sd, "var_opt": {}}, "epoch": 1}, tmp_path / "t.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")
    for name in ("m.pt", "t.pth", "ddp.pth"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == sd.keys()


def _small(depth: int) -> VARFamily:
    tok, mdl = build_vae_var_kwargs(depth=depth, patch_nums=(1, 2, 3, 4), V=64, Cvae=4, ch=32, num_classes=10)
    return VARFamily.from_official(tok, mdl)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    iar = _small(2)
    sd = iar.model.state_dict()
    sd["blocks.1.ffn.fc1.weight"][0, 0] = float("nan")
    write_state_dict(sd, tmp_path / "nan.safetensors")
    with pytest.raises(UserError, match=r"blocks\.1\.ffn\.fc1\.weight.*NaN"):
        load_weights(_small(2), model_path=tmp_path / "nan.safetensors")


def test_other_depth_is_named(tmp_path: Path) -> None:
    write_state_dict(_small(3).model.state_dict(), tmp_path / "d3.safetensors")
    with pytest.raises(UserError, match=r"holds depth=3, embed_dim=192"):
        load_weights(_small(2), model_path=tmp_path / "d3.safetensors")


def test_a_small_file_into_a_full_size_preset_names_what_it_holds(tmp_path: Path) -> None:
    from iarmem.models import build

    write_state_dict(_small(2).model.state_dict(), tmp_path / "d2.pth")
    with pytest.raises(UserError, match=r"does not fit.*holds depth=2"):
        load_weights(build("var-d16", device="meta"), model_path=tmp_path / "d2.pth")
