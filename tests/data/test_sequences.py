"""SequenceGenerator windows and targets, the embargoed split, and the scalers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mambacast.data import (
    DataError,
    FeatureScaler,
    InsufficientHistoryError,
    SequenceGenerator,
    TargetScaler,
    TimeSeriesFeatureEngineer,
    load_prices,
    temporal_split,
)

from ..samples import needs_bokeh
from .conftest import random_walk


def _row_features(n: int, n_features: int = 3) -> np.ndarray:
    """Feature row r holds r in every column, so a window's values say which rows it read."""
    return np.repeat(np.arange(n, dtype=np.float32)[:, None], n_features, axis=1)


def test_shapes_zero_copy_view_and_targets() -> None:
    p = random_walk(400)
    features = _row_features(400)
    gen = SequenceGenerator(sequence_length=60, prediction_horizons=[1, 5, 10, 30])
    X, y = gen.generate_sequences(features, p, start=20)
    n = 400 - 20 - 60 - 30 + 1
    assert X.shape == (n, 60, 3) and X.dtype == np.float32
    assert np.shares_memory(X, features) and not X.flags.writeable
    assert set(y) == {1, 5, 10, 30} and all(v.shape == (n, 1) and v.dtype == np.float32 for v in y.values())
    ends = gen.window_end_index_
    assert ends[0] == 20 + 59 and ends[-1] == 400 - 1 - 30 and (np.diff(ends) == 1).all()
    np.testing.assert_array_equal(X[0], features[20:80])
    for h in (1, 30):
        np.testing.assert_allclose(y[h][:, 0], np.log(p[ends + h] / p[ends]), rtol=1e-6)


def test_stride_keeps_the_most_recent_window() -> None:
    gen = SequenceGenerator(sequence_length=10, prediction_horizons=[3], stride=7)
    X, _ = gen.generate_sequences(_row_features(100), random_walk(100))
    assert gen.window_end_index_[-1] == 96 and (np.diff(gen.window_end_index_) == 7).all()
    assert X[-1, -1, 0] == 96 and X[0, 0, 0] == gen.window_end_index_[0] - 9


@settings(max_examples=60, deadline=None)
@given(n=st.integers(30, 200), seq_len=st.integers(1, 20), stride=st.integers(1, 5), start=st.integers(0, 10),
       horizons=st.lists(st.integers(1, 15), min_size=1, max_size=4, unique=True))
def test_windows_see_only_the_past_and_targets_only_the_future(n: int, seq_len: int, stride: int, start: int,
                                                               horizons: list[int]) -> None:
    gen = SequenceGenerator(seq_len, horizons, stride)
    p = random_walk(n, seed=n)
    if n < start + seq_len + max(horizons):
        with pytest.raises(InsufficientHistoryError):
            gen.generate_sequences(_row_features(n), p, start=start)
        return
    X, y = gen.generate_sequences(_row_features(n), p, start=start)
    ends = gen.window_end_index_
    assert len(X) == len(ends) >= 1
    # X[i] holds exactly rows end-L+1 .. end, all >= start and none after the window's last day.
    assert (X[:, -1, 0] == ends).all() and (X[:, 0, 0] == ends - seq_len + 1).all()
    assert X[:, 0, 0].min() >= start and (X.max(axis=(1, 2)) <= ends).all()
    for h in horizons:  # the target reads day end + h > end, which exists
        assert (ends + h <= n - 1).all()
        np.testing.assert_allclose(y[h][:, 0], np.log(p[ends + h] / p[ends]), rtol=1e-5, atol=1e-6)


@needs_bokeh
def test_too_short_history_says_needed_and_available() -> None:
    gen = SequenceGenerator(60, [1, 5, 10, 30])
    prices = load_prices("GOOGL", days=149)
    features = TimeSeriesFeatureEngineer().extract_features(prices)
    with pytest.raises(InsufficientHistoryError,
                       match=r"GOOGL: 149 days available but 150 needed \(sequence_length=60 \+ max horizon 30 \+ "
                             r"warm-up 60\).*--days"):
        gen.generate_sequences(features, prices, start=60)
    X, _ = gen.generate_sequences(features, prices, start=59)  # one day less of warm-up: exactly enough
    assert len(X) == 1


def test_input_errors() -> None:
    gen = SequenceGenerator(5, [1])
    with pytest.raises(DataError, match="features have 50 rows but prices have 49"):
        gen.generate_sequences(_row_features(50), random_walk(49))
    bad = _row_features(50)
    bad[30, 1] = np.nan
    with pytest.raises(DataError, match="feature column 1 is not finite at row 30"):
        gen.generate_sequences(bad, random_walk(50))
    with pytest.raises(DataError, match="sequence_length=0"):
        SequenceGenerator(0)
    with pytest.raises(DataError, match="duplicates"):
        SequenceGenerator(5, [1, 1])


def test_latest_window() -> None:
    features = _row_features(100)
    window = SequenceGenerator(20).latest_window(features)
    assert window.shape == (1, 20, 3) and window[0, 0, 0] == 80 and window[0, -1, 0] == 99
    with pytest.raises(InsufficientHistoryError, match="at least 80 days"):
        SequenceGenerator(20).latest_window(features[:70], start=60)


