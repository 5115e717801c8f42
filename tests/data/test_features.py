"""TimeSeriesFeatureEngineer: hand-checked values, a loop reference, causality, scale-freeness, errors."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mambacast.data import DataError, DataQualityError, MissingVolumeError, TimeSeriesFeatureEngineer, load_prices

from ..samples import needs_bokeh
from .conftest import random_walk


def _col(engineer: TimeSeriesFeatureEngineer, features: np.ndarray, name: str) -> np.ndarray:
    return features[:, engineer.feature_names_.index(name)]


def test_feature_names_cover_the_guide_list() -> None:
    names = TimeSeriesFeatureEngineer().feature_names_
    assert len(names) == 31 and len(set(names)) == 31
    # The guide's 26, then the volatility block the distribution head's baseline reads.
    assert names[26:] == ["log_rv_1", "log_rv_5", "log_rv_22", "garch_logvar", "longrun_logvar"]
    for expected in ["norm_price", "return", "log_return", "sma_ratio_5", "sma_ratio_60", "ema_ratio_5",
                     "ema_ratio_60", "volatility_20", "momentum_10", "roc_12", "rsi_14", "bollinger_position",
                     "macd", "macd_signal", "macd_hist", "range_position"]:
        assert expected in names
    with_volume = TimeSeriesFeatureEngineer(include_volume=True).feature_names_
    assert with_volume[31:] == ["volume_change", "volume_ratio_5", "volume_ratio_10", "volume_ratio_20",
                                "volume_ratio_60"]


def test_volatility_features_equal_a_loop_reference() -> None:
    from mambacast.data.features import GARCH_ALPHA, GARCH_BETA, LONG_RUN_WINDOW

    rng = np.random.default_rng(3)
    close = 50 * np.exp(np.cumsum(0.02 * rng.standard_t(4, 700)))
    engineer = TimeSeriesFeatureEngineer()
    f = engineer.extract_features(close)
    r = np.diff(np.log(close))
    t = 300                                   # row t: returns r[0..t-1] (r[t-1] ends at row t)
    for w in (1, 5, 22):
        want = 0.5 * math.log(np.mean(r[t - w:t] ** 2) + 1e-8)
        assert _col(engineer, f, f"log_rv_{w}")[t] == pytest.approx(want, rel=1e-5)
    # long-run variance: mean squared return of the last LONG_RUN_WINDOW days (fewer at the start)
    vbar = np.full(len(close), np.nan)
    for row in range(22, len(close)):
        vbar[row] = np.mean(r[max(0, row - LONG_RUN_WINDOW):row] ** 2) + 1e-8
    np.testing.assert_allclose(np.exp(_col(engineer, f, "longrun_logvar")[22:]), vbar[22:], rtol=1e-5)
    # GARCH(1,1) filter started at the long-run variance on its first defined row
    s2 = np.full(len(close), np.nan)
    prev = vbar[22]
    for row in range(22, len(close)):
        s2[row] = (1 - GARCH_ALPHA - GARCH_BETA) * vbar[row] + GARCH_ALPHA * r[row - 1] ** 2 + GARCH_BETA * prev
        prev = s2[row]
    np.testing.assert_allclose(np.exp(_col(engineer, f, "garch_logvar")[22:]), s2[22:] + 1e-8, rtol=1e-5)
    assert engineer.warmup_ == 60   # volatility_60 is still the longest look-back


def test_range_volatility_is_parkinson_and_needs_highs_and_lows() -> None:
    rng = np.random.default_rng(4)
    close = 20 * np.exp(np.cumsum(0.01 * rng.standard_normal(120)))
    high, low = close * np.exp(np.abs(rng.normal(0, 0.01, 120))), close * np.exp(-np.abs(rng.normal(0, 0.01, 120)))
    frame = pd.DataFrame({"close": close, "high": high, "low": low})
    engineer = TimeSeriesFeatureEngineer(include_range=True)
    f = engineer.extract_features(frame)
    park = np.log(high / low) ** 2 / (4 * math.log(2))
    for w in (1, 5, 22):
        assert _col(engineer, f, f"log_range_vol_{w}")[100] == pytest.approx(
            0.5 * math.log(park[100 - w + 1:101].mean() + 1e-8), rel=1e-5)
    with pytest.raises(DataError, match="high/low"):
        engineer.extract_features(close)


def test_hand_checked_values_on_a_tiny_series() -> None:
    prices = np.array([10.0, 11.0, 12.0, 11.0, 13.0] + [13.0 + 0.5 * k for k in range(1, 36)])
    engineer = TimeSeriesFeatureEngineer(windows=[2, 3])
    f = engineer.extract_features(prices)
    assert f.dtype == np.float32 and f.shape == (40, engineer.n_features)
    # warm-up: MACD signal needs 26 + 9 - 1 days (row 33 is the first with every feature)
    assert engineer.warmup_ == 33
    np.testing.assert_allclose(_col(engineer, f, "return")[:5], [0, 0.1, 1 / 11, -1 / 12, 2 / 11], rtol=1e-6)
    np.testing.assert_allclose(_col(engineer, f, "log_return")[1:5],
                               np.log([1.1, 12 / 11, 11 / 12, 13 / 11]), rtol=1e-6)
    # price / SMA_2 - 1 at t = 1..4: 11/10.5, 12/11.5, 11/11.5, 13/12
    np.testing.assert_allclose(_col(engineer, f, "sma_ratio_2")[1:5],
                               [11 / 10.5 - 1, 12 / 11.5 - 1, 11 / 11.5 - 1, 13 / 12 - 1], rtol=1e-5)
    # momentum_3 at t = 3, 4: log(11/10), log(13/11)
    np.testing.assert_allclose(_col(engineer, f, "momentum_3")[3:5], np.log([11 / 10, 13 / 11]), rtol=1e-6)
    # range position over the longest window (3) at t = 2..4: 12 in [10,12] -> 1; 11 in [11,12] -> 0; 13 -> 1
    np.testing.assert_allclose(_col(engineer, f, "range_position")[2:5], [1.0, 0.0, 1.0])
    # EMA_2 (alpha 2/3, seeded with the first price, defined from row 1): 10 -> 10.6667 -> 11.5556
    np.testing.assert_allclose(_col(engineer, f, "ema_ratio_2")[1:3], [11 / (32 / 3) - 1, 12 / (104 / 9) - 1],
                               rtol=1e-5)
    assert (f[:1] == 0).all()  # not-yet-defined rows are filled with 0


def test_rsi_of_monotone_series_is_at_its_bounds() -> None:
    engineer = TimeSeriesFeatureEngineer()
    up = engineer.extract_features(100 * 1.01 ** np.arange(200))
    down = engineer.extract_features(100 * 0.99 ** np.arange(200))
    assert (_col(engineer, up, "rsi_14")[14:] == 1.0).all()
    assert (_col(engineer, down, "rsi_14")[14:] == -1.0).all()
    assert (_col(engineer, up, "range_position")[60:] == 1.0).all()
    np.testing.assert_allclose(_col(engineer, up, "momentum_20")[20:], 20 * math.log(1.01), rtol=1e-5)
    np.testing.assert_allclose(_col(engineer, up, "roc_12")[12:], 1.01**12 - 1, rtol=1e-5)
    assert np.abs(_col(engineer, up, "volatility_60")[60:]).max() < 1e-6


def _ema_loop(x: np.ndarray, span: int) -> np.ndarray:
    alpha, out = 2 / (span + 1), np.empty_like(x)
    out[0] = x[0]
    for t in range(1, len(x)):
        out[t] = alpha * x[t] + (1 - alpha) * out[t - 1]
    return out


def test_against_a_plain_loop_reference() -> None:
    p = random_walk(300, seed=7)
    engineer = TimeSeriesFeatureEngineer(windows=[5, 20])
    f = engineer.extract_features(p).astype(np.float64)
    t_range = range(engineer.warmup_, len(p))
    ema12, ema26 = _ema_loop(p, 12), _ema_loop(p, 26)
    macd = ema12 - ema26
    signal = _ema_loop(np.where(np.arange(len(p)) < 25, np.nan, macd)[25:], 9)
    gains, losses = np.maximum(np.diff(p), 0), np.maximum(-np.diff(p), 0)
    avg_gain, avg_loss = np.empty(len(p) - 1), np.empty(len(p) - 1)
    avg_gain[0], avg_loss[0] = gains[0], losses[0]
    for k in range(1, len(p) - 1):  # Wilder smoothing, alpha = 1/14
        avg_gain[k] = avg_gain[k - 1] + (gains[k] - avg_gain[k - 1]) / 14
        avg_loss[k] = avg_loss[k - 1] + (losses[k] - avg_loss[k - 1]) / 14
    for t in t_range:
        w20 = p[t - 19: t + 1]
        expected = {
            "norm_price": (p[t] - w20.mean()) / w20.std(),
            "sma_ratio_5": p[t] / p[t - 4: t + 1].mean() - 1,
            "ema_ratio_20": p[t] / _ema_loop(p[: t + 1], 20)[-1] - 1,
            "volatility_5": np.std(np.diff(np.log(p[t - 5: t + 1])), ddof=1),
            "bollinger_position": (p[t] - w20.mean()) / (2 * w20.std()),
            "range_position": (p[t] - w20.min()) / (w20.max() - w20.min()),
            "macd": macd[t] / p[t],
            "macd_signal": signal[t - 25] / p[t],
            "macd_hist": (macd[t] - signal[t - 25]) / p[t],
            "rsi_14": 2 * avg_gain[t - 1] / (avg_gain[t - 1] + avg_loss[t - 1]) - 1,
        }
        for name, value in expected.items():
            assert _col(engineer, f, name)[t] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, t)


def test_features_are_scale_free() -> None:
    p = random_walk(400, seed=3)
    engineer = TimeSeriesFeatureEngineer()
    np.testing.assert_allclose(engineer.extract_features(p), engineer.extract_features(p * 1234.5), atol=1e-5)


def test_warmup_rows_and_defined_rows() -> None:
    engineer = TimeSeriesFeatureEngineer()
    assert engineer.warmup_ == 60
    f = engineer.extract_features(random_walk(300))
    assert np.isfinite(f).all()
    momentum_60 = _col(engineer, f, "momentum_60")
    assert momentum_60[59] == 0 and momentum_60[60] != 0  # warmup_ is tight: row 59 was not yet defined


@settings(max_examples=40, deadline=None)
@given(log_returns=arrays(np.float64, st.integers(70, 160),
                          elements=st.one_of(st.floats(-0.08, 0.08), st.just(0.0))),
       cut=st.floats(0.0, 1.0))
def test_features_are_causal(log_returns: np.ndarray, cut: float) -> None:
    """Features of the path truncated at day t equal the first t + 1 rows of the full path's."""
    prices = 50.0 * np.exp(np.cumsum(log_returns))
    volumes = np.round(1e6 * np.exp(np.sin(np.arange(len(prices)))))
    t = int(cut * (len(prices) - 1))
    engineer = TimeSeriesFeatureEngineer(include_volume=True)
    full = engineer.extract_features(prices, volumes)
    prefix = engineer.extract_features(prices[: t + 1], volumes[: t + 1])
    np.testing.assert_allclose(prefix, full[: t + 1], rtol=1e-5, atol=1e-6)
    assert np.isfinite(full).all()


