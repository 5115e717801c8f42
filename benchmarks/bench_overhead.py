"""What the CPU train step spends outside its kernels and matmuls (issue 17): the figures behind FlatAdam, the
`ops.amp` decorators and `fused_ops`.

Run: .venv/bin/python benchmarks/bench_overhead.py [--steps 150]

1. A small op inside the train step and alone: `VolatilityBaseline`'s forward (about 15 small ops on a (32, 26)
   input) timed as the step calls it and in a loop by itself; the ratio is what a small op costs in the step.
2. The optimizer part of the guide-config step, alternated per step in one process: `optimizer.zero_grad`,
   `clip_grad_norm_` and `torch.optim.Adam(fused=True).step()` against `FlatAdam.zero_grad` and
   `FlatAdam.clip_and_step` (medians over `--steps` each).
3. Per fused Function call, forward + backward on a tiny tensor: no decorators, torch's `custom_fwd`/`custom_bwd`
   stacked for CPU and CUDA (what `ops.amp` used before), and `ops.amp`'s own.
4. `fused_ops` for the fused block's 8 tensors, and the same check written the way it was before (per tensor
   `compute_dtype` and a `torch.device` comparison).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mambacast.config import MambaConfig
from mambacast.nn.fused import fused_ops
from mambacast.nn.mamba import MambaModel
from mambacast.nn.scan import compute_dtype, fused_enabled
from mambacast.ops.amp import autocast_backward, float32_forward
from mambacast.ops.heap import kept_heap
from mambacast.train.flat import FlatAdam
from mambacast.train.objective import objective


def per_call_us(fn: Callable[[], object], n: int = 5000) -> float:
    for _ in range(100):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def step_parts(steps: int) -> None:
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(), 26)
    params = list(model.parameters())
    X, Y = torch.randn(700, 60, 26), torch.randn(700, 4)
    inside: list[float] = []
    base = model.baseline
    original = base.forward

    def timed_baseline(x_last: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = original(x_last)
        inside.append((time.perf_counter() - t0) * 1e6)
        return out

    base.forward = timed_baseline   # type: ignore[method-assign]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    opt_flat = torch.optim.Adam(params, lr=1e-3, fused=True)
    flat: list[FlatAdam] = []
    names = ("torch: zero_grad + clip + step", "FlatAdam: zero_grad + clip_and_step")
    times: dict[str, list[float]] = {k: [] for k in names}

    def loss() -> torch.Tensor:
        idx = torch.randperm(len(X))[:32]
        loc, scale, df = model.forward_distribution(X[idx])
        return objective("nll", Y[idx], loc, scale, df)[0]

    def torch_step(record: bool) -> None:
        if flat:   # the parameters stay views of the flat buffers: torch's Adam updates them in place
            for p in params:
                p.grad = None
        lv = loss()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        lv.backward()
        t2 = time.perf_counter()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if record:
            times["torch: zero_grad + clip + step"].append((t1 - t0 + time.perf_counter() - t2) * 1e3)

    def flat_step(record: bool) -> None:
        if not flat:
            opt_flat.zero_grad(set_to_none=True)
            loss().backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt_flat.step()
            flat.append(FlatAdam(opt_flat, [p for p in params if p.grad is not None]))
            return
        lv = loss()
        t0 = time.perf_counter()
        flat[0].zero_grad()
        t1 = time.perf_counter()
        lv.backward()
        t2 = time.perf_counter()
        flat[0].clip_and_step(1.0)
        if record:
            times["FlatAdam: zero_grad + clip_and_step"].append((t1 - t0 + time.perf_counter() - t2) * 1e3)

    with kept_heap():
        for _ in range(10):
            flat_step(False)
            torch_step(False)
        inside.clear()
        for _ in range(steps):
            flat_step(True)
            torch_step(True)
        base.forward = original   # type: ignore[method-assign]
        x_last = X[:32, -1]
        alone = per_call_us(lambda: base(x_last))
    step_in = statistics.median(inside)
    print(f"1. VolatilityBaseline forward (32 rows): inside the train step {step_in:.0f} us, alone {alone:.0f} us "
          f"({step_in / alone:.1f}x)")
    print("2. optimizer part of the step, medians over", steps, "alternated steps: " + "; ".join(
        f"{k} {statistics.median(v):.2f} ms" for k, v in times.items()))


def decorators() -> None:
    x = torch.randn(8, requires_grad=True)

    def make(fwd_deco: Callable | None, bwd_deco: Callable | None) -> type[torch.autograd.Function]:
        def forward(ctx, a):  # noqa: ANN001, ANN202
            return a * 1

        def backward(ctx, g):  # noqa: ANN001, ANN202
            return g

        return type("F", (torch.autograd.Function,), {
            "forward": staticmethod(fwd_deco(forward) if fwd_deco else forward),
            "backward": staticmethod(bwd_deco(backward) if bwd_deco else backward)})

    def torch_fwd(f: Callable) -> Callable:
        for d in ("cpu", "cuda"):
            f = torch.amp.custom_fwd(f, device_type=d, cast_inputs=torch.float32)
        return f

    def torch_bwd(f: Callable) -> Callable:
        for d in ("cpu", "cuda"):
            f = torch.amp.custom_bwd(f, device_type=d)
        return f

    kinds = {"no decorator": make(None, None), "torch custom_fwd/bwd x2": make(torch_fwd, torch_bwd),
             "ops.amp": make(float32_forward, autocast_backward)}
    res: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(3):   # alternated
        for k, fn in kinds.items():
            res[k].append(per_call_us(lambda fn=fn: fn.apply(x).sum().backward(), 10000))
    print("3. fused Function call, forward + backward (min of 3 alternated runs): " + "; ".join(
        f"{k} {min(v):.1f} us" for k, v in res.items()))


def fused_check() -> None:
    blk = MambaModel(MambaConfig(), 26).layers[0]
    xz = torch.randn(32, 60, 256, requires_grad=True)
    tensors = [xz, blk.conv1d.weight, blk.conv1d.bias, blk.x_proj.weight, blk.dt_proj.weight, blk.dt_proj.bias,
               blk.A_log, blk.D]

    def before() -> bool:
        t = tensors[0]
        dtype = compute_dtype(t)
        return not any(compute_dtype(x) != dtype or x.device != t.device for x in tensors) and fused_enabled(t, 16)

    print(f"4. fused_ops, 8 tensors: {per_call_us(lambda: fused_ops(*tensors, d_state=16)):.1f} us; "
          f"the check as it was before: {per_call_us(before):.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    step_parts(args.steps)
    decorators()
    fused_check()


if __name__ == "__main__":
    main()
