"""Would a Mamba-2 block (SSD) train faster on the CPU than our fused Mamba-1 block? Issue 17's optional item.

Run: .venv/bin/python benchmarks/bench_ssd.py [--repeats 60] [--heads 2,4,8]

Times forward + backward of one block's inside at the guide's shapes (batch 32, 60 steps, d_inner 128,
d_state 16), medians of `--repeats` calls, the two ways interleaved twice:

- Mamba-1, as mambacast trains it: `nn.fused.mamba_inner` (conv + SiLU, x_proj, dt_proj, softplus, the selective
  scan, D and the gate in one fused autograd node).
- Mamba-2's SSD (Dao & Gu 2024, "Transformers are SSMs", the quadratic "attention" form of the state space
  dual) in PyTorch ops, one chunk covering the 60 steps: the conv over x, B and C (the fused conv kernel),
  softplus(dt), L = exp(segsum(dt A)) per head (a scalar A per head), y = (C B^T * L) (dt x) + D x, the gate.
  Mamba-2's in_proj (x, z, B, C and dt at once) replaces Mamba-1's in_proj and x_proj with about the same
  FLOPs and is not timed on either side.

Before timing, the SSD form is checked against the sequential recurrence h_t = exp(dt_t A) h_{t-1} +
dt_t B_t x_t, y_t = C_t h_t (so the timed code computes Mamba-2's block).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mambacast.nn.fused import causal_conv1d, mamba_inner
from mambacast.ops.heap import kept_heap

BATCH, STEPS, D_INNER, D_STATE, DT_RANK = 32, 60, 128, 16, 4


def median_ms(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def segsum(x: Tensor) -> Tensor:
    """x (..., T) -> (..., T, T): entry [t, s] = x[s+1] + ... + x[t] for s <= t, -inf above the diagonal."""
    T = x.size(-1)
    cs = torch.cumsum(x, -1)
    out = cs[..., :, None] - cs[..., None, :]
    return out.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device)), float("-inf"))


def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Mamba-2's SSM in its quadratic form: x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, n) ->
    y (b, l, h, p) = sum over s <= t of (C_t . B_s) exp(A (dt_{s+1} + ... + dt_t)) dt_s x_s."""
    L = torch.exp(segsum((dt * A).transpose(1, 2)))                  # (b, h, l, l)
    scores = (C @ B.transpose(1, 2))[:, None] * L                    # (b, h, l, l)
    return (scores @ (x * dt[..., None]).transpose(1, 2)).transpose(1, 2)


def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """`ssd` step by step: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t (h: (b, h, p, n))."""
    batch, steps, nh, p = x.shape
    h = x.new_zeros(batch, nh, p, B.shape[-1])
    ys = []
    for t in range(steps):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None]
        ys.append(h @ C[:, t, None, :, None])
    return torch.stack(ys, 1).squeeze(-1)


def mamba1_block() -> Callable[[], None]:
    xz = torch.randn(BATCH, STEPS, 2 * D_INNER, requires_grad=True)
    conv_w = (torch.randn(D_INNER, 4) * 0.3).requires_grad_()
    conv_b = torch.zeros(D_INNER, requires_grad=True)
    x_proj = (torch.randn(DT_RANK + 2 * D_STATE, D_INNER) * 0.1).requires_grad_()
    dt_proj = (torch.randn(D_INNER, DT_RANK) * 0.3).requires_grad_()
    dt_bias = torch.full((D_INNER,), -3.0, requires_grad=True)
    A_log = torch.log(torch.arange(1, D_STATE + 1).float().repeat(D_INNER, 1)).requires_grad_()
    D = torch.ones(D_INNER, requires_grad=True)

    def step() -> None:
        y, _ = mamba_inner(xz, conv_w, conv_b, x_proj, dt_proj, dt_bias, -torch.exp(A_log), D)
        y.sum().backward()
    return step


def mamba2_block(heads: int) -> Callable[[], None]:
    p, n = D_INNER // heads, D_STATE
    proj = torch.randn(BATCH, STEPS, D_INNER + 2 * n + D_INNER + heads, requires_grad=True)   # x, B, C, z, dt
    conv_w = (torch.randn(D_INNER + 2 * n, 4) * 0.3).requires_grad_()
    conv_b = torch.zeros(D_INNER + 2 * n, requires_grad=True)
    A_log = torch.zeros(heads, requires_grad=True)
    D = torch.ones(heads, requires_grad=True)
    dt_bias = torch.full((heads,), -3.0, requires_grad=True)

    def step() -> None:
        xBC, z, dt = torch.split(proj, [D_INNER + 2 * n, D_INNER, heads], -1)
        xBC = causal_conv1d(xBC.contiguous(), conv_w, conv_b)
        x, B, C = torch.split(xBC, [D_INNER, n, n], -1)
        x = x.reshape(BATCH, STEPS, heads, p)
        y = ssd(x, F.softplus(dt + dt_bias), -torch.exp(A_log), B, C) + x * D[:, None]
        (y.reshape(BATCH, STEPS, D_INNER) * F.silu(z)).sum().backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--heads", default="2,4,8", help="Mamba-2 head counts to time (head dim = 128 / heads)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, dt = torch.randn(2, 12, 3, 5, dtype=torch.float64), torch.rand(2, 12, 3, dtype=torch.float64)
    A, B, C = -torch.rand(3, dtype=torch.float64), torch.randn(2, 12, 4, dtype=torch.float64), \
        torch.randn(2, 12, 4, dtype=torch.float64)
    torch.testing.assert_close(ssd(x, dt, A, B, C), ssd_recurrent(x, dt, A, B, C))
    heads = [int(h) for h in args.heads.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; "
          f"batch {BATCH}, {STEPS} steps, d_inner {D_INNER}, d_state {D_STATE}; forward + backward, median of "
          f"{args.repeats} (the SSD form checked against the recurrence)")
    ways = {"Mamba-1, fused block (mambacast)": mamba1_block()}
    ways.update({f"Mamba-2 SSD, {h} heads of {D_INNER // h}": mamba2_block(h) for h in heads})
    results: dict[str, list[float]] = {name: [] for name in ways}
    with kept_heap():
        for _ in range(2):
            for name, fn in ways.items():
                results[name].append(median_ms(fn, args.repeats))
    base = min(results["Mamba-1, fused block (mambacast)"])
    for name, ms in results.items():
        print(f"{name:<36} {' / '.join(f'{m:.2f}' for m in ms)} ms   {min(ms) / base:.2f}x Mamba-1's time")


if __name__ == "__main__":
    main()
