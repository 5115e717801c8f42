"""GPU benchmarks of issue 13 on one CUDA device, every peer in the same run; writes JSON.

Run (one GPU; `benchmarks/gpu_check.sh` runs it after the tests):
    PYTHONPATH=src python benchmarks/bench_gpu.py --json out/bench_gpu.json [--budget-s 150]
    PYTHONPATH=src python benchmarks/bench_gpu.py --smoke        # tiny sizes: checks the script, on any device

Sections, in this order; one that would start after --budget-s seconds is skipped and says so:
1. one symbol x 50 full epochs (early stopping off) on 1000 days, as `mambacast train --device cuda` runs it
   (bf16 autocast, the step as a CUDA graph, checkpoints, calibration, the GARCH-t/HAR-t fits, metadata);
   after a 1-epoch warm-up run. The time outside the epochs (data, fits, files) is reported beside it.
2. 50 symbols `--stack` on CUDA for --stack-epochs full epochs; projected to 50 epochs as the measured wall
   time plus (50 - epochs) x the median wall time of an epoch, callbacks included (epochs are alike without
   early stopping); the time before the first epoch's end (data, fits, compile) and after the last (the
   members' final artifacts) is reported beside it.
3. train step at the guide's config (d_model 64, 4 layers, d_state 16, 30 features, 60 steps), batch 32 and
   1024: forward + MSE + backward + Adam, as benchmarks/bench_model.py, in float32 and under bf16 autocast.
   Rows: mambacast with the Triton scan (the default on CUDA), the same model with the pure-PyTorch chunked
   scan (MAMBACAST_SCAN=chunked), mambapy (if importable), a same-size causal Transformer (bench_long's),
   and the Triton row captured as one CUDA graph (launch overhead removed; capture failures are reported).
   Median of CUDA-event timings after warm-up (which also compiles the Triton kernels).
4. forward over 1,000,000 steps, batch 1, no autograd: `encode_long` with several piece lengths and
   `encode` whole; wall time and peak CUDA memory (torch.cuda.max_memory_allocated, input and output
   included). mambapy on the same input if importable.
5. the GPU kernels of the batch-1024 step by CUDA time (torch.profiler), fp32 and bf16.
6. section 1's run again under cProfile: mambacast's functions by cumulative time (what the time outside the
   epochs is made of).
7. the Triton scan alone (forward + backward, batch 1024, bf16 activations) for the launch configurations in
   SWEEP (channels per program, warps, steps per saved state), each checked against the default's gradients.
8. one training-state checkpoint of the guide's model brought to the host tensor by tensor (`.cpu()`) and by
   `tensorfile.host_copies` (one transfer per device), and the whole `ModelStore.save_tensors` call.
9. the causal conv + SiLU alone, forward + backward, eager, batch 32 and 1024: the Triton kernels against
   PyTorch's conv1d path (what launching them costs shows at batch 32).
`--sections` picks and orders them (default: all, in this order).
Prices in 1 and 2 are synthetic random walks (training time does not depend on the values), so no sample
data package is needed. Without CUDA the script runs the smoke sizes on the CPU and says so: those are no
GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_long import CausalTransformer  # noqa: E402
from bench_model import MambapyForecaster  # noqa: E402

from mambacast import MambaConfig, MambaModel, TrainConfig  # noqa: E402
from mambacast.ops import triton as triton_ops  # noqa: E402

FEATURES, SEQ_LEN = 30, 60


class TransformerForecaster(nn.Module):
    """bench_long's causal Transformer (about our parameter count) with a linear head on the last step."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.body = CausalTransformer(d_model=cfg.d_model, n_layers=cfg.num_layers, n_features=FEATURES)
        self.head = nn.Linear(cfg.d_model, len(cfg.prediction_horizons))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)[:, -1])


