"""Wall time of training at the guide's config, and what `--parallel` buys on this machine.

Run: .venv/bin/python benchmarks/bench_train.py [--epochs 50] [--days 1000] [--skip-parallel]
     [--baseline-kernel main] [--bf16 | --fp32]

1. One symbol (AAPL, ~1000 days) for `--epochs` full epochs with early stopping OFF (patience
   larger than the run), the guide's model and batch size; beside the guide's
   "1 symbol, 50 epochs: 2-4 min CPU, 30-50 s on an RTX 3090". With `--baseline-kernel REF` the same
   run follows on the fused kernel of git REF (old kernel against new, one process, same load);
   `--bf16` / `--fp32` train under bfloat16 autocast / in float32 (MAMBACAST_CPU_BF16=1 / 0,
   `mambacast.ops.amp`; without either, the Trainer's default: bf16 where the CPU has it in hardware).
2. Three symbols (AAPL, MSFT, GOOGL) through `train_symbols` with parallel=1 and parallel=2
   (each a fresh model store), for the speed-up of worker processes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import torch
from bench_model import baseline_kernel, using_kernel  # benchmarks/ is on sys.path when this script runs

from mambacast import MambaConfig, TrainConfig
from mambacast.nn.scan import scan_impl
from mambacast.ops.amp import cpu_bf16_autocast
from mambacast.store import ModelStore
from mambacast.train import train_symbols


def timed_training(symbols: list[str], train_config: TrainConfig, days: int, save_dir: str | None = None,
                   **how: object) -> float:
    """Wall time of `train_symbols` (guide model config) into `save_dir` (a temporary folder if None);
    `how`: parallel=N or stack=True."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        results = train_symbols(symbols, model_config=MambaConfig(), train_config=train_config, days=days,
                                save_dir=save_dir or tmp, **how)
        elapsed = time.perf_counter() - t0
    failed = [r["symbol"] for r in results if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"training failed for {failed}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--parallel-epochs", type=int, default=10, help="epochs per symbol for the parallel runs")
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--baseline-kernel", metavar="REF", default=None,
                        help="repeat the 1-symbol run on the fused kernel of git REF (e.g. main)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast (MAMBACAST_CPU_BF16=1)")
    precision.add_argument("--fp32", action="store_true", help="train in float32 (MAMBACAST_CPU_BF16=0)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.bf16 or args.fp32:
        os.environ["MAMBACAST_CPU_BF16"] = "1" if args.bf16 else "0"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
          f"scan implementation: {scan_impl(torch.zeros(1, 1, 1), torch.zeros(1, 16))}, "
          f"bf16 autocast {'on' if cpu_bf16_autocast() else 'off'}")

    full = TrainConfig(epochs=args.epochs, patience=10**6, lr_patience=10**6)
    kernels = {"this tree": None}
    if args.baseline_kernel:
        kernels[f"kernel of {args.baseline_kernel}"] = baseline_kernel(args.baseline_kernel)
    summary = []
    for name, ops in kernels.items():
        with using_kernel(ops), tempfile.TemporaryDirectory() as root:
            load = os.getloadavg()[0]
            seconds = timed_training(["AAPL"], full, args.days, save_dir=root)
            history = json.loads(ModelStore(root).metrics_path("AAPL").read_text())["history"]
        epochs = sorted(h["epoch_time"] for h in history)
        print(f"\n1 symbol x {args.epochs} full epochs, {args.days} days, guide config, batch 32, {name}: "
              f"{seconds:.1f} s ({seconds / args.epochs:.2f} s/epoch; load {load:.1f} -> {os.getloadavg()[0]:.1f})   "
              f"guide: 2-4 min CPU, 30-50 s RTX 3090")
        # The machine's speed drifts for tens of seconds at a time: the spread of the epochs shows how much.
        print(f"  epochs: min {epochs[0]:.3f} s, median {statistics.median(epochs):.3f} s, max {epochs[-1]:.3f} s; "
              f"outside the epochs {seconds - sum(epochs):.1f} s (data, baselines, calibration, final files)")
        summary.append(f"{name} {seconds:.1f} s (load {load:.1f})")
    print(f"SUMMARY 1 symbol x {args.epochs} epochs (target <= 30 s): " + "; ".join(summary))

    if not args.skip_parallel:
        cfg = TrainConfig(epochs=args.parallel_epochs, patience=10**6, lr_patience=10**6)
        symbols = ["AAPL", "MSFT", "GOOGL"]
        serial = timed_training(symbols, cfg, args.days, parallel=1)
        two = timed_training(symbols, cfg, args.days, parallel=2)
        print(f"\n3 symbols x {args.parallel_epochs} epochs: --parallel 1 {serial:.1f} s, --parallel 2 {two:.1f} s "
              f"(speed-up {serial / two:.2f}x)")


if __name__ == "__main__":
    main()
