"""Baseline forecasters: their documented rules, the Forecast container and the no-look-ahead contract."""

import logging
import math

import numpy as np
import pytest
from arch import arch_model
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mambacast.evaluate import baselines as B
from mambacast.evaluate.metrics import interval_coverage

H = [1, 5, 10, 30]


def _prices(n: int = 400, seed: int = 0, drift: float = 0.0003, vol: float = 0.012) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 50 * np.exp(np.cumsum(rng.normal(drift, vol, n)))


def _simulate_garch_t(n: int, omega: float, alpha: float, beta: float, nu: float, seed: int) -> np.ndarray:
    """Percent log-returns of a zero-mean GARCH(1,1) with standardised Student-t innovations."""
    rng = np.random.default_rng(seed)
    z = rng.standard_t(nu, size=n) * math.sqrt((nu - 2) / nu)
    r, s2 = np.empty(n), omega / (1 - alpha - beta)
    for i in range(n):
        r[i] = math.sqrt(s2) * z[i]
        s2 = omega + alpha * r[i] ** 2 + beta * s2
    return r


@pytest.fixture(scope="module")
def garch_series() -> np.ndarray:
    r = _simulate_garch_t(6000, omega=0.02, alpha=0.08, beta=0.9, nu=6.0, seed=7)
    return 100 * np.exp(np.concatenate([[0.0], np.cumsum(r / 100)]))


@pytest.fixture(scope="module")
def garch_fitted(garch_series) -> B.GarchT:
    return B.GarchT().fit(garch_series[:4001])


# ------------------------------------------------------------------------------------------------ rules


def test_random_walk_zero_mean_symmetric_monotone_quantiles():
    p = _prices()
    f = B.RandomWalk().fit(p).predict(p, H)
    sigma = np.diff(np.log(p)).std(ddof=1)
    np.testing.assert_array_equal(f.mean, 0.0)
    np.testing.assert_allclose(f.scale, sigma * np.sqrt(H))
    levels = list(f.quantiles)
    assert levels == list(B.DEFAULT_QUANTILES)
    for q in levels:
        np.testing.assert_allclose(f.quantiles[q], -f.quantiles[round(1 - q, 10)], atol=1e-15)
    assert np.all(np.diff(np.stack([f.quantiles[q] for q in levels]), axis=0) > 0)
    np.testing.assert_allclose(f.quantiles[0.9], sigma * np.sqrt(H) * stats.norm.ppf(0.9))


def test_drift_recovers_exponential_growth(caplog):
    g = 0.0007
    p = 20 * np.exp(g * np.arange(300))
    with caplog.at_level(logging.WARNING, logger="mambacast.evaluate.baselines"):
        f = B.Drift().fit(p).predict(p, H)
    np.testing.assert_allclose(f.mean, g * np.array(H), rtol=1e-9)
    assert "floored" in caplog.text  # zero volatility of a deterministic trend
    np.testing.assert_allclose(f.price_point(p[-1]), p[-1] * np.exp(g * np.array(H)), rtol=1e-9)


def test_momentum_equals_its_documented_formula():
    p = _prices(200, seed=3)
    lp = np.log(p)
    rbar = (lp[-1] - lp[-21]) / 20  # mean of the last 20 daily log-returns
    expected = 0.5 * rbar * np.array(H)
    np.testing.assert_allclose(B.momentum_log_returns(p, H), expected, rtol=1e-12)
    np.testing.assert_allclose(B.momentum_log_returns(p, H, lookback=5, shrink=1.0),
                               (lp[-1] - lp[-6]) / 5 * np.array(H), rtol=1e-12)
    f = B.Momentum().fit(p).predict(p, H)
    np.testing.assert_allclose(f.mean, expected, rtol=1e-12)
    sigma60 = np.diff(lp)[-60:].std(ddof=1)
    np.testing.assert_allclose(f.scale, sigma60 * np.sqrt(H), rtol=1e-9)
    assert f.df is None


def test_momentum_short_history_uses_what_there_is():
    p = np.array([10.0, 11.0, 12.1])  # two returns, both log(1.1)
    np.testing.assert_allclose(B.momentum_log_returns(p, [1, 2]), 0.5 * math.log(1.1) * np.array([1, 2]))
    with pytest.raises(ValueError, match="at least 2 prices"):
        B.momentum_log_returns([10.0], [1])


