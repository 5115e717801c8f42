"""Daily price sources behind one interface: ``sample`` (offline), ``csv``, ``parquet``, ``yahoo``.

Every source returns the same frame (see `load_prices`): a tz-naive ``DatetimeIndex`` named
``date`` (ascending, unique) and float64 columns ``close`` (adjusted where the data allows) plus
``open, high, low, volume`` where the source has them, with ``attrs["symbol"]`` and
``attrs["source"]`` (e.g. ``"sample:skfolio"``).

- ``sample``: real daily prices read in place from installed PyPI packages (never copied here):
  skfolio (20 S&P 500 stocks, adjusted closes 1990-2022; optional extra ``mambacast[sample]``),
  bokeh-sampledata (AAPL, MSFT, GOOG/GOOGL, IBM, FB with OHLCV 2000-2013, public-domain Quandl WIKI),
  arch (S&P 500 ``^GSPC`` and NASDAQ Composite ``^IXIC`` OHLCV 1999-2018).
- ``csv`` / ``parquet``: the user's files, ``path`` = a directory with one file per symbol or one
  long file with a ``symbol`` column.
- ``yahoo``: yfinance (extra ``mambacast[yahoo]``) with an on-disk parquet cache.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import (
    DataError,
    MissingVolumeError,
    SourceUnavailableError,
    UnknownSymbolError,
)
from .files import list_file_source, load_file_source
from .frames import finalise, listing_row, normalise_symbol, similar_symbols
from .yahoo import list_yahoo, load_yahoo

__all__ = [
    "SOURCES",
    "load_prices",
    "available_symbols",
    "sample_symbols",
    "sample_hint",
    "sample_install_hint",
    "as_close_array",
    "as_price_frame",
]

logger = logging.getLogger(__name__)

SOURCES = ("sample", "csv", "parquet", "yahoo")

# --------------------------------------------------------------------------------------------
# sample: real prices shipped inside installed PyPI packages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SampleSet:
    """One data file inside an installed package, and the symbols it holds."""

    package: str
    resource: str
    symbols: tuple[str, ...]
    has_volume: bool
    extra: str | None  # the mambacast extra that installs the package (None: a core dependency)
    reader: str  # name of the parser function in this module: (file, symbols) -> {symbol: frame}


_SKFOLIO_SYMBOLS = (
    "AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO",
    "LLY", "MRK", "MSFT", "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM",
)  # fmt: skip
_SAMPLE_SETS = (
    _SampleSet("skfolio", "datasets/data/sp500_dataset.csv.gz", _SKFOLIO_SYMBOLS, False, "sample", "_read_skfolio"),
    _SampleSet("bokeh_sampledata", "_data/stocks.csv.gz", ("AAPL", "FB", "GOOG", "IBM", "MSFT"), True, None,
               "_read_bokeh"),
    _SampleSet("arch", "data/sp500/sp500.csv.gz", ("^GSPC",), True, None, "_read_arch"),
    _SampleSet("arch", "data/nasdaq/nasdaq.csv.gz", ("^IXIC",), True, None, "_read_arch"),
)
# GOOG in bokeh's data is Google's single pre-2014 share class, i.e. the history of today's GOOGL,
# so the guide's test set AAPL, MSFT, GOOGL works offline. Index aliases are the common spellings.
_SAMPLE_ALIASES = {"GOOGL": "GOOG", "SPX": "^GSPC", "^SPX": "^GSPC", "SP500": "^GSPC", "GSPC": "^GSPC",
                   "NASDAQ": "^IXIC", "IXIC": "^IXIC"}
_LISTED_ALIASES = ("GOOGL",)  # aliases shown as their own row in listings (the others are spellings)


def sample_symbols() -> list[str]:
    """All symbols the sample source can serve when every extra is installed (sorted, GOOGL included)."""
    return sorted({s for ss in _SAMPLE_SETS for s in ss.symbols} | set(_LISTED_ALIASES))


def _package_file(package: str, resource: str) -> Path | None:
    """Path of a data file inside an installed package, or None when the package is absent.

    Finds the package with `importlib.util.find_spec` instead of `importlib.resources.files`,
    because the latter imports the package: skfolio and arch pull in scikit-learn/scipy
    (about 1.7 s and 200 MB each) just to read a CSV.
    """
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location, resource)
        if candidate.is_file():
            return candidate
    # A package that is not a plain directory (zip, custom loader): let importlib find it.
    with importlib.resources.as_file(importlib.resources.files(package).joinpath(resource)) as found:
        return Path(found) if Path(found).is_file() else None


def _read_skfolio(file: Path, symbols: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """skfolio's wide table: ``Date`` + one adjusted-close column per ticker."""
    wide = pd.read_csv(file, index_col="Date", parse_dates=["Date"])
    return {sym: wide[[sym]].rename(columns={sym: "close"}) for sym in symbols if sym in wide.columns}


