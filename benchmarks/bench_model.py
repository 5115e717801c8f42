"""Forward and train-step time of the Mamba model at the guide's config, against mambapy.

Run: .venv/bin/python benchmarks/bench_model.py [--batch 32 --seq-len 60 --repeats 20]

Rows (one process, one run, rounds interleaved so that load on a shared machine hits every row
alike):
  mambapy (pscan)          the peer: mambapy's Mamba stack with our embedding and heads
  mambacast fused          the default block on CPU: the fused block (C++ kernels, hand-written backward),
                           with torch.optim.Adam's default (a Python loop over the parameters on the CPU)
  fused, bf16 autocast     the same under torch.autocast("cpu", bfloat16): the Linear layers in bf16
                           (oneDNN, fp32 accumulation, fp32 master weights), the fused block in fp32
  fused, fused Adam        the same with torch.optim.Adam(fused=True) (one kernel over all parameters)
  fused, Trainer's update  what `Trainer` runs on the CPU: `train.flat.FlatAdam` (parameters, gradients and
                           moments in flat buffers; here from the second step) with clipping by global norm 1.0
  Trainer's step, bf16 (default)
                           where the CPU has bf16 in hardware (the Trainer's default there, `ops.amp`): the
                           Trainer's update under bf16 autocast, on a copy of the model
  fused, kernel of REF     with --baseline-kernel REF: the fused model on the kernel source of git REF
                           (e.g. main), built beside this tree's under another op namespace: old
                           kernel against new in one process
  mambacast chunked        MAMBACAST_SCAN=chunked: the block in PyTorch ops, chunked scan
  mambacast ref            MAMBACAST_SCAN=ref: the block in PyTorch ops, sequential reference scan

Every row runs inside `mambacast.ops.heap.kept_heap()`, as the Trainer's steps do (freed memory is kept for
the next step instead of being faulted in again; mambapy's rows as well). Times are medians over `--repeats`
runs after warm-up, on this machine's threads. Each row's ratio is against mambapy measured in the same run,
since absolute times on a shared 2-core machine are only indicative. The machine also has slow spells that last
seconds to minutes: a ratio of two medians can set one row's fast spell against the peer's slow one (runs of
the same tree gave 7.7x to 17.1x). The paired ratio is therefore reported beside it: per round, mambapy's median
step over the row's, both measured within seconds of each other; the median over rounds and their range.

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
import contextlib
import copy
import functools
import hashlib
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from mambacast import MambaConfig, MambaModel
from mambacast.ops import _loader
from mambacast.ops.amp import cpu_has_bf16
from mambacast.ops.heap import kept_heap
from mambacast.train.flat import FlatAdam

REPO = Path(__file__).resolve().parent.parent


def baseline_kernel(ref: str) -> SimpleNamespace:
    """The fused kernel as git `ref` has it (e.g. "main"), built into the kernel cache under the op
    namespace `mambacast_<ref>`, so that it loads beside this tree's kernel in one process."""
    from torch.utils import cpp_extension

    csrc = "src/mambacast/ops/csrc"
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{ref}:{csrc}"], check=True,
                           capture_output=True, text=True).stdout.split()
    files = {n: subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:{csrc}/{n}"], check=True, capture_output=True,
                               text=True).stdout for n in names}
    ns = "mambacast_" + "".join(c if c.isalnum() else "_" for c in ref)
    main_tu = files["selective_scan.cpp"]
    files["selective_scan.cpp"] = main_tu.replace("TORCH_LIBRARY(mambacast,", f"TORCH_LIBRARY({ns},")
    flags = _loader._COMMON_FLAGS + ["-march=native"]
    key = hashlib.sha256("\0".join([*files.values(), " ".join(flags), torch.__version__]).encode()).hexdigest()[:16]
    build = _loader.cache_dir() / "ext" / f"{ns}_{key}"
    build.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (build / name).write_text(text)
    cpp_extension.load(name=f"{ns}_{key}", sources=[str(build / "selective_scan.cpp")], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], build_directory=str(build), is_python_module=False, verbose=False)
    lib = getattr(torch.ops, ns)
    ops = {op: getattr(lib, op) for op in _loader._OPS if hasattr(lib, op)}
    names = [a.name for a in ops["scan_fwd"].default._schema.arguments]
    if "y_from" not in names:   # a kernel from before `y_from`: y in full, cut (and its gradient padded) here
        ops["scan_fwd"] = functools.partial(_fwd_without_y_from, ops["scan_fwd"], "fast_exp" in names)
        ops["scan_bwd"] = functools.partial(_bwd_without_y_from, ops["scan_bwd"], "fast_exp" in names)
    return SimpleNamespace(**ops, name=ns, flags=flags)


_FWD_ARGS, _BWD_ARGS = 13, 17   # scan_fwd's and scan_bwd's arguments before fast_exp and y_from


