"""Pooled HAR-t baseline: regressors by hand, calibration on simulated volatility regimes, pooling, causality."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from mambacast.evaluate import har as HAR
from mambacast.evaluate.backtest import BacktestConfig, default_forecasters, run_backtest
from mambacast.evaluate.panel import Panel


def test_log_rv_by_hand():
    lp = np.log([100.0, 101.0, 99.0, 99.0, 102.0])
    r = np.diff(lp)
    c2 = HAR._sq_cumsum(r)
    x = HAR._log_rv(c2, np.array([1, 4]), 1e-6)
    assert x.shape == (2, 4)
    # origin 1: one return known, every look-back uses it
    np.testing.assert_allclose(x[0], np.log(r[0] ** 2 + 1e-6))
    # origin 4: RV1 = r4^2, RV5 = RV22 = RV66 = mean of the 4 known squares
    np.testing.assert_allclose(x[1], np.log([r[3] ** 2 + 1e-6] + [np.mean(r**2) + 1e-6] * 3))
    # a zero return (r3) is floored, not log(0)
    assert np.isfinite(HAR._log_rv(c2, np.array([3]), 1e-6)).all()
    assert HAR._log_rv(c2, np.array([3]), 1e-6)[0, 0] == pytest.approx(np.log(1e-6))


def test_market_returns_are_the_equal_weighted_mean_of_the_symbols_trading_that_day():
    d = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06"])
    a = pd.DataFrame({"close": [10.0, 11.0, 12.1, 12.1]}, index=d)
    b = pd.DataFrame({"close": [20.0, 19.0, 19.0]}, index=d[[0, 1, 3]])  # no row on Jan 3
    m = HAR.market_returns({"A": a, "B": b})
    assert list(m.index) == list(d[1:])
    assert m.iloc[0] == pytest.approx((np.log(1.1) + np.log(0.95)) / 2)
    assert m.iloc[1] == pytest.approx(np.log(1.1))  # only A traded
    assert m.iloc[2] == pytest.approx(0.0)  # A flat, B flat since its previous row


def _regime_panel(n_symbols: int = 4, n: int = 3000, seed: int = 0) -> tuple[dict[str, pd.DataFrame], dict]:
    """Daily log-returns N(0, sigma_t^2) with sigma_t switching between 1% and 3% in long regimes (mean 300
    days), plus a market factor: each symbol's return is 0.5 * common shock + its own, both scaled by sigma_t."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2000-01-03", periods=n)
    frames, sigmas = {}, {}
    common = rng.normal(size=n)
    for i in range(n_symbols):
        switch = rng.random(n) < 1 / 300
        regime = (np.cumsum(switch) + i) % 2
        sigma = np.where(regime == 1, 0.03, 0.01)
        r = sigma * (0.5 * common + np.sqrt(0.75) * rng.normal(size=n))
        frames[f"S{i}"] = pd.DataFrame({"close": 50 * np.exp(np.cumsum(r))}, index=dates)
        sigmas[f"S{i}"] = sigma
    return frames, sigmas


@pytest.fixture(scope="module")
def regime():
    frames, sigmas = _regime_panel()
    return frames, sigmas, HAR.HarPool(Panel(frames))


def test_pooled_forecast_tracks_the_true_volatility_and_is_calibrated(regime):
    frames, sigmas, pool = regime
    cut = frames["S0"].index[1999]
    ratios, inside = {0.01: [], 0.03: []}, []
    for sym, f in frames.items():
        closes = f["close"].to_numpy()
        model = HAR.HarT(pool, sym).fit_dated(closes[:2000], f.index[:2000])
        assert model.fit_info_["mode"] == "pooled" and model.fit_info_["cutoff"] == str(cut.date())
        origins = np.arange(2100, 2990)
        fc = model.predict_many(closes, origins, [5])
        nu = fc.df[:, 0]
        sd = fc.scale[:, 0] * np.sqrt(nu / (nu - 2))
        sigma = sigmas[sym]
        # origins 66+ days into a regime that lasts past the target: the true sd is sigma sqrt(5)
        for k, o in enumerate(origins):
            if np.all(sigma[o - 65: o + 6] == sigma[o]):
                ratios[sigma[o]].append(sd[k] / (sigma[o] * np.sqrt(5)))
        y = np.log(closes[origins + 5] / closes[origins])
        inside.append((fc.quantiles[0.1][:, 0] <= y) & (y <= fc.quantiles[0.9][:, 0]))
    # A log-linear regression on noisy realised variances shrinks toward the pooled mean (its lag coefficients
    # sum to < 1), so the calm regime is over-forecast a little; the sd must still be within 20% in both
    # regimes and separate them by close to their true factor 3.
    med = {s: float(np.median(v)) for s, v in ratios.items()}
    for s, v in ratios.items():
        assert len(v) > 200, s
        assert 0.85 < med[s] < 1.2, med
    assert 2.4 < 3 * med[0.03] / med[0.01] < 3.3, med
    assert np.mean(np.concatenate(inside)) == pytest.approx(0.8, abs=0.04)