@contextlib.contextmanager
def scan_env(value: str | None):
    old = os.environ.get("MAMBACAST_SCAN")
    if value is None:
        os.environ.pop("MAMBACAST_SCAN", None)
    else:
        os.environ["MAMBACAST_SCAN"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MAMBACAST_SCAN", None)
        else:
            os.environ["MAMBACAST_SCAN"] = old


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, graph: bool = False):
    """One train step (forward, MSE, backward, Adam) as a closure; with `graph`, captured as one CUDA graph."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=graph)
    amp = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False)) if bf16 \
        else contextlib.nullcontext

    def step() -> None:
        with amp():
            loss = nn.functional.mse_loss(model(x).float(), y)
        loss.backward()
        opt.step()
        if not graph:
            opt.zero_grad(set_to_none=True)

    if not graph:
        return step
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):             # warm-up outside the capture (Triton compiles, Adam's state)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        step()
    return cuda_graph.replay


def train_step_rows(device: torch.device, cfg: MambaConfig, batches: list[int], smoke: bool) -> list[dict]:
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, SEQ_LEN, FEATURES, generator=g).to(device)
        y = torch.randn(batch, len(cfg.prediction_horizons), generator=g).to(device)
        candidates: list[tuple[str, Callable[[], nn.Module], str | None, bool]] = []
        if triton_ops.runs_on(device):
            candidates.append(("mambacast, Triton scan", lambda: MambaModel(cfg, FEATURES), "triton", False))
            if device.type == "cuda":
                candidates.append(("mambacast, Triton scan, CUDA graph", lambda: MambaModel(cfg, FEATURES),
                                   "triton", True))
        candidates.append(("mambacast, PyTorch chunked scan", lambda: MambaModel(cfg, FEATURES), "chunked", False))
        candidates.append(("mambapy (pscan)", lambda: MambapyForecaster(cfg, FEATURES), None, False))
        candidates.append(("causal Transformer (SDPA)", lambda: TransformerForecaster(cfg), None, False))
        for precision in ("fp32", "bf16 autocast"):
            for name, build, scan, graph in candidates:
                row = {"batch": batch, "precision": precision, "model": name}
                try:
                    torch.manual_seed(0)
                    model = build().to(device).train()
                    with scan_env(scan):
                        step = make_step(model, x, y, precision != "fp32", graph)
                        repeats = 3 if smoke else (30 if batch <= 64 else 10)
                        row["train_step_ms"] = median_ms(step, device, warmup=1 if smoke else 5, repeats=repeats)
                    row["parameters"] = sum(p.numel() for p in model.parameters())
                except Exception as exc:  # noqa: BLE001 - a row that cannot run says why; the others go on
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def profile_rows(device: torch.device, cfg: MambaConfig, batch: int, top: int = 12) -> list[dict]:
    """The GPU kernels of the eager train step at `batch` (fp32 and bf16 autocast), by total CUDA time over
    five steps: where the step's time goes once launches are gone (what a CUDA graph still replays)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return [{"skipped": "kernel times are profiled on CUDA only"}]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, SEQ_LEN, FEATURES, generator=g).to(device)
    y = torch.randn(batch, len(cfg.prediction_horizons), generator=g).to(device)
    rows = []
    for precision in ("fp32", "bf16 autocast"):
        torch.manual_seed(0)
        step = make_step(MambaModel(cfg, FEATURES).to(device).train(), x, y, precision != "fp32")
        for _ in range(3):
            step()
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            sync(device)
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        events.sort(key=lambda e: e.device_time_total, reverse=True)
        total = sum(e.device_time_total for e in events)
        rows.append({"batch": batch, "precision": precision, "gpu_ms_per_step": total / 5 / 1e3,
                     "kernels": [{"name": e.key[:90], "ms_per_step": e.device_time_total / 5 / 1e3,
                                  "calls_per_step": e.count / 5} for e in events[:top]]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# (channels per program, warps, steps per saved state): the default first, then the candidates
SWEEP = [(16, 1, 16), (16, 2, 16), (8, 1, 16), (16, 1, 8), (16, 1, 32), (32, 1, 16), (32, 2, 16)]


def scan_sweep(device: torch.device, cfg: MambaConfig, batch: int) -> list[dict]:
    """The Triton scan alone, forward + backward, at the guide's shapes and the training's dtypes (bf16
    activations, float32 A, D, bias), for the launch configurations in SWEEP: what the batch-1024 step's largest
    kernel would gain from another one. Each row's gradients are compared with the default's."""
    if device.type != "cuda" or not triton_ops.available():
        return [{"skipped": "the Triton scan's launch configurations are timed on CUDA only"}]
    import triton

    from mambacast.ops.triton import scan as tscan

    d_inner, n = cfg.expand * cfg.d_model, cfg.d_state
    g = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape: int, dtype: torch.dtype = torch.bfloat16, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, device=device, generator=g)).to(dtype).requires_grad_()

    u, delta, z = (leaf(batch, SEQ_LEN, d_inner) for _ in range(3))
    B, C = leaf(batch, SEQ_LEN, n), leaf(batch, SEQ_LEN, n)
    A = (-torch.exp(torch.randn(d_inner, n, device=device, generator=g))).requires_grad_()
    D, bias = leaf(d_inner, dtype=torch.float32), leaf(d_inner, dtype=torch.float32, scale=0.1)
    dy = torch.randn(batch, SEQ_LEN, d_inner, device=device, generator=g).to(torch.bfloat16)
    inputs = (u, delta, A, B, C, D, z, bias)

    def run() -> tuple[torch.Tensor, ...]:
        y, _ = tscan.triton_selective_scan(u, delta, A, B, C, D, z, bias, None, True)
        return torch.autograd.grad(y, inputs, dy)

    defaults = (tscan.BLOCK_D, tscan.SEG, tscan._launch_config)
    rows: list[dict] = []
    reference: tuple[torch.Tensor, ...] | None = None
    try:
        for block_d, warps, seg in SWEEP:
            row: dict = {"batch": batch, "block_d": block_d, "num_warps": warps, "seg": seg}
            try:
                # the launcher reads these module globals at every call
                tscan.BLOCK_D, tscan.SEG = block_d, seg
                tscan._launch_config = lambda d_state, programs, w=warps: (max(2, triton.next_power_of_2(d_state)),
                                                                            w)
                grads = run()
                if reference is None:
                    reference = tuple(t.float() for t in grads)
                row["max_rel_diff_vs_default"] = max(
                    float((a.float() - r).abs().max() / r.abs().max().clamp_min(1e-30))
                    for a, r in zip(grads, reference, strict=True))
                row["fwd_bwd_ms"] = median_ms(run, device, warmup=3, repeats=20)
            except Exception as exc:  # noqa: BLE001 - a configuration that fails says why; the others go on
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        tscan.BLOCK_D, tscan.SEG, tscan._launch_config = defaults
    return rows


