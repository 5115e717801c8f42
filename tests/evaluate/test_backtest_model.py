"""The Mamba model in the walk-forward harness, on series whose answer is known.

* a random walk: nothing to learn, so no significant skill over the random-walk forecast;
* an AR(1) of daily log-returns (phi = 0.5): the model must get close to the true conditional mean (1-step MSE
  within 10% of the oracle's) and beat the random walk significantly;
* `MambaForecaster.predict_many` is causal: prices after an origin do not change its forecast.

Tiny models (d_model 8, one layer, 10-day windows) keep the file around a minute on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mambacast.blend import Blend, fit_har, pool_student_t
from mambacast.config import MambaConfig, TrainConfig
from mambacast.evaluate import BacktestConfig, GarchT, RandomWalk, run_backtest
from mambacast.evaluate.model import MambaForecaster

from .test_backtest import AR1Oracle, ar1_prices, random_walk_prices

HORIZONS = [1, 5]


def tiny_model(seed: int = 0, epochs: int = 8, pool: bool = True) -> MambaForecaster:
    """pool False: the network alone (no GARCH-t / HAR-t in the law)."""
    mc = MambaConfig(d_model=8, d_state=4, num_layers=1, prediction_horizons=HORIZONS)
    weights = {} if pool else {"garch_weight": 0.0, "har_weight": 0.0}
    tc = TrainConfig(epochs=epochs, batch_size=64, sequence_length=10, learning_rate=0.005, patience=3,
                     lr_patience=2, seed=seed, **weights)
    return MambaForecaster(mc, tc, symbol="SIM")


CONFIG = BacktestConfig(horizons=tuple(HORIZONS), refit_every=5000, min_train_days=1500)


def test_ar1_model_is_close_to_the_oracle_and_beats_the_random_walk():
    phi, sigma = 0.5, 0.01
    closes = ar1_prices(2500, phi, sigma, seed=0)
    # The network alone: the served pool gives GARCH-t's and HAR-t's constant drifts 2/3 of the location, which
    # on this series (a predictable mean, unlike the stocks of docs/results.md) costs 1.15x the oracle's MSE.
    res = run_backtest({"SIM": closes}, lambda s: [tiny_model(pool=False), RandomWalk(), AR1Oracle(phi, sigma)],
                       CONFIG)
    m = res.metrics.set_index(["forecaster", "horizon"])
    assert m.loc[("mamba", 1), "n"] >= 950
    ratio = m.loc[("mamba", 1), "ret_mse"] / m.loc[("oracle", 1), "ret_mse"]
    assert ratio < 1.10, f"1-step MSE {ratio:.3f} x the oracle's"
    dm = res.dm.set_index(["other", "horizon", "loss"])
    assert dm.loc[("random_walk", 1, "squared_error"), "p_better"] < 0.05
    assert dm.loc[("random_walk", 1, "squared_error"), "stat"] < 0
    assert not res.warnings


def test_random_walk_shows_no_skill_over_the_random_walk():
    significant = 0
    for seed in range(3):
        closes = random_walk_prices(2500, seed=100 + seed)
        res = run_backtest({"SIM": closes}, lambda s, seed=seed: [tiny_model(seed), RandomWalk()], CONFIG)
        dm = res.dm[(res.dm.other == "random_walk") & (res.dm.loss == "squared_error")]
        significant += int((dm["p_better"] < 0.05).any())
        assert not res.warnings
    assert significant <= 1, "the model 'beat' a pure random walk in most seeds: the harness leaks"


@pytest.fixture(scope="module")
def fitted():
    closes = random_walk_prices(700, seed=5)
    return closes, tiny_model(epochs=2).fit(closes[:500])


def test_predict_many_equals_predict_on_the_prefix(fitted):
    closes, model = fitted
    origins = np.arange(model.min_origin(), closes.size, 37)
    many = model.predict_many(closes, origins, HORIZONS)
    for i, o in enumerate(origins):
        one = model.predict(closes[: o + 1], HORIZONS)
        np.testing.assert_allclose(many.mean[i], one.mean, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(many.scale[i], one.scale, rtol=1e-5)
    assert many.df.shape == many.mean.shape and np.all(many.df > 2)
    assert model.fit_info_["days"] == 500 and model.fit_info_["epochs"] <= 2


def test_forecasts_pool_the_network_with_garch_and_har_fitted_on_the_training_closes(fitted):
    closes, model = fitted
    blend = model.blend_
    assert model.fit_info_["garch_weight"] == model.fit_info_["har_weight"] == pytest.approx(1 / 3)
    garch, har = blend.garch[model.symbol], blend.har[model.symbol]
    assert garch.params_ == GarchT().fit(closes[:500]).params_           # the baselines' fits on the same closes
    assert har.to_dict() == fit_har(closes[:500], model.horizons).to_dict()
    origins = np.arange(model.min_origin(), closes.size, 50)
    served = model.predict_many(closes, origins, HORIZONS)
    model.blend_ = Blend.network_alone()
    try:
        net = model.predict_many(closes, origins, HORIZONS)
    finally:
        model.blend_ = blend
    g, h = garch.predict_many(closes, origins, HORIZONS), har.predict_many(closes, origins, HORIZONS)
    loc, scale = pool_student_t(net.mean, net.scale, net.df[0], [(1 / 3, g.mean, g.scale, g.df),
                                                                  (1 / 3, h.mean, h.scale, h.df)])
    np.testing.assert_allclose(served.mean, loc, rtol=1e-12)
    np.testing.assert_allclose(served.scale, scale, rtol=1e-12)
    np.testing.assert_array_equal(served.df, net.df)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(origin=st.integers(200, 650), shock=st.floats(-0.5, 0.5), seed=st.integers(0, 10_000))
def test_future_prices_do_not_change_a_forecast(fitted, origin, shock, seed):
    closes, model = fitted
    origin = max(origin, model.min_origin())
    changed = closes.copy()
    rng = np.random.default_rng(seed)
    changed[origin + 1:] *= np.exp(shock + np.cumsum(rng.normal(0, 0.05, closes.size - origin - 1)))
    a = model.predict_many(closes, [origin, closes.size - 1], HORIZONS).at(0)
    b = model.predict_many(changed, [origin, closes.size - 1], HORIZONS).at(0)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a.scale, b.scale, rtol=1e-5)


def test_unknown_horizon_and_short_history_are_errors(fitted):
    closes, model = fitted
    with pytest.raises(ValueError, match="not forecast"):
        model.predict_many(closes, [600], [30])
    with pytest.raises(ValueError, match="origins"):
        model.predict_many(closes, [model.min_origin() - 1], HORIZONS)
    with pytest.raises(RuntimeError, match="not fitted"):
        tiny_model().predict(closes, HORIZONS)


def test_a_stale_price_stretch_is_left_out_of_training():
    # 300 days of an unchanging quote (fails the data checks: stale runs), then a real-looking walk:
    # the model trains on the closes after the stretch, as GarchT fits, instead of failing the refit.
    walk = random_walk_prices(1200, seed=3)
    closes = np.concatenate([np.full(300, walk[0]), walk])
    model = tiny_model(epochs=1).fit(closes)
    assert model.fit_info_["stale_days_dropped"] >= 300
    assert model.fit_info_["days"] == closes.size - model.fit_info_["stale_days_dropped"]
    forecast = model.predict_many(closes, [closes.size - 1], HORIZONS)
    assert np.all(np.isfinite(forecast.scale)) and np.all(forecast.scale > 0)
