"""Test-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


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