def _fwd_without_y_from(op: Callable[..., Any], has_fast_exp: bool, *args: Any) -> Any:
    """A newer caller's scan_fwd(..., save_states[, fast_exp[, y_from]]) on an older kernel: every step's y, then cut (a
    kernel from before `fast_exp` runs its exact exp)."""
    head, fast_exp, y_from = args[:_FWD_ARGS], args[_FWD_ARGS:_FWD_ARGS + 1], args[_FWD_ARGS + 1:]
    y, *rest = op(*head, *(fast_exp if has_fast_exp else ()))
    return (y[:, y_from[0]:] if y_from else y, *rest)


def _bwd_without_y_from(op: Callable[..., Any], has_fast_exp: bool, *args: Any) -> Any:
    """scan_bwd(..., need_ddelta[, fast_exp[, y_from]]) on an older kernel: grad_output (argument 11) padded with
    zeros before y_from."""
    head, fast_exp, y_from = list(args[:_BWD_ARGS]), args[_BWD_ARGS:_BWD_ARGS + 1], args[_BWD_ARGS + 1:]
    if y_from and y_from[0]:
        dout = head[11]
        head[11] = torch.cat([dout.new_zeros(dout.shape[0], y_from[0], dout.shape[2]), dout], 1)
    return op(*head, *(fast_exp if has_fast_exp else ()))


@contextlib.contextmanager
def using_kernel(ops: SimpleNamespace | None) -> Iterator[None]:
    """Route the fused path through `ops` (None: this tree's kernel) for the duration."""
    if ops is None:
        yield
        return
    saved = _loader.load()
    _loader._ops = ops
    try:
        yield
    finally:
        _loader._ops = saved


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


def scan_kernel_ab(ops: dict[str, SimpleNamespace], batch: int, seq_len: int, cfg: MambaConfig,
                   repeats: int = 50) -> dict[str, tuple[float, float]]:
    """The scan kernel alone, one layer at the model's shapes (fused dt_proj, z gate, softplus, as training
    calls it): minimum forward and backward ms of each kernel in `ops`, calls interleaved."""
    g = torch.Generator().manual_seed(0)
    d, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank_value
    u, z, dout = (torch.randn(batch, seq_len, d, generator=g) for _ in range(3))
    dt_low, B, C = torch.randn(batch, seq_len, r, generator=g) * 0.3, *(torch.randn(batch, seq_len, n, generator=g)
                                                                        for _ in range(2))
    At, D = -torch.rand(n, d, generator=g) * 4 - 0.2, torch.randn(d, generator=g)
    bias, Wt = torch.randn(d, generator=g) * 0.2, torch.randn(r, d, generator=g) * 0.3
    from mambacast.nn.scan import fused_chunk

    chunk = fused_chunk(n)
    best = {name: [math.inf, math.inf] for name in ops}
    for i in range(repeats + 3):
        for name, k in ops.items():
            t0 = time.perf_counter()
            _, _, hsave, ypre = k.scan_fwd(u, dt_low, At, B, C, D, z, bias, Wt, None, True, chunk, True)
            t1 = time.perf_counter()
            k.scan_bwd(u, dt_low, At, B, C, D, z, bias, Wt, hsave, ypre, dout, None, True, chunk, None, False)
            t2 = time.perf_counter()
            if i >= 3:
                best[name] = [min(best[name][0], t1 - t0), min(best[name][1], t2 - t1)]
    return {name: (f * 1e3, b * 1e3) for name, (f, b) in best.items()}


def paired_ratios(peer: list[float], row: list[float], rounds: int) -> list[float]:
    """Per interleaved round, the peer's median step time over the row's: the recorded times hold `rounds` rounds
    of equally many runs each, in order, for both rows."""
    n = len(row) // rounds
    return [statistics.median(peer[r * n:(r + 1) * n]) / statistics.median(row[r * n:(r + 1) * n])
            for r in range(rounds)]


