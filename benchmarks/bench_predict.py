"""Serving speed of MambaPredictor on CPU: single-call latency and batched throughput.

Run: .venv/bin/python benchmarks/bench_predict.py [--preset default] [--days 2000] [--calls 200]
     [--batch 256] [--symbols AAPL,MSFT,JNJ,XOM]

Models are trained for one epoch on 600 days at the chosen preset (the guide's 64x4 model by
default): weights do not change the speed. Every timing is taken on a warm predictor (model loaded,
worker threads started) inside one event loop.

1. Latency of one `await predictor.predict(symbol, history, price)`, p50/p90/p99 over `--calls`
   sequential calls per setting, the settings interleaved call by call (so a busy neighbour slows
   them all alike), on a `--days` history and on the whole sample history (8313 days):
   - untrimmed, torch threads: the previous serving path (features over the whole history, the
     process's torch thread count in the worker);
   - trimmed, torch threads: only the last keep_days (742) closes become features;
   - trimmed, 1 thread: the default (one torch thread per worker thread);
   - calibration="rolling" on the same history (factor cached) and on a new history every call
     (timed every 10th round: the factor is refitted, one forward pass over 280 windows).
   Then where the time goes on the default path (features, scaling, forward, result).
2. Throughput for `--batch` requests of one symbol at different as-of dates (a backtest-like load)
   and for the same number spread over `--symbols`: sequential awaits, `asyncio.gather` of single
   calls, and `predict_many`; plus `forecast_origins` (every origin of one history) for backtests.

Absolute times on the shared 2-core machine are indicative; compare rows of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from mambacast import MambaConfig, MambaPredictor, TrainConfig
from mambacast.data.sources import load_prices
from mambacast.forecasts import prediction_result
from mambacast.nn.scan import scan_impl
from mambacast.predict import DEFAULT_QUANTILES
from mambacast.train import train_symbol

PRESETS = {"small": MambaConfig.small, "default": MambaConfig.default, "large": MambaConfig.large}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


async def latencies(setups: list[tuple], symbol: str, calls: int) -> dict[str, list[float]]:
    """Seconds per sequential `await predict(...)`, settings interleaved call by call.

    `setups` are (name, predictor, histories, every): the setting is timed every `every`-th round on the
    next of its histories (one history: always the same). Interleaving gives every setting the same
    share of whatever else the machine is doing, so their ratios are fair on a shared machine.
    """
    for _, predictor, hists, _ in setups:
        for _ in range(10):
            await predictor.predict(symbol, hists[0], float(hists[0]["close"].iloc[-1]))
    times: dict[str, list[float]] = {name: [] for name, *_ in setups}
    for i in range(calls):
        for name, predictor, hists, every in setups:
            if i % every:
                continue
            history = hists[(i // every) % len(hists)]
            price = float(history["close"].iloc[-1])
            t0 = time.perf_counter()
            await predictor.predict(symbol, history, price)
            times[name].append(time.perf_counter() - t0)
    return times


def breakdown(predictor: MambaPredictor, symbol: str, history, full, repeats: int = 100) -> dict[str, float]:
    """Median ms of each step of the default path, run in the predictor's worker thread setting."""
    loaded = predictor._load(symbol)
    closes = history["close"].to_numpy()
    everything = full["close"].to_numpy()
    keep = closes[-loaded.keep_days:]
    steps = {}

    def med(fn, repeats: int = repeats) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3

    def measure() -> None:
        features = loaded.engineer.extract_features(keep)
        window = loaded.feature_scaler.transform(features[-loaded.sequence_length:])
        steps[f"features ({len(keep)} days, trimmed)"] = med(lambda: loaded.engineer.extract_features(keep))
        steps[f"features ({len(closes)} days)"] = med(lambda: loaded.engineer.extract_features(closes), repeats // 4)
        steps[f"features ({len(everything)} days)"] = med(lambda: loaded.engineer.extract_features(everything),
                                                          repeats // 4)
        steps["scale window"] = med(lambda: loaded.feature_scaler.transform(features[-loaded.sequence_length:]))
        steps["forward (1 window)"] = med(lambda: predictor._infer(loaded, window[None]))
        loc, raw, df = predictor._infer(loaded, window[None])
        steps["result (quantiles)"] = med(lambda: prediction_result(symbol, 100.0, loaded.model.horizons, loc[0],
                                                          raw[0] * loaded.calibration, df, DEFAULT_QUANTILES,
                                                          "mamba", None, "v", None))
        steps["whole _forecast"] = med(lambda: predictor._forecast(symbol, history, 100.0, DEFAULT_QUANTILES))

    async def in_worker() -> None:
        await predictor._run(measure)

    asyncio.run(in_worker())
    return steps


async def throughput(predictor: MambaPredictor, requests: list, repeats: int = 2) -> dict[str, float]:
    async def sequential():
        return [await predictor.predict_detailed(*r) for r in requests]

    async def gathered():
        return await asyncio.gather(*(predictor.predict_detailed(*r) for r in requests))

    async def many():
        return await predictor.predict_many(requests)

    out = {}
    for name, fn in (("sequential awaits", sequential), ("gather of single calls", gathered),
                     ("predict_many", many)):
        await fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            await fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = len(requests) / best
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--days", type=int, default=2000, help="closes passed with each request")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--symbols", default="AAPL,MSFT,JNJ,XOM")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    cfg = PRESETS[args.preset]()
    histories = {s: load_prices(s, days=None) for s in symbols}
    with tempfile.TemporaryDirectory() as root:
        for s in symbols:
            train_symbol(s, prices=histories[s].iloc[-600:], model_config=cfg,
                         train_config=TrainConfig(epochs=1, batch_size=64), save_dir=root)
        sym = symbols[0]
        history = histories[sym].iloc[-args.days:]
        impl = scan_impl(torch.zeros(1), torch.zeros(1, cfg.d_state))
        print(f"preset={args.preset} (d_model={cfg.d_model}, layers={cfg.num_layers}, d_state={cfg.d_state}) "
              f"history={len(history)} days  scan={impl}  torch={torch.__version__} "
              f"torch threads={torch.get_num_threads()} cpus={os.cpu_count()} load avg={os.getloadavg()[0]:.2f}")

        print(f"\n1. latency of one `await predict(...)`, {args.calls} sequential calls per setting, interleaved, "
              "warm (ms)")
        print(f"{'setting':<40} {'calls':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'p50 speed-up':>13}")
        full = histories[sym]
        moving = [histories[sym].iloc[-args.days - i:len(histories[sym]) - i] for i in range(args.calls)]
        settings = [
            (f"untrimmed, torch threads (prev.), {len(history)}d", dict(trim_history=False, inference_threads=None),
             [history], 1),
            (f"trimmed, torch threads, {len(history)}d", dict(inference_threads=None), [history], 1),
            (f"trimmed, 1 thread (default), {len(history)}d", {}, [history], 1),
            (f"untrimmed, torch threads (prev.), {len(full)}d", dict(trim_history=False, inference_threads=None),
             [full], 1),
            (f"trimmed, 1 thread (default), {len(full)}d", {}, [full], 1),
            (f"rolling calibration, same {len(history)}d", dict(calibration="rolling"), [history], 1),
            (f"rolling calibration, new {len(history)}d", dict(calibration="rolling"), moving, 10),
        ]
        setups = [(name, MambaPredictor(symbols, model_dir=root, **kw), hists, every)
                  for name, kw, hists, every in settings]
        times = asyncio.run(latencies(setups, sym, args.calls))
        for k, (name, predictor, _, _) in enumerate(setups):
            predictor.close()
            t = times[name]
            base = pct(times[setups[0][0] if k < 3 or k > 4 else setups[3][0]], 50)
            print(f"{name:<40} {len(t):>5} {pct(t, 50):8.2f} {pct(t, 90):8.2f} {pct(t, 99):8.2f} "
                  f"{base / pct(t, 50):12.1f}x")
        print("   (speed-up against the previous path on the same history)")

        predictor = MambaPredictor(symbols, model_dir=root)
        print("\n   where the time goes (default path, median ms, in a worker thread)")
        for step, ms in breakdown(predictor, sym, history, full).items():
            print(f"   {step:<28} {ms:8.3f}")

        closes = history["close"]
        one_symbol = [(sym, history.iloc[:len(history) - i], float(closes.iloc[-1 - i])) for i in range(args.batch)]
        per = max(1, args.batch // len(symbols))
        spread = [(s, histories[s].iloc[-args.days - i:len(histories[s]) - i],
                   float(histories[s]["close"].iloc[-1 - i])) for s in symbols for i in range(per)]
        print(f"\n2. throughput (requests/s, best of 2), {args.batch} requests, {predictor.max_workers} worker threads")
        print(f"{'load':<34} {'sequential':>11} {'gather':>9} {'predict_many':>13} {'many vs seq':>12}")
        for label, reqs in ((f"1 symbol x {len(one_symbol)} as-of dates", one_symbol),
                            (f"{len(symbols)} symbols x {per} as-of dates", spread)):
            res = asyncio.run(throughput(predictor, reqs))
            seq, gat, many = res["sequential awaits"], res["gather of single calls"], res["predict_many"]
            print(f"{label:<34} {seq:11.0f} {gat:9.0f} {many:13.0f} {many / seq:11.1f}x")

        async def origins():
            return await predictor._run(predictor.forecast_origins, sym, full)

        asyncio.run(origins())
        t0 = time.perf_counter()
        fc = asyncio.run(origins())
        dt = time.perf_counter() - t0
        print(f"{'forecast_origins, every day of ' + str(len(full)):<34} {len(fc.origins) / dt:>36.0f}  "
              f"({len(fc.origins)} origins in {dt:.2f} s)")
        predictor.close()
        print(f"load avg at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
