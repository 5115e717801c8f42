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

import difflib
import functools
import importlib
import importlib.resources
import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import (
    DataError,
    DataFileError,
    MissingVolumeError,
    SourceUnavailableError,
    UnknownSymbolError,
)

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
_COLUMNS = ("open", "high", "low", "close", "volume")
_OFFLINE_HINT = "use --source sample (bundled prices) or --source csv with your own files"

# --------------------------------------------------------------------------------------------
# Frame helpers shared by all sources
# --------------------------------------------------------------------------------------------


def _normalise_symbol(symbol: Any) -> str:
    if not isinstance(symbol, str) or not symbol.strip():
        raise UnknownSymbolError(f"symbol must be a non-empty string such as 'AAPL', got {symbol!r}")
    return symbol.strip().upper()


def _finalise(frame: pd.DataFrame, symbol: str, source: str) -> pd.DataFrame:
    """Bring a frame with a datetime index and price columns to the common schema."""
    index = pd.DatetimeIndex(frame.index)
    if index.tz is not None:
        # Daily bars: keep the exchange-local calendar date, drop the zone.
        index = index.tz_localize(None)
    # One resolution for every source (pandas 3 parses to us, older pandas to ns) so frames compare and join.
    frame = frame.set_axis(index.as_unit("ns").rename("date"), axis=0)
    frame = frame[[c for c in _COLUMNS if c in frame.columns]].astype("float64")
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index(kind="stable")
    frame.attrs = {"symbol": symbol, "source": source}
    return frame