class Row:
    def __init__(self, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: str | None,
                 bf16: bool = False, fused_adam: bool = False, kernel: SimpleNamespace | None = None,
                 trainer_update: bool = False):
        self.name, self.model, self.env, self.bf16, self.kernel = name, model, env, bf16, kernel
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=(fused_adam or trainer_update) or None)
        self.trainer_update = trainer_update
        self.flat: FlatAdam | None = None
        self.x, self.y = x, y
        self.fwd: list[float] = []
        self.step: list[float] = []

    def _run(self, fn: Callable[[], None], out: list[float], n: int) -> None:
        old = os.environ.get("MAMBACAST_SCAN")
        if self.env is not None:
            os.environ["MAMBACAST_SCAN"] = self.env
        try:
            with using_kernel(self.kernel):
                for _ in range(n):
                    t0 = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - t0)
        finally:
            if old is None:
                os.environ.pop("MAMBACAST_SCAN", None)
            else:
                os.environ["MAMBACAST_SCAN"] = old

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def forward(self) -> None:
        with torch.no_grad(), self._autocast():
            self.model(self.x)

    def train_step(self) -> None:
        with self._autocast():
            out = self.model(self.x)
        loss = nn.functional.mse_loss(out.float(), self.y)
        if self.flat is not None:   # the Trainer's flat update, from the second step (rows share the model: the flat
            self.flat.zero_grad()   # buffers hold its parameters, which the other rows update in place)
            loss.backward()
            self.flat.clip_and_step(1.0)
            return
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.trainer_update:
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.flat = FlatAdam(self.opt, [p for p in self.model.parameters() if p.grad is not None])
            return
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
    parser.add_argument("--baseline-kernel", metavar="REF", default=None,
                        help="add a row with the fused kernel of git REF (e.g. main), old against new")
    parser.add_argument("--skip-variants", action="store_true", help="leave out the bf16 and fused-Adam rows")
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
    if fused and not args.skip_variants:
        rows.append(Row("fused, bf16 autocast", ours, x, y, None, bf16=True))
        rows.append(Row("fused, fused Adam", ours, x, y, None, fused_adam=True))
        rows.append(Row("fused, bf16 + fused Adam", ours, x, y, None, bf16=True, fused_adam=True))
    if fused:
        rows.append(Row("fused, Trainer's update", ours, x, y, None, trainer_update=True))
        if cpu_has_bf16():   # the Trainer's default here: its update under bf16 autocast (own model: own flat buffers)
            rows.append(Row("Trainer's step, bf16 (default)", copy.deepcopy(ours), x, y, None, bf16=True,
                            trainer_update=True))
    if fused and args.baseline_kernel:
        rows.append(Row(f"fused, kernel of {args.baseline_kernel}", ours, x, y, None,
                        kernel=baseline_kernel(args.baseline_kernel)))
    rows.append(Row("mambacast chunked", ours, x, y, "chunked"))
    if not args.skip_ref:
        rows.append(Row("mambacast ref", ours, x, y, "ref"))

    load_start = os.getloadavg()[0]
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
          f"load average={load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"counted FLOPs per train step: {flops['train'] / 1e9:.3f} G "
          f"(matmul {flops['matmul_train'] / 1e9:.3f} G, scan {flops['scan_train'] / 1e9:.3f} G); "
          f"fp32 matmul peak (2048^3 torch.mm, this run): {peak:.0f} GFLOP/s")
    peer = rows[0] if rows[0].name.startswith("mambapy") else None
    peer_step = statistics.median(peer.step) if peer else None
    print(f"{'model':<30} {'forward ms':>11} {'train step ms':>14} {'(min)':>6} {'step vs mambapy':>16} "
          f"{'paired (range)':>20} {'GFLOP/s':>8} {'% of peak':>9}")
    summary = []
    for row in rows:
        fwd, step = statistics.median(row.fwd) * 1e3, statistics.median(row.step) * 1e3
        ratio = f"{peer_step * 1e3 / step:.2f}x faster" if peer_step else "-"
        pairs = paired_ratios(peer.step, row.step, rounds) if peer and row is not peer else []
        paired = f"{statistics.median(pairs):.2f}x ({min(pairs):.1f}-{max(pairs):.1f})" if pairs else "-"
        rate = flops["train"] / (step / 1e3) / 1e9
        print(f"{row.name:<30} {fwd:>11.1f} {step:>14.1f} {min(row.step) * 1e3:>6.1f} {ratio:>16} {paired:>20} "
              f"{rate:>8.1f} {100 * rate / peak:>8.1f}%")
        if peer_step and row is not peer and row.name.startswith(("mambacast fused", "fused", "Trainer")):
            summary.append(f"{row.name} {step:.1f} ms = {peer_step * 1e3 / step:.1f}x, "
                           f"paired {statistics.median(pairs):.1f}x over {rounds} rounds")
    if fused and args.baseline_kernel:
        old = next(row.kernel for row in rows if row.kernel is not None)
        kernels = {"this tree": _loader.load(), f"kernel of {args.baseline_kernel}": old}
        ab = scan_kernel_ab(kernels, args.batch, args.seq_len, cfg)
        print(f"scan kernel alone, one layer ({args.batch}, {args.seq_len}, {cfg.d_inner}, {cfg.d_state}), "
              f"{torch.get_num_threads()} threads, minimum of 50 interleaved: "
              + "; ".join(f"{name} forward {f:.3f} ms, backward {b:.3f} ms" for name, (f, b) in ab.items()))
    if summary:
        print(f"SUMMARY train step (median; mambapy {peer_step * 1e3:.1f} ms; target 13x): " + "; ".join(summary))


if __name__ == "__main__":
    with kept_heap():   # as Trainer.fit runs its steps (mambacast.ops.heap): no page faults per step
        main()