def long_forward_rows(device: torch.device, cfg: MambaConfig, length: int, pieces: list[int]) -> list[dict]:
    torch.manual_seed(0)
    model = MambaModel(cfg, FEATURES).to(device).eval()
    x = torch.randn(1, length, FEATURES, device=device)
    runs: list[tuple[str, Callable[[], torch.Tensor]]] = [
        (f"mambacast encode_long(chunk_len={p})", lambda p=p: model.encode_long(x, chunk_len=p)) for p in pieces]
    runs.append(("mambacast encode (whole sequence)", lambda: model.encode(x)))
    try:
        peer = MambapyForecaster(cfg, FEATURES).to(device).eval()
        runs.append(("mambapy (pscan)", lambda: peer.mamba(peer.embed(x))))
    except ImportError:
        pass
    rows = []
    for name, fn in runs:
        row = {"model": name, "seq_len": length}
        try:
            with torch.no_grad():
                with scan_env(None):
                    model.encode_long(x[:, :4096], chunk_len=2048)       # warm-up: kernels compiled
                    sync(device)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                        before = torch.cuda.memory_allocated(device)
                    t0 = time.perf_counter()
                    out = fn()
                    sync(device)
                    row["seconds"] = time.perf_counter() - t0
            assert out.shape[:2] == (1, length)
            del out
            if device.type == "cuda":
                row["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                row["added_gb"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: reported, the others go on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def checkpoint_rows(device: torch.device, cfg: MambaConfig, repeats: int = 20) -> dict:
    """What one training-state checkpoint costs to bring to the host: the guide's model and its Adam state
    (capturable, as the CUDA-graphed Trainer keeps it) copied tensor by tensor with `.cpu()` against
    `tensorfile.host_copies` (one transfer per device), and the whole `save_tensors` call; medians in ms."""
    from mambacast.store import ModelStore
    from mambacast.tensorfile import host_copies

    model = MambaModel(cfg, FEATURES).to(device)
    opt = torch.optim.Adam(model.parameters(), capturable=device.type == "cuda")
    model(torch.randn(4, SEQ_LEN, FEATURES, device=device)).square().mean().backward()
    opt.step()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        tensors.update({f"optim.{i}.{k}": v for k, v in state.items()})

    def timed(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats + 2):
            sync(device)
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times[2:])

    with tempfile.TemporaryDirectory() as root:
        store = ModelStore(root)
        return {"tensors": len(tensors), "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
                "per_tensor_cpu_ms": timed(lambda: {k: v.detach().cpu() for k, v in tensors.items()}),
                "host_copies_ms": timed(lambda: host_copies(tensors)),
                "save_tensors_ms": timed(lambda: store.save_tensors(Path(root, "state.safetensors"), tensors))}


