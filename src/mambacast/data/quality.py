"""Data-quality checks run before training (the guide's `validate_data_quality`).

Failures (the data is unusable as is): too few samples, too many missing prices, infinite or
non-positive prices, (nearly) constant prices, duplicate or unsorted dates, stale quotes covering
more than the allowed missing ratio. Warnings (reported, not failing): a few missing prices, a few
stale runs, day-to-day jumps whose ratio is close to a split ratio (2, 3, 1/2, ...), which usually
means the prices are not split-adjusted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataQualityError
from .sources import as_close_array

__all__ = ["validate_data_quality", "check_data_quality"]

logger = logging.getLogger(__name__)

_SPLIT_RATIOS = (2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 1.5)  # forward splits; reverse splits are their inverses
_SPLIT_TOLERANCE = math.log(1.1)  # a jump within 10% of a split ratio "looks like" that split
_MIN_LOG_RETURN_STD = 1e-8


def _label(index: pd.Index | None, position: int) -> str:
    if isinstance(index, pd.DatetimeIndex):
        return str(index[position].date())
    return f"row {position}"


def _runs(closes: np.ndarray, min_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and lengths of runs of >= `min_length` identical consecutive finite prices."""
    same = np.zeros(len(closes) + 1, dtype=bool)
    same[1:-1] = closes[1:] == closes[:-1]  # NaN == NaN is False, so gaps never count as stale
    # Run of repeats [a, b) in `same` means prices a-1 .. b-1 are identical: length b - a + 1.
    edges = np.flatnonzero(np.diff(same.astype(np.int8)))
    starts, ends = edges[0::2] + 1, edges[1::2] + 1
    lengths = ends - starts + 1
    keep = lengths >= min_length
    return starts[keep] - 1, lengths[keep]


def _split_like(log_returns: np.ndarray, threshold: float) -> np.ndarray:
    """Positions (into the returns) of jumps beyond `threshold` whose ratio is near a split ratio."""
    big = np.flatnonzero(np.abs(np.nan_to_num(log_returns)) > threshold)
    if big.size == 0:
        return big
    candidates = np.log(np.asarray(_SPLIT_RATIOS))
    distance = np.abs(np.abs(log_returns[big])[:, None] - candidates[None, :]).min(axis=1)
    return big[distance < _SPLIT_TOLERANCE]


