"""The ``yahoo`` source: yfinance (extra ``mambacast[yahoo]``) with an on-disk parquet cache (`data.sources`)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import SourceUnavailableError, UnknownSymbolError
from .files import clean_column, frame_from_table, require_pyarrow
from .frames import OFFLINE_HINT, finalise, listing_row

__all__ = ["YAHOO_MAX_AGE_S", "yahoo_cache_dir", "load_yahoo", "list_yahoo"]

logger = logging.getLogger(__name__)

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
            f"or {OFFLINE_HINT}") from exc
    try:
        raw = yf.Ticker(symbol).history(period="max", interval="1d", auto_adjust=False, actions=False)
    except Exception as exc:  # yfinance surfaces network, HTTP and rate-limit failures as many types
        raise SourceUnavailableError(f"Yahoo download of {symbol} failed ({type(exc).__name__}: {exc}); "
                                     f"you may be offline or rate-limited: retry later or {OFFLINE_HINT}") from exc
    if raw is None or raw.empty:
        raise UnknownSymbolError(f"Yahoo returned no prices for {symbol}: unknown or delisted symbol (or Yahoo is "
                                 f"throttling); check the ticker spelling (e.g. BRK-B, ^GSPC) or {OFFLINE_HINT}")
    table = raw.reset_index()
    table.columns = [clean_column(c) for c in table.columns]
    return frame_from_table(table, Path(f"yahoo:{symbol}"), "yahoo", symbol, "yahoo")


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
    return finalise(pd.read_parquet(file), symbol, "yahoo")


def load_yahoo(symbol: str, path: str | Path | None, with_volume: bool) -> pd.DataFrame:
    """The symbol's prices from the cache at `path` when younger than YAHOO_MAX_AGE_S, else downloaded and cached
    (with pyarrow); a stale cache answers when Yahoo cannot be reached."""
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


def list_yahoo(path: str | Path | None) -> list[dict[str, Any]]:
    """The yahoo source lists what its cache holds (what works offline); listing never downloads."""
    directory = yahoo_cache_dir(path)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if files:
        require_pyarrow("reading the yahoo cache")
    return [listing_row(f.stem, _read_cache(f, f.stem)) for f in files]