def test_historical_vol_uses_the_rolling_window():
    p = _prices(300, seed=5)
    f = B.HistoricalVolGaussian(window=30).fit(p[:200]).predict(p, [1, 4])
    np.testing.assert_allclose(f.scale, np.diff(np.log(p))[-30:].std(ddof=1) * np.sqrt([1, 4]), rtol=1e-9)
    np.testing.assert_array_equal(f.mean, 0.0)
    g = B.HistoricalVolGaussian(drift=True).fit(p[:200]).predict(p, [1, 4])
    np.testing.assert_allclose(g.mean, np.diff(np.log(p[:200])).mean() * np.array([1, 4]))


# --------------------------------------------------------------------------------------------------- GARCH


def test_garch_t_recovers_persistence(garch_fitted):
    assert garch_fitted.converged
    assert garch_fitted.persistence == pytest.approx(0.98, abs=0.02)
    assert 4.0 < garch_fitted.nu_ < 10.0


def test_garch_t_conditional_variance_matches_arch(garch_series, garch_fitted):
    r = 100 * np.diff(np.log(garch_series[:4001]))
    pr = garch_fitted.params_
    res = arch_model(r, mean="Constant", vol="GARCH", p=1, q=1, dist="t", rescale=False).fix(
        [pr["mu"], pr["omega"], pr["alpha"], pr["beta"], garch_fitted.nu_])
    ours = garch_fitted.conditional_variance(garch_series[:4001])[:-1]  # sigma^2 of returns 0..3999
    np.testing.assert_allclose(ours[500:], res.conditional_volatility[500:] ** 2, rtol=1e-8)  # after burn-in


def test_garch_t_intervals_cover_held_out_sample(garch_series, garch_fitted):
    origins = np.arange(4000, 5990)
    fc = garch_fitted.predict_many(garch_series, origins, [1, 5])
    assert np.all(np.diff(np.stack(list(fc.quantiles.values())), axis=0) > 0)
    lp = np.log(garch_series)
    for j, h in enumerate([1, 5]):
        y = lp[origins + h] - lp[origins]
        cov, _ = interval_coverage(y, fc.quantiles[0.1][:, j], fc.quantiles[0.9][:, j])
        assert 0.7 <= cov <= 0.9, (h, cov)


def test_garch_t_variance_sum_closed_form(garch_fitted):
    # sum_{k=1..h} sigma^2_{t+k|t} by direct iteration of E[sigma^2_{t+k}] = omega + phi sigma^2_{t+k-1}
    p = garch_fitted.params_
    phi, omega, v1 = p["alpha"] + p["beta"], p["omega"], 3.0
    path = [v1]
    for _ in range(29):
        path.append(omega + phi * path[-1])
    a, b = B._garch_sum_coeffs(phi, 30)
    assert a * v1 + b * omega == pytest.approx(sum(path), rel=1e-12)


def test_garch_t_falls_back_when_the_fit_fails(monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise np.linalg.LinAlgError("singular Hessian")

    monkeypatch.setattr("arch.arch_model", boom)   # GarchT imports it at each fit (baselines: lazy import)
    p = _prices(400)
    with caplog.at_level(logging.WARNING, logger="mambacast.evaluate.baselines"):
        g = B.GarchT().fit(p)
    assert "GARCH fit failed" in caplog.text and not g.converged
    f = g.predict(p, H)
    sigma = np.diff(np.log(p)).std(ddof=1)
    np.testing.assert_allclose(f.scale, sigma * np.sqrt(H), rtol=1e-9)  # constant historical vol, Gaussian
    assert f.df is None


def test_garch_t_short_window_falls_back(caplog):
    with caplog.at_level(logging.WARNING, logger="mambacast.evaluate.baselines"):
        g = B.GarchT(min_obs=250).fit(_prices(100))
    assert "min_obs" in caplog.text and not g.converged and g.persistence == 0.0


# ---------------------------------------------------------------------------------------- the interface


ALL = [B.RandomWalk, B.Drift, B.Momentum, B.HistoricalVolGaussian, lambda: B.GarchT(min_obs=50)]


@pytest.mark.parametrize("make", ALL)
def test_every_baseline_is_a_forecaster(make):
    assert isinstance(make(), B.Forecaster)


@pytest.mark.parametrize("make", [B.RandomWalk, B.Drift, B.HistoricalVolGaussian, B.GarchT])
def test_predict_before_fit_raises(make):
    with pytest.raises(RuntimeError, match="not fitted"):
        make().predict(_prices(), H)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(80, 200), which=st.integers(0, len(ALL) - 1))