def test_split_sizes_and_embargo_proof() -> None:
    """Last training target day < first validation window's last day (stride 1, embargo = max horizon)."""
    horizons = [1, 5, 10, 30]
    gen = SequenceGenerator(60, horizons)
    features = TimeSeriesFeatureEngineer().extract_features(random_walk(1000))
    X, _ = gen.generate_sequences(features, random_walk(1000), start=60)
    train, val = temporal_split(len(X), 0.2, embargo=max(horizons))
    assert len(val) == round(0.2 * len(X)) and len(train) == len(X) - len(val) - 30
    assert train[0] == 0 and val[-1] == len(X) - 1 and (np.diff(np.r_[train, val]) >= 1).all()
    ends = gen.window_end_index_
    last_training_target_day = ends[train[-1]] + max(horizons)
    assert last_training_target_day < ends[val[0]]
    # without the embargo the training targets would reach into the validation period
    train0, val0 = temporal_split(len(X), 0.2, embargo=0)
    assert ends[train0[-1]] + max(horizons) >= ends[val0[0]]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(40, 400), stride=st.integers(1, 6), max_h=st.integers(1, 30),
       val=st.floats(0.05, 0.5))
def test_embargo_holds_for_any_stride(n: int, stride: int, max_h: int, val: float) -> None:
    ends = 100 + stride * np.arange(n)  # window end days of a strided generator
    embargo = math.ceil(max_h / stride)
    try:
        train, valid = temporal_split(n, val, embargo=embargo)
    except InsufficientHistoryError:
        return
    assert ends[train[-1]] + max_h < ends[valid[0]]


def test_split_errors() -> None:
    with pytest.raises(InsufficientHistoryError,
                       match=r"38 samples cannot be split: validation 8 \+ embargo 30 leave 0.*need at least 39"):
        temporal_split(38, 0.2, embargo=30)
    assert len(temporal_split(39, 0.2, embargo=30)[0]) == 1
    with pytest.raises(DataError, match="validation_split=1.5"):
        temporal_split(100, 1.5)
    with pytest.raises(DataError, match="embargo=-1"):
        temporal_split(100, 0.2, embargo=-1)


def test_feature_scaler_fits_training_rows_and_round_trips_json() -> None:
    prices = random_walk(800)
    engineer = TimeSeriesFeatureEngineer()
    features = engineer.extract_features(prices)
    features[:, 3] = 7.0  # a constant column must not divide by zero
    gen = SequenceGenerator(60, [1, 30])
    X, _ = gen.generate_sequences(features, prices, start=engineer.warmup_)
    train, _ = temporal_split(len(X), 0.2, embargo=30)
    rows = gen.rows_covered(train)
    assert rows.start == engineer.warmup_ and rows.stop == gen.window_end_index_[train[-1]] + 1
    scaler = FeatureScaler().fit(features[rows])
    assert scaler.scale_[3] == 1.0
    scaled = scaler.transform(features[rows])
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.delete(scaled.std(axis=0), 3), 1, rtol=1e-4)
    clone = FeatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert (clone.mean_ == scaler.mean_).all() and (clone.scale_ == scaler.scale_).all()
    np.testing.assert_array_equal(clone.transform(X), scaler.transform(X))  # 3-D windows too
    X_scaled, _ = gen.generate_sequences(scaler.transform(features), prices, start=engineer.warmup_)
    np.testing.assert_allclose(X_scaled, scaler.transform(X), atol=1e-6)  # scale-then-window == window-then-scale


def test_feature_scaler_errors() -> None:
    with pytest.raises(DataError, match="not fitted"):
        FeatureScaler().transform(np.zeros((2, 3)))
    scaler = FeatureScaler().fit(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(DataError, match="fitted on 3 features"):
        scaler.transform(np.zeros((2, 4)))
    with pytest.raises(DataError, match="bad FeatureScaler data"):
        FeatureScaler.from_dict({"mean": [0.0], "scale": [0.0]})


def test_target_scaler_dict_and_array_forms_round_trip() -> None:
    rng = np.random.default_rng(1)
    y = {1: rng.normal(0.001, 0.02, (300, 1)).astype(np.float32), 30: rng.normal(0.01, 0.1, (300, 1))}
    scaler = TargetScaler().fit(y)
    assert scaler.horizons_ == [1, 30] and (scaler.std_ == scaler.scale_).all()
    z = scaler.transform(y)
    assert z[1].dtype == np.float32 and abs(float(z[30].mean())) < 1e-6
    back = scaler.inverse_transform(z)
    np.testing.assert_allclose(back[30], y[30], rtol=1e-5)
    stacked = np.hstack([y[1], y[30]])
    by_array = TargetScaler(horizons=[1, 30]).fit(stacked)
    np.testing.assert_allclose(by_array.mean_, scaler.mean_)
    np.testing.assert_allclose(by_array.inverse_transform(by_array.transform(stacked)), stacked, rtol=1e-5,
                               atol=1e-7)
    clone = TargetScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert clone.horizons_ == [1, 30] and (clone.mean_ == scaler.mean_).all() and (clone.scale_ == scaler.scale_).all()
    model_output = np.zeros((4, 2))
    np.testing.assert_array_equal(clone.inverse_transform(model_output), np.tile(scaler.mean_, (4, 1)))
    with pytest.raises(DataError, match=r"horizon 5 was not fitted \(fitted: \[1, 30\]\)"):
        scaler.transform({5: y[1]})
