"""Causal, scale-free technical features (the guide's `TimeSeriesFeatureEngineer`).

Every feature at row ``t`` is computed from prices (and volumes) of rows ``0..t`` only: pandas
rolling windows without centring and exponential averages with ``adjust=False``, never a
backward fill. Every feature is a ratio, a return or a bounded oscillator, never a price level,
so one model can serve symbols and years of any price scale. The formulas are listed in
``docs/data.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

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


def _ema(series: pd.Series, span: int) -> pd.Series:
    return series.ewm(span=span, adjust=False, min_periods=span).mean()


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
    d = pd.Series(drive[first:]).ffill().to_numpy()
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
        close = pd.Series(close).ffill().to_numpy()
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

    def extract_features(self, prices: PriceInput, volumes: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
        """Features of every day.

        Args:
            prices: a frame with a ``close`` column (and ``volume``), a Series or an array of
                closes ``(n_days,)``. Missing closes are forward-filled (causal); zero, negative
                or infinite closes raise `DataQualityError`.
            volumes: ``(n_days,)`` volumes; when None and ``include_volume``, the frame's
                ``volume`` column.

        Returns:
            float32 array ``(n_days, n_features)``, columns as in ``feature_names_``; rows before
            ``warmup_`` are 0.
        """
        symbol = getattr(prices, "attrs", {}).get("symbol") or "the price series"
        close, lead = forward_fill_closes(as_close_array(prices), symbol)
        columns = self._price_features(close)
        columns.update(self._volatility_features(close))
        if self.include_range:
            columns.update(self._range_features(self._high_low(prices, len(close), symbol)))
        if self.include_volume:
            columns.update(self._volume_features(self._volumes(prices, volumes, len(close), symbol)))
        elif volumes is not None:
            logger.warning("volumes passed but include_volume=False: volume features are not computed")
        self.warmup_ = lead + self._base_warmup
        out = np.empty((len(close), self.n_features), dtype=np.float32)
        for j, name in enumerate(self.feature_names_):
            out[:, j] = columns[name]
        out[: self.warmup_] = np.nan_to_num(out[: self.warmup_], nan=0.0)
        bad = ~np.isfinite(out[self.warmup_:])
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataQualityError(f"{symbol}: feature {self.feature_names_[col]} is not finite at row "
                                   f"{row + self.warmup_}; check the prices/volumes there (validate_data_quality)")
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
        return pd.Series(vol).ffill().fillna(0.0).to_numpy()

    def _price_features(self, close: np.ndarray) -> dict[str, np.ndarray]:
        s = pd.Series(close)
        longest = max(self.windows)
        log_close = np.log(close)
        log_ret = pd.Series(log_close).diff()
        cols: dict[str, np.ndarray] = {}

        sma_long = s.rolling(longest).mean().to_numpy()
        std_long = s.rolling(longest).std(ddof=0).to_numpy()
        cols["norm_price"] = _ratio(close - sma_long, std_long, sma_long, 0.0)
        cols["return"] = s.pct_change(fill_method=None).to_numpy()
        cols["log_return"] = log_ret.to_numpy()
        for w in self.windows:
            cols[f"sma_ratio_{w}"] = close / s.rolling(w).mean().to_numpy() - 1.0
            cols[f"ema_ratio_{w}"] = close / _ema(s, w).to_numpy() - 1.0
            cols[f"volatility_{w}"] = log_ret.rolling(w).std().to_numpy()
            cols[f"momentum_{w}"] = log_close - pd.Series(log_close).shift(w).to_numpy()
        cols[f"roc_{ROC_PERIOD}"] = close / s.shift(ROC_PERIOD).to_numpy() - 1.0

        # RSI with Wilder's smoothing (alpha = 1/period), mapped from [0, 100] to [-1, 1].
        change = s.diff()
        gain = change.clip(lower=0).ewm(alpha=1 / RSI_PERIOD, adjust=False, min_periods=RSI_PERIOD).mean()
        loss = (-change).clip(lower=0).ewm(alpha=1 / RSI_PERIOD, adjust=False, min_periods=RSI_PERIOD).mean()
        total = (gain + loss).to_numpy()
        cols[f"rsi_{RSI_PERIOD}"] = 2.0 * _ratio(gain.to_numpy(), total, close, 0.5) - 1.0

        # Bollinger position: 0 at the middle band, +1 / -1 at the upper / lower band (2 sigma).
        mid = s.rolling(BOLLINGER_WINDOW).mean().to_numpy()
        sigma = s.rolling(BOLLINGER_WINDOW).std(ddof=0).to_numpy()
        cols["bollinger_position"] = _ratio(close - mid, BOLLINGER_WIDTH * sigma, mid, 0.0)

        macd = _ema(s, MACD_FAST) - _ema(s, MACD_SLOW)
        signal = macd.ewm(span=MACD_SIGNAL, adjust=False, min_periods=MACD_SIGNAL).mean()
        cols["macd"] = macd.to_numpy() / close
        cols["macd_signal"] = signal.to_numpy() / close
        cols["macd_hist"] = (macd - signal).to_numpy() / close

        low = s.rolling(longest).min().to_numpy()
        high = s.rolling(longest).max().to_numpy()
        cols["range_position"] = _ratio(close - low, high - low, high, 0.5)
        return cols

    @staticmethod
    def _volatility_features(close: np.ndarray) -> dict[str, np.ndarray]:
        """Log realised volatility over the HAR windows, the GARCH baseline's log variance and the
        long-run log variance (the last two raw, in log daily variance: the baseline reads them)."""
        r = pd.Series(np.log(close)).diff()
        r2 = r ** 2
        cols = {f"log_rv_{w}": 0.5 * np.log(r2.rolling(w).mean().to_numpy() + _VAR_FLOOR) for w in HAR_WINDOWS}
        longest = max(HAR_WINDOWS)
        vbar = r2.rolling(LONG_RUN_WINDOW, min_periods=longest).mean().to_numpy() + _VAR_FLOOR
        cols["garch_logvar"] = np.log(garch_filter(r.to_numpy(), vbar) + _VAR_FLOOR)
        cols["longrun_logvar"] = np.log(vbar)
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
    def _range_features(high_low: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        """Parkinson (1980) log volatility: variance = mean (ln H/L)^2 / (4 ln 2) over 1/5/22 days."""
        high, low = high_low
        with np.errstate(divide="ignore", invalid="ignore"):
            hl = np.log(high / low)
        # A missing or inverted bar carries the previous day's range (causal, like forward-filled closes).
        hl = pd.Series(np.where(np.isfinite(hl) & (hl >= 0), hl, np.nan)).ffill().fillna(0.0)
        var = hl ** 2 / (4 * np.log(2))
        return {f"log_range_vol_{w}": 0.5 * np.log(var.rolling(w).mean().to_numpy() + _VAR_FLOOR)
                for w in RANGE_WINDOWS}

    def _volume_features(self, volume: np.ndarray) -> dict[str, np.ndarray]:
        # +1 keeps days with zero volume finite; on real volumes (>= 1e4 shares) it changes nothing visible.
        log_vol = np.log1p(volume)
        v = pd.Series(volume)
        cols = {"volume_change": pd.Series(log_vol).diff().to_numpy()}
        for w in self.windows:
            cols[f"volume_ratio_{w}"] = log_vol - np.log1p(v.rolling(w).mean().to_numpy())
        return cols