def conv_rows(device: torch.device, cfg: MambaConfig, batches: list[int]) -> list[dict]:
    """The block's causal conv + SiLU alone, forward + backward, eager (so launch costs show) at the guide's
    shapes in bf16 as training feeds it: the Triton kernels against PyTorch's conv1d path; median ms."""
    from mambacast.nn.fused import causal_conv1d_ref

    rows = []
    d, K = cfg.expand * cfg.d_model, cfg.d_conv
    if not triton_ops.runs_on(device):
        return [{"skipped": "Triton cannot run on this device"}]
    from mambacast.ops.triton.conv import triton_causal_conv1d

    for batch in batches:
        xz = torch.randn(batch, SEQ_LEN, 2 * d, device=device, dtype=torch.bfloat16)
        x = xz[..., :d].detach().requires_grad_()
        w = torch.randn(d, K, device=device, requires_grad=True)
        b = torch.randn(d, device=device, requires_grad=True)
        dy = torch.randn(batch, SEQ_LEN, d, device=device, dtype=torch.bfloat16)
        for name, fn in (("triton", triton_causal_conv1d), ("pytorch conv1d", causal_conv1d_ref)):
            def run(fn=fn, args=(x, w, b), dy=dy) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = fn(*args)
                torch.autograd.grad(out, args, dy)
            reps = (1, 2) if device.type == "cpu" else (3, 30)     # the CPU only under Triton's interpreter: slow
            rows.append({"batch": batch, "conv": name, "fwd_bwd_ms": median_ms(run, device, *reps)})
    return rows


def walk(seed: int, days: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, days)))
    return pd.DataFrame({"close": close}, index=pd.bdate_range("2010-01-04", periods=days, name="date"))


def one_symbol(device: torch.device, cfg: MambaConfig, days: int, epochs: int) -> dict:
    from mambacast.store import ModelStore
    from mambacast.train import train_symbol

    def run(n_epochs: int, root: str) -> float:
        t0 = time.perf_counter()
        result = train_symbol("BENCH", prices=walk(0, days), model_config=cfg, save_dir=root, device=str(device),
                              train_config=TrainConfig(epochs=n_epochs, patience=10**6, lr_patience=10**6))
        if result["status"] != "ok":
            raise RuntimeError(result)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as root:
        run(1, warm)
        seconds = run(epochs, root)
        history = json.loads(ModelStore(root).metrics_path("BENCH").read_text()).get("history", [])
    epoch_times = [h["epoch_time"] for h in history if "epoch_time" in h]
    return {"symbols": 1, "days": days, "epochs": epochs, "seconds": seconds,
            "median_epoch_s": statistics.median(epoch_times) if epoch_times else None,
            "outside_epochs_s": seconds - sum(epoch_times)}


def one_symbol_profile(device: torch.device, cfg: MambaConfig, days: int, epochs: int, top: int = 30) -> dict:
    """Where the one-symbol run's wall time goes, by cProfile (cumulative seconds of mambacast's own functions;
    the profiler slows Python, so the timed figure is section 1's, this only splits it)."""
    import cProfile
    import pstats

    from mambacast.train import train_symbol

    with tempfile.TemporaryDirectory() as root:
        profiler = cProfile.Profile()
        profiler.enable()
        train_symbol("BENCH", prices=walk(0, days), model_config=cfg, save_dir=root, device=str(device),
                     train_config=TrainConfig(epochs=epochs, patience=10**6, lr_patience=10**6))
        profiler.disable()
    stats = pstats.Stats(profiler).stats   # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
    rows = [{"function": f"{Path(f).name}:{line}({name})", "calls": v[1], "cumulative_s": round(v[3], 4)}
            for (f, line, name), v in stats.items() if "mambacast" in f]
    rows.sort(key=lambda r: r["cumulative_s"], reverse=True)
    return {"epochs": epochs, "functions": rows[:top]}


