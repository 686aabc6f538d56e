"""Reading a localization run (the contract with `iarmem localize`) and checking it fits a model.

A localization run folder holds ``run.json`` (stage "localize", finished), ``summary.json``
(model, family, layers, bins, num_images) and ``unitmem.safetensors`` with, per tapped layer
LAYER, ``LAYER.unitmem`` float32 [num_bins, width] and ``LAYER.argmax`` int64 [num_bins, width]
(dataset ids), plus ``image_ids`` int64 [N]. Mitigation needs only these; the other statistics
(max, mean_others, ...) stay on disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from iarmem.errors import UserError
from iarmem.models.base import IAR, UNIT_KINDS
from iarmem.runs import RUN_FILE, fingerprint, require_finished

UNITMEM_FILE = "unitmem.safetensors"
SUMMARY_FILE = "summary.json"
PER_IMAGE_FILE = "per_image.safetensors"
REFINED_FILE = "refined.json"


@dataclass(frozen=True)
class LayerInfo:
    """One tapped layer of a localization, as the summary lists it (block order)."""

    name: str
    kind: str
    block: int
    width: int


@dataclass(frozen=True)
class Localization:
    """The UnitMem map of one localization run, as numpy arrays keyed by layer name.

    ``unitmem[name]`` is float32 [num_bins, width]; ``argmax[name]`` is int64 [num_bins, width]
    (the dataset id of the image that drives the unit most in that bin).
    """

    path: Path | None
    summary: dict[str, Any]
    run: dict[str, Any]
    layers: tuple[LayerInfo, ...]
    unitmem: dict[str, np.ndarray]
    argmax: dict[str, np.ndarray]
    image_ids: np.ndarray
    bin_labels: tuple[str, ...]
    per_image: dict[int, np.ndarray] = field(default_factory=dict)  # per-image methods: [F] scores per target
    unit_reduce: str = "max"  # how a per-image [bins] score becomes a unit's score
    refined: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # --refine: checked units per image

    @property
    def method(self) -> str:
        return str(self.summary.get("method", "unitmem"))

    def image_unit_scores(self, image: int, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """One image's own score per unit of the ``names`` layers (in that order), float64."""
        row = self.per_image[image]
        spans, o = {}, 0
        for info in self.layers:
            spans[info.name] = (o, info.width)
            o += self.num_bins * info.width
        parts = []
        for name in names:
            start, width = spans[name]
            table = np.nan_to_num(row[start:start + self.num_bins * width].reshape(self.num_bins, width)
                                  .astype(np.float64), nan=0.0)
            parts.append(table.sum(0) if self.unit_reduce == "sum" else table.max(0))
        return np.concatenate(parts)

    @property
    def num_bins(self) -> int:
        return len(self.bin_labels)

    @property
    def family(self) -> str | None:
        return self.summary.get("family")

    @property
    def model_spec(self) -> str:
        """The model the localization ran on, in words (for error messages and edit.json)."""
        model = self.summary.get("model")
        if isinstance(model, dict):
            return str(model.get("spec") or model.get("source", {}).get("spec") or model)
        return str(model) if model is not None else "an unknown model"

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(name)

    def run_fingerprint(self) -> str | None:
        """sha256 of the run's run.json: ties an edit to the exact localization it used."""
        if self.path is None or not (self.path / RUN_FILE).is_file():
            return None
        return fingerprint(self.path / RUN_FILE)


