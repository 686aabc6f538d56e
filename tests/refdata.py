"""Reference fixtures for parity tests: where they live and how to load them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "IARMEM_REFERENCE_DIR"


def reference_dir() -> Path | None:
    """Fixtures folder: $IARMEM_REFERENCE_DIR, else ../shared/reference beside the checkout."""
    env = os.environ.get(ENV_VAR)
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "reference")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def fixture_sets(family: str) -> list[str]:
    """Names like 'var_A' of every fixture set present for a family (set A, set B, ...)."""
    d = reference_dir()
    if d is None:
        return []
    return sorted(p.stem for p in d.glob(f"{family}_*.json") if (d / f"{p.stem}.safetensors").exists())


def load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    d = reference_dir()
    if d is None:
        pytest.skip(f"reference fixtures not found: set {ENV_VAR} or place them in ../shared/reference")
    meta = json.loads((d / f"{name}.json").read_text())
    tensors = load_file(str(d / f"{name}.safetensors"))
    return meta, tensors


def official_shapes() -> dict:
    d = reference_dir()
    if d is None or not (d / "official_shapes.json").exists():
        pytest.skip(f"official_shapes.json not found: set {ENV_VAR} or place it in ../shared/reference")
    return json.loads((d / "official_shapes.json").read_text())


def params_for(family: str) -> list:
    """pytest params over a family's fixture sets; one skipped param when there are none."""
    names = fixture_sets(family)
    if not names:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"no {family} reference fixtures: set {ENV_VAR} or place them in ../shared/reference"))]
    return names


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
