"""Helpers for the mitigation tests: hand-made localization run folders in the `iarmem localize` layout.

The contract (see src/iarmem/mitigate/localization.py): run.json (stage localize, finished),
summary.json (model, family, layers, bins, num_images) and unitmem.safetensors
(LAYER.unitmem / .max / .mean_others float32 and LAYER.argmax int64, all [bins, width], plus
image_ids int64 [N]).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from iarmem.mitigate import load_localization
from iarmem.models.base import IAR
from iarmem.models.checkpoint import write_state_dict
from iarmem.runs import start_run

LayerSpec = tuple[str, str, int, int]  # name, kind, block, width


def write_localization(folder: Path, layers: Sequence[LayerSpec], unitmem: Mapping[str, np.ndarray],
                       argmax: Mapping[str, np.ndarray], image_ids: Sequence[int], family: str = "var",
                       model: str = "tiny-var") -> Path:
    """Write a finished localization run folder from hand-made [bins, width] tables."""
    num_bins = next(iter(unitmem.values())).shape[0]
    run = start_run(folder, "localize", {"hand_made": True})
    tensors = {"image_ids": torch.as_tensor(np.asarray(image_ids, dtype=np.int64))}
    for name, _, _, _ in layers:
        um = torch.as_tensor(np.asarray(unitmem[name], dtype=np.float32))
        tensors[f"{name}.unitmem"] = um
        tensors[f"{name}.max"] = um + 1
        tensors[f"{name}.mean_others"] = torch.ones_like(um)
        tensors[f"{name}.argmax"] = torch.as_tensor(np.asarray(argmax[name], dtype=np.int64))
    write_state_dict(tensors, folder / "unitmem.safetensors")
    summary = {"model": {"spec": model, "source": {"spec": model}}, "family": family,
               "layers": [{"name": n, "kind": k, "block": b, "width": w} for n, k, b, w in layers],
               "bins": {"count": num_bins, "labels": [f"bin{i}" for i in range(num_bins)]},
               "num_images": len(image_ids)}
    (folder / "summary.json").write_text(json.dumps(summary))
    run.finish(["unitmem.safetensors", "summary.json"])
    return folder


def random_localization(folder: Path, iar: IAR, model: str, num_bins: int = 3, num_images: int = 20,
                        seed: int = 0) -> Path:
    """A localization of ``iar``'s fc1 layers with random UnitMem in [0, 1) and random argmax images."""
    rng = np.random.default_rng(seed)
    layers = [(x.name, x.kind, x.block, x.width) for x in iar.unit_layers()]
    ids = np.arange(100, 100 + num_images)
    unitmem = {n: rng.random((num_bins, w)) for n, _, _, w in layers}
    argmax = {n: rng.choice(ids, size=(num_bins, w)) for n, _, _, w in layers}
    return write_localization(folder, layers, unitmem, argmax, ids, family=iar.family, model=model)


# A hand-made map with exact binary fractions (ties are real ties). Ranking by
#   max : A0 B1 A1 B2 A2 B0 A3
#   mean: A0 A1 A2 B1 B0 B2 A3   (A0, A1, A2 tie at 0.5: layer order, then unit index)
#   bin1: A1 B2 A2 B0 A3 A0 B1   (A0, B1 tie at 0)
HAND_LAYERS: list[LayerSpec] = [("blocks.0.ffn.fc1", "fc1", 0, 4), ("blocks.1.ffn.fc1", "fc1", 1, 3)]
A, B = HAND_LAYERS[0][0], HAND_LAYERS[1][0]
HAND_UNITMEM = {
    A: np.array([[1.0, 0.25, 0.5, 0.0], [0.0, 0.75, 0.5, 0.125]]),
    B: np.array([[0.375, 0.875, 0.0], [0.375, 0.0, 0.625]]),
}
HAND_ARGMAX = {
    A: np.array([[5, 6, 7, 8], [9, 5, 7, 6]]),
    B: np.array([[5, 9, 8], [6, 6, 6]]),
}
HAND_IDS = [5, 6, 7, 8, 9, 10]


def hand_localization(folder: Path):
    return load_localization(write_localization(folder, HAND_LAYERS, HAND_UNITMEM, HAND_ARGMAX, HAND_IDS))


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (to prove inputs are untouched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_hand_made_folder_loads(tmp_path: Path) -> None:
    loc = hand_localization(tmp_path / "loc")
    assert [x.name for x in loc.layers] == [A, B]
    assert loc.num_bins == 2 and loc.bin_labels == ("bin0", "bin1")
    assert loc.unitmem[A].dtype == np.float32 and loc.argmax[B].dtype == np.int64
    assert loc.model_spec == "tiny-var" and loc.run_fingerprint()
