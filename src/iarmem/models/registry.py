"""Families and presets (like timm's registry): list them, build them, load official files into them."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from iarmem.errors import UserError
from iarmem.models.base import IAR
from iarmem.models.checkpoint import load_into, read_state_dict

# family name -> "module:Class"; each module also defines PRESETS: tuple[Preset, ...]
FAMILIES: dict[str, str] = {
    "var": "iarmem.models.var.family:VARFamily",
    "rar": "iarmem.models.rar.family:RARFamily",
    "llamagen": "iarmem.models.llamagen.family:LlamaGenFamily",
}


@dataclass(frozen=True)
class Preset:
    """A named architecture: the official constructors' kwargs plus what a user needs to know."""

    name: str
    family: str
    tokenizer_kwargs: dict[str, Any]
    model_kwargs: dict[str, Any]
    description: str
    params: str = ""
    files: tuple[str, str] = ("", "")  # official (tokenizer, model) file names, if any
    tags: tuple[str, ...] = field(default=())


def family_class(family: str) -> type[IAR]:
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    mod_name, cls_name = FAMILIES[family].split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise UserError(f"model family {family!r} is not available in this install ({e})") from e
    return getattr(mod, cls_name)


def presets() -> dict[str, Preset]:
    """All presets of all families that are installed, by name."""
    out: dict[str, Preset] = {}
    for family, spec in FAMILIES.items():
        try:
            mod = importlib.import_module(spec.split(":")[0])
        except ModuleNotFoundError:
            continue
        for p in getattr(mod, "PRESETS", ()):
            assert p.family == family, p
            out[p.name] = p
    return out


def get_preset(name: str) -> Preset:
    table = presets()
    if name not in table:
        raise UserError(f"unknown model preset {name!r}; `iarmem models` lists them ({', '.join(sorted(table))})")
    return table[name]


def from_official(family: str, tokenizer_kwargs: dict[str, Any], model_kwargs: dict[str, Any]) -> IAR:
    """Build a family's IAR from the official constructors' keyword arguments."""
    return family_class(family).from_official(tokenizer_kwargs, model_kwargs)


def build(name: str, device: str | torch.device = "cpu") -> IAR:
    """Build a preset with freshly initialised weights (use ``device='meta'`` to allocate nothing)."""
    p = get_preset(name)
    with torch.device(device):
        iar = from_official(p.family, p.tokenizer_kwargs, p.model_kwargs)
    return iar.eval()


def fitting_presets(family: str, part: str, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of presets of ``family`` whose ``part`` ("tokenizer"/"model") matches the file's numbers."""
    cls = family_class(family)
    held = cls.describe_state_dict(part, state_dict)
    names = []
    for p in presets().values():
        if p.family != family:
            continue
        with torch.device("meta"):
            ref = cls.from_official(p.tokenizer_kwargs, p.model_kwargs)
        ref_sd = (ref.tokenizer if part == "tokenizer" else ref.model).state_dict()
        if cls.describe_state_dict(part, ref_sd) == held:
            names.append(p.name)
    return names


def load_weights(iar: IAR, tokenizer_path: str | os.PathLike | None = None,
                 model_path: str | os.PathLike | None = None) -> IAR:
    """Load official (or iarmem-written) files into ``iar`` with strict keys and shapes."""
    for part, path in (("tokenizer", tokenizer_path), ("model", model_path)):
        if path is None:
            continue
        what = f"{iar.family.upper()} {part} checkpoint"
        sd = iar.clean_state_dict(part, read_state_dict(path, what))
        module = iar.tokenizer if part == "tokenizer" else iar.model
        hint = ""
        try:
            held = iar.describe_state_dict(part, sd)
        except Exception:  # a file of another family: nothing sensible to describe
            held = {}
        expected = iar.describe_state_dict(part, module.state_dict())
        if held and held != expected:
            fits = fitting_presets(iar.family, part, sd)
            desc = ", ".join(f"{k}={v}" for k, v in held.items())
            hint = f". The file holds {desc}" + (f"; use preset {' or '.join(fits)}" if fits else "")
        if "; use preset" not in hint:
            hint += f"; pass the {part} checkpoint of this {iar.family.upper()} architecture (`iarmem models`)"
        load_into(module, sd, path, what, hint)
    return iar
