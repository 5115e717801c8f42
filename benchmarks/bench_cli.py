"""How long a `mambacast` command takes to start: what `--help` and a one-line argument error cost.

Run: .venv/bin/python benchmarks/bench_cli.py [--repeats 7] [--models DIR]

Each row is a fresh process, timed from spawn to exit, median (and minimum) of `--repeats`, the rows interleaved
so that load hits them alike. The peer is the floor every command pays: `python -c "import torch"`. Rows:
`import mambacast.cli`, `mambacast --help`, `mambacast train --symbols AAPL --epochs 0` (a user mistake,
answered with one line and exit 2), and `mambacast predict --symbols AAPL,MSFT` from the models in `--models`
(default: the repository's `models/mamba`, which `make train` fills; without them it times the momentum fallback,
and says so).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
    parser.add_argument("--models", type=Path, default=REPO / "models" / "mamba",
                        help="model store for the predict row (default: the repository's models/mamba)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    rows = {**ROWS, "mambacast predict --symbols AAPL,MSFT": [*CLI, "predict", "--symbols", "AAPL,MSFT",
                                                               "--save-dir", str(args.models)]}
    if not (args.models / "metadata").is_dir():
        print(f"no models in {args.models}: the predict row times the momentum fallback (run `make train` first)")
    times: dict[str, list[float]] = {name: [] for name in rows}
    load = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, argv in rows.items():
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t0)
    floor = statistics.median(times[next(iter(rows))])
    print(f"{args.repeats} fresh processes per row, interleaved; load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"{name:<50} median {median:5.2f} s  min {min(t):5.2f} s  ({median - floor:+.2f} s over the peer)")


if __name__ == "__main__":
    main()
