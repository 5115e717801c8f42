"""Walk-forward forecasts of the per-symbol HAR-t, the served pool's HAR component, as a backtest report folder.

The backtest's `har_t` baseline is the pooled regression with the market terms; the served pool uses the same
regression fitted on each stock alone (`HarT(per_symbol=True)`, `mambacast.blend`), so a request needs only that
stock's closes. This script runs that forecaster over the backtest's protocol (expanding window, refit every 252
days, embargo), named `har_symbol`, for `benchmarks/pool_weights.py`:

    python benchmarks/har_symbol.py --symbols $S --start 2004-01-01 --end 2009-12-31 --report out/har-pre2010
"""

from __future__ import annotations

import argparse

import pandas as pd

from mambacast.data.sources import load_prices
from mambacast.data.universe import parse_symbols
from mambacast.evaluate.backtest import BacktestConfig, checked_prices, run_backtest
from mambacast.evaluate.har import HarT
from mambacast.report import write_backtest_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--end")
    ap.add_argument("--report", required=True)
    args = ap.parse_args()
    end = pd.Timestamp(args.end) if args.end else None
    prices = checked_prices({s: load_prices(s, days=None) for s in parse_symbols(args.symbols)}, end=end)

    def make(symbol: str) -> list[HarT]:
        har = HarT(symbol=symbol, per_symbol=True)
        har.name = "har_symbol"
        return [har]

    result = run_backtest(prices, make, BacktestConfig(reference="har_symbol"), start=pd.Timestamp(args.start),
                          end=end)
    write_backtest_report(result, args.report, command="python benchmarks/har_symbol.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None))
    print(f"{len(prices)} symbols in {result.seconds:.0f} s: {args.report}")


if __name__ == "__main__":
    main()