def stacked(device: torch.device, cfg: MambaConfig, n_symbols: int, days: int, epochs: int, target_epochs: int
            ) -> dict:
    """`train_symbols(..., stack=True)` for `epochs` epochs, projected to `target_epochs`: the measured wall time
    plus the missing epochs at the median wall time between the ends of consecutive epochs (the stack's step
    and validation, and every member's callbacks: checkpoints, metrics), read from the progress events."""
    from mambacast.train.pipeline import train_symbols

    symbols = [f"S{i:02d}" for i in range(n_symbols)]
    epoch_ends: dict[int, float] = {}

    def progress(event: str, symbol: str, data: dict) -> None:
        if event == "epoch":   # the last member's event of an epoch marks its end (callbacks run in order)
            epoch_ends[int(data["epoch"])] = time.perf_counter()

    with tempfile.TemporaryDirectory() as data, tempfile.TemporaryDirectory() as root:
        for i, s in enumerate(symbols):
            walk(i, days).to_csv(Path(data, f"{s}.csv"))
        t0 = time.perf_counter()
        results = train_symbols(symbols, stack=True, side_work=True, device=str(device), source="csv", data_path=data,
                                days=days,
                                model_config=cfg, save_dir=root, progress=progress,
                                train_config=TrainConfig(epochs=epochs, patience=10**6, lr_patience=10**6))
        seconds = time.perf_counter() - t0
    failed = [r["symbol"] for r in results if r["status"] != "ok"]
    ends = [epoch_ends[e] for e in sorted(epoch_ends)]
    epoch_s = statistics.median(np.diff(ends)) if len(ends) > 1 else float("nan")
    return {"symbols": n_symbols, "days": days, "epochs": epochs, "seconds": seconds,
            "epoch_wall_s": epoch_s, "before_first_epoch_end_s": ends[0] - t0 if ends else None,
            "after_last_epoch_s": t0 + seconds - ends[-1] if ends else None, "failed": failed,
            f"projected_{target_epochs}_epochs_s": seconds + (target_epochs - epochs) * epoch_s}


# the end-to-end targets first: they are what a user waits for
SECTIONS = ("one_symbol_50_epochs", "stack", "train_step", "forward_1m", "profile", "one_symbol_profile", "scan_sweep",
            "checkpoint", "conv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: $OUT/bench_gpu.json "
                                                                 "when OUT is set)")
    parser.add_argument("--budget-s", type=float, default=150.0, help="skip sections that would start after this")
    parser.add_argument("--stack-symbols", type=int, default=50)
    parser.add_argument("--stack-epochs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script only")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, run in this order (default: {','.join(SECTIONS)})")
    args = parser.parse_args()
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    smoke = args.smoke or not cuda
    device = torch.device("cuda" if cuda else "cpu")
    cfg = MambaConfig(d_model=16, num_layers=1, d_state=4) if smoke else MambaConfig()
    env = {"device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or 'unknown'})",
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "triton": None, "smoke": smoke, "model_config": cfg.to_dict()}
    if triton_ops.available():
        import triton

        env["triton"] = triton.__version__
    if not cuda:
        env["note"] = "no CUDA device: smoke sizes on the CPU, not GPU figures"
    print(json.dumps(env), flush=True)
    results: dict = {"env": env}
    path = args.json or (Path(os.environ["OUT"], "bench_gpu.json") if os.environ.get("OUT") else None)

    def save() -> None:   # after every section: a run cut off by its time limit keeps what it measured
        results["total_seconds"] = time.perf_counter() - t_start
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1, default=float))

    def section(name: str, fn: Callable[[], object]) -> None:
        if time.perf_counter() - t_start > args.budget_s:
            results[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            t0 = time.perf_counter()
            try:
                results[name] = fn()
            except Exception as exc:  # noqa: BLE001 - report and go on to the next section
                results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            print(f"# {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        print(json.dumps({name: results[name]}, default=float), flush=True)
        save()

    runs: dict[str, Callable[[], object]] = {
        "one_symbol_50_epochs": lambda: one_symbol(device, cfg, 300 if smoke else 1000, 1 if smoke else 50),
        "stack": lambda: stacked(device, cfg, 2 if smoke else args.stack_symbols, 300 if smoke else 1000,
                                 2 if smoke else args.stack_epochs, 50),
        "train_step": lambda: train_step_rows(device, cfg, [4] if smoke else [32, 1024], smoke),
        "forward_1m": lambda: long_forward_rows(device, cfg, 5000 if smoke else 1_000_000,
                                                [512] if smoke else [2048, 65536, 262144]),
        "profile": lambda: profile_rows(device, cfg, 4 if smoke else 1024),
        "one_symbol_profile": lambda: one_symbol_profile(device, cfg, 300 if smoke else 1000, 1 if smoke else 50),
        "scan_sweep": lambda: scan_sweep(device, cfg, 4 if smoke else 1024),
        "checkpoint": lambda: checkpoint_rows(device, MambaConfig()),   # the guide's size on any device: cheap
        "conv": lambda: conv_rows(device, cfg, [4] if smoke else [32, 1024]),
    }
    for name in args.sections.split(","):
        if name not in runs:
            parser.error(f"--sections: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        section(name, runs[name])
    if path is not None:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
