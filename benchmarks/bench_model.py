"""Forward and train-step time of the Mamba model at the guide's config, against mambapy.

Run: .venv/bin/python benchmarks/bench_model.py [--batch 32 --seq-len 60 --repeats 20]

Times are medians over `--repeats` runs after warm-up, on this machine's threads. The table
reports each row's ratio to mambapy measured in the same run, since absolute times on a
shared 2-core machine are only indicative.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mambacast import MambaConfig, MambaModel
from mambacast.nn import mamba as mamba_module
from mambacast.nn.scan import selective_scan, selective_scan_ref


def median_ms(fn: Callable[[], None], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


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


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def train_step() -> None:
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_ms(forward, repeats), median_ms(train_step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=60)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = MambaConfig()
    x = torch.randn(args.batch, args.seq_len, args.features)
    y = torch.randn(args.batch, len(cfg.prediction_horizons))
    rows: list[tuple[str, float, float]] = []

    try:
        rows.append(("mambapy (pscan)", *measure(MambapyForecaster(cfg, args.features), x, y, args.repeats)))
    except ImportError:
        print("mambapy is not installed (pip install -e '.[bench]'); ratios are left out")
    ours = MambaModel(cfg, args.features)
    rows.append(("mambacast selective_scan", *measure(ours, x, y, args.repeats)))
    mamba_module.selective_scan = selective_scan_ref  # swap the block's scan for the reference loop
    try:
        rows.append(("mambacast selective_scan_ref", *measure(ours, x, y, args.repeats)))
    finally:
        mamba_module.selective_scan = selective_scan

    print(f"batch={args.batch} seq_len={args.seq_len} d_model={cfg.d_model} layers={cfg.num_layers} "
          f"d_state={cfg.d_state} features={args.features} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    peer = rows[0] if rows[0][0].startswith("mambapy") else None
    print(f"{'model':<30} {'forward ms':>11} {'train step ms':>14} {'step vs mambapy':>16}")
    for name, fwd, step in rows:
        ratio = f"{peer[2] / step:.2f}x faster" if peer else "-"
        print(f"{name:<30} {fwd:>11.1f} {step:>14.1f} {ratio:>16}")


if __name__ == "__main__":
    main()
