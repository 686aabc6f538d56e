"""How long the `iarmem` command takes to answer before any work: start-up and argument parsing.

  .venv/bin/python benchmarks/cli_startup.py --repeats 5

Each row runs a fresh process (``python -m iarmem ARGS``) --repeats times and prints the median wall time.
The reference row, measured in the same run for the ratios, is what every command line paid before the CLI
imported only the command being run and the stages imported pyplot and scipy.stats on first use: the parser
with every command's options (``cli.build_parser()``) with pyplot and scipy.stats imported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

ROWS = [
    ("iarmem --version", ["--version"]),
    ("iarmem --help", ["--help"]),
    ("iarmem frobnicate (unknown command)", ["frobnicate"]),
    ("iarmem train (missing arguments)", ["train"]),
    ("iarmem extract --help", ["extract", "--help"]),
    ("iarmem sweep --help", ["sweep", "--help"]),
    ("iarmem bench --help", ["bench", "--help"]),
]
BEFORE = ("import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot, scipy.stats; "
          "from iarmem.cli import build_parser; build_parser()")


def _time(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, medians of {args.repeats} "
          "fresh processes\n")
    before = _time([sys.executable, "-c", BEFORE], args.repeats)
    print("| command line | seconds | against the reference |")
    print("|---|---|---|")
    for label, argv in ROWS:
        t = _time([sys.executable, "-m", "iarmem", *argv], args.repeats)
        print(f"| `{label}` | {t:.2f} | {t / before:.2f}x |")
    print(f"| reference: every command's parser, pyplot and scipy.stats imported | {before:.2f} | 1.00x |")


if __name__ == "__main__":
    main()