def _similar_symbols(symbol: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(symbol, sorted(set(candidates)), n=5, cutoff=0.5)
    return f"similar symbols: {', '.join(matches)}" if matches else "no similar symbol"


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
    return {sym: _finalise(frame, sym, source) for sym, frame in reader(file, sample_set.symbols).items()}


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
    sym = _normalise_symbol(symbol)
    canonical = _SAMPLE_ALIASES.get(sym, sym)
    sets = [ss for ss in _SAMPLE_SETS if canonical in ss.symbols]
    if not sets:
        raise UnknownSymbolError(
            f"unknown symbol {sym!r} in the sample source; {_similar_symbols(sym, sample_symbols())}")
    if any(importlib.util.find_spec(ss.package) is not None for ss in sets):
        return None
    return _install_command(sets[0])


def sample_hint(symbol: str) -> str:
    """Where the sample source has `symbol` (for messages of other sources), or '' if nowhere."""
    sym = _normalise_symbol(symbol)
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
            f"unknown symbol {symbol!r} in the sample source; {_similar_symbols(symbol, sample_symbols())}. "
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
            rows.extend(_listing_row(name, frame) for name in names)
    return rows


def _listing_row(symbol: str, frame: pd.DataFrame) -> dict[str, Any]:
    return {"symbol": symbol, "source": frame.attrs["source"], "first_date": frame.index[0],
            "last_date": frame.index[-1], "rows": len(frame), "has_volume": "volume" in frame.columns}


# --------------------------------------------------------------------------------------------
# csv / parquet: the user's own files
# --------------------------------------------------------------------------------------------

_SUFFIXES = {"csv": (".csv", ".csv.gz", ".txt"), "parquet": (".parquet", ".pq")}
_COLUMN_ALIASES = {"adjclose": "adj_close", "adjusted_close": "adj_close", "ticker": "symbol"}


def _clean_column(name: object) -> str:
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return _COLUMN_ALIASES.get(key, key)


def _require_pyarrow(what: str) -> None:
    if importlib.util.find_spec("pyarrow") is None:
        raise SourceUnavailableError(f"{what} needs pyarrow: pip install 'mambacast[parquet]'")


@functools.lru_cache(maxsize=32)
def _read_table_cached(file: str, fmt: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """Raw table of one user file, cached per process while the file is unchanged (mtime, size)."""
    path = Path(file)
    if size == 0:
        raise DataFileError(f"{path} is empty; it needs a header with date and close columns and one row per day")
    if fmt == "parquet":
        _require_pyarrow(f"--source parquet ({path})")
    try:
        if fmt == "csv":
            # Read as text so a bad cell can be reported with its line instead of turning a column to object.
            table = pd.read_csv(path, dtype=str, skipinitialspace=True)
        else:
            table = pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataFileError(f"{path} is empty; it needs a header with date and close columns") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataFileError(f"{path} cannot be read as {fmt}: {exc}") from exc
    if "date" not in {_clean_column(c) for c in table.columns} and str(table.index.name).lower() == "date":
        table = table.reset_index()  # a parquet written from a date-indexed frame
    table.columns = [_clean_column(c) for c in table.columns]
    return table


def _read_table(file: Path, fmt: str) -> pd.DataFrame:
    try:
        stat = file.stat()
    except FileNotFoundError as exc:
        raise DataFileError(f"{file} does not exist; pass --data with an existing file or directory") from exc
    return _read_table_cached(str(file), fmt, stat.st_mtime_ns, stat.st_size)


def _where(table: pd.DataFrame, fmt: str, position: int) -> str:
    """Where data row `position` of `table` is in its file (a long file's subset keeps the file's row labels)."""
    row = int(table.index[position])
    # CSV: the header is line 1, so data row i (0-based) is on line i + 2.
    return f"line {row + 2}" if fmt == "csv" else f"row {row}"


def _numeric(table: pd.DataFrame, column: str, file: Path, fmt: str) -> pd.Series:
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce")
    blank = raw.isna().to_numpy() | raw.astype("string").str.strip().eq("").fillna(False).to_numpy(dtype=bool)
    bad = np.flatnonzero(values.isna().to_numpy() & ~blank)
    if bad.size:
        first = int(bad[0])
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise DataFileError(
            f"{file}: column '{column}' has non-numeric value {raw.iloc[first]!r} at {_where(table, fmt, first)}"
            f"{more}; write plain numbers (no currency signs or thousands separators), or leave the cell empty "
            "for a missing day")
    return values.astype("float64")


def _dates(table: pd.DataFrame, file: Path, fmt: str) -> pd.DatetimeIndex:
    raw = table["date"]
    try:
        dates = pd.to_datetime(raw, errors="coerce")
    except (ValueError, TypeError) as exc:  # e.g. mixed time zones
        raise DataFileError(f"{file}: column 'date' cannot be parsed as dates ({exc}); use ISO dates 2024-01-31") \
            from exc
    bad = np.flatnonzero(dates.isna().to_numpy())
    if bad.size:
        first = int(bad[0])
        raise DataFileError(
            f"{file}: unparsable date {raw.iloc[first]!r} at {_where(table, fmt, first)} ({bad.size} bad in total); "
            "use one format for the whole column, ISO (2024-01-31) is safest")
    index = pd.DatetimeIndex(dates)
    dup = index[index.duplicated()]
    if len(dup):
        shown = ", ".join(str(d.date()) if d == d.normalize() else str(d) for d in dup.unique()[:5])
        raise DataFileError(
            f"{file}: duplicate dates {shown}{' ...' if dup.nunique() > 5 else ''} ({len(dup)} extra rows); "
            "keep one row per day (a long file needs a 'symbol' column to hold several symbols)")
    return index


def _frame_from_table(table: pd.DataFrame, file: Path, fmt: str, symbol: str, source: str) -> pd.DataFrame:
    """Validate and convert a user table (cleaned column names) into the common frame."""
    missing = [c for c in ("date", "close") if c not in table.columns]
    if "close" in missing and "adj_close" in table.columns:
        missing.remove("close")
    if missing:
        raise DataFileError(
            f"{file}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, table.columns)) or 'none'});"
            " name them date and close (case-insensitive; adj_close is used as close when present)")
    if table.empty:
        raise DataFileError(f"{file} has a header but no rows{f' for {symbol}' if 'symbol' in table else ''}")
    columns = {c: _numeric(table, c, file, fmt) for c in ("open", "high", "low", "close", "volume", "adj_close")
               if c in table.columns}
    if "adj_close" in columns:
        adjusted = columns.pop("adj_close")
        if "close" in columns:
            # Adjust open/high/low with the same factor as the close (splits and dividends).
            factor = adjusted / columns["close"]
            for c in ("open", "high", "low"):
                if c in columns:
                    columns[c] = columns[c] * factor
        columns["close"] = adjusted
    frame = pd.DataFrame(columns)
    frame.index = _dates(table, file, fmt)
    return _finalise(frame, symbol, source)


def _symbol_files(directory: Path, fmt: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for entry in sorted(directory.iterdir()):
        name = entry.name.lower()
        suffix = next((s for s in _SUFFIXES[fmt] if name.endswith(s)), None)
        if suffix is None or not entry.is_file():
            continue
        sym = entry.name[: -len(suffix)].upper()
        if sym in files:
            raise DataFileError(f"{directory}: both {files[sym].name} and {entry.name} hold {sym}; keep one")
        files[sym] = entry
    return files


def _load_file_source(symbol: str, path: str | Path | None, fmt: str) -> pd.DataFrame:
    if path is None:
        raise DataFileError(f"--source {fmt} needs a path: a directory of {fmt} files named like "
                            f"AAPL{_SUFFIXES[fmt][0]} or one {fmt} file with a symbol column (pass path=... / --data)")
    root = Path(path).expanduser()
    source = f"{fmt}:{root}"
    if root.is_dir():
        files = _symbol_files(root, fmt)
        if symbol not in files:
            hint = sample_hint(symbol)
            raise UnknownSymbolError(
                f"no {fmt} file for {symbol} in {root} (expected {symbol}{_SUFFIXES[fmt][0]}, case-insensitive); "
                f"{_similar_symbols(symbol, files)}{'; ' + hint if hint else ''}")
        return _frame_from_table(_read_table(files[symbol], fmt), files[symbol], fmt, symbol, source)
    table = _read_table(root, fmt)
    if "symbol" not in table.columns:
        if root.name.upper().startswith(symbol + "."):
            return _frame_from_table(table, root, fmt, symbol, source)  # a single-symbol file named after it
        raise DataFileError(
            f"{root} has no 'symbol' column (found: {', '.join(map(str, table.columns))}); add one to hold several "
            f"symbols, name the file {symbol}{_SUFFIXES[fmt][0]}, or pass the directory that holds per-symbol files")
    keys = table["symbol"].astype("string").str.strip().str.upper()
    rows = table[(keys == symbol).to_numpy()]
    if rows.empty:
        hint = sample_hint(symbol)
        raise UnknownSymbolError(
            f"{root} has no rows for {symbol}; {_similar_symbols(symbol, keys.dropna().unique())}"
            f"{'; ' + hint if hint else ''}")
    return _frame_from_table(rows, root, fmt, symbol, source)


def _list_file_source(path: str | Path | None, fmt: str) -> list[dict[str, Any]]:
    if path is None:
        raise DataFileError(f"listing --source {fmt} needs a path (a directory of files or one long file)")
    root = Path(path).expanduser()
    if root.is_dir():
        symbols: Sequence[str] = list(_symbol_files(root, fmt))
    else:
        table = _read_table(root, fmt)
        if "symbol" in table.columns:
            symbols = sorted(table["symbol"].astype("string").str.strip().str.upper().dropna().unique())
        else:
            symbols = [root.name.split(".")[0].upper()]
    return [_listing_row(sym, _load_file_source(sym, root, fmt)) for sym in symbols]


# --------------------------------------------------------------------------------------------
# yahoo: yfinance with an on-disk parquet cache
# --------------------------------------------------------------------------------------------

YAHOO_MAX_AGE_S = 12 * 3600  # a cached download younger than this is reused without asking Yahoo


def yahoo_cache_dir(path: str | Path | None = None) -> Path:
    """Cache directory of the yahoo source: `path` if given, else $MAMBACAST_CACHE_DIR/yahoo,
    else $XDG_CACHE_HOME/mambacast/yahoo, else ~/.cache/mambacast/yahoo."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get("MAMBACAST_CACHE_DIR"):
        return Path(os.environ["MAMBACAST_CACHE_DIR"]).expanduser() / "yahoo"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mambacast" / "yahoo"


def _download_yahoo(symbol: str) -> pd.DataFrame:
    try:
        yf = importlib.import_module("yfinance")
    except ImportError as exc:
        raise SourceUnavailableError(
            f"--source yahoo needs yfinance, which is not installed: pip install 'mambacast[yahoo]'; "
            f"or {_OFFLINE_HINT}") from exc
    try:
        raw = yf.Ticker(symbol).history(period="max", interval="1d", auto_adjust=False, actions=False)
    except Exception as exc:  # yfinance surfaces network, HTTP and rate-limit failures as many types
        raise SourceUnavailableError(f"Yahoo download of {symbol} failed ({type(exc).__name__}: {exc}); "
                                     f"you may be offline or rate-limited: retry later or {_OFFLINE_HINT}") from exc
    if raw is None or raw.empty:
        raise UnknownSymbolError(f"Yahoo returned no prices for {symbol}: unknown or delisted symbol (or Yahoo is "
                                 f"throttling); check the ticker spelling (e.g. BRK-B, ^GSPC) or {_OFFLINE_HINT}")
    table = raw.reset_index()
    table.columns = [_clean_column(c) for c in table.columns]
    return _frame_from_table(table, Path(f"yahoo:{symbol}"), "yahoo", symbol, "yahoo")


def _write_atomic_parquet(frame: pd.DataFrame, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp)
        os.replace(tmp, target)  # readers never see a half-written cache file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_cache(file: Path, symbol: str) -> pd.DataFrame:
    return _finalise(pd.read_parquet(file), symbol, "yahoo")


def _load_yahoo(symbol: str, path: str | Path | None, with_volume: bool) -> pd.DataFrame:
    cache = yahoo_cache_dir(path) / f"{symbol}.parquet"
    have_pyarrow = importlib.util.find_spec("pyarrow") is not None
    if have_pyarrow and cache.is_file() and time.time() - cache.stat().st_mtime < YAHOO_MAX_AGE_S:
        logger.debug("yahoo %s from cache %s", symbol, cache)
        return _read_cache(cache, symbol)
    try:
        frame = _download_yahoo(symbol)
    except SourceUnavailableError:
        if have_pyarrow and cache.is_file():
            logger.warning("Yahoo unavailable; using the cached %s from %s", symbol, time.ctime(cache.stat().st_mtime))
            return _read_cache(cache, symbol)
        raise
    if have_pyarrow:
        _write_atomic_parquet(frame, cache)
    else:
        logger.warning("pyarrow is not installed, so the Yahoo download of %s is not cached "
                       "(pip install 'mambacast[yahoo]')", symbol)
    return frame


def _list_yahoo(path: str | Path | None) -> list[dict[str, Any]]:
    """The yahoo source lists what its cache holds (what works offline); listing never downloads."""
    directory = yahoo_cache_dir(path)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if files:
        _require_pyarrow("reading the yahoo cache")
    return [_listing_row(f.stem, _read_cache(f, f.stem)) for f in files]


# --------------------------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[[str, str | Path | None, bool], pd.DataFrame]] = {
    "sample": _load_sample,
    "csv": lambda sym, path, _vol: _load_file_source(sym, path, "csv"),
    "parquet": lambda sym, path, _vol: _load_file_source(sym, path, "parquet"),
    "yahoo": _load_yahoo,
}
_LISTERS: dict[str, Callable[[str | Path | None], list[dict[str, Any]]]] = {
    "sample": _list_sample,
    "csv": lambda path: _list_file_source(path, "csv"),
    "parquet": lambda path: _list_file_source(path, "parquet"),
    "yahoo": _list_yahoo,
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
    sym = _normalise_symbol(symbol)
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