def _read_bokeh(file: Path, symbols: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """bokeh-sampledata's long OHLCV table; ``Adj Close`` becomes ``close``, O/H/L are adjusted alike."""
    long = pd.read_csv(file, parse_dates=["Date"])
    out = {}
    for sym, rows in long.groupby("Ticker", sort=True):
        if sym not in symbols:
            continue
        rows = rows.set_index("Date")
        # Scale open/high/low by the same split-and-dividend factor as the close so that
        # intraday ratios (high/close, ...) stay consistent; volume is kept as reported.
        factor = rows["Adj Close"] / rows["Close"]
        out[str(sym)] = pd.DataFrame({
            "open": rows["Open"] * factor, "high": rows["High"] * factor, "low": rows["Low"] * factor,
            "close": rows["Adj Close"], "volume": rows["Volume"],
        })
    return out


def _read_arch(file: Path, symbols: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """arch's index files: ``Date`` (m/d/Y), OHLC, ``Adj Close`` (equal to Close for an index), Volume."""
    table = pd.read_csv(file)
    table.index = pd.to_datetime(table.pop("Date"), format="%m/%d/%Y")
    frame = pd.DataFrame({"open": table["Open"], "high": table["High"], "low": table["Low"],
                          "close": table["Adj Close"], "volume": table["Volume"]})
    return {symbols[0]: frame}


@functools.cache
def _sample_frames(sample_set: _SampleSet) -> dict[str, pd.DataFrame] | None:
    """Parsed frames of one sample file, cached per process (None if its package is missing)."""
    file = _package_file(sample_set.package, sample_set.resource)
    if file is None:
        return None
    logger.debug("parsing sample file %s", file)
    source = f"sample:{sample_set.package}"
    reader: Callable[[Path, tuple[str, ...]], dict[str, pd.DataFrame]] = globals()[sample_set.reader]
    return {sym: finalise(frame, sym, source) for sym, frame in reader(file, sample_set.symbols).items()}


def _sample_candidates(symbol: str) -> list[tuple[_SampleSet, pd.DataFrame | None]]:
    """Every sample set that lists `symbol` (canonical spelling), with its frame or None if not installed."""
    canonical = _SAMPLE_ALIASES.get(symbol, symbol)
    found = []
    for ss in _SAMPLE_SETS:
        if canonical in ss.symbols:
            frames = _sample_frames(ss)
            # .get: a package version that dropped the symbol counts as not having it.
            found.append((ss, None if frames is None else frames.get(canonical)))
    return found


def _install_command(ss: _SampleSet) -> str:
    """How to install one sample set's package: the mambacast extra, or the core dependency itself."""
    if ss.extra is not None:
        return f"pip install 'mambacast[{ss.extra}]'"
    return f"pip install {ss.package.replace('_', '-')}"


def sample_install_hint(symbol: str) -> str | None:
    """None if the sample source can serve `symbol` here (one of its packages is installed), else the command
    that installs its data (a symbol not in the sample source at all raises UnknownSymbolError)."""
    sym = normalise_symbol(symbol)
    canonical = _SAMPLE_ALIASES.get(sym, sym)
    sets = [ss for ss in _SAMPLE_SETS if canonical in ss.symbols]
    if not sets:
        raise UnknownSymbolError(
            f"unknown symbol {sym!r} in the sample source; {similar_symbols(sym, sample_symbols())}")
    if any(importlib.util.find_spec(ss.package) is not None for ss in sets):
        return None
    return _install_command(sets[0])


def sample_hint(symbol: str) -> str:
    """Where the sample source has `symbol` (for messages of other sources), or '' if nowhere."""
    sym = normalise_symbol(symbol)
    canonical = _SAMPLE_ALIASES.get(sym, sym)
    sets = [ss for ss in _SAMPLE_SETS if canonical in ss.symbols]
    if not sets:
        return ""
    parts = []
    for ss in sets:
        installed = importlib.util.find_spec(ss.package) is not None
        extra = "" if installed else f", needs {_install_command(ss)}"
        parts.append(f"sample:{ss.package}{extra}")
    return f"{sym} is in the sample source ({'; '.join(parts)}): use --source sample"


def _load_sample(symbol: str, path: str | Path | None, with_volume: bool) -> pd.DataFrame:
    candidates = _sample_candidates(symbol)
    if not candidates:
        raise UnknownSymbolError(
            f"unknown symbol {symbol!r} in the sample source; {similar_symbols(symbol, sample_symbols())}. "
            f"The sample source has {', '.join(sample_symbols())}; for other symbols use --source yahoo "
            "or --source csv with your own files")
    installed = [(ss, f) for ss, f in candidates if f is not None]
    if not installed:
        ss = candidates[0][0]
        raise SourceUnavailableError(
            f"{symbol} is in the sample source's {ss.package} data, which is not installed: "
            f"{_install_command(ss)} (or pick another symbol: mambacast data list)")
    if with_volume:
        with_vol = [(ss, f) for ss, f in installed if ss.has_volume]
        if not with_vol:
            raise MissingVolumeError(
                f"{symbol} has no volume in the sample source ({installed[0][0].package} has closes only); "
                f"volume is in {', '.join(_volume_symbols())}; or drop with_volume / --with-volume")
        installed = with_vol
    # Default to the longest adjusted-close history: more days is what training wants.
    ss, frame = max(installed, key=lambda pair: len(pair[1]))
    logger.debug("sample %s served from %s (%d rows)", symbol, ss.package, len(frame))
    frame = frame.copy()
    frame.attrs["symbol"] = symbol
    return frame


def _volume_symbols() -> list[str]:
    return sorted({s for ss in _SAMPLE_SETS if ss.has_volume for s in ss.symbols} | set(_LISTED_ALIASES))


def _list_sample(path: str | Path | None) -> list[dict[str, Any]]:
    rows = []
    for ss in _SAMPLE_SETS:
        frames = _sample_frames(ss)
        if frames is None:
            logger.info("sample data of %s not installed (%s)", ss.package, _install_command(ss))
            continue
        for canonical, frame in frames.items():
            names = [canonical] + [a for a in _LISTED_ALIASES if _SAMPLE_ALIASES[a] == canonical]
            rows.extend(listing_row(name, frame) for name in names)
    return rows


# --------------------------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[[str, str | Path | None, bool], pd.DataFrame]] = {
    "sample": _load_sample,
    "csv": lambda sym, path, _vol: load_file_source(sym, path, "csv", sample_hint),
    "parquet": lambda sym, path, _vol: load_file_source(sym, path, "parquet", sample_hint),
    "yahoo": load_yahoo,
}
_LISTERS: dict[str, Callable[[str | Path | None], list[dict[str, Any]]]] = {
    "sample": _list_sample,
    "csv": lambda path: list_file_source(path, "csv"),
    "parquet": lambda path: list_file_source(path, "parquet"),
    "yahoo": list_yahoo,
}


def _check_source(source: str) -> None:
    if source not in _LOADERS:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")


def load_prices(symbol: str, days: int | None = 2000, source: str = "sample", path: str | Path | None = None,
                with_volume: bool = False) -> pd.DataFrame:
    """Daily prices of one symbol.

    Args:
        symbol: ticker, case-insensitive (``aapl`` = ``AAPL``).
        days: keep the last `days` rows (trading days); None keeps the whole history.
        source: ``sample`` (offline, default), ``csv``, ``parquet`` or ``yahoo``.
        path: csv/parquet: a directory of per-symbol files or one long file; yahoo: the cache directory.
        with_volume: require a ``volume`` column (the sample source then picks a file that has one).

    Returns:
        DataFrame ``(n_days, n_columns)`` indexed by a tz-naive ``DatetimeIndex`` named ``date``
        (ascending, unique), float64 columns ``close`` (adjusted) and, where available,
        ``open, high, low, volume``; ``attrs`` holds ``symbol`` and ``source``.
    """
    sym = normalise_symbol(symbol)
    _check_source(source)
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, np.integer)) or days <= 0):
        raise DataError(f"days={days!r} is invalid: pass a positive number of trading days (or None for all)")
    frame = _LOADERS[source](sym, path, with_volume)
    if with_volume and "volume" not in frame.columns:
        raise MissingVolumeError(f"{sym} from {frame.attrs['source']} has no volume column; add one to the file, "
                                 "use --source sample with AAPL, MSFT, GOOGL, IBM or FB, or drop with_volume")
    if days is not None:
        frame = frame.iloc[-int(days):]
    logger.debug("loaded %s: %d rows from %s", sym, len(frame), frame.attrs["source"])
    return frame