def load_localization(path: str | os.PathLike) -> Localization:
    """Read a finished localization run folder; anything missing or inconsistent is a UserError."""
    p = Path(path)
    run = require_finished(p, "localize")
    summary = _read_summary(p / SUMMARY_FILE)
    layers = _layers_of(summary, p / SUMMARY_FILE)
    f = p / UNITMEM_FILE
    if not f.is_file():
        raise UserError(f"{f} not found: the localization run in {p} is incomplete; rerun `iarmem localize`")
    wanted = ["image_ids"] + [f"{info.name}.{what}" for info in layers for what in ("unitmem", "argmax")]
    try:
        with safe_open(str(f), framework="pt") as fh:
            held = set(fh.keys())
            missing = [k for k in wanted if k not in held]
            if missing:
                raise UserError(f"{f} lacks {len(missing)} tensors its summary names (e.g. {missing[0]}); "
                                f"rerun `iarmem localize`")
            tensors = {k: fh.get_tensor(k).numpy() for k in wanted}
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {f}: truncated or not a safetensors file ({e}); rerun `iarmem localize`") from e
    bins = summary.get("bins") or {}
    num_bins = int(bins.get("count", tensors[f"{layers[0].name}.unitmem"].shape[0]))
    labels = tuple(str(x) for x in bins.get("labels") or range(num_bins))
    for info in layers:
        for what in ("unitmem", "argmax"):
            shape = tuple(tensors[f"{info.name}.{what}"].shape)
            if shape != (num_bins, info.width):
                raise UserError(f"{f}: {info.name}.{what} has shape {shape}, the summary says "
                                f"({num_bins}, {info.width}); the run is damaged, rerun `iarmem localize`")
    per_image, reduce = _per_image(p, num_bins * sum(i.width for i in layers))
    return Localization(
        path=p.resolve(), summary=summary, run=run, layers=layers,
        unitmem={i.name: tensors[f"{i.name}.unitmem"].astype(np.float32) for i in layers},
        argmax={i.name: tensors[f"{i.name}.argmax"].astype(np.int64) for i in layers},
        image_ids=tensors["image_ids"].astype(np.int64).reshape(-1), bin_labels=labels,
        per_image=per_image, unit_reduce=reduce, refined=_refined(p),
    )


def _per_image(p: Path, size: int) -> tuple[dict[int, np.ndarray], str]:
    """per_image.safetensors of a per-image method's run (absent for UnitMem): {target: [F]}, unit reduce."""
    f = p / PER_IMAGE_FILE
    if not f.is_file():
        return {}, "max"
    try:
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata() or {}
            reduce = json.loads(meta.get("iarmem", "{}")).get("unit_reduce") or meta.get("unit_reduce", "max")
            ids, scores = fh.get_tensor("image_ids").numpy(), fh.get_tensor("scores").numpy()
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {f}: truncated or not a safetensors file ({e}); rerun `iarmem localize`") from e
    if scores.shape != (len(ids), size):
        raise UserError(f"{f} holds scores of shape {tuple(scores.shape)}, expected ({len(ids)}, {size}); the run is "
                        f"damaged, rerun `iarmem localize`")
    return {int(i): scores[k] for k, i in enumerate(ids)}, reduce


def _refined(p: Path) -> dict[int, dict[str, list[int]]]:
    f = p / REFINED_FILE
    if not f.is_file():
        return {}
    try:
        obj = json.loads(f.read_text())
        return {int(r["image"]): {k: [int(u) for u in v] for k, v in r["units"].items()}
                for r in obj["images"] if r["status"] == "refined"}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{f} is damaged ({e}); rerun `iarmem localize --refine`") from e


def _read_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: the localization run in {path.parent} is incomplete")
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); rerun `iarmem localize`") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a localization summary")
    return obj


def _layers_of(summary: dict[str, Any], where: Path) -> tuple[LayerInfo, ...]:
    try:
        layers = tuple(LayerInfo(str(x["name"]), str(x.get("kind", "fc1")), int(x.get("block", -1)), int(x["width"]))
                       for x in summary["layers"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where} has no valid 'layers' list ({e}); rerun `iarmem localize`") from e
    if not layers:
        raise UserError(f"{where} lists no layers; rerun `iarmem localize`")
    return layers


def check_architecture(loc: Localization, iar: IAR, model_spec: str) -> None:
    """Refuse a localization made on another architecture: every layer must exist with its width."""
    held = {layer.name: layer.width for layer in iar.unit_layers(UNIT_KINDS)}
    where = f"localization {loc.path}" if loc.path else "the localization"
    theirs = f"{where} was made on {loc.model_spec} ({loc.family or 'unknown family'})"
    if loc.family and loc.family != iar.family:
        raise UserError(f"{theirs} but the model to edit, {model_spec}, is a {iar.family} model; "
                        f"localize the model you edit")
    for info in loc.layers:
        if info.name not in held:
            example = next(iter(held), "none")
            raise UserError(f"{theirs}, whose layer {info.name} does not exist in the model to edit, {model_spec} "
                            f"({iar.family}, layers like {example}); localize the model you edit")
        if held[info.name] != info.width:
            raise UserError(f"{theirs}, whose layer {info.name} has {info.width} units, but in the model to edit, "
                            f"{model_spec}, it has {held[info.name]}; localize the model you edit")
