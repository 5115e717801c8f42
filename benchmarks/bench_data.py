"""Time and memory of the data layer: features + training windows, synthetic and every sample symbol.

Run: .venv/bin/python benchmarks/bench_data.py [--repeats 5]

For each series: median wall time of `extract_features` and of `generate_sequences` (after one
warm-up call), and, as the peer measured in the same run, of materialising the same windows as a
float32 array (what a generator that copies each window pays; ``view speed-up`` is their ratio).
``peak MB`` is tracemalloc's peak of Python/NumPy allocations while extracting features and cutting
windows once; ``X view MB`` is what the zero-copy windows add (nothing) and ``X copy MB`` the size
of the materialised windows (what a caller pays if it scales or indexes ``X`` instead of the 2-D
feature matrix). The last rows restate the guide's budget of 50-200 MB of training data per
symbol for 1000 days against the same quantities at 1000 days.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pandas as pd

from mambacast.data import SequenceGenerator, TimeSeriesFeatureEngineer, available_symbols, load_prices

HORIZONS = [1, 5, 10, 30]
SEQ_LEN = 60
MB = 1024 * 1024


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: imports, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(name: str, prices: pd.DataFrame | np.ndarray, include_volume: bool, repeats: int) -> dict[str, object]:
    engineer = TimeSeriesFeatureEngineer(include_volume=include_volume)
    generator = SequenceGenerator(SEQ_LEN, HORIZONS)
    features = engineer.extract_features(prices)
    feat_ms = median_ms(lambda: engineer.extract_features(prices), repeats)
    win_ms = median_ms(lambda: generator.generate_sequences(features, prices, start=engineer.warmup_), repeats)
    copy_ms = median_ms(lambda: np.array(generator.generate_sequences(features, prices, start=engineer.warmup_)[0]),
                        repeats)

    tracemalloc.start()
    feats = engineer.extract_features(prices)
    X, y = generator.generate_sequences(feats, prices, start=engineer.warmup_)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    view_extra = 0 if np.shares_memory(X, feats) else X.nbytes
    return {"series": name, "days": len(feats), "features": feats.shape[1], "samples": len(X),
            "features ms": feat_ms, "windows ms": win_ms, "copied ms": copy_ms, "view speed-up": copy_ms / win_ms,
            "peak MB": peak / MB,
            "X view MB": view_extra / MB, "X copy MB": X.size * 4 / MB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    synthetic = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 10_000)))
    volume = rng.integers(100_000, 10_000_000, 10_000).astype(float)
    frame = pd.DataFrame({"close": synthetic, "volume": volume})
    rows = [measure("synthetic", synthetic, False, args.repeats),
            measure("synthetic +volume", frame, True, args.repeats)]

    t0 = time.perf_counter()
    listing = available_symbols("sample").drop_duplicates("symbol")  # parses every sample file once
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = {s: load_prices(s, days=None) for s in listing["symbol"]}  # the default file of each symbol
    load_s = time.perf_counter() - t0
    for symbol, prices in loaded.items():
        if len(prices) >= SEQ_LEN + max(HORIZONS) + 60:
            rows.append(measure(symbol, prices, False, args.repeats))
    rows.append(measure("AAPL 1000 days", load_prices("AAPL", days=1000), False, args.repeats))
    rows.append(measure("AAPL 1000 days +volume", load_prices("AAPL", days=1000, with_volume=True), True,
                        args.repeats))

    table = pd.DataFrame(rows)
    print(f"numpy {np.__version__}, pandas {pd.__version__}; seq_len={SEQ_LEN} horizons={HORIZONS}; "
          f"median of {args.repeats}")
    print(f"sample source: parsing every file {parse_s * 1e3:.0f} ms, then loading all {len(loaded)} symbols "
          f"from the per-process cache {load_s * 1e3:.0f} ms")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    per_1000 = table[table["series"] == "AAPL 1000 days +volume"].iloc[0]
    print(f"guide budget for training data: 50-200 MB per symbol (1000 days); measured at 1000 days: "
          f"peak {per_1000['peak MB']:.2f} MB, windows materialised {per_1000['X copy MB']:.2f} MB")


if __name__ == "__main__":
    main()
