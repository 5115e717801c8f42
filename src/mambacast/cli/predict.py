"""`mambacast predict`: forecasts from the stored models, the fallback, --strict and its exit statuses."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import EXIT_BAD_MODEL, EXIT_NO_MODEL, CLIError, check_output_file, one_line

__all__ = ["add_predict"]

def _reads_ohlcv(store: Any, symbol: str) -> bool:
    """Whether the symbol's stored model reads volumes or highs and lows (the sample's OHLCV files have both)."""
    try:
        fc = store.load_metadata(symbol)["feature_config"]
    except (ValueError, KeyError, TypeError):   # no model or unreadable metadata: the predictor reports it
        return False
    return bool(fc.get("include_volume") or fc.get("include_range"))


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="forecast prices with stored models (momentum fallback otherwise)",
                       description="Forecast each symbol's price 1, 5, 10 and 30 trading days after the last "
                                   "day of its history (or --as-of), with the 80%% interval and the source.")
    p.add_argument("--symbols", required=True, help="comma list or a universe name (TEST, TIER_1, SAMPLE)")
    p.add_argument("--as-of", help="forecast from this date (YYYY-MM-DD): history after it is ignored")
    p.add_argument("--strike", type=float, help="also print P(price above STRIKE) at each horizon")
    p.add_argument("--model", choices=["auto", "symbol", "global"], default="auto",
                   help="auto: the global model (train --global) when stored, else the symbol's own (default); "
                        "symbol: per-symbol models only; global: the global model for every symbol")
    p.add_argument("--strict", action="store_true",
                   help="fail instead of answering with the momentum fallback: exit 3 when a symbol has no model, "
                        "4 when its model exists but cannot be used (damaged, tampered, another symbol's, "
                        "incompatible)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="PNG", help="save a fan chart of history and forecast quantiles")
    p.add_argument("--save-dir", default="models/mamba", help="model store folder (default models/mamba)")
    p.add_argument("--source", default="sample", choices=["sample", "csv", "parquet", "yahoo"])
    p.add_argument("--data", help="file or folder for --source csv/parquet")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    import asyncio
    import json

    import pandas as pd

    from ..data.sources import load_prices
    from ..data.universe import parse_symbols
    from ..predict import MambaPredictor
    from ..store import ModelNotFoundError, ModelStore, StoreError

    if args.strike is not None and not args.strike > 0:
        raise CLIError(f"--strike {args.strike} is invalid: must be a positive price")
    cutoff = None
    if args.as_of:
        try:
            cutoff = pd.Timestamp(args.as_of)
        except ValueError:
            raise CLIError(f"--as-of {args.as_of!r} is not a date; use YYYY-MM-DD") from None
    if args.plot:
        check_output_file(args.plot, "--plot")
    symbols = parse_symbols(args.symbols)
    histories = {}
    store = ModelStore(args.save_dir)
    for symbol in symbols:
        frame = load_prices(symbol, days=None, source=args.source, path=args.data,
                            with_volume=_reads_ohlcv(store, symbol))
        first, last = frame.index[0].date(), frame.index[-1].date()
        if cutoff is not None:
            if not pd.Timestamp(first) <= cutoff <= pd.Timestamp(last):
                raise CLIError(f"--as-of {args.as_of} is outside {symbol}'s prices ({first} .. {last}); pick a date "
                               "in that range")
            frame = frame.loc[:cutoff]
        frame = frame.iloc[-1000:]
        # A blank close is a gap the predictor forward-fills; rows before the first price carry nothing.
        frame = frame.loc[frame["close"].first_valid_index():]
        histories[symbol] = frame
    predictor = MambaPredictor(symbols, model_dir=args.save_dir, model=args.model, strict=args.strict)

    async def run() -> list:
        return await asyncio.gather(*(predictor.predict_detailed(s, h, float(h["close"].ffill().iloc[-1]))
                                      for s, h in histories.items()))

    try:
        results = asyncio.run(run())
    except ModelNotFoundError as exc:
        print(f"mambacast: error: {one_line(exc)} (--strict)", file=sys.stderr)
        return EXIT_NO_MODEL
    except StoreError as exc:
        print(f"mambacast: error: {one_line(exc)} (--strict)", file=sys.stderr)
        return EXIT_BAD_MODEL
    finally:
        predictor.close()
    if args.json:
        out = []
        for r in results:
            d = r.to_dict()
            if args.strike is not None:
                d["strike"] = args.strike
                d["prob_above"] = {k: r.prob_above(args.strike, k) for k in r.prices}
            out.append(d)
        print(json.dumps(out, indent=2))
    else:
        print(_prediction_table(results, args.strike))
    if args.plot:
        from ..plots import plot_fan_chart

        print(f"fan chart saved to {plot_fan_chart(results, histories, args.plot)}")
    return 0


def _prediction_table(results: list, strike: float | None) -> str:
    head = ["symbol", "as of", "current", "horizon", "forecast", "80% interval", "source"]
    if strike is not None:
        head.insert(6, f"P(>{strike:g})")
    rows = [head]
    for r in results:
        for k, price in r.prices.items():
            q = r.quantiles[k]
            row = [r.symbol, r.as_of or "-", f"{r.current_price:.2f}", k, f"{price:.2f}",
                   f"{q[0.1]:.2f} - {q[0.9]:.2f}", r.source]
            if strike is not None:
                row.insert(6, f"{r.prob_above(strike, k):.3f}")
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    notes = [f"{r.symbol}: momentum fallback because {r.reason}" for r in results if r.reason]
    return "\n".join(lines + ([""] + notes if notes else []))
