"""Many symbols: one model per symbol trained one after another vs stacked (`--stack`).

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_stacked.py [--symbols 20] [--epochs 5] [--days 1000]
     [--early-stopping] [--stacked-only] [--parallel 2] [--baseline-kernel main] [--bf16 | --fp32]

Both runs go through `train_symbols` end to end (data, training, validation, callbacks,
checkpoints, final files), at the guide's model config and batch size, with early stopping
and the learning-rate schedule OFF (patience larger than the run) so that both do exactly
`--epochs` epochs per symbol; with `--early-stopping` they keep the defaults (patience 5,
LR patience 3), as `mambacast train` runs, and the epochs each symbol ran are printed.
`--memory` instead trains the symbols (`--epochs`) one way per fresh process and prints each one's
peak resident memory (the stack holds every symbol's activations at once).
The symbols are the first `--symbols` bundled stocks with at least `--days` days. Printed: wall
time of each, the ratio, seconds per symbol-epoch, the projection to the guide's 50 symbols x 50
epochs, and the largest weight difference between the two runs (they must agree). The projection
splits each way's wall time T(E) = F + E * P into what a run costs once per symbol (F: data, the
GARCH-t/HAR-t fits, calibration, final files and plots) and per epoch (P), from a second run of 1 epoch:
P = (T(E) - T(1)) / (E - 1), projected (F + 50 P) * 50 / symbols. (Until 2026-11-28 it was T(E) * 2500 /
(symbols * E), which multiplied the once-per-symbol costs by 50 / E as well.) `--stacked-only` leaves out
the one-after-another run; `--parallel N` adds a stacked run as N stacks of consecutive symbols in N worker
processes with the CPU threads divided between them (`mambacast train --stack --parallel N`);
`--baseline-kernel REF` adds a stacked run on the fused kernel of git REF (old kernel against new, same
process); `--bf16` / `--fp32` train under bfloat16 autocast / in float32 (MAMBACAST_CPU_BF16=1 / 0; without
either, the Trainer's default: bf16 where the CPU has it in hardware). The last line (SUMMARY) repeats the
projections with the load average each run started at.
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
from bench_model import baseline_kernel, using_kernel  # benchmarks/ is on sys.path when this script runs
from bench_train import timed_training

from mambacast import TrainConfig
from mambacast.data.sources import load_prices
from mambacast.data.universe import SAMPLE
from mambacast.nn.scan import scan_impl
from mambacast.ops.amp import cpu_bf16_autocast
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
    parser.add_argument("--stacked-only", action="store_true", help="leave out the one-after-another run")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="add a stacked run as N stacks in N worker processes (--stack --parallel N)")
    parser.add_argument("--baseline-kernel", metavar="REF", default=None,
                        help="add a stacked run on the fused kernel of git REF (e.g. main)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast (MAMBACAST_CPU_BF16=1)")
    precision.add_argument("--fp32", action="store_true", help="train in float32 (MAMBACAST_CPU_BF16=0)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.bf16 or args.fp32:
        os.environ["MAMBACAST_CPU_BF16"] = "1" if args.bf16 else "0"
    symbols = pick_symbols(args.symbols, args.days)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
          f"scan: {scan_impl(torch.zeros(1, 1, 1), torch.zeros(1, 16))}, bf16 autocast "
          f"{'on' if cpu_bf16_autocast() else 'off'}, load {os.getloadavg()[0]:.1f}")
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
    old = baseline_kernel(args.baseline_kernel) if args.baseline_kernel else None
    per = len(symbols) * args.epochs
    loads: dict[str, float] = {}
    one_epoch: dict[str, float] = {}   # each way's wall time for 1 epoch: splits its cost per symbol and per epoch
    fixed_one = TrainConfig(epochs=1, patience=10**6, lr_patience=10**6)
    project = not args.early_stopping and args.epochs > 1
    with tempfile.TemporaryDirectory() as serial_root, tempfile.TemporaryDirectory() as stack_root:
        serial = None
        if not args.stacked_only:
            loads["one after another"] = os.getloadavg()[0]
            serial = timed_training(symbols, cfg, args.days, serial_root, device="cpu")
            if project:
                one_epoch["one after another"] = timed_training(symbols, fixed_one, args.days, device="cpu")
        loads["stacked"] = os.getloadavg()[0]
        stacked = timed_training(symbols, cfg, args.days, stack_root, device="cpu", stack=True)
        if project:
            one_epoch["stacked"] = timed_training(symbols, fixed_one, args.days, device="cpu", stack=True)
        stacked_workers = None
        if args.parallel > 1:
            name = f"stacked, {args.parallel} workers"
            loads[name] = os.getloadavg()[0]
            stacked_workers = timed_training(symbols, cfg, args.days, device="cpu", stack=True,
                                             parallel=args.parallel)
            if project:
                one_epoch[name] = timed_training(symbols, fixed_one, args.days, device="cpu", stack=True,
                                                 parallel=args.parallel)
        stacked_old = None
        if old is not None:
            name = f"stacked, kernel of {args.baseline_kernel}"
            loads[name] = os.getloadavg()[0]
            with using_kernel(old):
                stacked_old = timed_training(symbols, cfg, args.days, device="cpu", stack=True)
                if project:
                    one_epoch[name] = timed_training(symbols, fixed_one, args.days, device="cpu", stack=True)
        worst, epochs = 0.0, []
        for s in symbols:
            b, meta_b = ModelStore(stack_root).load_model(s)
            epochs.append(meta_b["performance_metrics"]["total_epochs"])
            if serial is not None:
                a, meta = ModelStore(serial_root).load_model(s)
                sb = b.state_dict()
                worst = max(worst, max((v - sb[k]).abs().max().item() for k, v in a.state_dict().items()))
                if meta["performance_metrics"]["total_epochs"] != epochs[-1]:
                    print(f"{s}: {meta['performance_metrics']['total_epochs']} epochs alone, {epochs[-1]} stacked")
    if args.early_stopping:
        print(f"epochs run per symbol (early stopping, stacked): {epochs}, total {sum(epochs)}")
        per = sum(epochs)
    times = {"one after another": serial, "stacked": stacked}
    if stacked_workers is not None:
        times[f"stacked, {args.parallel} workers"] = stacked_workers
    if stacked_old is not None:
        times[f"stacked, kernel of {args.baseline_kernel}"] = stacked_old
    projections = []
    for name, seconds in times.items():
        if seconds is None:
            continue
        split = ""
        if args.early_stopping:
            minutes = seconds * 50 / len(symbols) / 60
        elif name in one_epoch:
            per_epoch = (seconds - one_epoch[name]) / (args.epochs - 1)
            once = one_epoch[name] - per_epoch
            minutes = (once + 50 * per_epoch) * 50 / len(symbols) / 60
            split = (f"; per epoch {per_epoch / len(symbols):.3f} s per symbol, once {once / len(symbols):.2f} s "
                     f"per symbol (1 epoch: {one_epoch[name]:.1f} s)")
        else:
            minutes = seconds / per * 2500 / 60
        print(f"{name + ':':<32} {seconds:7.1f} s  ({seconds / per:.3f} s per symbol-epoch; load {loads[name]:.1f}"
              f"{split})  projected {minutes:.1f} min")
        projections.append(f"{name} {minutes:.1f} min (load {loads[name]:.1f})")
    if serial is not None:
        print(f"stacked speed-up over one after another {serial / stacked:.2f}x; "
              f"largest weight difference between the two runs: {worst:.2e}")
    what = f"with early stopping (x 50/{len(symbols)})" if args.early_stopping else "x 50 epochs"
    print(f"SUMMARY projected 50 symbols {what} (target <= 15 min; guide: 3-4 h CPU, 20-30 min GPU): "
          + "; ".join(projections))


if __name__ == "__main__":
    main()
