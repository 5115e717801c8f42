"""The NumPy feature path equals the pandas formulas it replaced, and `last=k` equals the full matrix's last k rows.

`pandas_features` below is the pandas implementation of `TimeSeriesFeatureEngineer` as it was before the
NumPy path (rolling windows, ``ewm(adjust=False)``, ``shift``, ``diff``, ``pct_change``, ``ffill``): the
oracle. Both are compared in float64 to 1e-9 relative on real prices and on edge cases (short histories,
flat prices, missing closes, leading gaps, volume and range features on and off, extreme price scales).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mambacast.data import TimeSeriesFeatureEngineer, load_prices, rolling
from mambacast.data.features import (
    _VAR_FLOOR,
    BOLLINGER_WIDTH,
    BOLLINGER_WINDOW,
    HAR_WINDOWS,
    LONG_RUN_WINDOW,
    MACD_FAST,
    MACD_SIGNAL,
    MACD_SLOW,
    RANGE_WINDOWS,
    ROC_PERIOD,
    RSI_PERIOD,
    _ratio,
    garch_filter,
)

from ..samples import needs_bokeh, needs_sample
from .conftest import random_walk

RTOL = 1e-9     # relative agreement asked of every value
ATOL = 1e-12    # ... with this floor for values that are (almost) zero; features are O(1e-3..10)


# ------------------------------------------------------------------------------------------ the pandas oracle

def _pandas_mean(series: pd.Series, w: int) -> np.ndarray:
    return series.rolling(w).mean().to_numpy()


def _pandas_std(series: pd.Series, w: int, ddof: int) -> np.ndarray:
    return series.rolling(w).std(ddof=ddof).to_numpy()


def _exact_mean(series: pd.Series, w: int) -> np.ndarray:
    """The rolling mean in extended precision (two passes), rounded to float64."""
    return _exact_mean_std(series, w, 0)[0]


def _exact_std(series: pd.Series, w: int, ddof: int) -> np.ndarray:
    return _exact_mean_std(series, w, ddof)[1]


def _exact_mean_std(series: pd.Series, w: int, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.full(w - 1, np.nan), series.to_numpy(np.float64)]).astype(np.longdouble)
    win = np.lib.stride_tricks.sliding_window_view(x, w)
    mean = win.sum(axis=1) / w
    var = ((win - mean[:, None]) ** 2).sum(axis=1) / (w - ddof)
    return mean.astype(np.float64), np.sqrt(var).astype(np.float64)


def _pandas_price(engineer: TimeSeriesFeatureEngineer, close: np.ndarray, mean_of=_pandas_mean,
                  std_of=_pandas_std) -> dict[str, np.ndarray]:
    s = pd.Series(close)
    longest = max(engineer.windows)
    log_close = np.log(close)
    log_ret = pd.Series(log_close).diff()

    def ema(series: pd.Series, span: int) -> pd.Series:
        return series.ewm(span=span, adjust=False, min_periods=span).mean()

    cols: dict[str, np.ndarray] = {}
    sma_long = mean_of(s, longest)
    std_long = std_of(s, longest, 0)
    cols["norm_price"] = _ratio(close - sma_long, std_long, sma_long, 0.0)
    cols["return"] = s.pct_change(fill_method=None).to_numpy()
    cols["log_return"] = log_ret.to_numpy()
    for w in engineer.windows:
        cols[f"sma_ratio_{w}"] = close / mean_of(s, w) - 1.0
        cols[f"ema_ratio_{w}"] = close / ema(s, w).to_numpy() - 1.0
        cols[f"volatility_{w}"] = std_of(log_ret, w, 1)
        cols[f"momentum_{w}"] = log_close - pd.Series(log_close).shift(w).to_numpy()
    cols[f"roc_{ROC_PERIOD}"] = close / s.shift(ROC_PERIOD).to_numpy() - 1.0
    change = s.diff()
    gain = change.clip(lower=0).ewm(alpha=1 / RSI_PERIOD, adjust=False, min_periods=RSI_PERIOD).mean()
    loss = (-change).clip(lower=0).ewm(alpha=1 / RSI_PERIOD, adjust=False, min_periods=RSI_PERIOD).mean()
    cols[f"rsi_{RSI_PERIOD}"] = 2.0 * _ratio(gain.to_numpy(), (gain + loss).to_numpy(), close, 0.5) - 1.0
    mid = mean_of(s, BOLLINGER_WINDOW)
    sigma = std_of(s, BOLLINGER_WINDOW, 0)
    cols["bollinger_position"] = _ratio(close - mid, BOLLINGER_WIDTH * sigma, mid, 0.0)
    macd = ema(s, MACD_FAST) - ema(s, MACD_SLOW)
    signal = macd.ewm(span=MACD_SIGNAL, adjust=False, min_periods=MACD_SIGNAL).mean()
    cols["macd"] = macd.to_numpy() / close
    cols["macd_signal"] = signal.to_numpy() / close
    cols["macd_hist"] = (macd - signal).to_numpy() / close
    low = s.rolling(longest).min().to_numpy()
    high = s.rolling(longest).max().to_numpy()
    cols["range_position"] = _ratio(close - low, high - low, high, 0.5)
    r = log_ret
    r2 = r ** 2
    for w in HAR_WINDOWS:
        cols[f"log_rv_{w}"] = 0.5 * np.log(mean_of(r2, w) + _VAR_FLOOR)
    vbar = r2.rolling(LONG_RUN_WINDOW, min_periods=max(HAR_WINDOWS)).mean().to_numpy() + _VAR_FLOOR
    cols["garch_logvar"] = np.log(garch_filter(r.to_numpy(), vbar) + _VAR_FLOOR)
    cols["longrun_logvar"] = np.log(vbar)
    return cols


def pandas_features(engineer: TimeSeriesFeatureEngineer, frame: pd.DataFrame, exact: bool = False) -> np.ndarray:
    """The pandas implementation's float64 matrix (n_days, n_features), rows before its warm-up set to 0.

    exact: rolling means and standard deviations in extended precision instead of pandas' running sums
    (see `test_pandas_running_variance_is_the_inexact_one`).
    """
    mean_of, std_of = (_exact_mean, _exact_std) if exact else (_pandas_mean, _pandas_std)
    raw = frame["close"].to_numpy(np.float64)
    lead = int(np.argmax(~np.isnan(raw)))
    close = pd.Series(raw).ffill().to_numpy()
    cols = _pandas_price(engineer, close, mean_of, std_of)
    if engineer.include_range:
        with np.errstate(divide="ignore", invalid="ignore"):
            hl = np.log(frame["high"].to_numpy(np.float64) / frame["low"].to_numpy(np.float64))
        hl = pd.Series(np.where(np.isfinite(hl) & (hl >= 0), hl, np.nan)).ffill().fillna(0.0)
        var = hl ** 2 / (4 * np.log(2))
        for w in RANGE_WINDOWS:
            cols[f"log_range_vol_{w}"] = 0.5 * np.log(mean_of(var, w) + _VAR_FLOOR)
    if engineer.include_volume:
        volume = pd.Series(frame["volume"].to_numpy(np.float64)).ffill().fillna(0.0).to_numpy()
        log_vol = np.log1p(volume)
        cols["volume_change"] = pd.Series(log_vol).diff().to_numpy()
        for w in engineer.windows:
            cols[f"volume_ratio_{w}"] = log_vol - np.log1p(mean_of(pd.Series(volume), w))
    out = np.column_stack([cols[name] for name in engineer.feature_names_])
    warmup = lead + engineer._base_warmup
    out[:warmup] = np.nan_to_num(out[:warmup], nan=0.0)
    return out


# ------------------------------------------------------------------------------------------ helpers

def _frame(close: np.ndarray, seed: int = 0, volume: np.ndarray | None = None) -> pd.DataFrame:
    """A frame with close, a high/low around it and a volume (random when not given)."""
    rng = np.random.default_rng(seed)
    n = close.size
    spread = np.exp(np.abs(rng.normal(0.0, 0.01, n)))
    vol = rng.integers(10_000, 1_000_000, n).astype(float) if volume is None else volume
    return pd.DataFrame({"close": close, "high": close * spread, "low": close / spread, "volume": vol})


def _assert_equal_to_pandas(frame: pd.DataFrame, exact: bool = False, **options: object) -> None:
    """extract_features equals the oracle (`pandas_features(..., exact)`) to RTOL, and its `last` rows are its own."""
    engineer = TimeSeriesFeatureEngineer(**options)  # type: ignore[arg-type]
    want = pandas_features(engineer, frame, exact)
    got = engineer.extract_features(frame, dtype=np.float64)
    assert got.shape == want.shape
    bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=False)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        pytest.fail(f"{int(bad.sum())} values differ, first {engineer.feature_names_[col]} at row {row}: "
                    f"numpy {got[row, col]!r}, pandas {want[row, col]!r}")
    # The float32 result is the float64 one rounded: within one float32 step of pandas' rounded values.
    np.testing.assert_allclose(engineer.extract_features(frame), want.astype(np.float32), rtol=2.4e-7, atol=ATOL)
    # The last k rows alone are the full matrix's last k rows (to the order of a few additions).
    for k in (1, 60, 61, frame.shape[0] // 2, frame.shape[0] + 5):
        np.testing.assert_allclose(engineer.extract_features(frame, last=k, dtype=np.float64),
                                   got[max(got.shape[0] - k, 0):], rtol=1e-13, atol=ATOL)


OPTIONS = [{}, {"include_volume": True}, {"include_range": True},
           {"include_volume": True, "include_range": True, "windows": (3, 7, 30)}]


# ------------------------------------------------------------------------------------------ real prices

@pytest.mark.parametrize("symbol", [pytest.param(s, marks=needs_sample(s)) for s in ("AAPL", "MSFT", "JPM", "XOM")])
def test_equal_to_pandas_on_real_closes(symbol: str) -> None:
    prices = load_prices(symbol, days=None)   # 1990-2022: a hundredfold price range, crashes, stale quotes
    _assert_equal_to_pandas(prices[["close"]])
    _assert_equal_to_pandas(prices[["close"]], windows=(2, 5, 21, 120))


@needs_bokeh
@pytest.mark.parametrize("options", OPTIONS)
def test_equal_to_pandas_on_real_ohlcv(options: dict) -> None:
    prices = load_prices("IBM", days=None, with_volume=True)
    _assert_equal_to_pandas(prices, **options)


# ------------------------------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("n", [1, 2, 3, 14, 33, 60, 61, 62, 100])
@pytest.mark.parametrize("options", OPTIONS)
def test_equal_to_pandas_on_short_histories(n: int, options: dict) -> None:
    _assert_equal_to_pandas(_frame(random_walk(n, seed=n)), **options)


@pytest.mark.parametrize("options", OPTIONS)
def test_equal_to_pandas_on_flat_prices(options: dict) -> None:
    _assert_equal_to_pandas(_frame(np.full(700, 42.17)), **options)
    walk = random_walk(1500, seed=3)
    stale = np.concatenate([walk[:300], np.full(600, walk[299]), walk[300:]])        # a 600-day stale quote
    _assert_equal_to_pandas(_frame(stale), **options)


# Windows that are almost flat, or prices that moved by orders of magnitude within the history, are where
# pandas' running variance (add the new value, remove the old) loses digits: its error is about 1e-16 of the
# square of the largest values seen so far over the window's variance. The oracle then takes the exact
# rolling means and deviations (extended precision), which the NumPy two-pass windows match.
NEAR_FLAT = {"steps": np.repeat(random_walk(80, seed=4), 25),                               # moves every 25 days
             "cents": 100.0 + 0.01 * (np.arange(900) % 97 == 0).cumsum()}                   # one-cent moves, rare
needs_extended = pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18,
                                    reason="long double is no wider than double on this platform")


@needs_extended
@pytest.mark.parametrize("case", sorted(NEAR_FLAT))
@pytest.mark.parametrize("options", OPTIONS)
def test_equal_to_exact_on_nearly_flat_prices(case: str, options: dict) -> None:
    _assert_equal_to_pandas(_frame(NEAR_FLAT[case]), exact=True, **options)


@needs_extended
@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e6])
@pytest.mark.parametrize("vol", [1e-3, 0.02, 0.2])
def test_equal_to_exact_across_price_scales_and_volatilities(scale: float, vol: float) -> None:
    close = random_walk(1000, seed=7, start=scale, vol=vol)
    _assert_equal_to_pandas(_frame(close, volume=np.where(np.arange(1000) % 50 == 0, 0.0, 5e5)), exact=True,
                            include_volume=True, include_range=True)


@needs_extended
def test_pandas_running_variance_is_the_inexact_one() -> None:
    """Where the oracles disagree, the NumPy windows are within 1e-15 of the exact values and pandas is not."""
    for close in (NEAR_FLAT["steps"], random_walk(1000, seed=7, vol=0.2)):
        s = pd.Series(close)
        exact = _exact_std(s, BOLLINGER_WINDOW, 0)
        ok = exact > 0
        numpy_err = np.abs(rolling.Trailing(close, [BOLLINGER_WINDOW]).std(BOLLINGER_WINDOW, 0) - exact)[ok] / exact[ok]
        pandas_err = np.abs(_pandas_std(s, BOLLINGER_WINDOW, 0) - exact)[ok] / exact[ok]
        assert np.nanmax(numpy_err) < 1e-14 < 1e-9 < np.nanmax(pandas_err)


@pytest.mark.parametrize("options", OPTIONS)
def test_equal_to_pandas_with_missing_closes(options: dict) -> None:
    close = random_walk(1200, seed=5)
    rng = np.random.default_rng(6)
    close[rng.choice(np.arange(1, 1200), 60, replace=False)] = np.nan    # gaps, forward-filled
    _assert_equal_to_pandas(_frame(close), **options)
    close[:17] = np.nan                                                  # a leading gap shifts the warm-up
    frame = _frame(close)
    frame.loc[:40, "volume"] = np.nan                                    # volumes before the first are 0
    frame.loc[100:110, "high"] = np.nan                                  # a missing range carries the last one
    frame.loc[200, "low"] = frame.loc[200, "high"] * 1.01                # an inverted bar too
    _assert_equal_to_pandas(frame, **options)


# ------------------------------------------------------------------------------------------ the primitives

@needs_extended
def test_primitives_equal_pandas_on_nan_padded_series() -> None:
    rng = np.random.default_rng(8)
    x = np.concatenate([[np.nan] * 4, rng.normal(size=300), np.zeros(80), rng.normal(size=50)])
    s = pd.Series(x)
    windows = rolling.Trailing(x, (1, 2, 5, 60))
    assert np.isnan(windows.std(1, ddof=1)).all()                     # as pandas: one value, no spread
    tail = rolling.Trailing(x, (1, 2, 5, 60), start=100)
    for w in (1, 2, 5, 60):
        np.testing.assert_allclose(windows.mean(w), s.rolling(w).mean(), rtol=RTOL, atol=ATOL)
        if w > 1:   # pandas leaves up to 3e-8 in the windows of zeros after the normal values: exact is 0
            np.testing.assert_allclose(windows.std(w, ddof=1), _exact_std(s, w, 1), rtol=RTOL, atol=ATOL)
        lo, hi = tail.extremes(w)
        np.testing.assert_array_equal(lo, s.rolling(w).min()[100:])
        np.testing.assert_array_equal(hi, s.rolling(w).max()[100:])
        np.testing.assert_allclose(tail.mean(w), windows.mean(w)[100:], rtol=1e-13)
    np.testing.assert_allclose(rolling.rolling_mean_min_periods(x ** 2, 50, 7),
                               (s ** 2).rolling(50, min_periods=7).mean(), rtol=RTOL, atol=ATOL)
    for alpha, minp in ((0.5, 1), (1 / 14, 14), (rolling.span_alpha(60), 60)):
        np.testing.assert_allclose(rolling.ewm_mean(x, alpha, minp),
                                   s.ewm(alpha=alpha, adjust=False, min_periods=minp).mean(), rtol=RTOL, atol=ATOL)
    gappy = np.where(rng.random(x.size) < 0.2, np.nan, x)
    np.testing.assert_array_equal(rolling.ffill(gappy), s.where(~np.isnan(gappy)).ffill())
    np.testing.assert_array_equal(rolling.lag(x, 3), s.shift(3))
    np.testing.assert_array_equal(rolling.diff(x), s.diff())
