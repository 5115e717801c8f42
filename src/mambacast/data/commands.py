"""Text for the ``mambacast data list`` and ``mambacast data check`` commands.

Pure functions returning strings (the CLI prints them); `quality_report` gives the same
check as a frame, e.g. to choose the exit status.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import DataError
from .quality import validate_data_quality
from .sources import available_symbols, load_prices
from .universe import parse_symbols

__all__ = ["list_symbols_table", "quality_report", "check_symbols"]


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).ljust(w) for c, w in zip(cells[:-1], widths, strict=True)]
        return "  ".join([*padded, str(cells[-1])]).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _date(value: object) -> str:
    return "" if value is None or pd.isna(value) else str(pd.Timestamp(value).date())


def list_symbols_table(source: str = "sample", path: str | Path | None = None) -> str:
    """The symbols a source can serve as a text table: symbol, source, first date, last date, rows, volume."""
    listing = available_symbols(source, path)
    if listing.empty:
        where = f" at {path}" if path is not None else ""
        return f"no symbols in source {source!r}{where}"
    rows = [(r.symbol, r.source, _date(r.first_date), _date(r.last_date), f"{r.rows:,}",
             "yes" if r.has_volume else "no") for r in listing.itertuples()]
    text = _table(rows, ("symbol", "source", "first date", "last date", "rows", "volume"))
    n = listing["symbol"].nunique()
    footer = f"{n} symbols from source {source!r}"
    if source == "sample":
        footer += "; where a symbol has two rows, the first is the default and the other serves --with-volume"
        if importlib.util.find_spec("skfolio") is None:
            footer += "\n20 more S&P 500 stocks (1990-2022): pip install 'mambacast[sample]'"
    return f"{text}\n{footer}"


def quality_report(symbols: str | list[str], source: str = "sample", path: str | Path | None = None,
                   days: int | None = 2000, min_samples: int = 100, max_missing_ratio: float = 0.05) -> pd.DataFrame:
    """`validate_data_quality` of each symbol's last `days` prices.

    Returns:
        one row per symbol with columns ``symbol, status, rows, first_date, last_date, message``;
        status is ``ok``, ``warning``, ``failed`` (quality) or ``error`` (could not load).
    """
    records = []
    for sym in parse_symbols(symbols):
        try:
            prices = load_prices(sym, days=days, source=source, path=path)
        except DataError as exc:
            records.append({"symbol": sym, "status": "error", "rows": 0, "first_date": None, "last_date": None,
                            "message": str(exc)})
            continue
        ok, message = validate_data_quality(prices, min_samples=min_samples, max_missing_ratio=max_missing_ratio)
        status = "failed" if not ok else ("ok" if message == "OK" else "warning")
        records.append({"symbol": sym, "status": status, "rows": len(prices),
                        "first_date": prices.index[0] if len(prices) else None,
                        "last_date": prices.index[-1] if len(prices) else None, "message": message})
    return pd.DataFrame(records, columns=["symbol", "status", "rows", "first_date", "last_date", "message"])


def check_symbols(symbols: str | list[str], source: str = "sample", path: str | Path | None = None,
                  days: int | None = 2000, min_samples: int = 100, max_missing_ratio: float = 0.05) -> str:
    """`quality_report` as text: one line per symbol and a summary line."""
    report = quality_report(symbols, source, path, days, min_samples, max_missing_ratio)
    return format_quality_report(report, source, days)


def format_quality_report(report: pd.DataFrame, source: str = "sample", days: int | None = 2000) -> str:
    """Text table of a `quality_report` frame with a summary line."""
    rows = [(r.symbol, r.status.upper(), f"{r.rows:,}", _date(r.first_date), _date(r.last_date), r.message)
            for r in report.itertuples()]
    text = _table(rows, ("symbol", "status", "rows", "first date", "last date", "message"))
    counts = report["status"].value_counts()
    summary = ", ".join(f"{counts[s]} {s}" for s in ("ok", "warning", "failed", "error") if s in counts)
    span = "all days: the rows backtest reads" if days is None else \
        f"last {days} days{': the rows train reads by default' if days == 2000 else ''}; --days all checks what " \
        "backtest reads"
    return f"{text}\n{len(report)} symbols checked from source {source!r} ({span}): {summary}"