def test_one_pooled_fit_per_refit_date_shared_by_every_symbol(monkeypatch):
    frames, _ = _regime_panel(n_symbols=3, n=900, seed=1)
    builds = []
    original = HAR.HarPool._build
    monkeypatch.setattr(HAR.HarPool, "_build", lambda self, c: builds.append(c) or original(self, c))
    config = BacktestConfig(horizons=(1, 5), refit_every=150, min_train_days=400, reference="har_t")
    res = run_backtest(frames, default_forecasters(baselines=["har_t"], include_model=False, panel=Panel(frames)),
                       config)
    n_blocks = len(res.symbols["S0"].blocks)
    assert n_blocks == 4 and len(builds) == n_blocks
    for k in range(n_blocks):
        infos = [res.symbols[s].blocks[k]["fit_info"]["har_t"] for s in frames]
        assert {i["cutoff"] for i in infos} == {str(builds[k].date())} and infos[0]["n_symbols"] == 3
        assert infos[0]["horizons"] == infos[1]["horizons"]  # the same regression
        assert len(infos[0]["horizons"]["5"]["coef"]) == 1 + 4 + 4  # with the market terms


def test_forecasts_at_t_do_not_change_when_any_later_price_changes():
    frames, _ = _regime_panel(n_symbols=3, n=900, seed=2)
    config = BacktestConfig(horizons=(1, 5), refit_every=150, min_train_days=400)
    t = 700
    changed = {}
    rng = np.random.default_rng(9)
    for s, f in frames.items():
        c = f["close"].to_numpy().copy()
        c[t + 1:] *= np.exp(np.cumsum(rng.normal(0, 0.05, c.size - t - 1)))
        changed[s] = pd.DataFrame({"close": c}, index=f.index)

    def run(prices):
        return run_backtest(prices, default_forecasters(baselines=["har_t"], include_model=False,
                                                        panel=Panel(prices)), config)

    a, b = run(frames), run(changed)
    for s in frames:
        ra, rb = a.symbols[s], b.symbols[s]
        keep = ra.origins <= t
        assert keep.sum() > 100
        fa, fb = ra.forecasts["har_t"], rb.forecasts["har_t"]
        np.testing.assert_array_equal(fa.scale[keep], fb.scale[keep])
        np.testing.assert_array_equal(fa.mean[keep], fb.mean[keep])
        assert not np.allclose(fa.scale[~keep], fb.scale[~keep])  # later forecasts do see the change


def test_without_a_panel_it_fits_the_symbol_alone_and_says_so_once(caplog):
    frames, sigmas = _regime_panel(n_symbols=1, n=1500, seed=3)
    closes = frames["S0"]["close"].to_numpy()
    model = HAR.HarT()
    with caplog.at_level(logging.INFO, logger="mambacast.evaluate.har"):
        model.fit(closes[:1000])
        model.fit(closes[:1200])
    warns = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "without the market terms" in warns[0].getMessage()
    assert model.fit_info_["mode"] == "per-symbol" and len(model.fit_info_["horizons"]["1"]["coef"]) == 5
    fc = model.predict(closes[:1300], [1, 5])
    assert fc.mean == pytest.approx(np.mean(np.diff(np.log(closes[:1200]))) * np.array([1, 5]))
    # an undated series in the backtest takes the same path
    res = run_backtest({"X": closes}, default_forecasters(baselines=["har_t"], include_model=False),
                       BacktestConfig(horizons=(1,), refit_every=300, min_train_days=600, reference="har_t"))
    assert res.symbols["X"].blocks[0]["fit_info"]["har_t"]["mode"] == "per-symbol"


def test_training_rows_start_after_a_stale_stretch():
    frames, _ = _regime_panel(n_symbols=2, n=1200, seed=4)
    c = frames["S1"]["close"].to_numpy().copy()
    c[100:400] = c[100]  # 300 days without a price change
    frames["S1"] = pd.DataFrame({"close": c}, index=frames["S1"].index)
    fit = HAR.HarPool(Panel(frames))._build(frames["S0"].index[-1])
    assert fit.start["S0"] == 0 and 399 <= fit.start["S1"] <= 399 + 30
    X, y, _, _ = fit._rows(5)
    rows_s0 = 1200 - 5 - 66
    assert y.size == rows_s0 + (1200 - 5 - (fit.start["S1"] + 66))
    assert np.isfinite(X).all() and np.isfinite(y).all()
