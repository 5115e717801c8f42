"""Forward and train-step time of the Mamba model at the guide's config, against mambapy.

Run: .venv/bin/python benchmarks/bench_model.py [--batch 32 --seq-len 60 --repeats 20]

Rows (one process, one run, rounds interleaved so that load on a shared machine hits every row
alike):
  mambapy (pscan)          the peer: mambapy's Mamba stack with our embedding and heads
  mambacast fused          the default on CPU: the fused block (C++ kernels, hand-written backward)
  mambacast chunked        MAMBACAST_SCAN=chunked: the block in PyTorch ops, chunked scan
  mambacast ref            MAMBACAST_SCAN=ref: the block in PyTorch ops, sequential reference scan

Times are medians over `--repeats` runs after warm-up, on this machine's threads. Each row's
ratio is against mambapy measured in the same run, since absolute times on a shared 2-core
machine are only indicative.

FLOPs (counted, not measured): every matmul of the model (embedding, in_proj, x_proj, dt_proj,
out_proj, the heads' last step; depthwise conv as 2*d_conv per channel and step) at 2*M*K*N,
the backward at twice the forward except the input gradient of the embedding (the data need
none); plus the selective scan's recurrence at 7 FLOPs per (step, channel, state) forward
(delta*A, exp counted as 1, the two products and the sum of h, and C.h) and 14 backward. Norms,
activations, the optimizer and the kernels' recomputation in the backward are not counted. The
achieved rate is those FLOPs over the train-step time, set beside the fp32 matmul peak measured
in the same run with a 2048x2048 torch.mm.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mambacast import MambaConfig, MambaModel


class MambapyForecaster(nn.Module):
    """mambapy's Mamba stack with the same embedding and heads as ours, for a like-for-like step."""

    def __init__(self, cfg: MambaConfig, n_features: int):
        from mambapy.mamba import Mamba
        from mambapy.mamba import MambaConfig as PyConfig

        super().__init__()
        self.embed = nn.Linear(n_features, cfg.d_model)
        self.mamba = Mamba(PyConfig(d_model=cfg.d_model, n_layers=cfg.num_layers, d_state=cfg.d_state,
                                    expand_factor=cfg.expand, d_conv=cfg.d_conv, pscan=True))
        self.head = nn.Linear(cfg.d_model, len(cfg.prediction_horizons))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mamba(self.embed(x))[:, -1])


def model_flops(cfg: MambaConfig, n_features: int, batch: int, seq_len: int) -> dict[str, float]:
    """Counted FLOPs of one forward and one train step (forward + backward), see the module doc."""
    tokens = batch * seq_len
    d, di, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_value
    per_layer = 2 * (d * 2 * di + di * (r + 2 * n) + r * di + di * d) + 2 * cfg.d_conv * di
    embed = 2 * n_features * d
    head = 2 * d * len(cfg.prediction_horizons) * batch      # last step only
    mm_fwd = tokens * (embed + cfg.num_layers * per_layer) + head
    mm_bwd = 2 * mm_fwd - tokens * embed                     # no gradient for the input data
    scan_fwd = 7 * tokens * di * n * cfg.num_layers
    return {"matmul_fwd": mm_fwd, "matmul_train": mm_fwd + mm_bwd, "scan_fwd": scan_fwd,
            "scan_train": 3 * scan_fwd, "fwd": mm_fwd + scan_fwd, "train": mm_fwd + mm_bwd + 3 * scan_fwd}


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


class Row:
    def __init__(self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: str | None):
        self.name, self.model, self.env = name, model, env
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.x, self.y = x, y
        self.fwd: list[float] = []
        self.step: list[float] = []

    def _run(self, fn: Callable[[], None], out: list[float], n: int) -> None:
        old = os.environ.get("MAMBACAST_SCAN")
        if self.env is not None:
            os.environ["MAMBACAST_SCAN"] = self.env
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        finally:
            if old is None:
                os.environ.pop("MAMBACAST_SCAN", None)
            else:
                os.environ["MAMBACAST_SCAN"] = old

    def forward(self) -> None:
        with torch.no_grad():
            self.model(self.x)

    def train_step(self) -> None:
        loss = nn.functional.mse_loss(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def measure(self, n: int, record: bool = True) -> None:
        self._run(self.forward, self.fwd if record else [], n)
        self._run(self.train_step, self.step if record else [], n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=60)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-ref", action="store_true", help="leave out the (slow) reference-scan row")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = MambaConfig()
    x = torch.randn(args.batch, args.seq_len, args.features)
    y = torch.randn(args.batch, len(cfg.prediction_horizons))
    rows: list[Row] = []
    try:
        rows.append(Row("mambapy (pscan)", MambapyForecaster(cfg, args.features), x, y, None))
    except ImportError:
        print("mambapy is not installed (pip install -e '.[bench]'); ratios are left out")
    ours = MambaModel(cfg, args.features)
    from mambacast.nn.scan import scan_impl

    fused = scan_impl(x, torch.empty(1, cfg.d_state)) == "fused"
    rows.append(Row("mambacast fused" if fused else "mambacast default (kernel unavailable)", ours, x, y, None))
    rows.append(Row("mambacast chunked", ours, x, y, "chunked"))
    if not args.skip_ref:
        rows.append(Row("mambacast ref", ours, x, y, "ref"))

    for row in rows:                                   # warm-up (and the kernel build, if any)
        row.measure(3, record=False)
    peak = matmul_peak_gflops()
    rounds = max(1, args.repeats // 5)
    for _ in range(rounds):                            # interleaved rounds of 5 runs per row
        for row in rows:
            row.measure(5)
    peak = max(peak, matmul_peak_gflops())

    flops = model_flops(cfg, args.features, args.batch, args.seq_len)
    print(f"batch={args.batch} seq_len={args.seq_len} d_model={cfg.d_model} layers={cfg.num_layers} "
          f"d_state={cfg.d_state} d_inner={cfg.d_inner} features={args.features} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} runs/row={rounds * 5} "
          f"load average={os.getloadavg()[0]:.1f}")
    print(f"counted FLOPs per train step: {flops['train'] / 1e9:.3f} G "
          f"(matmul {flops['matmul_train'] / 1e9:.3f} G, scan {flops['scan_train'] / 1e9:.3f} G); "
          f"fp32 matmul peak (2048^3 torch.mm, this run): {peak:.0f} GFLOP/s")
    peer = rows[0] if rows[0].name.startswith("mambapy") else None
    peer_step = statistics.median(peer.step) if peer else None
    print(f"{'model':<28} {'forward ms':>11} {'train step ms':>14} {'step vs mambapy':>16} {'GFLOP/s':>8} "
          f"{'% of peak':>9}")
    for row in rows:
        fwd, step = statistics.median(row.fwd) * 1e3, statistics.median(row.step) * 1e3
        ratio = f"{peer_step * 1e3 / step:.2f}x faster" if peer_step else "-"
        rate = flops["train"] / (step / 1e3) / 1e9
        print(f"{row.name:<28} {fwd:>11.1f} {step:>14.1f} {ratio:>16} {rate:>8.1f} {100 * rate / peak:>8.1f}%")


if __name__ == "__main__":
    main()
