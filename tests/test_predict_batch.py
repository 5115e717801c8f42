"""MambaPredictor serving path: predict_many, forecast_origins, history trimming, worker threads."""

import asyncio
import threading

import numpy as np
import pytest
import torch
from scipy import stats

from mambacast import MambaConfig, MambaPredictor, TrainConfig
from mambacast.blend import Blend, pool_student_t
from mambacast.data.features import TimeSeriesFeatureEngineer
from mambacast.data.sources import load_prices
from mambacast.predict import EMA_TOLERANCE, ema_memory_days, rolling_scale_factors
from mambacast.store import StoreError
from mambacast.train import train_symbol

from .samples import needs_sample

pytestmark = [needs_sample("AAPL"), needs_sample("MSFT")]   # the models here are trained on AAPL and MSFT

KEYS = ["1d", "5d", "10d", "30d"]
KEYS_H = [1, 5, 10, 30]
TINY = MambaConfig(d_model=16, d_state=4, num_layers=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for symbol in ("AAPL", "MSFT"):
        train_symbol(symbol, model_config=TINY, train_config=TrainConfig(epochs=1, batch_size=64), days=400,
                     save_dir=root)
    return root


@pytest.fixture(scope="module")
def long_history():
    return load_prices("AAPL", days=1500)       # longer than keep_days (742), so trimming matters


@pytest.fixture
def predictor(model_dir):
    p = MambaPredictor(["AAPL", "MSFT"], model_dir=model_dir)
    yield p
    p.close()


def run(coro):
    return asyncio.run(coro)


def assert_same(a, b, rtol=1e-6):
    """Two PredictionResults agree: same metadata, numbers equal to float32 rounding of the forward pass."""
    assert (a.symbol, a.source, a.reason, a.as_of, a.model_version, a.horizons) == \
        (b.symbol, b.source, b.reason, b.as_of, b.model_version, b.horizons)
    for k in KEYS:
        assert a.prices[k] == pytest.approx(b.prices[k], rel=rtol)
        assert list(a.quantiles[k]) == list(b.quantiles[k])
        for q in a.quantiles[k]:
            assert a.quantiles[k][q] == pytest.approx(b.quantiles[k][q], rel=rtol)
        np.testing.assert_allclose(a._dist[k], b._dist[k], rtol=rtol, atol=1e-7)  # loc may be ~0


def test_ema_memory_is_the_slowest_average_forgetting_to_tolerance():
    assert ema_memory_days([5, 10, 20, 60]) == 622        # (59/61)^622 < 1e-9 < (59/61)^621
    assert (59 / 61) ** 622 < EMA_TOLERANCE < (59 / 61) ** 621
    assert ema_memory_days([5, 10]) == ema_memory_days([26])  # then MACD's slow EMA (span 26) is the slowest


def test_trimmed_features_equal_full_history_features_to_float32(long_history):
    engineer = TimeSeriesFeatureEngineer()
    closes = long_history["close"].to_numpy()
    full = engineer.extract_features(closes).astype(np.float64)
    keep = engineer.warmup_ + 60 + ema_memory_days(engineer.windows)
    for end in (keep, keep + 1, 1000, len(closes)):
        trimmed = engineer.extract_features(closes[end - keep:end])[-60:].astype(np.float64)
        expected = full[end - 60:end]
        rel = np.abs(trimmed - expected) / np.maximum(np.abs(expected), 1e-3)
        assert rel.max() < 1e-6, (end, rel.max())


def test_trimmed_predictions_equal_untrimmed(model_dir, long_history):
    trimmed = MambaPredictor(["AAPL"], model_dir=model_dir)
    full = MambaPredictor(["AAPL"], model_dir=model_dir, trim_history=False)
    try:
        assert trimmed._load("AAPL").keep_days == 60 + 60 + 701   # the GARCH features remember longest
        for end in (len(long_history), 1000, 800):
            history = long_history.iloc[:end]
            price = float(history["close"].iloc[-1])
            assert_same(run(trimmed.predict_detailed("AAPL", history, price)),
                        run(full.predict_detailed("AAPL", history, price)))
    finally:
        trimmed.close()
        full.close()


def test_predict_many_equals_one_by_one(predictor, long_history):
    closes = long_history["close"]
    requests = [("AAPL", long_history.iloc[:end], float(closes.iloc[end - 1])) for end in range(1500, 1440, -7)]
    requests += [("MSFT", load_prices("MSFT", days=900), 250.0), ("ZZZZ", long_history, 100.0),
                 ("AAPL", long_history.iloc[-50:], 120.0), ("AAPL", closes.to_numpy()[:1200], 90.0)]
    requests.insert(3, ("MSFT", load_prices("MSFT", days=300)["close"], 240.0))
    batched = run(predictor.predict_many(requests, quantiles=(0.1, 0.5, 0.9)))
    assert len(batched) == len(requests)
    sources = [r.source for r in batched]
    assert sources.count("momentum") == 2 and sources.count("mamba") == len(requests) - 2
    for (symbol, history, price), got in zip(requests, batched, strict=True):
        assert_same(got, run(predictor.predict_detailed(symbol, history, price, (0.1, 0.5, 0.9))))


def test_predict_many_chunks_large_groups_and_keeps_order(predictor, long_history):
    closes = long_history["close"].to_numpy()
    ends = list(range(len(closes), len(closes) - 300, -1))        # 300 as-of dates: three worker tasks
    requests = [("AAPL", closes[:end], float(closes[end - 1])) for end in ends]
    batched = run(predictor.predict_many(requests))
    for i in (0, 127, 128, 299):
        assert_same(batched[i], run(predictor.predict_detailed(*requests[i])))


def test_predict_many_bad_requests(predictor, long_history):
    good = ("AAPL", long_history, 100.0)
    bad = ("AAPL", long_history, -1.0)
    with pytest.raises(ValueError, match="current_price=-1.0 is invalid"):
        run(predictor.predict_many([good, bad]))
    out = run(predictor.predict_many([good, bad, ("MSFT", np.array([1.0, 2.0]), 2.0)], return_exceptions=True))
    assert out[0].source == "mamba"
    assert isinstance(out[1], ValueError) and isinstance(out[2], ValueError) and "has 2 closes" in str(out[2])
    with pytest.raises(ValueError, match="request 0 must be a"):
        run(predictor.predict_many([["AAPL", long_history, 100.0]]))
    with pytest.raises(ValueError, match="quantile 1.5"):
        run(predictor.predict_many([good], quantiles=(0.5, 1.5)))
    assert run(predictor.predict_many([])) == []


def test_forecast_origins_equals_untrimmed_predictions(model_dir, long_history):
    full = MambaPredictor(["AAPL"], model_dir=model_dir, trim_history=False)
    try:
        origins = [119, 500, 1499]
        fc = full.forecast_origins("AAPL", long_history, origins)
        assert fc.loc.shape == fc.scale.shape == (3, 4) and fc.df.shape == (4,)
        np.testing.assert_allclose(fc.scale, fc.raw_scale * fc.calibration)
        for i, t in enumerate(origins):
            history = long_history.iloc[:t + 1]
            got = run(full.predict_detailed("AAPL", history, float(history["close"].iloc[-1])))
            assert fc.as_of[i] == got.as_of
            np.testing.assert_allclose([got._dist[k][0] for k in KEYS], fc.loc[i], rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose([got._dist[k][1] for k in KEYS], fc.scale[i], rtol=1e-6)
            lo, hi = fc.interval(0.8)
            np.testing.assert_allclose(np.log(got.quantiles["30d"][0.9] / got.current_price), hi[i, 3], rtol=1e-6)
            np.testing.assert_allclose(np.log(got.quantiles["30d"][0.1] / got.current_price), lo[i, 3], rtol=1e-6)
        np.testing.assert_allclose(fc.cdf(fc.loc), 0.5)
        everything = full.forecast_origins("AAPL", long_history["close"])
        assert everything.origins[0] == 119 and everything.origins[-1] == 1499 and everything.as_of[0] is not None
        np.testing.assert_allclose(everything.loc[[0, 381, 1380]], fc.loc, rtol=1e-5, atol=1e-7)
        with pytest.raises(ValueError, match=r"origins must be row positions in \[119, 1499\]"):
            full.forecast_origins("AAPL", long_history, [118])
        with pytest.raises(StoreError, match="no model for ZZZZ"):
            full.forecast_origins("ZZZZ", long_history)
    finally:
        full.close()


def test_inference_threads_are_per_worker(model_dir):
    before = torch.get_num_threads()
    p = MambaPredictor(["AAPL"], model_dir=model_dir, inference_threads=1, max_workers=2)
    try:
        async def worker_threads():
            return await asyncio.gather(*(p._run(torch.get_num_threads) for _ in range(4)))

        assert run(worker_threads()) == [1, 1, 1, 1]
        assert torch.get_num_threads() == before
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [before]             # threads created later keep the process setting
    finally:
        p.close()
    with pytest.raises(ValueError, match="inference_threads=0"):
        MambaPredictor(["AAPL"], inference_threads=0)


def test_rolling_calibration_refits_the_validation_estimator_on_recent_residuals(model_dir, long_history):
    plain = MambaPredictor(["AAPL"], model_dir=model_dir, trim_history=False)
    rolling = MambaPredictor(["AAPL"], model_dir=model_dir, calibration="rolling", calibration_window=250)
    for p in (plain, rolling):   # the network's own factor: the classical pool is applied after it (test below)
        p._load("AAPL").blend = Blend.network_alone()
    try:
        closes = long_history["close"].to_numpy()
        fc = plain.forecast_origins("AAPL", long_history)          # raw forecasts at every origin 119..1499
        T = len(closes) - 1
        got = run(rolling.predict_detailed("AAPL", long_history, float(closes[-1])))
        for j, h in enumerate([1, 5, 10, 30]):
            s = np.arange(T - h - 249, T - h + 1)
            z = np.abs(np.log(closes[s + h] / closes[s]) - fc.loc[s - 119, j]) / fc.raw_scale[s - 119, j]
            factor = np.quantile(z, 0.8) / stats.t.ppf(0.9, fc.df[j])
            assert got._dist[KEYS[j]][1] == pytest.approx(fc.raw_scale[-1, j] * factor, rel=1e-5)
            assert got._dist[KEYS[j]][0] == pytest.approx(fc.loc[-1, j], abs=1e-7)
        assert len(rolling._load("AAPL").factors) == 1
        assert_same(run(rolling.predict_detailed("AAPL", long_history, float(closes[-1]))), got)  # from the cache
        assert len(rolling._load("AAPL").factors) == 1
    finally:
        plain.close()
        rolling.close()


def test_served_law_is_the_network_pooled_with_the_stored_garch_and_har_fits(model_dir, long_history):
    """predict_detailed and forecast_origins serve pool_student_t(network, stored GARCH-t and HAR-t, thirds) on
    real prices."""
    served = MambaPredictor(["AAPL"], model_dir=model_dir)
    net = MambaPredictor(["AAPL"], model_dir=model_dir)
    try:
        blend = served._load("AAPL").blend
        assert blend.garch_weight == blend.har_weight == pytest.approx(1 / 3)
        assert set(blend.garch) == set(blend.har) == {"AAPL"}          # fitted at training, read from metadata
        net._load("AAPL").blend = Blend.network_alone()
        closes = long_history["close"].to_numpy()
        origins = np.array([900, 1200, len(closes) - 1])
        a = served.forecast_origins("AAPL", long_history, origins)
        b = net.forecast_origins("AAPL", long_history, origins)
        g = blend.garch["AAPL"].predict_many(closes, origins, KEYS_H)
        h = blend.har["AAPL"].predict_many(closes, origins, KEYS_H)
        others = [(1 / 3, g.mean, g.scale, g.df), (1 / 3, h.mean, h.scale, h.df)]
        loc, scale = pool_student_t(b.loc, b.scale, b.df, others)
        np.testing.assert_allclose(a.loc, loc, rtol=1e-12)
        np.testing.assert_allclose(a.scale, scale, rtol=1e-12)
        assert not np.allclose(a.scale, b.scale, rtol=1e-3)          # the pool moves the law
        got = run(served.predict_detailed("AAPL", long_history, float(closes[-1])))
        for j, k in enumerate(KEYS):
            assert got._dist[k][0] == pytest.approx(loc[-1, j], abs=1e-7)
            assert got._dist[k][1] == pytest.approx(scale[-1, j], rel=1e-5)
    finally:
        served.close()
        net.close()


def test_rolling_calibration_in_batches_origins_and_short_histories(model_dir, long_history):
    static = MambaPredictor(["AAPL"], model_dir=model_dir)
    rolling = MambaPredictor(["AAPL"], model_dir=model_dir, calibration="rolling", calibration_window=250)
    untrimmed = MambaPredictor(["AAPL"], model_dir=model_dir, calibration="rolling", trim_history=False)
    try:
        closes = long_history["close"]
        # 119 + 250 + h - 1 rows are needed for horizon h: at origin 380 only 1d and 5d are refitted
        ends = [300, 381, 1000, 1500]
        requests = [("AAPL", long_history.iloc[:end], float(closes.iloc[end - 1])) for end in ends]
        one_by_one = [run(rolling.predict_detailed(*r)) for r in requests]
        rolling._load("AAPL").factors.clear()
        for a, b in zip(run(rolling.predict_many(requests)), one_by_one, strict=True):
            assert_same(a, b)
        short = run(static.predict_detailed(*requests[0]))
        assert_same(one_by_one[0], short)                           # 300 days: the validation factor everywhere
        partial = run(static.predict_detailed(*requests[1]))
        assert one_by_one[1]._dist["30d"] == pytest.approx(partial._dist["30d"])
        assert one_by_one[1]._dist["1d"][1] != pytest.approx(partial._dist["1d"][1])
        fc = untrimmed.forecast_origins("AAPL", long_history, [e - 1 for e in ends])
        for i, got in enumerate(one_by_one):
            np.testing.assert_allclose([got._dist[k][1] for k in KEYS], fc.scale[i], rtol=1e-5)
        np.testing.assert_allclose(fc.scale, fc.raw_scale * fc.calibration)
        with pytest.raises(ValueError, match="calibration='conformal' is invalid"):
            MambaPredictor(["AAPL"], calibration="conformal")
    finally:
        static.close()
        rolling.close()
        untrimmed.close()


def test_rolling_scale_factors_by_hand():
    rng = np.random.default_rng(0)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))
    origins = np.arange(50, 400)
    loc, raw = rng.normal(0, 0.001, (350, 2)), rng.uniform(0.005, 0.02, (350, 2))
    df = np.array([4.0, 6.0])
    f = rolling_scale_factors(closes, origins, loc, raw, df, [1, 5], 20, np.array([9.0, 9.0]))
    for t, j, h in [(120, 0, 1), (399, 1, 5), (300, 1, 5)]:
        s = np.arange(t - h - 19, t - h + 1)
        z = np.abs(np.log(closes[s + h] / closes[s]) - loc[s - 50, j]) / raw[s - 50, j]
        assert f[t - 50, j] == pytest.approx(np.quantile(z, 0.8) / stats.t.ppf(0.9, df[j]), rel=1e-12)
    assert f[0, 0] == 9.0 and f[19, 0] == 9.0 and f[20, 0] != 9.0   # 20 known residuals from origin 70 on
    assert f[23, 1] == 9.0 and f[24, 1] != 9.0
