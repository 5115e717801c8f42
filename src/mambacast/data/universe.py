"""Symbol universes (``TEST``, ``TIER_1``, ``SAMPLE``), parsing of ``--symbols`` specs, and loading the symbols of
a spec concurrently (`fetch_historical_prices`)."""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
from pathlib import Path

import pandas as pd

from .errors import DataError, SourceUnavailableError, UnknownSymbolError, UnknownUniverseError
from .sources import load_prices, sample_hint, sample_symbols

__all__ = ["TEST", "TIER_1", "SAMPLE", "UNIVERSES", "parse_symbols", "check_available", "fetch_historical_prices"]

logger = logging.getLogger(__name__)

# The guide's `--test` set. All three are in the offline sample source (GOOGL via bokeh's GOOG).
TEST = ["AAPL", "MSFT", "GOOGL"]

# The 50 largest US-listed companies by market capitalisation, approximately as of January 2025
# (the guide's date), largest first; one share class per company (GOOGL, BRK-B), spelled as Yahoo
# spells tickers. Most of them need --source yahoo or csv: the sample source has 19 of them.
TIER_1 = [
    "AAPL", "NVDA", "MSFT", "AMZN", "GOOGL", "META", "TSLA", "AVGO", "BRK-B", "WMT",
    "LLY", "JPM", "V", "UNH", "XOM", "ORCL", "MA", "COST", "HD", "PG",
    "NFLX", "JNJ", "BAC", "CRM", "ABBV", "CVX", "KO", "TMUS", "MRK", "WFC",
    "CSCO", "ACN", "NOW", "AXP", "MCD", "PEP", "MS", "IBM", "LIN", "AMD",
    "DIS", "TMO", "ABT", "ISRG", "PM", "ADBE", "GS", "GE", "QCOM", "TXN",
]  # fmt: skip

# Every symbol the offline sample source can serve when all extras are installed.
SAMPLE = sample_symbols()

UNIVERSES: dict[str, list[str]] = {"TEST": TEST, "TIER_1": TIER_1, "SAMPLE": SAMPLE}

# Letters, digits and the punctuation tickers use: BRK-B, BRK.B, ^GSPC, EURUSD=X.
_TICKER = re.compile(r"^[A-Z0-9^][A-Z0-9.\-=^]{0,19}$")


def _squash(name: str) -> str:
    return name.replace("_", "").replace("-", "")


def _universe(token: str) -> list[str] | None:
    """The universe a token names (``tier_1``, ``TIER-1`` and ``TIER1`` all name TIER_1), else None.

    A token with an underscore is always meant as a universe name, since no ticker has one.
    """
    for name, members in UNIVERSES.items():
        if _squash(token) == _squash(name):
            return members
    if "_" in token:
        matches = difflib.get_close_matches(token, list(UNIVERSES), n=1, cutoff=0.6)
        hint = f"; did you mean {matches[0]}?" if matches else ""
        raise UnknownUniverseError(f"unknown universe {token!r}: valid universes are {', '.join(UNIVERSES)}{hint} "
                                   "(or list symbols: --symbols AAPL,MSFT)")
    return None


def parse_symbols(spec: str | list[str]) -> list[str]:
    """Symbols of a ``--symbols`` spec, upper-cased, de-duplicated in first-seen order.

    `spec` is a comma (or whitespace) separated string such as ``"aapl, msft"``, a universe name
    (``"TEST"``, ``"TIER_1"``, ``"SAMPLE"``, also inside a list: ``"TEST,NVDA"``), or a list of those.
    """
    tokens: list[str] = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        if not isinstance(part, str):
            raise DataError(f"symbols must be strings, got {part!r} in {spec!r}")
        tokens.extend(t for t in re.split(r"[,\s]+", part.strip().upper()) if t)
    if not tokens:
        raise DataError(f"no symbols in {spec!r}; pass e.g. --symbols AAPL,MSFT or a universe "
                        f"({', '.join(UNIVERSES)})")
    symbols: dict[str, None] = {}
    for token in tokens:
        members = _universe(token)
        if members is None:
            if not _TICKER.match(token):
                raise UnknownSymbolError(f"{token!r} is not a valid ticker (letters, digits and . - ^ =, e.g. BRK-B, "
                                         "^GSPC); separate symbols with commas")
            members = [token]
        symbols.update(dict.fromkeys(members))
    return list(symbols)


def check_available(symbols: str | list[str], source: str = "sample",
                    path: str | Path | None = None) -> tuple[list[str], dict[str, str]]:
    """Which symbols `source` can serve (each is loaded once: for yahoo that downloads or reads the cache).

    Returns:
        ``(available, missing)``: the available symbols in order, and for each missing one a
        message saying why and which sources have it.
    """
    available: list[str] = []
    missing: dict[str, str] = {}
    for sym in parse_symbols(symbols):
        try:
            load_prices(sym, days=None, source=source, path=path)
        except (UnknownSymbolError, SourceUnavailableError) as exc:
            hint = sample_hint(sym) if source != "sample" else ""
            message = str(exc)
            if hint and hint not in message:
                message = f"{message}; {hint}"
            elif source in ("csv", "parquet"):
                message = f"{message}; try --source yahoo or your own files with --source csv"
            missing[sym] = message
            logger.info("%s unavailable from %s: %s", sym, source, message)
        else:
            available.append(sym)
    return available, missing


async def fetch_historical_prices(symbols: list[str] | str, days: int = 2000, source: str = "sample",
                                  path: str | Path | None = None, with_volume: bool = False) -> dict[str, pd.DataFrame]:
    """Load several symbols concurrently off the event loop: ``{symbol: load_prices(symbol, ...)}``.

    `symbols` is a list or a spec string (``"AAPL,MSFT"`` or a universe name such as ``"TEST"``).
    The dict keeps the order of `symbols`; the first failing symbol's error is raised.
    """
    names = parse_symbols(symbols)
    frames = await asyncio.gather(*(asyncio.to_thread(load_prices, s, days, source, path, with_volume)
                                    for s in names))
    return dict(zip(names, frames, strict=True))
