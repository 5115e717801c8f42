"""Many symbols: one model per symbol trained one after another vs stacked (`--stack`).

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_stacked.py [--symbols 20] [--epochs 5] [--days 1000]
     [--early-stopping]

Both runs go through `train_symbols` end to end (data, training, validation, callbacks,
checkpoints, final files), at the guide's model config and batch size, with early stopping
and the learning-rate schedule OFF (patience larger than the run) so that both do exactly
`--epochs` epochs per symbol; with `--early-stopping` they keep the defaults (patience 5,
LR patience 3), as `mambacast train` runs, and the epochs each symbol ran are printed.
`--memory` instead trains the symbols (`--epochs`) one way per fresh process and prints each one's
peak resident memory (the stack holds every symbol's activations at once).
The symbols are the first `--symbols` bundled stocks with at least `--days` days. Printed: wall
time of each, the ratio, seconds per symbol-epoch, the projection to the guide's 50 symbols x 50
epochs (linear in symbols x epochs, as every epoch costs the same), and the largest weight
difference between the two runs (they must agree).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile

import torch
from bench_train import timed_training  # benchmarks/ is on sys.path when this script runs

from mambacast import TrainConfig
from mambacast.data.sources import load_prices
from mambacast.data.universe import SAMPLE
from mambacast.nn.scan import scan_impl
from mambacast.store import ModelStore


def pick_symbols(n: int, days: int) -> list[str]:
    chosen = []
    for symbol in SAMPLE:
        if symbol.startswith("^") or symbol == "GOOG":   # indices, and GOOGL's twin
            continue
        if len(load_prices(symbol, days=None)) >= days + 200:
            chosen.append(symbol)
        if len(chosen) == n:
            return chosen
    raise SystemExit(f"only {len(chosen)} bundled symbols have {days + 200} days")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--early-stopping", action="store_true", help="the default callbacks, not fixed epochs")
    parser.add_argument("--memory", action="store_true", help="peak RSS of each way, each in its own process")
    parser.add_argument("--only", choices=["serial", "stacked"], help=argparse.SUPPRESS)   # --memory's child runs
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    symbols = pick_symbols(args.symbols, args.days)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
          f"scan: {scan_impl(torch.zeros(1, 1, 1), torch.zeros(1, 16))}, load {os.getloadavg()[0]:.1f}")
    print(f"{len(symbols)} symbols x {args.epochs} epochs, {args.days} days, guide config, batch 32: "
          + ",".join(symbols))
    cfg = TrainConfig(epochs=args.epochs) if args.early_stopping else \
        TrainConfig(epochs=args.epochs, patience=10**6, lr_patience=10**6)
    if args.only:
        seconds = timed_training(symbols, cfg, args.days, device="cpu", stack=args.only == "stacked")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.only}: {seconds:.1f} s, peak RSS {peak:.0f} MB")
        return
    if args.memory:
        for way in ("serial", "stacked"):
            subprocess.run([sys.executable, __file__, "--only", way, "--symbols", str(args.symbols), "--epochs",
                            str(args.epochs), "--days", str(args.days)], check=True)
        return
    timed_training(symbols[:1], TrainConfig(epochs=1), args.days, device="cpu")   # one-time costs: kernel, imports
    with tempfile.TemporaryDirectory() as serial_root, tempfile.TemporaryDirectory() as stack_root:
        serial = timed_training(symbols, cfg, args.days, serial_root, device="cpu")
        stacked = timed_training(symbols, cfg, args.days, stack_root, device="cpu", stack=True)
        worst, epochs = 0.0, []
        for s in symbols:
            a, meta = ModelStore(serial_root).load_model(s)
            b, meta_b = ModelStore(stack_root).load_model(s)
            sb = b.state_dict()
            worst = max(worst, max((v - sb[k]).abs().max().item() for k, v in a.state_dict().items()))
            epochs.append(meta["performance_metrics"]["total_epochs"])
            if meta_b["performance_metrics"]["total_epochs"] != epochs[-1]:
                print(f"{s}: {epochs[-1]} epochs alone, {meta_b['performance_metrics']['total_epochs']} stacked")
    if args.early_stopping:
        print(f"epochs run per symbol (early stopping): {epochs}, total {sum(epochs)}")
    per = sum(epochs)
    print(f"one after another: {serial:7.1f} s  ({serial / per:.3f} s per symbol-epoch)")
    print(f"stacked:           {stacked:7.1f} s  ({stacked / per:.3f} s per symbol-epoch)   "
          f"speed-up {serial / stacked:.2f}x")
    if args.early_stopping:
        n = len(symbols)
        print(f"projected 50 symbols with early stopping (x 50/{n}): one after another {serial * 50 / n / 60:.1f} "
              f"min, stacked {stacked * 50 / n / 60:.1f} min   (guide: 3-4 h CPU, 20-30 min GPU)")
    else:
        print(f"projected 50 symbols x 50 epochs: one after another {serial / per * 2500 / 60:.1f} min, "
              f"stacked {stacked / per * 2500 / 60:.1f} min   (guide: 3-4 h CPU, 20-30 min GPU)")
    print(f"largest weight difference between the two runs: {worst:.2e}")


if __name__ == "__main__":
    main()
