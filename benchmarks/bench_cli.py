"""How long a `mambacast` command takes to start: what `--help` and a one-line argument error cost.

Run: .venv/bin/python benchmarks/bench_cli.py [--repeats 7]

Each row is a fresh process, timed from spawn to exit, median (and minimum) of `--repeats`, the rows interleaved
so that load hits them alike. The peer is the floor every command pays: `python -c "import torch"`. Rows:
`import mambacast.cli`, `mambacast --help`, and `mambacast train --symbols AAPL --epochs 0` (a user mistake,
answered with one line and exit 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "mambacast.cli"]
ROWS = {
    "python -c 'import torch' (peer: the floor)": [sys.executable, "-c", "import torch"],
    "import mambacast.cli": [sys.executable, "-c", "import mambacast.cli"],
    "mambacast --help": [*CLI, "--help"],
    "mambacast train ... --epochs 0 (one-line error)": [*CLI, "train", "--symbols", "AAPL", "--epochs", "0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, argv in ROWS.items():
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t0)
    floor = statistics.median(times[next(iter(ROWS))])
    print(f"{args.repeats} fresh processes per row, interleaved; load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"{name:<50} median {median:5.2f} s  min {min(t):5.2f} s  ({median - floor:+.2f} s over the peer)")


if __name__ == "__main__":
    main()
