"""Forward time and peak memory against sequence length (batch 1, the guide's config), and the
latency of `step()` for one new bar.

Run: .venv/bin/python benchmarks/bench_long.py [--lengths 1000 10000 100000 1000000]

Every (model, length) point runs in a fresh subprocess, which builds the model and the input,
resets its resident-memory high-water mark (writing 5 to /proc/self/clear_refs), runs one
forward (without autograd, except the training row) after a warm-up on a short input, and
reports the wall time and VmHWM from /proc/self/status: the peak resident memory of the whole
process during the forward, and that peak minus the resident memory just before it (what the
forward itself added; the input and the model are already resident). tracemalloc would not see
torch's allocations.

Rows:
  mambacast encode_long   MambaModel.encode_long (chunks of --chunk-len steps, state carried)
  mambacast encode        MambaModel.encode, the whole sequence at once
  mambacast train         forward + backward of encode_long with per-piece checkpointing
                          (loss: mean square of the output), gradients for every parameter
  mambapy (pscan)         mambapy's Mamba stack with the same embedding: its parallel scan
                          materialises (batch, seq_len, d_inner, d_state) tensors
  causal Transformer      4 pre-norm layers, d_model 64, 4 heads, feed-forward 128 (about our
                          parameter count), attention by scaled_dot_product_attention(is_causal)

A row stops after the first length that exceeds --max-seconds or --max-gb, at one that fails
(out of memory under the child's address-space limit), or before one whose time, extrapolated
from the row's growth so far, would pass three times --max-seconds; the table says which.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

FEATURES = 30


def read_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(val.split()[0]) * 1024
    return out


class CausalTransformer(nn.Module):
    def __init__(self, d_model: int = 64, n_layers: int = 4, n_heads: int = 4, d_ff: int = 128,
                 n_features: int = FEATURES):
        super().__init__()
        self.embed = nn.Linear(n_features, d_model)
        self.n_heads = n_heads
        self.layers = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(d_model), "qkv": nn.Linear(d_model, 3 * d_model), "out": nn.Linear(d_model, d_model),
            "norm2": nn.LayerNorm(d_model), "ff1": nn.Linear(d_model, d_ff), "ff2": nn.Linear(d_ff, d_model),
        }) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        b, seq_len, d = h.shape
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["norm1"](h)).view(b, seq_len, 3, self.n_heads, d // self.n_heads).unbind(2)
            att = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                             is_causal=True)
            h = h + layer["out"](att.transpose(1, 2).reshape(b, seq_len, d))
            h = h + layer["ff2"](nn.functional.gelu(layer["ff1"](layer["norm2"](h))))
        return self.norm_f(h)


def build(kind: str):
    from mambacast import MambaConfig, MambaModel

    torch.manual_seed(0)
    cfg = MambaConfig()
    if kind in ("encode_long", "encode"):
        model = MambaModel(cfg, FEATURES).eval()
        return (lambda x, chunk: model.encode_long(x, chunk_len=chunk)) if kind == "encode_long" else \
            (lambda x, chunk: model.encode(x)), sum(p.numel() for p in model.parameters())
    if kind == "train_long":
        model = MambaModel(cfg, FEATURES).train()

        def train(x: torch.Tensor, chunk: int) -> torch.Tensor:
            with torch.enable_grad():
                out = model.encode_long(x, chunk_len=chunk, checkpoint=True)
                out.square().mean().backward()
            return out.detach()

        return train, sum(p.numel() for p in model.parameters())
    if kind == "mambapy":
        from mambapy.mamba import Mamba
        from mambapy.mamba import MambaConfig as PyConfig

        embed = nn.Linear(FEATURES, cfg.d_model)
        mamba = Mamba(PyConfig(d_model=cfg.d_model, n_layers=cfg.num_layers, d_state=cfg.d_state,
                               expand_factor=cfg.expand, d_conv=cfg.d_conv, pscan=True)).eval()
        return (lambda x, chunk: mamba(embed(x))), sum(p.numel() for p in mamba.parameters())
    if kind == "transformer":
        model = CausalTransformer().eval()
        return (lambda x, chunk: model(x)), sum(p.numel() for p in model.parameters())
    raise ValueError(kind)


def child(kind: str, length: int, chunk: int, max_gb: float) -> None:
    limit = int(max_gb * 1.5 * 2 ** 30) + 2 * 2 ** 30        # address space cap: fail, don't swap the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    fn, n_params = build(kind)
    with torch.no_grad():
        fn(torch.randn(1, 256, FEATURES), chunk)               # warm-up (and kernel load)
        x = torch.randn(1, length, FEATURES)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                       # reset VmHWM to the current RSS
        before = read_status()["VmRSS"]
        t0 = time.perf_counter()
        out = fn(x, chunk)
        seconds = time.perf_counter() - t0
        status = read_status()
    assert out.shape[:2] == (1, length)
    print(json.dumps({"seconds": seconds, "peak": status["VmHWM"], "added": status["VmHWM"] - before,
                      "params": n_params}))


def run_child(kind: str, length: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(length), "--chunk-len", str(args.chunk_len),
           "--max-gb", str(args.max_gb)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_seconds * 3 + 60)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {args.max_seconds * 3 + 60:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"failed: {tail[:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_latency(n: int = 2000) -> tuple[float, float]:
    from mambacast import MambaConfig, MambaModel

    torch.manual_seed(0)
    model = MambaModel(MambaConfig(), FEATURES).eval()
    bar = torch.randn(1, FEATURES)
    times = []
    with torch.no_grad():
        state = model.init_state(1)
        for _ in range(100):
            _, state = model.step(bar, state)
        for _ in range(n):
            t0 = time.perf_counter()
            _, state = model.step(bar, state)
            times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1e6, times[int(0.99 * len(times))] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 10_000, 30_000, 65_536, 100_000, 1_000_000])
    rows = ["encode_long", "encode", "train_long", "mambapy", "transformer"]
    parser.add_argument("--rows", nargs="+", default=rows, choices=rows)
    parser.add_argument("--chunk-len", type=int, default=2048)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop a row after a point slower than this")
    parser.add_argument("--max-gb", type=float, default=8.0, help="stop a row after a point above this peak memory")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.chunk_len, args.max_gb)
        return

    names = {"encode_long": f"mambacast encode_long({args.chunk_len})", "encode": "mambacast encode",
             "train_long": "mambacast train, checkpointed",
             "mambapy": "mambapy (pscan)", "transformer": "causal Transformer (SDPA)"}
    print(f"batch=1 d_model=64 layers=4 d_state=16 features={FEATURES} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}; stop a row past {args.max_seconds:.0f} s or {args.max_gb:.0f} GB")
    print(f"{'model':<32} {'seq_len':>9} {'forward s':>10} {'steps/s':>11} {'peak RSS MB':>12} "
          f"{'added MB':>9} {'bytes/step':>10}")
    for kind in args.rows:
        done: list[tuple[int, float, int]] = []
        for length in args.lengths:
            if done:  # extrapolate the growth seen so far; skip points far past the limits
                (l0, s0, _), (l1, s1, m1) = (done[-2] if len(done) > 1 else (done[-1][0] / 10, done[-1][1] / 10, 0),
                                             done[-1])
                exponent = max(1.0, math.log(max(s1, 1e-3) / max(s0, 1e-3)) / math.log(l1 / l0))
                expected = s1 * (length / l1) ** exponent
                gb = m1 / l1 * length / 2 ** 30
                if expected > 3 * args.max_seconds or gb > 1.5 * args.max_gb:
                    print(f"{names[kind]:<32} {length:>9} skipped: about {expected:,.0f} s and {gb:,.1f} GB expected "
                          f"(time grows as seq_len^{exponent:.1f}, memory linearly)")
                    break
            r = run_child(kind, length, args)
            if "error" in r:
                print(f"{names[kind]:<32} {length:>9} {r['error']}")
                break
            done.append((length, r["seconds"], r["added"]))
            print(f"{names[kind]:<32} {length:>9} {r['seconds']:>10.2f} {length / r['seconds']:>11,.0f} "
                  f"{r['peak'] / 2**20:>12.0f} {r['added'] / 2**20:>9.0f} {r['added'] / length:>10.0f}",
                  flush=True)
            if r["seconds"] > args.max_seconds or r["peak"] > args.max_gb * 2 ** 30:
                print(f"{names[kind]:<32} {'':>9} stopped: past the {args.max_seconds:.0f} s / "
                      f"{args.max_gb:.0f} GB limit")
                break
    p50, p99 = step_latency()
    print(f"step() for one new bar (batch 1, guide config, no autograd): p50 {p50:.0f} us, p99 {p99:.0f} us")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