def available_symbols(source: str = "sample", path: str | Path | None = None) -> pd.DataFrame:
    """What a source can serve: one row per (symbol, file) with columns
    ``symbol, source, first_date, last_date, rows, has_volume``, sorted by symbol then longest first.

    For ``sample`` a symbol held by two packages (AAPL, MSFT) has two rows, the default one first;
    for ``yahoo`` the rows are what the local cache holds.
    """
    _check_source(source)
    rows = _LISTERS[source](path)
    table = pd.DataFrame(rows, columns=["symbol", "source", "first_date", "last_date", "rows", "has_volume"])
    return table.sort_values(["symbol", "rows"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _close_column(frame: pd.DataFrame) -> str:
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    if "close" not in by_lower:
        sym = frame.attrs.get("symbol", "the price frame")
        raise DataError(f"{sym} has no close column (columns: {', '.join(map(str, frame.columns))}); "
                        "name the price column 'close'")
    return by_lower["close"]


def as_close_array(prices: pd.DataFrame | pd.Series | np.ndarray | Sequence[float]) -> np.ndarray:
    """Closes as a 1-D float64 array ``(n_days,)`` from a frame (``close`` column, any case),
    a Series, or a 1-D array/list. May share memory with the input: do not write to it."""
    if isinstance(prices, pd.DataFrame):
        values = prices[_close_column(prices)].to_numpy(dtype="float64")
    elif isinstance(prices, pd.Series):
        values = prices.to_numpy(dtype="float64")
    else:
        try:
            values = np.asarray(prices, dtype="float64")
        except (TypeError, ValueError) as exc:
            raise DataError(f"prices must be numeric (a frame with a close column, a Series or an array): {exc}") \
                from exc
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
    if values.ndim != 1:
        raise DataError(f"prices must be one series of closes, got an array of shape {values.shape}; "
                        "pass a frame with a close column or a 1-D array")
    return values


def as_price_frame(prices: pd.DataFrame | pd.Series | np.ndarray | Sequence[float]) -> pd.DataFrame:
    """The inverse of `as_close_array`: a frame with float64 ``close`` (and other lower-cased columns).

    A frame keeps its index, columns and attrs; a Series keeps its index (and its name as
    ``attrs["symbol"]``); an array or list gets a ``RangeIndex`` named ``day`` (0, 1, ...), since it
    carries no dates.
    """
    if isinstance(prices, pd.DataFrame):
        _close_column(prices)  # raises a DataError naming the columns when there is no close
        frame = prices.rename(columns={c: str(c).strip().lower() for c in prices.columns})
        frame["close"] = frame["close"].astype("float64")
        frame.attrs = dict(prices.attrs)
        return frame
    if isinstance(prices, pd.Series):
        frame = pd.DataFrame({"close": prices.to_numpy(dtype="float64")}, index=prices.index)
        frame.attrs = dict(prices.attrs)
        if prices.name is not None and str(prices.name).lower() != "close":
            frame.attrs.setdefault("symbol", str(prices.name))
        return frame
    values = as_close_array(prices)
    return pd.DataFrame({"close": values}, index=pd.RangeIndex(len(values), name="day"))
