"""Where a training step's time goes: torch.profiler over train steps at the guide config.

Run: .venv/bin/python benchmarks/profile_step.py [--steps 20] [--batch 32] [--rows 25] [--bf16]
                                                 [--loss-ops | --compare-loss-ops] [--compare-composed]
                                                 [--fused-adam | --trainer-update | --stacked M]
                                                 [--baseline-kernel main]

The step is the Trainer's: a batch of windows, `MambaModel.head_loss` (the model, each block one C++ autograd node,
then its heads and the default objective, the Student-t negative log-likelihood, as one more), backward, clipping by
global norm 1.0, Adam. `--loss-ops` computes the objective as before that node: `forward_distribution`, then
`train.objective` (`--compare-loss-ops`: both, interleaved). `--compare-composed` also times the step with the
blocks composed of their pieces (LayerNorm, in_proj, the fused `mamba_inner`, out_proj: the path before the block's
node, which computes the same bits), interleaved.
`--bf16` runs the forward under torch.autocast("cpu", bfloat16) (the Linear layers in bf16 with fp32
master weights, the fused block's x_proj too, its conv and scan in fp32; with `--stacked`, the stack's own
autocast, MAMBACAST_CPU_BF16=1),
`--fused-adam` uses torch.optim.Adam(fused=True), `--trainer-update` what `Trainer` runs on the CPU
(`train.flat.FlatAdam`, here from the second step: zeroing, clipping and Adam on flat buffers). `--stacked M`
profiles the step of a stack of M models instead (`train.stacked`, as `--stack` trains: batched matmuls, one
fused kernel call per block for all M models' rows, the stack's clipping and Adam) and
reports every time per model (divided by M), beside one model's step.

Prints the median step time without the profiler (with `--baseline-kernel REF` also the same step on the
kernel of git REF, interleaved in one run: old kernel against new), then the profiler's operators by self
CPU time, each part's share of the step (matmuls, scan forward/backward, conv, Adam, norms, the rest), and
the achieved rates: the matmuls' counted FLOPs (as in bench_model.py) over their time, beside the fp32
matmul peak measured in the same run; the scan's counted FLOPs (7 per step, channel and state forward, 14
backward) over the kernel's time, beside the same peak (the scan is not a matmul: its exp costs 8 vector
instructions per 16 exponentials, counted as 16 FLOPs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator

import torch
from bench_model import baseline_kernel, matmul_peak_gflops, model_flops, using_kernel  # benchmarks/ is on sys.path
from torch.profiler import ProfilerActivity, profile

from mambacast.config import MambaConfig, TrainConfig
from mambacast.nn.mamba import MambaBlock, MambaModel
from mambacast.ops.heap import kept_heap
from mambacast.train.flat import FlatAdam
from mambacast.train.objective import objective
from mambacast.train.stacked import _Member, _Stack
from mambacast.train.trainer import Trainer

# profiler operator names -> the part of the step they belong to (self time; the rest is "other")
PARTS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_",
               "aten::_addmm_activation", "mkldnn::_linear_pointwise"),
    "scan forward": ("mambacast::scan_fwd",),
    "scan backward": ("mambacast::scan_bwd",),
    "conv (fused kernel)": ("mambacast::conv_fwd", "mambacast::conv_bwd"),
    "LayerNorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward", "mambacast::layer_norm",
                  "mambacast::layer_norm_bwd",
                  "torch::autograd::CppNode<(anonymous namespace)::LayerNormFunction>"),
    "bf16 casts": ("aten::_to_copy", "aten::copy_"),
}


@contextlib.contextmanager
def composed_blocks(on: bool) -> Iterator[None]:
    """With `on`, the blocks run as their pieces (norm, in_proj, `mamba_inner`, out_proj) instead of one C++ node."""
    if not on:
        yield
        return
    fused = MambaBlock._fused
    MambaBlock._fused = lambda self, hidden, last_only=False: None   # type: ignore[method-assign]
    try:
        yield
    finally:
        MambaBlock._fused = fused   # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    parser.add_argument("--bf16", action="store_true", help="forward under torch.autocast('cpu', bfloat16)")
    parser.add_argument("--fused-adam", action="store_true", help="torch.optim.Adam(fused=True)")
    parser.add_argument("--trainer-update", action="store_true",
                        help="the Trainer's CPU update: FlatAdam (flat buffers) from the second step")
    parser.add_argument("--loss-ops", action="store_true",
                        help="the objective as separate operations (forward_distribution, train.objective)")
    parser.add_argument("--compare-loss-ops", action="store_true",
                        help="also time the step with the objective as separate operations, interleaved")
    parser.add_argument("--compare-composed", action="store_true",
                        help="also time the step with the blocks composed of their pieces instead of one C++ node "
                             "each (nn.fused.fused_block), interleaved")
    parser.add_argument("--stacked", type=int, metavar="M", default=0,
                        help="the step of a stack of M models (train.stacked), times per model")
    parser.add_argument("--baseline-kernel", metavar="REF", default=None,
                        help="also time the step on the fused kernel of git REF (e.g. main), interleaved")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = MambaConfig()
    model = MambaModel(cfg, 26)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=(args.fused_adam or args.trainer_update) or None)
    X, Y = torch.randn(700, 60, 26), torch.randn(700, 4)
    flat: list[FlatAdam] = []
    loss_ops = [args.loss_ops]   # read by step(): the objective as separate operations

    def step() -> None:
        idx = torch.randperm(len(X))[:args.batch]
        x, y = X[idx], Y[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext():
            if loss_ops[0]:
                loc, scale, df = model.forward_distribution(x)
            else:
                loss, _ = model.head_loss(x, y)
        if loss_ops[0]:
            loss, _ = objective("nll", y, loc.float(), scale.float(), df.float())
        if flat:
            flat[0].zero_grad()
            loss.backward()
            with torch.profiler.record_function("Optimizer.step#FlatAdam"):   # counted as "Adam" below
                flat[0].clip_and_step(1.0)
            return
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if args.trainer_update:
            flat.append(FlatAdam(opt, [p for p in model.parameters() if p.grad is not None]))

    per = max(1, args.stacked)   # models per step: times are divided by it
    if args.stacked:
        if args.bf16:   # the stack takes its autocast from the Trainer, which reads this switch (ops.amp)
            os.environ["MAMBACAST_CPU_BF16"] = "1"
        step = stacked_step(cfg, X, Y, args.batch, args.stacked)

    # variant -> (kernel, objective as operations, blocks composed of their pieces)
    kernels = {"this tree": (None, args.loss_ops, False)}
    if args.baseline_kernel:
        kernels[f"kernel of {args.baseline_kernel}"] = (baseline_kernel(args.baseline_kernel), args.loss_ops, False)
    if args.compare_loss_ops:
        kernels["objective as operations"] = (None, True, False)
    if args.compare_composed:
        kernels["blocks composed"] = (None, args.loss_ops, True)
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for ops, loss_ops[0], composed in kernels.values():
        with using_kernel(ops), composed_blocks(composed):
            for _ in range(5):
                step()
    load = os.getloadavg()[0]
    for _ in range(args.steps * 2):
        for name, (ops, loss_ops[0], composed) in kernels.items():   # interleaved, so that load hits both alike
            with using_kernel(ops), composed_blocks(composed):
                t0 = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - t0) / per)
    loss_ops[0] = args.loss_ops
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, load {load:.1f} -> {os.getloadavg()[0]:.1f}, "
          f"bf16 autocast {'on' if args.bf16 else 'off'}, Adam "
          f"{'flat (Trainer)' if args.trainer_update else 'fused' if args.fused_adam else 'single-tensor'}"
          + (f"; a stack of {args.stacked} models (its own clipping and Adam), times per model" if args.stacked
             else ""))
    median = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}
    for name, t in times.items():
        print(f"train step, batch {args.batch}, guide config, {name}: median {median[name]:.1f} ms, "
              f"min {min(t) * 1e3:.1f} ms over {len(t)} steps (no profiler)")

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in table)
    part_us = {part: sum(e.self_cpu_time_total for e in table if e.key in names) for part, names in PARTS.items()}
    # Adam: everything under optimizer.step() (its own ops are generic: sqrt, lerp_, mul_, ...)
    part_us["Adam"] = sum(e.cpu_time_total for e in table if e.key.startswith("Optimizer.step"))
    part_us["other (small ops, Python, autograd)"] = total - sum(part_us.values())
    total /= per
    part_us = {part: us / per for part, us in part_us.items()}
    per_step = total / args.steps / 1e3
    print(f"each part's share of the profiled step{' (per model)' if args.stacked else ''} "
          f"({per_step:.1f} ms of self CPU time per step under the profiler):")
    for part, us in part_us.items():
        print(f"  {part:<38} {us / args.steps / 1e3:6.2f} ms  {100 * us / total:5.1f}%")

    peak = matmul_peak_gflops()
    flops = model_flops(cfg, 26, args.batch, 60)     # counted as bench_model.py counts them
    mm_s = part_us["matmul"] / args.steps * 1e-6
    scan_s = (part_us["scan forward"] + part_us["scan backward"]) / args.steps * 1e-6
    mm_rate, scan_rate = flops["matmul_train"] / mm_s / 1e9, flops["scan_train"] / scan_s / 1e9
    print(f"matmuls: {mm_s * 1e3:.1f} ms per step for {flops['matmul_train'] / 1e9:.2f} GFLOP = {mm_rate:.0f} GFLOP/s; "
          f"scan kernel: {scan_s * 1e3:.1f} ms for {flops['scan_train'] / 1e9:.2f} GFLOP = {scan_rate:.0f} GFLOP/s; "
          f"fp32 matmul peak (2048^3 torch.mm, this run): {peak:.0f} GFLOP/s")
    shares = ", ".join(f"{part.split(' (')[0]} {100 * us / total:.0f}%" for part, us in part_us.items())
    ab = "; ".join(f"{name} {m:.1f} ms" for name, m in median.items())
    print(f"SUMMARY step median {ab} (load {load:.1f}); {shares}; matmul {mm_rate:.0f} and scan {scan_rate:.0f} "
          f"GFLOP/s vs peak {peak:.0f}")


def stacked_step(cfg: MambaConfig, X: torch.Tensor, Y: torch.Tensor, batch: int, m: int) -> Callable[[], None]:
    """One step of a stack of m fresh models (`train.stacked._Stack._eager_step`: forward, the objective, backward,
    the stack's clipping and Adam), each model on its own random batch; Adam recorded as "Optimizer.step#stack"."""
    members = [_Member(Trainer(MambaModel(cfg, X.shape[-1]), TrainConfig(), device="cpu"), X, Y, X, Y)
               for _ in range(m)]
    stack = _Stack(members)
    adam = stack._adam

    def recorded_adam(sel: torch.Tensor | None) -> None:
        with torch.profiler.record_function("Optimizer.step#stack"):   # counted as "Adam" below
            adam(sel)

    stack._adam = recorded_adam

    def step() -> None:
        idx = torch.randint(len(X), (m, batch))
        stack._eager_step(list(range(m)), [batch] * m, X[idx], Y[idx], True)
    return step


if __name__ == "__main__":
    with kept_heap():   # as Trainer.fit runs its steps (mambacast.ops.heap): no page faults per step
        main()
