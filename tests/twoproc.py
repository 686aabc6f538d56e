"""One process, then two torchrun CPU processes (gloo), of the same `iarmem` command: the scale-out tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from iarmem.cli import main


def one_then_two(argv: list[str], one: Path, two: Path) -> subprocess.CompletedProcess[str]:
    """``iarmem ARGV --out ONE`` in this process (one thread, as each torchrun process runs), then under
    torchrun with two processes into TWO; the torchrun process, checked to have succeeded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*argv, "--out", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "iarmem", *argv, "--out", str(two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
