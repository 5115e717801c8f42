"""Many symbols at once: what pooled forecasters (a global model, a pooled regression) are fitted on.

The walk-forward backtest refits every forecaster per symbol and block on that symbol's closes up to
the cutoff. A pooled forecaster needs more: every symbol's rows up to the same *date*. `Panel` holds the
dated frames of all the backtest's symbols and hands out the rows on or before a date; `CutoffCache`
builds one pooled fit per cutoff date and lets the other symbols of the same refit reuse it.

Causality: a fit for cutoff date `c` reads rows dated `<= c` of every symbol, and is reused only by a
symbol whose own cutoff is on or after `c` (within `tolerance_days`), so no forecaster ever trains on a
day after its own cutoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd

from ..data.sources import as_price_frame

__all__ = ["Panel", "CutoffCache", "DatedForecaster"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Panel:
    """Dated price frames of many symbols ({symbol: frame with `close`, optionally high/low/volume})."""

    def __init__(self, frames: Mapping[str, object]):
        self.frames: dict[str, pd.DataFrame] = {}
        for symbol, prices in frames.items():
            frame = as_price_frame(prices)
            if not isinstance(frame.index, pd.DatetimeIndex):
                raise ValueError(f"{symbol}: a panel needs dated prices (a DatetimeIndex), "
                                 f"got {type(frame.index).__name__}")
            self.frames[symbol] = frame

    @property
    def symbols(self) -> list[str]:
        return list(self.frames)

    def dates(self, symbol: str) -> pd.DatetimeIndex:
        return self.frames[symbol].index  # type: ignore[return-value]

    def until(self, date: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """Every symbol's rows dated on or before `date` (symbols with no such row are left out)."""
        out = {}
        for symbol, frame in self.frames.items():
            part = frame.loc[: pd.Timestamp(date)]
            if len(part):
                out[symbol] = part
        return out


class CutoffCache(Generic[T]):
    """One pooled fit per cutoff date, reused by symbols whose cutoff is the same or a few days later."""

    def __init__(self, build: Callable[[pd.Timestamp], T], tolerance_days: int = 7):
        self.build, self.tolerance = build, pd.Timedelta(days=tolerance_days)
        self._fits: dict[pd.Timestamp, T] = {}
        self._lock = threading.Lock()

    def get(self, cutoff: pd.Timestamp) -> T:
        cutoff = pd.Timestamp(cutoff)
        with self._lock:
            usable = [c for c in self._fits if c <= cutoff and cutoff - c <= self.tolerance]
            if usable:
                return self._fits[max(usable)]
            logger.info("pooled fit for cutoff %s", cutoff.date())
            fit = self.build(cutoff)
            self._fits[cutoff] = fit
            return fit


@runtime_checkable
class DatedForecaster(Protocol):
    """A forecaster `walk_forward` fits with `fit_dated(closes, dates)` instead of `fit(closes)`.

    dates: (n_days,) the dates of the training closes, so a pooled forecaster can find the other
    symbols' rows up to the same day.
    """

    name: str

    def fit_dated(self, prices: np.ndarray, dates: pd.DatetimeIndex) -> DatedForecaster: ...
