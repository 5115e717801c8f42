"""The frame every price source returns, and the helpers the sources share (`data.sources`).

A tz-naive ``DatetimeIndex`` named ``date`` (ascending), float64 columns among `COLUMNS`, and
``attrs["symbol"]`` / ``attrs["source"]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import pandas as pd

from .errors import UnknownSymbolError

__all__ = ["COLUMNS", "OFFLINE_HINT", "normalise_symbol", "finalise", "similar_symbols", "listing_row"]

COLUMNS = ("open", "high", "low", "close", "volume")
OFFLINE_HINT = "use --source sample (bundled prices) or --source csv with your own files"


def normalise_symbol(symbol: Any) -> str:
    """A ticker as the sources key it (stripped, upper case); UnknownSymbolError for an empty or non-string one."""
    if not isinstance(symbol, str) or not symbol.strip():
        raise UnknownSymbolError(f"symbol must be a non-empty string such as 'AAPL', got {symbol!r}")
    return symbol.strip().upper()


def finalise(frame: pd.DataFrame, symbol: str, source: str) -> pd.DataFrame:
    """Bring a frame with a datetime index and price columns to the common schema."""
    index = pd.DatetimeIndex(frame.index)
    if index.tz is not None:
        # Daily bars: keep the exchange-local calendar date, drop the zone.
        index = index.tz_localize(None)
    # One resolution for every source (pandas 3 parses to us, older pandas to ns) so frames compare and join.
    frame = frame.set_axis(index.as_unit("ns").rename("date"), axis=0)
    frame = frame[[c for c in COLUMNS if c in frame.columns]].astype("float64")
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index(kind="stable")
    frame.attrs = {"symbol": symbol, "source": source}
    return frame


def similar_symbols(symbol: str, candidates: Iterable[str]) -> str:
    """The part of an unknown-symbol message that names up to five close spellings among `candidates`."""
    matches = difflib.get_close_matches(symbol, sorted(set(candidates)), n=5, cutoff=0.5)
    return f"similar symbols: {', '.join(matches)}" if matches else "no similar symbol"


def listing_row(symbol: str, frame: pd.DataFrame) -> dict[str, Any]:
    """One row of `available_symbols`: where the symbol's prices come from, their span and whether volume is there."""
    return {"symbol": symbol, "source": frame.attrs["source"], "first_date": frame.index[0],
            "last_date": frame.index[-1], "rows": len(frame), "has_volume": "volume" in frame.columns}
