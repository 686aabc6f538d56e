"""MODEL arguments of the CLI: a preset plus official files, or a model folder iarmem wrote.

A model folder holds ``model.json`` (family and official constructor kwargs), ``model.safetensors``
(the transformer in the official key layout) and either ``tokenizer.safetensors`` or a reference
to the tokenizer file it was built with (official tokenizers are large and never change).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iarmem.errors import UserError
from iarmem.fileio import write_json
from iarmem.models.base import IAR
from iarmem.models.checkpoint import write_state_dict
from iarmem.models.registry import FAMILIES, from_official, get_preset, load_weights, presets

MODEL_JSON = "model.json"
TRAINING_VIEWS = "training_views"  # model.json: {"views": V, "seed": S}: trained on views 0..V-1 drawn with seed S


@dataclass(frozen=True)
class ModelSource:
    """Where a loaded model came from, for run records and reports."""

    spec: str
    family: str
    preset: str | None
    tokenizer_file: str
    model_file: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as torch names it, refused in one line when this torch cannot run on it."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"--device {device!r} is not a device name; use cpu or cuda (cuda:N)") from e
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this torch build sees no CUDA GPU; use --device cpu")
    return d


def open_model(spec: str, tokenizer: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> tuple[IAR, ModelSource]:
    """Build and load the model named by ``spec``; explicit files override a folder's own."""
    device = check_device(device)
    p = Path(spec)
    if p.is_dir():
        if not is_model_folder(p):
            raise UserError(f"{p} holds no {MODEL_JSON}: pass a preset name (`iarmem models`) or a folder "
                            f"written by `iarmem train` / `iarmem mitigate`")
        try:
            cfg = json.loads((p / MODEL_JSON).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{p / MODEL_JSON} is damaged ({e}); re-run the stage that wrote it") from e
        missing = [k for k in ("family", "tokenizer_kwargs", "model_kwargs", "tokenizer_file", "model_file")
                   if not isinstance(cfg, dict) or k not in cfg]
        if missing:
            raise UserError(f"{p / MODEL_JSON} is damaged (no {', '.join(missing)}); re-run the stage that wrote it")
        tok_file = Path(tokenizer) if tokenizer else _resolve(p, cfg["tokenizer_file"])
        mdl_file = Path(weights) if weights else _resolve(p, cfg["model_file"])
        if cfg["family"] not in FAMILIES:
            raise UserError(f"{p / MODEL_JSON} names the unknown model family {cfg['family']!r} (not one of "
                            f"{', '.join(FAMILIES)}); re-run the stage that wrote it")
        try:
            iar = from_official(cfg["family"], cfg["tokenizer_kwargs"], cfg["model_kwargs"])
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise UserError(f"{p / MODEL_JSON} holds constructor arguments the {cfg['family']} family rejects "
                            f"({type(e).__name__}: {e}); re-run the stage that wrote it") from e
        preset = cfg.get("preset")
    else:
        if spec not in presets() and p.is_file():
            raise UserError(f"model {spec} is a file; pass a model folder (written by `iarmem train` / `iarmem "
                            f"mitigate`), or a preset name with --tokenizer FILE --weights FILE")
        if spec not in presets() and ("/" in spec or p.suffix):
            raise UserError(f"model {spec} not found: pass an existing model folder or a preset name "
                            f"(`iarmem models` lists them)")
        pr = get_preset(spec)
        if tokenizer is None or weights is None:
            tf, mf = pr.files
            raise UserError(f"preset {spec} needs its checkpoint files: --tokenizer PATH/{tf or 'tokenizer'} "
                            f"--weights PATH/{mf or 'model'}" + (", or --download (Hugging Face Hub)" if tf and mf
                                                                 else ""))
        tok_file, mdl_file = Path(tokenizer), Path(weights)
        iar = from_official(pr.family, pr.tokenizer_kwargs, pr.model_kwargs)
        preset = spec
    load_weights(iar, tok_file, mdl_file)
    iar = iar.to(device).eval()
    return iar, ModelSource(str(spec), iar.family, preset, str(tok_file), str(mdl_file))


def training_views(spec: str | os.PathLike) -> tuple[tuple[int, ...], int] | None:
    """(views, seed) a model folder was trained on (``iarmem train`` records them); None otherwise.

    View 0 is the eval crop and views 1.. draws of the family's training augmentation from the seed
    (``iarmem.tokens``), so these are exactly the pixels the model learned.
    """
    path = Path(spec) / MODEL_JSON
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text()).get(TRAINING_VIEWS)
        return (tuple(range(int(rec["views"]))), int(rec["seed"])) if rec else None
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is damaged ({e}); re-run the stage that wrote it") from e


def _resolve(folder: Path, name: str) -> Path:
    q = Path(name)
    return q if q.is_absolute() else folder / q


def save_model_folder(iar: IAR, folder: str | os.PathLike, *, tokenizer_file: str | os.PathLike | None = None,
                      preset: str | None = None, extra: dict[str, Any] | None = None,
                      model_format: str = "safetensors") -> Path:
    """Write ``iar`` as a model folder. With ``tokenizer_file`` the tokenizer is referenced, not copied."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_file is None:
        write_state_dict(iar.tokenizer.state_dict(), folder / "tokenizer.safetensors")
        tok_ref = "tokenizer.safetensors"
    else:
        tok_ref = str(Path(tokenizer_file).resolve())
    model_name = "model.safetensors"
    write_state_dict(iar.model.state_dict(), folder / model_name)
    if model_format == "pth":
        write_state_dict(iar.model.state_dict(), folder / "model.pth")
    tok_kwargs, mdl_kwargs = iar.official_kwargs()
    write_json(folder / MODEL_JSON, {
        "family": iar.family, "preset": preset, "tokenizer_kwargs": tok_kwargs, "model_kwargs": mdl_kwargs,
        "tokenizer_file": tok_ref, "model_file": model_name, "image_size": iar.image_size,
        "num_classes": iar.num_classes, **(extra or {}),
    })
    return folder
