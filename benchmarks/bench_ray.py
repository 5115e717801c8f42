"""Ray: its own overhead, 20 symbols with `--ray` vs `--stack`, and a projection to more symbols and nodes.

Run: .venv/bin/python benchmarks/bench_ray.py [--symbols 20] [--epochs 5] [--days 1000] [--ways stack,ray,ray-stack]
     [--early-stopping] [--overhead-only]

1. Ray's overhead on a fresh local cluster sized to the machine: `ray.init` and `ray.shutdown`, a no-op task's
   round trip (one at a time, after warm-up), no-op throughput (1000 submitted at once), and the start-up of a
   training task on a fresh worker (importing torch and mambacast) against the same task on a warm worker.
2. The same many-symbol job as `bench_stacked.py` (the first `--symbols` bundled stocks, the last `--days` days,
   the guide's model and batch size, `--epochs` fixed epochs: early stopping off unless `--early-stopping`), end
   to end through the library: `train_symbols(stack=True)` in this process, and `train_symbols_ray` (which starts
   its own local cluster, as `mambacast train --ray` does: its time includes the start and shutdown), per symbol
   (`ray`) and in stacked groups (`ray-stack`). The driver's store writes are timed separately.
3. A projection for TIER_1 (50) and 500 symbols on 1, 4 and 16 nodes of this machine's size and of 16 CPUs, from
   the measured per-task time (one worker thread, the other slots busy), the measured overheads and the serial
   store writes on the driver: T = start + cold start + ceil(n / slots) * task + n / slots * round trip, and at
   least n * store write (the driver writes one model at a time).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time

import torch
from bench_stacked import pick_symbols  # benchmarks/ is on sys.path when this script runs

from mambacast import MambaConfig, TrainConfig
from mambacast.store import ModelStore
from mambacast.train import distributed
from mambacast.train.pipeline import train_symbols


def _warm_task() -> float:
    t0 = time.perf_counter()
    import mambacast.train.pipeline  # noqa: F401  (what a training task imports first)
    from mambacast.data.sources import load_prices

    load_prices("AAPL", days=100)
    return time.perf_counter() - t0


def overhead() -> dict[str, float]:
    import ray

    t0 = time.perf_counter()
    os.environ.setdefault("RAY_worker_niceness", "0")   # as train_symbols_ray starts its local cluster
    ray.init(include_dashboard=False, logging_level="ERROR")
    start = time.perf_counter() - t0
    slots = int(ray.cluster_resources()["CPU"])
    noop = ray.remote(lambda: None)
    warm = ray.remote(_warm_task)
    t0 = time.perf_counter()
    ray.get([warm.remote() for _ in range(slots)])          # a fresh worker per slot: imports torch, mambacast
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.get([warm.remote() for _ in range(slots)])
    warm_again = time.perf_counter() - t0
    for _ in range(20):
        ray.get(noop.remote())
    times = []
    for _ in range(200):
        t = time.perf_counter()
        ray.get(noop.remote())
        times.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    ray.get([noop.remote() for _ in range(1000)])
    throughput = (time.perf_counter() - t0) / 1000
    t0 = time.perf_counter()
    ray.shutdown()
    stop = time.perf_counter() - t0
    out = {"init": start, "shutdown": stop, "slots": slots, "cold_task": cold, "warm_task": warm_again,
           "roundtrip_median": statistics.median(times), "roundtrip_p90": sorted(times)[179],
           "throughput_per_task": throughput}
    print(f"ray.init (local, {slots} CPUs): {start:.2f} s   ray.shutdown: {stop:.2f} s")
    print(f"training task start-up on fresh workers ({slots} at once, import torch + mambacast, read prices): "
          f"{cold:.2f} s; the same on warm workers: {warm_again * 1000:.0f} ms")
    print(f"no-op task round trip: median {out['roundtrip_median'] * 1e3:.2f} ms, "
          f"p90 {out['roundtrip_p90'] * 1e3:.2f} ms; 1000 submitted at once: {throughput * 1e3:.2f} ms per task")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--days", type=int, default=1000)
    parser.add_argument("--ways", default="stack,ray,ray-stack")
    parser.add_argument("--early-stopping", action="store_true", help="the default callbacks, not fixed epochs")
    parser.add_argument("--overhead-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    ov = overhead()
    if args.overhead_only:
        return
    symbols = pick_symbols(args.symbols, args.days)
    cfg = TrainConfig(epochs=args.epochs) if args.early_stopping else \
        TrainConfig(epochs=args.epochs, patience=10**6, lr_patience=10**6)
    print(f"{len(symbols)} symbols x {args.epochs} epochs{' (early stopping)' if args.early_stopping else ''}, "
          f"{args.days} days, guide config, batch 32: {','.join(symbols)}")
    common = {"model_config": MambaConfig(), "train_config": cfg, "days": args.days, "device": "cpu"}
    # one-time costs in this process (kernel, imports), as bench_stacked does
    with tempfile.TemporaryDirectory() as tmp:
        train_symbols(symbols[:1], **{**common, "train_config": TrainConfig(epochs=1)}, save_dir=tmp)
    store_times: list[float] = []
    real_store = distributed.store_artifacts

    def timed_store(*a, **k):
        t = time.perf_counter()
        try:
            return real_store(*a, **k)
        finally:
            store_times.append(time.perf_counter() - t)

    distributed.store_artifacts = timed_store
    walls, roots, task_times = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in args.ways.split(","):
            root = roots[way] = os.path.join(tmp, way)
            print(f"  load before {way}: {os.getloadavg()[0]:.1f}", flush=True)
            t0 = time.perf_counter()
            if way == "stack":
                results = train_symbols(symbols, stack=True, save_dir=root, **common)
            else:
                results = distributed.train_symbols_ray(symbols, None, stack=way == "ray-stack", save_dir=root,
                                                        **common)
            walls[way] = time.perf_counter() - t0
            failed = [r["symbol"] for r in results if r["status"] != "ok"]
            if failed:
                raise SystemExit(f"{way}: training failed for {failed}")
            task_times[way] = [r["training_time"] for r in results]
            print(f"{way:10s} {walls[way]:7.1f} s" + (f"   ({walls[way] / walls['stack']:.2f}x --stack)"
                                                       if "stack" in walls and way != "stack" else ""), flush=True)
        first = next(iter(roots))
        for way in roots:
            if way == first:
                continue
            worst = 0.0
            for s in symbols:
                a, b = ModelStore(roots[first]).load_model(s)[0], ModelStore(roots[way]).load_model(s)[0]
                sb = b.state_dict()
                worst = max(worst, max((v - sb[k]).abs().max().item() for k, v in a.state_dict().items()))
            print(f"largest weight difference {first} vs {way}: {worst:.2e}")
    if store_times:
        print(f"driver store write per model (save_model + version): median {statistics.median(store_times) * 1e3:.0f}"
              f" ms, max {max(store_times) * 1e3:.0f} ms")
    if "ray" not in task_times:
        return
    task = statistics.mean(task_times["ray"])
    store = statistics.median(store_times) if store_times else 0.0
    print(f"per-symbol task ({args.epochs} epochs, 1 thread, {ov['slots']} tasks at once): mean {task:.1f} s, "
          f"min {min(task_times['ray']):.1f}, max {max(task_times['ray']):.1f}")
    print("projection (per-symbol tasks; nodes of N CPUs, one task per CPU; start = ray.init + fresh-worker start):")
    print(f"{'symbols':>8} {'nodes':>6} {'CPUs/node':>10} {'slots':>6} {'projected':>10}")
    for n in (50, 500):
        for cpus in (ov["slots"], 16):
            for nodes in (1, 4, 16):
                slots = nodes * cpus
                t = ov["init"] + ov["cold_task"] + math.ceil(n / slots) * task + n / slots * ov["roundtrip_median"]
                t = max(t, n * store)
                print(f"{n:>8} {nodes:>6} {cpus:>10} {slots:>6} {t / 60:>8.1f} min")


if __name__ == "__main__":
    main()
