"""Causal, scale-free technical features (the guide's `TimeSeriesFeatureEngineer`).

Every feature at row ``t`` is computed from prices (and volumes) of rows ``0..t`` only: trailing
rolling windows and exponential averages with pandas' ``adjust=False`` recursion, never a backward
fill. They are computed with NumPy (`data.rolling`, equal to the pandas formulas to rounding), and
only at the rows asked for: a forecast needs the features of its last window, not of the history.
Every feature is a ratio, a return or a bounded oscillator, never a price level, so one model can
serve symbols and years of any price scale. The formulas are listed in ``docs/data.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import rolling
from .errors import DataError, DataQualityError, MissingVolumeError
from .sources import as_close_array

__all__ = ["TimeSeriesFeatureEngineer", "forward_fill_closes", "garch_filter", "volatility_memory_days",
           "GARCH_ALPHA", "GARCH_BETA", "BASELINE_FEATURES"]

logger = logging.getLogger(__name__)

RSI_PERIOD = 14
ROC_PERIOD = 12
BOLLINGER_WINDOW = 20
BOLLINGER_WIDTH = 2.0
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
# Volatility features (HAR-style realised variance over a day, a week and a month) and the
# classical baseline the distribution head starts from: a GARCH(1,1) filter with fixed, typical
# daily equity parameters (Bollerslev 1986; persistence alpha + beta = 0.98) targeting the mean
# squared return of the last two years as the long-run variance. Fixed parameters keep the baseline
# causal, cheap and the same for every symbol; the network learns the correction. Finite windows
# keep the features' memory finite, so a forecast needs a bounded history (`volatility_memory_days`).
HAR_WINDOWS = (1, 5, 22)
GARCH_ALPHA, GARCH_BETA = 0.08, 0.90
LONG_RUN_WINDOW = 504
# Floor of a daily variance (0.01% daily vol): a flat stretch must not send a log-variance to -inf.
_VAR_FLOOR = 1e-8
#: the two raw (log daily variance) columns the distribution head's baseline reads, in this order.
BASELINE_FEATURES = ("garch_logvar", "longrun_logvar")
RANGE_WINDOWS = (1, 5, 22)

# Relative size below which a rolling std or range counts as zero (a flat window): dividing by
# rounding noise would turn a constant stretch into huge values.
_FLAT = 1e-10

PriceInput = pd.DataFrame | pd.Series | np.ndarray | Sequence[float]


def _ratio(num: np.ndarray, den: np.ndarray, scale: np.ndarray, flat_value: float) -> np.ndarray:
    """``num / den`` with `flat_value` where ``|den| <= _FLAT * scale`` (NaN stays NaN)."""
    flat = np.abs(den) <= _FLAT * np.abs(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(flat, flat_value, out)


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    """``ewm(span=span, adjust=False, min_periods=span).mean()`` at every row (n,)."""
    return rolling.ewm_mean(x, rolling.span_alpha(span), span)


def garch_filter(log_ret: np.ndarray, long_run_var: np.ndarray, alpha: float = GARCH_ALPHA,
                 beta: float = GARCH_BETA) -> np.ndarray:
    """One-step variance forecasts of a variance-targeting GARCH(1,1) (n_days,), causal.

    ``s2[t] = (1 - alpha - beta) * vbar[t] + alpha * r[t]^2 + beta * s2[t-1]`` is the forecast of the
    variance of ``r[t+1]`` made at day t (Bollerslev 1986, with omega = (1 - alpha - beta) vbar);
    NaN returns or long-run variances (the warm-up) leave ``s2 = vbar`` once defined.
    """
    from scipy import signal

    drive = (1.0 - alpha - beta) * long_run_var + alpha * log_ret ** 2
    ok = np.isfinite(drive)
    out = np.full(len(log_ret), np.nan)
    if not ok.any():
        return out
    first = int(np.argmax(ok))
    d = rolling.ffill(drive[first:])
    # Start at the long-run variance: s2[first-1] = vbar[first], so s2[first] = drive + beta * vbar.
    zi = np.array([beta * long_run_var[first]])
    out[first:] = signal.lfilter([1.0], [1.0, -beta], d, zi=zi)[0]
    return out


def volatility_memory_days(tol: float) -> int:
    """Days of history after which the volatility features forget anything older to within `tol`.

    The long-run variance reads the last `LONG_RUN_WINDOW` squared returns; the GARCH filter forgets its
    start as ``beta^n``; so ``LONG_RUN_WINDOW + ceil(log(tol) / log(beta))`` (701 days for tol = 1e-9).
    """
    return LONG_RUN_WINDOW + math.ceil(math.log(tol) / math.log(GARCH_BETA))


def forward_fill_closes(close: np.ndarray, symbol: str = "prices") -> tuple[np.ndarray, int]:
    """Closes ``(n_days,)`` with missing ones forward-filled, and the number of leading missing ones.

    Forward fill is causal (a gap takes the last known price, never a later one). Zero, negative or
    infinite closes raise `DataQualityError`: they are errors in the data, not gaps.
    """
    bad = np.isinf(close) | (close <= 0)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataQualityError(f"{symbol}: close {close[first]:g} at row {first} is not a positive finite price; "
                               "run validate_data_quality and fix the data")
    missing = np.isnan(close)
    if missing.all():
        raise DataQualityError(f"{symbol}: every close is missing")
    lead = int(np.argmax(~missing))
    if missing.any():
        close = rolling.ffill(close)
    return close, lead


class TimeSeriesFeatureEngineer:
    """Turn daily closes (and optionally volumes) into a ``(n_days, n_features)`` float32 matrix.

    Args:
        windows: look-back lengths (days) of the multi-scale features (SMA/EMA ratios,
            volatility, momentum, volume ratios); the longest also sets the normalised price and
            range position.
        include_volume: add volume features (needs volumes).
        include_range: add range-based (Parkinson) volatility over 1/5/22 days (needs highs and lows).

    Attributes:
        feature_names_: column names of the matrix, in order (known from construction).
        warmup_: number of leading rows that are not fully defined (the longest look-back any
            feature needs, plus any leading missing prices of the last input). Those rows are
            filled with 0 and must be dropped downstream (`SequenceGenerator` does with ``start``).
    """

    def __init__(self, windows: Sequence[int] = (5, 10, 20, 60), include_volume: bool = False,
                 include_range: bool = False) -> None:
        windows = list(windows)
        if not windows or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 2 for w in windows):
            raise DataError(f"windows={windows!r} is invalid: pass look-back lengths of at least 2 days, e.g. "
                            "[5, 10, 20, 60]")
        self.windows = sorted({int(w) for w in windows})
        self.include_volume = bool(include_volume)
        self.include_range = bool(include_range)
        self._specs = self._feature_specs()
        self.feature_names_: list[str] = [name for name, _ in self._specs]
        self._base_warmup = max(lag for _, lag in self._specs)
        self.warmup_: int = self._base_warmup

    @property
    def n_features(self) -> int:
        return len(self.feature_names_)

    def _feature_specs(self) -> list[tuple[str, int]]:
        """(name, first fully defined row) of every feature, in column order."""
        longest = max(self.windows)
        specs = [("norm_price", longest - 1), ("return", 1), ("log_return", 1)]
        specs += [(f"sma_ratio_{w}", w - 1) for w in self.windows]
        specs += [(f"ema_ratio_{w}", w - 1) for w in self.windows]
        specs += [(f"volatility_{w}", w) for w in self.windows]  # w log returns start at row 1
        specs += [(f"momentum_{w}", w) for w in self.windows]
        specs += [(f"roc_{ROC_PERIOD}", ROC_PERIOD), (f"rsi_{RSI_PERIOD}", RSI_PERIOD),
                  ("bollinger_position", BOLLINGER_WINDOW - 1),
                  ("macd", MACD_SLOW - 1), ("macd_signal", MACD_SLOW + MACD_SIGNAL - 2),
                  ("macd_hist", MACD_SLOW + MACD_SIGNAL - 2), ("range_position", longest - 1)]
        specs += [(f"log_rv_{w}", w) for w in HAR_WINDOWS]
        specs += [("garch_logvar", max(HAR_WINDOWS)), ("longrun_logvar", max(HAR_WINDOWS))]
        if self.include_range:
            specs += [(f"log_range_vol_{w}", w - 1) for w in RANGE_WINDOWS]
        if self.include_volume:
            specs += [("volume_change", 1)] + [(f"volume_ratio_{w}", w - 1) for w in self.windows]
        return specs

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings (for model metadata); `from_dict` rebuilds the same engineer."""
        return {"windows": list(self.windows), "include_volume": self.include_volume,
                "include_range": self.include_range, "feature_names": list(self.feature_names_)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeSeriesFeatureEngineer:
        engineer = cls(windows=data["windows"], include_volume=data["include_volume"],
                       include_range=data.get("include_range", False))
        saved = data.get("feature_names")
        if saved is not None and list(saved) != engineer.feature_names_:
            raise DataError(f"saved feature_names {saved} differ from this version's {engineer.feature_names_}; "
                            "retrain the model with this version of mambacast")
        return engineer

    # ----------------------------------------------------------------------------------------

    def extract_features(self, prices: PriceInput, volumes: np.ndarray | Sequence[float] | None = None, *,
                         last: int | None = None, dtype: type = np.float32) -> np.ndarray:
        """Features of every day, or of the last `last` days.

        Args:
            prices: a frame with a ``close`` column (and ``volume``), a Series or an array of
                closes ``(n_days,)``. Missing closes are forward-filled (causal); zero, negative
                or infinite closes raise `DataQualityError`.
            volumes: ``(n_days,)`` volumes; when None and ``include_volume``, the frame's
                ``volume`` column.
            last: return only the rows of the last `last` days (a forecast reads its last window):
                the same values as the full matrix's last rows, for a fraction of the work (the
                exponential averages still run over the whole history). None: every day.
            dtype: of the result; float64 keeps the computed values unrounded (for checks).

        Returns:
            array ``(n_days, n_features)`` (``(min(last, n_days), n_features)`` with `last`), columns as
            in ``feature_names_``; rows before ``warmup_`` (counted from the first day) are 0.
        """
        symbol = getattr(prices, "attrs", {}).get("symbol") or "the price series"
        close, lead = forward_fill_closes(as_close_array(prices), symbol)
        n = len(close)
        start = 0 if last is None else max(n - int(last), 0)
        columns = self._price_features(close, start)
        columns.update(self._volatility_features(close, start))
        if self.include_range:
            columns.update(self._range_features(self._high_low(prices, n, symbol), start))
        if self.include_volume:
            columns.update(self._volume_features(self._volumes(prices, volumes, n, symbol), start))
        elif volumes is not None:
            logger.warning("volumes passed but include_volume=False: volume features are not computed")
        self.warmup_ = lead + self._base_warmup
        out = np.empty((n - start, self.n_features), dtype=dtype)
        for j, name in enumerate(self.feature_names_):
            out[:, j] = columns[name]
        cut = max(self.warmup_ - start, 0)      # rows of `out` before the warm-up ends
        out[:cut] = np.nan_to_num(out[:cut], nan=0.0)
        bad = ~np.isfinite(out[cut:])
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataQualityError(f"{symbol}: feature {self.feature_names_[col]} is not finite at row "
                                   f"{row + cut + start}; check the prices/volumes there (validate_data_quality)")
        return out

    def _volumes(self, prices: PriceInput, volumes: Any, n: int, symbol: str) -> np.ndarray:
        if volumes is None and isinstance(prices, pd.DataFrame):
            by_lower = {str(c).strip().lower(): c for c in prices.columns}
            if "volume" in by_lower:
                volumes = prices[by_lower["volume"]]
        if volumes is None:
            raise MissingVolumeError(
                f"include_volume=True but {symbol} has no volume; use --source sample with a symbol from bokeh "
                "(AAPL, MSFT, GOOGL, IBM, FB) and with_volume=True, pass volumes=..., or drop include_volume")
        vol = np.asarray(volumes, dtype="float64").reshape(-1)
        if len(vol) != n:
            raise DataError(f"{symbol}: {len(vol)} volumes for {n} prices; pass one volume per day")
        if np.isinf(vol).any() or (vol < 0).any():
            raise DataQualityError(f"{symbol}: volumes must be finite and >= 0")
        # Missing volumes: carry the last one forward; volumes before the first known are 0.
        return np.nan_to_num(rolling.ffill(vol), nan=0.0)

    def _price_features(self, close: np.ndarray, start: int) -> dict[str, np.ndarray]:
        """The guide's price features at rows start..n-1, each (n - start,)."""
        longest = max(self.windows)
        log_close = np.log(close)
        log_ret = rolling.diff(log_close)
        c = close[start:]
        prices = rolling.Trailing(close, [*self.windows, BOLLINGER_WINDOW], start)
        returns = rolling.Trailing(log_ret, self.windows, start)
        cols: dict[str, np.ndarray] = {}

        sma_long = prices.mean(longest)
        cols["norm_price"] = _ratio(c - sma_long, prices.std(longest, ddof=0), sma_long, 0.0)
        cols["return"] = c / rolling.lag(close, 1)[start:] - 1.0
        cols["log_return"] = log_ret[start:]
        for w in self.windows:
            cols[f"sma_ratio_{w}"] = c / prices.mean(w) - 1.0
            cols[f"ema_ratio_{w}"] = c / _ema(close, w)[start:] - 1.0
            cols[f"volatility_{w}"] = returns.std(w, ddof=1)
            cols[f"momentum_{w}"] = log_close[start:] - rolling.lag(log_close, w)[start:]
        cols[f"roc_{ROC_PERIOD}"] = c / rolling.lag(close, ROC_PERIOD)[start:] - 1.0

        # RSI with Wilder's smoothing (alpha = 1/period), mapped from [0, 100] to [-1, 1].
        change = rolling.diff(close)
        with np.errstate(invalid="ignore"):
            gain = rolling.ewm_mean(np.maximum(change, 0.0), 1 / RSI_PERIOD, RSI_PERIOD)[start:]
            loss = rolling.ewm_mean(np.maximum(-change, 0.0), 1 / RSI_PERIOD, RSI_PERIOD)[start:]
        cols[f"rsi_{RSI_PERIOD}"] = 2.0 * _ratio(gain, gain + loss, c, 0.5) - 1.0

        # Bollinger position: 0 at the middle band, +1 / -1 at the upper / lower band (2 sigma).
        mid = prices.mean(BOLLINGER_WINDOW)
        sigma = prices.std(BOLLINGER_WINDOW, ddof=0)
        cols["bollinger_position"] = _ratio(c - mid, BOLLINGER_WIDTH * sigma, mid, 0.0)

        macd = _ema(close, MACD_FAST) - _ema(close, MACD_SLOW)
        signal = rolling.ewm_mean(macd, rolling.span_alpha(MACD_SIGNAL), MACD_SIGNAL)
        cols["macd"] = macd[start:] / c
        cols["macd_signal"] = signal[start:] / c
        cols["macd_hist"] = (macd - signal)[start:] / c

        low, high = prices.extremes(longest)
        cols["range_position"] = _ratio(c - low, high - low, high, 0.5)
        return cols

    @staticmethod
    def _volatility_features(close: np.ndarray, start: int) -> dict[str, np.ndarray]:
        """Log realised volatility over the HAR windows, the GARCH baseline's log variance and the
        long-run log variance (the last two raw, in log daily variance: the baseline reads them), at
        rows start..n-1. The long-run variance and the GARCH filter run over every row (the filter's
        state carries the whole history)."""
        r = rolling.diff(np.log(close))
        r2 = r ** 2
        rv = rolling.Trailing(r2, HAR_WINDOWS, start, spread=False)
        cols = {f"log_rv_{w}": 0.5 * np.log(rv.mean(w) + _VAR_FLOOR) for w in HAR_WINDOWS}
        vbar = rolling.rolling_mean_min_periods(r2, LONG_RUN_WINDOW, max(HAR_WINDOWS)) + _VAR_FLOOR
        cols["garch_logvar"] = np.log(garch_filter(r, vbar)[start:] + _VAR_FLOOR)
        cols["longrun_logvar"] = np.log(vbar[start:])
        return cols

    @staticmethod
    def _high_low(prices: PriceInput, n: int, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        by_lower = {str(c).strip().lower(): c for c in prices.columns} if isinstance(prices, pd.DataFrame) else {}
        if "high" not in by_lower or "low" not in by_lower:
            raise DataError(f"include_range=True but {symbol} has no high/low columns; use prices with "
                                     "high and low (bokeh sample symbols, the indices, Yahoo) or drop include_range")
        high = prices[by_lower["high"]].to_numpy(dtype=np.float64)  # type: ignore[index]
        low = prices[by_lower["low"]].to_numpy(dtype=np.float64)  # type: ignore[index]
        if len(high) != n:
            raise DataError(f"{symbol}: {len(high)} highs for {n} closes")
        return high, low

    @staticmethod
    def _range_features(high_low: tuple[np.ndarray, np.ndarray], start: int) -> dict[str, np.ndarray]:
        """Parkinson (1980) log volatility: variance = mean (ln H/L)^2 / (4 ln 2) over 1/5/22 days."""
        high, low = high_low
        with np.errstate(divide="ignore", invalid="ignore"):
            hl = np.log(high / low)
        # A missing or inverted bar carries the previous day's range (causal, like forward-filled closes).
        hl = np.nan_to_num(rolling.ffill(np.where(np.isfinite(hl) & (hl >= 0), hl, np.nan)), nan=0.0)
        var = rolling.Trailing(hl ** 2 / (4 * np.log(2)), RANGE_WINDOWS, start, spread=False)
        return {f"log_range_vol_{w}": 0.5 * np.log(var.mean(w) + _VAR_FLOOR) for w in RANGE_WINDOWS}

    def _volume_features(self, volume: np.ndarray, start: int) -> dict[str, np.ndarray]:
        # +1 keeps days with zero volume finite; on real volumes (>= 1e4 shares) it changes nothing visible.
        log_vol = np.log1p(volume)
        mean = rolling.Trailing(volume, self.windows, start, spread=False)
        cols = {"volume_change": rolling.diff(log_vol)[start:]}
        for w in self.windows:
            cols[f"volume_ratio_{w}"] = log_vol[start:] - np.log1p(mean.mean(w))
        return cols
