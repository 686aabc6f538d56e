"""Test-wide fixtures. The Hugging Face Hub is offline for every test, its cache a fresh folder: set
here, before anything imports huggingface_hub (it reads both when imported)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="iarmem-test-hub-")


@pytest.fixture
def hub_cache() -> Iterator[Path]:
    """The tests' (offline) Hub cache, empty at the start of the test."""
    root = Path(os.environ["HF_HUB_CACHE"])
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    yield root


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """One intra-op thread per test module: the tensors are tiny and the 2 CI cores are shared, so more
    threads only add OpenMP spin contention (up to 10x slower). Modules that train for minutes opt
    out with ``pytestmark = pytest.mark.all_threads``."""
    if request.node.get_closest_marker("all_threads"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
