"""Reading and writing checkpoints safely: weights_only pickles, safetensors, atomic writes.

Every failure a user can cause (missing file, truncated file, a pickle that would run code, NaN
weights, a file of another architecture) becomes one :class:`UserError` line.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _st_load
from safetensors.torch import save_file as _st_save
from torch import Tensor, nn

from iarmem.errors import UserError
from iarmem.fileio import atomic_path

# Keys under which training scripts nest the weights, tried in this order
# (VAR: trainer -> var_wo_ddp; LlamaGen: model; others: module / state_dict / ema).
NEST_KEYS = ("trainer", "var_wo_ddp", "model", "state_dict", "module", "generator", "ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def check_path(path: str | os.PathLike, what: str) -> Path:
    """A readable, non-empty regular file, or a UserError naming the problem."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p} (check the path)")
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; pass the checkpoint file inside it")
    if p.stat().st_size == 0:
        raise UserError(f"{what} {p} is empty (0 bytes); re-download or re-export it")
    return p


def _check_torch_format(p: Path, what: str) -> None:
    """A torch file is a zip archive (torch.save since 1.6) or a pickle (first byte PROTO, 0x80).

    Anything else is not a checkpoint; said before the unpickler reads text as opcodes (a text file
    starting with "c" reads as a GLOBAL opcode and would be reported as a pickle holding objects).
    """
    with open(p, "rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # a zip (maybe truncated: said later) or a pickle
        return
    printable = head and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    kind = f"text ({head.decode('ascii').splitlines()[0][:40]!r} ...)" if printable else "of an unknown format"
    raise UserError(f"{what} {p} is not a PyTorch checkpoint: the file is {kind}; pass a .pth / .pt / .bin "
                    f"written by torch.save, or a .safetensors file")


def _torch_load(p: Path, what: str) -> Any:
    _check_torch_format(p, what)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise UserError(
                f"refusing to load {what} {p}: it is a pickle holding Python objects that could run code "
                f"(torch.load weights_only=True rejected it); if you trust it, re-save its state_dict alone "
                f"or convert it to .safetensors"
            ) from e
        raise UserError(f"cannot read {what} {p}: not a valid checkpoint ({first}); re-download or re-export it") from e
    except Exception as e:  # the unpickler raises many types on garbage input (KeyError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {what} {p}: truncated or not a PyTorch checkpoint ({first[:160]}); "
                        f"re-download or re-export it") from e


def read_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Tensor]:
    """Load a state dict from .safetensors or a torch file (weights_only), unwrapping training nests."""
    p = check_path(path, what)
    if p.suffix == ".safetensors":
        try:
            sd: Any = _st_load(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot read {what} {p}: truncated or not a safetensors file ({e}); "
                            f"re-download or re-export it") from e
    else:
        sd = _torch_load(p, what)
    seen = []
    while not _is_state_dict(sd):
        if not isinstance(sd, Mapping):
            raise UserError(f"{what} {p} holds a {type(sd).__name__}, not a state dict of tensors")
        key = next((k for k in NEST_KEYS if isinstance(sd.get(k), Mapping)), None)
        if key is None:
            raise UserError(
                f"{what} {p} holds no state dict: top-level keys {sorted(map(str, sd))[:8]}; "
                f"expected tensors or one of {list(NEST_KEYS)}"
            )
        seen.append(key)
        sd = sd[key]
    sd = dict(sd)
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def check_finite(state_dict: Mapping[str, Tensor], path: str | os.PathLike, what: str = "checkpoint") -> None:
    for k, v in state_dict.items():
        if v.is_floating_point() and bool(torch.isnan(v).any()):
            raise UserError(
                f"{what} {path}: tensor {k!r} holds NaN values; the file is damaged, "
                f"re-download or re-export it"
            )


def mismatch_report(module: nn.Module, state_dict: Mapping[str, Tensor]) -> str | None:
    """None if keys and shapes match the module exactly, else a short description."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
    return "; ".join(parts) or None


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], path: str | os.PathLike, what: str,
              hint: str = "") -> None:
    """Strict load: same keys, same shapes, finite values; dtypes are cast to the module's."""
    check_finite(state_dict, path, what)
    problem = mismatch_report(module, state_dict)
    if problem:
        raise UserError(f"{what} {path} does not fit this architecture: {problem}{hint}")
    expected = module.state_dict()
    cast = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    module.load_state_dict(cast, strict=True)


def write_state_dict(state_dict: Mapping[str, Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write .safetensors (default) or .pth/.pt/.bin (torch.save of a plain state dict) atomically."""
    p = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(p) as tmp:
        if p.suffix == ".safetensors":
            _st_save(tensors, str(tmp), metadata=dict(metadata or {}))
        else:
            torch.save(tensors, tmp)
    return p
