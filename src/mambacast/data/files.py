"""The ``csv`` and ``parquet`` sources: the user's own files (`data.sources`).

``path`` is a directory with one file per symbol (``AAPL.csv``, ``AAPL.parquet``, ...) or one long file with a
``symbol`` column. Columns are matched case-insensitively (``Adj Close`` -> ``adj_close``, preferred as the
close, open/high/low adjusted by the same factor); a file that cannot be read, lacks a close or a date, or holds
non-numeric prices is a `DataFileError` naming the file (and the line of a bad cell).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataFileError, SourceUnavailableError, UnknownSymbolError
from .frames import finalise, listing_row, similar_symbols

__all__ = ["load_file_source", "list_file_source", "clean_column", "frame_from_table", "require_pyarrow"]

logger = logging.getLogger(__name__)

_SUFFIXES = {"csv": (".csv", ".csv.gz", ".txt"), "parquet": (".parquet", ".pq")}
_COLUMN_ALIASES = {"adjclose": "adj_close", "adjusted_close": "adj_close", "ticker": "symbol"}


def clean_column(name: object) -> str:
    """A column name as the sources match it: lower case, spaces and dashes as underscores, aliases resolved."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return _COLUMN_ALIASES.get(key, key)


def require_pyarrow(what: str) -> None:
    """SourceUnavailableError naming `what` needs pyarrow, when it is not installed."""
    if importlib.util.find_spec("pyarrow") is None:
        raise SourceUnavailableError(f"{what} needs pyarrow: pip install 'mambacast[parquet]'")


@functools.lru_cache(maxsize=32)
def _read_table_cached(file: str, fmt: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """Raw table of one user file, cached per process while the file is unchanged (mtime, size)."""
    path = Path(file)
    if size == 0:
        raise DataFileError(f"{path} is empty; it needs a header with date and close columns and one row per day")
    if fmt == "parquet":
        require_pyarrow(f"--source parquet ({path})")
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
    if "date" not in {clean_column(c) for c in table.columns} and str(table.index.name).lower() == "date":
        table = table.reset_index()  # a parquet written from a date-indexed frame
    table.columns = [clean_column(c) for c in table.columns]
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


def frame_from_table(table: pd.DataFrame, file: Path, fmt: str, symbol: str, source: str) -> pd.DataFrame:
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
    return finalise(frame, symbol, source)


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


def load_file_source(symbol: str, path: str | Path | None, fmt: str,
                     hint: Callable[[str], str] = lambda _symbol: "") -> pd.DataFrame:
    """The prices of `symbol` from the user's `fmt` files at `path`; `hint(symbol)` is added to the message of an
    unknown symbol (`data.sources` passes where else the symbol is found)."""
    if path is None:
        raise DataFileError(f"--source {fmt} needs a path: a directory of {fmt} files named like "
                            f"AAPL{_SUFFIXES[fmt][0]} or one {fmt} file with a symbol column (pass path=... / --data)")
    root = Path(path).expanduser()
    source = f"{fmt}:{root}"
    if root.is_dir():
        files = _symbol_files(root, fmt)
        if symbol not in files:
            found = hint(symbol)
            raise UnknownSymbolError(
                f"no {fmt} file for {symbol} in {root} (expected {symbol}{_SUFFIXES[fmt][0]}, case-insensitive); "
                f"{similar_symbols(symbol, files)}{'; ' + found if found else ''}")
        return frame_from_table(_read_table(files[symbol], fmt), files[symbol], fmt, symbol, source)
    table = _read_table(root, fmt)
    if "symbol" not in table.columns:
        if root.name.upper().startswith(symbol + "."):
            return frame_from_table(table, root, fmt, symbol, source)  # a single-symbol file named after it
        raise DataFileError(
            f"{root} has no 'symbol' column (found: {', '.join(map(str, table.columns))}); add one to hold several "
            f"symbols, name the file {symbol}{_SUFFIXES[fmt][0]}, or pass the directory that holds per-symbol files")
    keys = table["symbol"].astype("string").str.strip().str.upper()
    rows = table[(keys == symbol).to_numpy()]
    if rows.empty:
        found = hint(symbol)
        raise UnknownSymbolError(
            f"{root} has no rows for {symbol}; {similar_symbols(symbol, keys.dropna().unique())}"
            f"{'; ' + found if found else ''}")
    return frame_from_table(rows, root, fmt, symbol, source)


def list_file_source(path: str | Path | None, fmt: str) -> list[dict[str, Any]]:
    """One listing row (`frames.listing_row`) per symbol in the user's `fmt` files at `path`."""
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
    return [listing_row(sym, load_file_source(sym, root, fmt)) for sym in symbols]