def _inspect(closes: np.ndarray, index: pd.Index | None, min_samples: int, max_missing_ratio: float,
             stale_days: int, split_ratio: float) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one close series ``(n_days,)``."""
    problems: list[str] = []
    warnings: list[str] = []
    n = len(closes)
    if n < min_samples:
        problems.append(f"only {n} prices, need at least min_samples={min_samples}: load more history "
                        "(--days) or lower min_samples")
    if n == 0:
        return problems, warnings

    nan = np.isnan(closes)
    n_nan = int(nan.sum())
    if n_nan:
        ratio = n_nan / n
        text = f"{n_nan} of {n} prices missing ({ratio:.1%}), first on {_label(index, int(np.argmax(nan)))}"
        if ratio > max_missing_ratio:
            problems.append(f"{text}, more than max_missing_ratio={max_missing_ratio:.1%}: fill the gaps in the "
                            "source data or lower max_missing_ratio")
        else:
            warnings.append(f"{text}; features forward-fill them")
    inf = np.isinf(closes)
    if inf.any():
        problems.append(f"{int(inf.sum())} infinite prices, first on {_label(index, int(np.argmax(inf)))}: "
                        "fix the source data")
    nonpos = np.isfinite(closes) & (closes <= 0)
    if nonpos.any():
        first = int(np.argmax(nonpos))
        problems.append(f"{int(nonpos.sum())} zero or negative prices, first on {_label(index, first)} "
                        f"({closes[first]:g}): prices must be > 0 for log returns; fix or drop those rows")

    valid = np.isfinite(closes) & (closes > 0)
    filled = pd.Series(np.where(valid, closes, np.nan)).ffill().to_numpy()
    log_returns = np.diff(np.log(filled))
    finite_returns = log_returns[np.isfinite(log_returns)]
    if finite_returns.size < 2 or float(np.std(finite_returns)) < _MIN_LOG_RETURN_STD:
        problems.append("prices are (nearly) constant: log-return std below 1e-8 leaves nothing to learn; "
                        "check the close column holds prices")

    if isinstance(index, pd.DatetimeIndex):
        duplicated = index[index.duplicated()]
        if len(duplicated):
            shown = ", ".join(str(d.date()) for d in duplicated.unique()[:5])
            problems.append(f"duplicate dates {shown}: keep one row per day")
        elif not index.is_monotonic_increasing:
            first = int(np.argmax(np.diff(index.asi8) < 0)) + 1
            problems.append(f"dates not in ascending order (row {first}, {index[first].date()}): sort by date")

    starts, lengths = _runs(closes, stale_days)
    if starts.size:
        repeats = int((lengths - 1).sum())  # the first day of a run is a real quote
        longest = int(np.argmax(lengths))
        text = (f"{starts.size} stale run(s) of >= {stale_days} identical prices ({repeats / n:.1%} of days), "
                f"longest {lengths[longest]} days from {_label(index, int(starts[longest]))}")
        if repeats / n > max_missing_ratio:
            problems.append(f"{text}: stale quotes are missing data beyond max_missing_ratio="
                            f"{max_missing_ratio:.1%}; load a later period (--days) or use another source")
        else:
            warnings.append(text)

    for pos in _split_like(log_returns, math.log(split_ratio)):
        ratio = float(np.exp(log_returns[pos]))
        warnings.append(f"price x{ratio:.2f} on {_label(index, int(pos) + 1)} looks like an unadjusted split; "
                        "use split-adjusted prices (adj_close) unless it is a real move")
    return problems, warnings


def validate_data_quality(prices: pd.DataFrame | pd.Series | np.ndarray | Sequence[float], min_samples: int = 100,
                          max_missing_ratio: float = 0.05, *, stale_days: int = 10,
                          split_ratio: float = 1.8) -> tuple[bool, str]:
    """Check a price series before training.

    Args:
        prices: a frame with a ``close`` column, a Series or an array of closes ``(n_days,)``;
            a ``DatetimeIndex`` adds the date checks and dated messages.
        min_samples: fewest prices accepted.
        max_missing_ratio: largest accepted share of missing (NaN) prices, and of stale repeated quotes.
        stale_days: a run of this many identical consecutive prices counts as stale.
        split_ratio: a day-to-day price ratio beyond this (or below its inverse) near 2, 3, 4, 1/2, ...
            is reported as a possible unadjusted split.

    Returns:
        ``(is_valid, message)``: ``(True, "OK")`` or ``(True, "OK with warnings: ...")`` when usable,
        else ``(False, "<problems>")`` with any warnings appended.
    """
    closes = as_close_array(prices)
    index = prices.index if isinstance(prices, (pd.DataFrame, pd.Series)) else None
    problems, warnings = _inspect(closes, index, min_samples, max_missing_ratio, stale_days, split_ratio)
    symbol = getattr(prices, "attrs", {}).get("symbol", "prices")
    for warning in warnings:
        logger.warning("%s: %s", symbol, warning)
    tail = f" (warnings: {'; '.join(warnings)})" if warnings else ""
    if problems:
        return False, "; ".join(problems) + tail
    return True, f"OK with warnings: {'; '.join(warnings)}" if warnings else "OK"


def check_data_quality(prices: pd.DataFrame | pd.Series | np.ndarray | Sequence[float], symbol: str,
                       **kwargs: Any) -> str:
    """`validate_data_quality` that raises `DataQualityError` ("<symbol>: <problems>") when invalid.

    Returns the message ("OK" or "OK with warnings: ...") when the data is usable.
    """
    is_valid, message = validate_data_quality(prices, **kwargs)
    if not is_valid:
        raise DataQualityError(f"{symbol}: {message}")
    return message