def test_missing_closes_are_forward_filled_and_leading_ones_extend_the_warmup() -> None:
    p = random_walk(200)
    p[[0, 1, 2, 100]] = np.nan
    engineer = TimeSeriesFeatureEngineer()
    f = engineer.extract_features(p)
    assert engineer.warmup_ == 63 and np.isfinite(f).all()
    assert _col(engineer, f, "return")[100] == 0.0  # a filled day has no move


def test_volume_from_the_frame_or_explicit(walk_frame: pd.DataFrame) -> None:
    engineer = TimeSeriesFeatureEngineer(include_volume=True)
    from_frame = engineer.extract_features(walk_frame)
    explicit = engineer.extract_features(walk_frame["close"].to_numpy(), walk_frame["volume"].to_numpy())
    np.testing.assert_array_equal(from_frame, explicit)
    assert from_frame.shape == (500, 36)


@needs_bokeh
def test_include_volume_without_volume_names_the_symbol() -> None:
    prices = load_prices("IBM", days=300)[["close"]]
    prices.attrs["symbol"] = "IBM"
    with pytest.raises(MissingVolumeError, match=r"include_volume=True but IBM has no volume.*--source sample.*GOOGL"):
        TimeSeriesFeatureEngineer(include_volume=True).extract_features(prices)


def test_bad_inputs() -> None:
    with pytest.raises(DataQualityError, match=r"close -1 at row 3 is not a positive finite price"):
        TimeSeriesFeatureEngineer().extract_features([1.0, 2.0, 3.0, -1.0, 2.0])
    with pytest.raises(DataError, match="windows="):
        TimeSeriesFeatureEngineer(windows=[1, 5])
    with pytest.raises(DataError, match="3 volumes for 5 prices"):
        TimeSeriesFeatureEngineer(include_volume=True).extract_features(np.arange(1.0, 6.0), [1.0, 2.0, 3.0])


def test_settings_round_trip() -> None:
    engineer = TimeSeriesFeatureEngineer(windows=[20, 5], include_volume=True)
    clone = TimeSeriesFeatureEngineer.from_dict(engineer.to_dict())
    assert clone.windows == [5, 20] and clone.feature_names_ == engineer.feature_names_


def test_ten_thousand_days_in_well_under_a_second() -> None:
    p = random_walk(10_000)
    engineer = TimeSeriesFeatureEngineer(include_volume=True)
    t0 = time.perf_counter()
    engineer.extract_features(p, np.full(10_000, 1e6))
    assert time.perf_counter() - t0 < 0.5
