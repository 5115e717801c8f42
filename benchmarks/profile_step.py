"""Where a training step's time goes: torch.profiler over train steps at the guide config.

Run: .venv/bin/python benchmarks/profile_step.py [--steps 20] [--batch 32] [--rows 25]

The step is the Trainer's: a batch of windows, `forward_distribution`, the default objective (the
Student-t negative log-likelihood, `train.objective`), backward, clipping by global norm 1.0, Adam.
Prints the median step time without the profiler, then the profiler's operators by self CPU time,
and the matmul rate (counted matmul FLOPs, as in bench_model.py, over the time in aten::mm/addmm/bmm)
beside the measured matmul peak.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from bench_model import matmul_peak_gflops, model_flops  # benchmarks/ is on sys.path when this script runs
from torch.profiler import ProfilerActivity, profile

from mambacast.config import MambaConfig
from mambacast.nn.mamba import MambaModel
from mambacast.train.objective import objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = MambaConfig()
    model = MambaModel(cfg, 26)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, Y = torch.randn(700, 60, 26), torch.randn(700, 4)

    def step() -> None:
        idx = torch.randperm(len(X))[:args.batch]
        x, y = X[idx], Y[idx]
        loc, scale, df = model.forward_distribution(x)
        loss, _ = objective("nll", y, loc, scale, df)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(args.steps * 2):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, load {os.getloadavg()[0]:.1f}")
    print(f"train step, batch {args.batch}, guide config: median {times[len(times) // 2] * 1e3:.1f} ms "
          f"over {len(times)} steps (no profiler)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    mm_us = sum(e.self_cpu_time_total for e in table if e.key in ("aten::mm", "aten::addmm", "aten::addmm_",
                                                                   "aten::bmm"))
    flops = model_flops(cfg, 26, args.batch, 60)["matmul_train"]     # counted as bench_model.py counts them
    rate = flops / (mm_us / args.steps * 1e-6) / 1e9
    print(f"matmuls: {mm_us / args.steps / 1e3:.1f} ms per step for {flops / 1e9:.2f} GFLOP = {rate:.0f} GFLOP/s; "
          f"fp32 matmul peak (2048^3 torch.mm, this run): {matmul_peak_gflops():.0f} GFLOP/s")

if __name__ == "__main__":
    main()
