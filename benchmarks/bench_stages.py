"""Wall time of each stage of `iarmem bench` (INJ, DEL, PAPER, DUP) on a trained model folder.

Runs the command itself (a fresh process per repeat, a fresh run folder, a fresh model cache so
DUP trains every time) and reads the per-stage seconds the run records in summary.json; prints the
median and the range over repeats, and the whole run's wall time.

  .venv/bin/python benchmarks/bench_stages.py runs/m12/s0/rar/train --repeats 3 \
      -- --rates 1 --images 1 --budgets 1 --tops 5 --dup-steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder written by `iarmem train`")
    p.add_argument("--data", default="mnist")
    p.add_argument("--stages", default="inj,del,paper,dup")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the bench process")
    p.add_argument("extra", nargs="*", help="further `iarmem bench` options (after --)")
    a = p.parse_args()
    runs: list[dict[str, float]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    exe = Path(sys.executable).with_name("iarmem")
    for i in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench"
            t0 = time.monotonic()
            subprocess.run([str(exe), "bench", a.model, a.data, "--stages", a.stages, "--out", str(out),
                            "--cache", str(Path(tmp) / "models"), *a.extra], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            total = time.monotonic() - t0
            seconds = json.loads((out / "summary.json").read_text())["seconds"]
        runs.append({**seconds, "total": total})
        print(f"repeat {i + 1}/{a.repeats}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1].items()),
              file=sys.stderr)
    print(f"| stage | median s (min-max), {a.repeats} runs, {a.threads} threads |\n|---|---|")
    for key in runs[0]:
        v = np.array([r[key] for r in runs])
        print(f"| {key} | {np.median(v):.1f} ({v.min():.1f}-{v.max():.1f}) |")


if __name__ == "__main__":
    main()
