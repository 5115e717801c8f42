"""`mambacast tune`: wall time of a study, and whether its preset beats the named presets on validation CRPS.

Run: .venv/bin/python benchmarks/bench_tune.py [--symbol AAPL] [--trials 20] [--preset small] [--days 2000]
     [--seeds 42,7,123] [--out DIR]

1. `mambacast tune --symbols SYMBOL --trials N --preset PRESET` as a user runs it (its own local Ray cluster
   sized to the machine, a fresh study), timed end to end; its output lines are printed.
2. The symbol trained with `train_symbol` under the default preset, the base preset and the tuned preset file,
   each with every seed of `--seeds`: the best validation CRPS each stores (the study's objective). The first
   seed is the study's own, the very value it minimised over the trials (so the tuned preset is favoured there:
   it was selected on that validation set); the other seeds show whether the gain survives a new initialisation.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mambacast.config import preset
from mambacast.train.pipeline import train_symbol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbol", default="AAPL")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--days", type=int, default=2000)
    parser.add_argument("--seeds", default="42,7,123")
    parser.add_argument("--out", help="keep the study, preset and plot here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-tune-"))
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench-{args.symbol}-{args.preset}-{int(time.time())}"
    tuned = out / f"{name}.json"
    print(f"{os.cpu_count()} cores, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    cmd = [sys.executable, "-m", "mambacast.cli", "tune", "--symbols", args.symbol, "--trials", str(args.trials),
           "--preset", args.preset, "--days", str(args.days), "--study-name", name,
           "--storage", str(out / f"{name}.db"), "--out", str(tuned), "--plot", str(out / f"{name}.png")]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print("\n".join(line for line in proc.stdout.splitlines() if line.strip()))
    if proc.returncode != 0:
        raise SystemExit(f"tune failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    print(f"tune wall time: {wall:.1f} s ({wall / 60:.1f} min), load after {os.getloadavg()[0]:.1f}", flush=True)

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    for label, which in (("default", "default"), (args.preset, args.preset), ("tuned", str(tuned))):
        model_config, train_config = preset(which)
        values = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                train_config.seed = seed
                result = train_symbol(args.symbol, model_config=model_config, train_config=train_config,
                                      days=args.days, save_dir=tmp, device="cpu")
            values.append(result["best_val_crps"])
        rows[label] = values
        print(f"{label:10s} val CRPS per seed {seeds}: " + ", ".join(f"{v:.4f}" for v in values)
              + f"   mean {statistics.mean(values):.4f}", flush=True)
    for label in ("default", args.preset):
        diffs = [(t - b) / b * 100 for t, b in zip(rows["tuned"], rows[label], strict=True)]
        print(f"tuned vs {label}: " + ", ".join(f"{d:+.2f}%" for d in diffs) + " (negative: tuned is better)")
    print(f"study, preset and plot in {out}")


if __name__ == "__main__":
    main()