def test_predict_many_equals_predict_and_never_looks_ahead(seed, n, which):
    p = _prices(n, seed=seed)
    model = ALL[which]().fit(p[:60])
    origins = np.arange(2, n, 7)
    many = model.predict_many(p, origins, H)
    for i, o in enumerate(origins):
        one = model.predict(p[: o + 1], H)
        np.testing.assert_allclose(many.mean[i], one.mean, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(many.scale[i], one.scale, rtol=1e-8)
    future_changed = p.copy()
    future_changed[origins[-1] // 2 + 1:] *= 1.5
    cut = origins[origins <= origins[-1] // 2]
    again = model.predict_many(future_changed, cut, H)
    np.testing.assert_allclose(again.mean, many.mean[: cut.size], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(again.scale, many.scale[: cut.size], rtol=1e-8)


def test_base_forecaster_default_predict_many_loops():
    class Last(B.BaseForecaster):
        name = "last_return"

        def fit(self, prices):
            return self

        def predict(self, prices, horizons):
            r = math.log(prices[-1] / prices[-2]) if len(prices) > 1 else 0.0
            return B.Forecast(list(horizons), np.full(len(horizons), r))

    p = np.array([1.0, 2.0, 4.0, 2.0])
    fc = Last().predict_many(p, [1, 3], [1, 2])
    np.testing.assert_allclose(fc.mean, [[math.log(2)] * 2, [-math.log(2)] * 2])
    assert fc.quantiles is None and fc.n_origins == 2


# ------------------------------------------------------------------------------------------- Forecast


def test_forecast_validates_its_arrays():
    with pytest.raises(ValueError, match="non-decreasing"):
        B.Forecast([1], np.zeros(1), {0.1: np.array([1.0]), 0.9: np.array([0.0])})
    with pytest.raises(ValueError, match="n_horizons=2"):
        B.Forecast([1, 5], np.zeros(3))
    with pytest.raises(ValueError, match="horizons"):
        B.Forecast([0], np.zeros(1))
    with pytest.raises(ValueError, match="df must be > 2"):
        B.Forecast([1], np.zeros(1), scale=np.ones(1), df=2.0)


def test_forecast_price_views_and_probabilities():
    f = B.Forecast.from_location_scale([1, 5], np.array([0.01, 0.02]), np.array([0.02, 0.05]), df=5.0)
    pq = f.price_quantiles(100.0)
    np.testing.assert_allclose(pq[0.5], 100 * np.exp([0.01, 0.02]))
    z90 = stats.t.ppf(0.9, 5)
    np.testing.assert_allclose(pq[0.9], 100 * np.exp(np.array([0.01, 0.02]) + np.array([0.02, 0.05]) * z90))
    assert f.prob_above(100.0, 100 * math.exp(0.02), 1) == pytest.approx(0.5)
    assert f.prob_above(100.0, 110.0, 0) == pytest.approx(stats.t.sf((math.log(1.1) - 0.01) / 0.02, 5))


def test_forecast_cdf_from_quantiles_interpolates_and_clamps():
    f = B.Forecast([1], np.zeros(1), {0.1: np.array([-1.0]), 0.5: np.array([0.0]), 0.9: np.array([2.0])})
    assert f.cdf(-0.5, 0) == pytest.approx(0.3)
    assert f.cdf(1.0, 0) == pytest.approx(0.7)
    assert f.cdf(-5.0, 0) == pytest.approx(0.1) and f.cdf(5.0, 0) == pytest.approx(0.9)


def test_forecast_stack_and_at_round_trip():
    p = _prices(300)
    fc = B.GarchT().fit(p).predict_many(p, [250, 260, 299], H)
    again = B.Forecast.stack([fc.at(i) for i in range(3)])
    np.testing.assert_array_equal(again.mean, fc.mean)
    np.testing.assert_array_equal(again.quantiles[0.05], fc.quantiles[0.05])
    np.testing.assert_array_equal(again.df, fc.df)
    np.testing.assert_allclose(fc.prob_above(p[[250, 260, 299]], 60.0, 3),
                               [fc.at(i).prob_above(p[o], 60.0, 3) for i, o in enumerate([250, 260, 299])])


def test_per_horizon_df_with_gaussian_limit():
    f = B.Forecast.from_location_scale([1, 5], np.zeros(2), np.ones(2), df=np.array([np.inf, 4.0]))
    assert f.quantiles[0.9][0] == pytest.approx(stats.norm.ppf(0.9))
    assert f.quantiles[0.9][1] == pytest.approx(stats.t.ppf(0.9, 4))


# ------------------------------------------------------------------------------------ GARCH fit checks


def test_stale_sample_start_finds_the_end_of_the_last_stale_stretch():
    lp = np.log(_prices(300, seed=1))
    assert B.stale_sample_start(lp) == 0
    lp[100:161] = lp[100]  # 60 zero returns r_101..r_160: windows ending at t in [131, 189] hold > 30 of them
    assert B.stale_sample_start(lp) == 189
    # exactly half zero is not stale: 30 zero returns in a 60-day window
    lp2 = np.log(_prices(300, seed=1))
    lp2[100:131] = lp2[100]
    assert B.stale_sample_start(lp2) == 0
    assert B.stale_sample_start(lp2, window=40) == 100 + 30 + 40 - 21 - 1 + 1  # last window with 21 zeros of 40


def _stale_then_garch(seed: int = 3) -> np.ndarray:
    """500 days quoted like RRC in 1990-92 (80% zero returns, ticks of 1/8 on a $3 stock), then GARCH-t data."""
    rng = np.random.default_rng(seed)
    stale = np.where(rng.random(500) < 0.8, 0.0, rng.choice([-1, 1], 500) * np.log(1 + 0.125 / 3))
    r = np.concatenate([100 * stale, _simulate_garch_t(4000, omega=0.02, alpha=0.08, beta=0.9, nu=6.0, seed=seed)])
    return 3 * np.exp(np.concatenate([[0.0], np.cumsum(r / 100)]))


def test_garch_t_skips_the_stale_stretch_and_recovers_the_truth():
    p = _stale_then_garch()
    g = B.GarchT().fit(p)
    assert g.converged and g.fit_info_["status"] == "garch"
    assert 500 <= g.fit_info_["sample_start_index"] <= 500 + 60
    assert g.params_["alpha"] == pytest.approx(0.08, abs=0.025)
    assert g.params_["beta"] == pytest.approx(0.90, abs=0.03)
    assert g.params_["omega"] == pytest.approx(0.02, abs=0.015)
    assert g.nu_ == pytest.approx(6.0, abs=1.5)
    # the same data with the stale stretch left in: the zero-return days distort the estimates
    naive = B.GarchT(max_zero_share=1.0).fit(p)
    assert naive.fit_info_["sample_start_index"] == 0
    assert abs(naive.nu_ - 6.0) > abs(g.nu_ - 6.0) or abs(naive.persistence - 0.98) > abs(g.persistence - 0.98)


def test_garch_t_refuses_degenerate_estimates(monkeypatch, caplog):
    p = _prices(600, seed=4)
    estimates = iter([({"mu": 0.0, "omega": 0.001, "alpha": 0.06, "beta": 0.95}, 7.0),  # alpha + beta > 1
                      ({"mu": 0.0, "omega": 0.01, "alpha": 0.05, "beta": 0.90}, 500.0),  # nu at its bound
                      ({"mu": 0.0, "omega": 0.001, "alpha": 0.05, "beta": 0.95}, 7.0),  # integrated: kept
                      ({"mu": 0.0, "omega": 0.01, "alpha": 0.05, "beta": 0.90}, 500.0)])
    monkeypatch.setattr(B.GarchT, "_fit_arch", lambda self, r: (next(estimates), None))
    g = B.GarchT()
    with caplog.at_level(logging.INFO, logger="mambacast.evaluate.baselines"):
        g.fit(p)
        assert not g.converged and g.fit_info_["status"] == "fallback"
        assert "alpha + beta = 1.010000" in g.fit_info_["reason"]
        assert g.fit_info_["estimate"]["beta"] == 0.95
        g.fit(p)
        assert "nu = 500 at its bound" in g.fit_info_["reason"]
        g.fit(p)   # an IGARCH(1,1)-t estimate is a usable forecaster: kept, and flagged
        assert g.converged and g.fit_info_["status"] == "garch" and g.fit_info_["integrated"] is True
        g.fit(p)
        assert "nu = 500 at its bound" in g.fit_info_["reason"]
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1 and "degenerate" in warnings_[0].getMessage()  # once, then INFO
    sigma = np.diff(np.log(p)).std(ddof=1)
    np.testing.assert_allclose(g.predict(p, H).scale, sigma * np.sqrt(H), rtol=1e-9)

