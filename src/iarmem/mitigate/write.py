"""Writing an edited model: a model folder in the official key layout plus edit.json, its provenance.

The folder loads with ``open_model(folder)`` and its model file loads with strict keys into the
official transformer. The tokenizer is referenced by path (official tokenizers are large and an
edit never changes them) unless copied; the planting manifest of the source folder comes along so
later stages keep their ground truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from iarmem import __version__
from iarmem.fileio import write_bytes, write_json
from iarmem.mitigate.edit import EditRecord
from iarmem.mitigate.localization import Localization
from iarmem.mitigate.select import Selection
from iarmem.models.base import IAR
from iarmem.models.loading import MODEL_JSON, TRAINING_VIEWS, ModelSource, is_model_folder, save_model_folder
from iarmem.plans import MANIFEST
from iarmem.runs import fingerprint

FORMATS = ("safetensors", "pth", "both")
EDIT_FILE = "edit.json"
EDIT_FORMAT = "iarmem.edit"
EDIT_VERSION = "1"


def model_files(model_format: str) -> list[str]:
    """The transformer files a format writes; the first is the one model.json points at."""
    return {"safetensors": ["model.safetensors"], "pth": ["model.pth"],
            "both": ["model.safetensors", "model.pth"]}[model_format]


def write_edited_model(iar: IAR, folder: str | os.PathLike, source: ModelSource, *, model_format: str = "safetensors",
                       copy_tokenizer: bool = False, extra: dict[str, Any] | None = None) -> list[str]:
    """Write ``iar`` as a model folder; return the names of the files written.

    What the source folder's model.json says about training (dataset, trained views) is carried
    over: an edit changes weights, not what the model learned from."""
    folder = Path(folder)
    carried = {}
    if is_model_folder(source.spec):
        src = json.loads((Path(source.spec) / MODEL_JSON).read_text())
        carried = {k: src[k] for k in ("dataset", TRAINING_VIEWS) if k in src}
    save_model_folder(iar, folder, tokenizer_file=None if copy_tokenizer else source.tokenizer_file,
                      preset=source.preset, extra=carried | (extra or {}),
                      model_format="safetensors" if model_format == "safetensors" else "pth")
    if model_format == "pth":  # save_model_folder always writes safetensors: keep the .pth alone
        cfg = json.loads((folder / MODEL_JSON).read_text())
        write_json(folder / MODEL_JSON, cfg | {"model_file": "model.pth"})
        (folder / "model.safetensors").unlink()
    written = [MODEL_JSON, *model_files(model_format)]
    if copy_tokenizer:
        written.append("tokenizer.safetensors")
    manifest = Path(source.spec) / MANIFEST
    if is_model_folder(source.spec) and manifest.is_file():
        write_bytes(folder / MANIFEST, manifest.read_bytes())
        written.append(MANIFEST)
    return written


def edit_manifest(*, source: ModelSource, source_hashes: dict[str, str], loc: Localization, selection: Selection,
                  record: EditRecord, files: dict[str, str], forget_run: Localization | None = None) -> dict[str, Any]:
    """edit.json: which units were scaled how, from which model and localization, into which files."""
    def loc_entry(x: Localization) -> dict[str, Any]:
        return {"path": str(x.path) if x.path else None, "run_fingerprint": x.run_fingerprint(),
                "model": x.summary.get("model"), "family": x.family, "num_images": int(x.image_ids.size),
                "bins": list(x.bin_labels)}

    sel = selection.as_dict()
    return {
        "format": EDIT_FORMAT, "version": EDIT_VERSION, "iarmem_version": __version__,
        "source_model": source.as_dict() | {"tokenizer_file": str(Path(source.tokenizer_file).resolve()),
                                            "model_file": str(Path(source.model_file).resolve()),
                                            "sha256": source_hashes},
        "localization": loc_entry(loc),
        "forget_run": loc_entry(forget_run) if forget_run is not None else None,
        "edit": record.as_dict(),
        "selection": {k: v for k, v in sel.items() if k not in ("units", "per_layer", "per_block")},
        "counts": {"total": selection.count, "per_layer": sel["per_layer"], "per_block": sel["per_block"]},
        "units": sel["units"],
        "files": files,
    }


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: fingerprint(folder / name) for name in names if (folder / name).is_file()}
