"""Metrics against hand-computed values, closed forms and brute-force integrals."""

import logging
import math

import numpy as np
import pytest
import scoringrules as sr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from mambacast.evaluate import metrics as M


def test_mae_rmse_by_hand():
    y, p = [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, 5.0]  # errors -0.5, 0, 1, -1
    assert M.mae(y, p) == pytest.approx(2.5 / 4)
    assert M.rmse(y, p) == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))  # 0.75


def test_mase_by_hand():
    insample = [10.0, 12.0, 11.0, 15.0, 14.0]
    y, p = [16.0, 13.0], [15.0, 14.0]  # MAE = 1
    # m=1: |12-10|, |11-12|, |15-11|, |14-15| = 2, 1, 4, 1 -> scale 2
    assert M.mase(y, p, insample) == pytest.approx(1 / 2)
    # m=2: |11-10|, |15-12|, |14-11| = 1, 3, 3 -> scale 7/3
    assert M.mase(y, p, insample, m=2) == pytest.approx(3 / 7)


def test_mase_rejects_constant_insample_and_short_series():
    with pytest.raises(ValueError, match="constant"):
        M.mase([1.0], [2.0], [5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="more than m=3"):
        M.mase([1.0], [2.0], [1.0, 2.0, 3.0], m=3)


def test_direction_by_hand_excludes_zeros(caplog):
    y = [0.1, -0.2, 0.3, 0.0, -0.1]
    p = [0.2, 0.1, 0.0, 0.1, -0.3]  # hit, miss, zero prediction, zero move, hit
    assert M.direction_counts(y, p) == M.DirectionCounts(hits=2, n_used=3, n_zero_pred=1, n_zero_true=1)
    with caplog.at_level(logging.INFO, logger="mambacast.evaluate.metrics"):
        acc, pv = M.direction_accuracy(y, p)
    assert acc == pytest.approx(2 / 3) and pv == pytest.approx(1.0)
    assert "excluded 1 zero predictions and 1 zero realised moves" in caplog.text


def test_direction_binomial_p_value_60_of_100():
    y = np.ones(100)
    p = np.r_[np.ones(60), -np.ones(40)]
    acc, pv = M.direction_accuracy(y, p)
    assert acc == 0.6
    assert pv == pytest.approx(0.056887, abs=1e-6)  # exact two-sided binomial, P(|X - 50| >= 10)
    assert M.direction_accuracy(y, p, alternative="greater")[1] == pytest.approx(0.028444, abs=1e-6)


def test_direction_of_random_walk_is_nan():
    acc, pv = M.direction_accuracy([0.1, -0.2], [0.0, 0.0])
    assert math.isnan(acc) and math.isnan(pv)


def test_pinball_by_hand():
    y = [1.0, 2.0]
    q_pred = [[0.5, 1.5], [2.5, 3.0]]
    # rho_tau(u) = u (tau - 1{u<0}); u = y - q
    # row 0: u = 0.5 -> 0.1*0.5 = 0.05;  u = -0.5 -> (0.9-1)(-0.5) = 0.05
    # row 1: u = -0.5 -> (0.1-1)(-0.5) = 0.45;  u = -1 -> (0.9-1)(-1) = 0.1
    np.testing.assert_allclose(M.pinball_loss(y, q_pred, [0.1, 0.9]), [[0.05, 0.05], [0.45, 0.1]])
    np.testing.assert_allclose(M.crps_from_quantiles(y, q_pred, [0.1, 0.9]), [0.1, 0.55])  # (2/Q) * row sum, Q = 2


def _crps_by_integral(cdf, y: float, lo: float, hi: float) -> float:
    """CRPS(F, y) = int (F(x) - 1{x >= y})^2 dx, split at y where the integrand jumps."""
    left = integrate.quad(lambda x: cdf(x) ** 2, lo, y, limit=200)[0]
    right = integrate.quad(lambda x: (cdf(x) - 1) ** 2, y, hi, limit=200)[0]
    return left + right


@pytest.mark.parametrize("y, mu, sigma", [(0.3, 0.0, 1.0), (-2.5, 0.5, 0.7), (0.01, -0.002, 0.02)])
def test_crps_gaussian_closed_form_and_integral(y, mu, sigma):
    got = M.crps_gaussian([y], mu, sigma)[0]
    z = (y - mu) / sigma
    closed = sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    brute = _crps_by_integral(lambda x: stats.norm.cdf(x, mu, sigma), y, mu - 12 * sigma, mu + 12 * sigma)
    assert got == pytest.approx(closed, rel=1e-12)
    assert got == pytest.approx(brute, rel=1e-7)
    assert got == pytest.approx(float(sr.crps_normal(y, mu, sigma)), rel=1e-10)


def test_crps_student_t_against_integral():
    y, nu, loc, scale = 0.8, 4.0, 0.1, 0.5
    got = M.crps_student_t([y], nu, loc, scale)[0]
    brute = _crps_by_integral(lambda x: stats.t.cdf(x, nu, loc, scale), y, -np.inf, np.inf)
    assert got == pytest.approx(brute, rel=1e-6)


def test_crps_ensemble_by_hand():
    # members {0, 1, 2}, y = 1: E|X - y| = 2/3, E|X - X'| = 8/9 -> 2/3 - 4/9 = 2/9
    assert M.crps_ensemble([1.0], [[0.0, 1.0, 2.0]])[0] == pytest.approx(2 / 9)


@settings(max_examples=50, deadline=None)
@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(0.01, 5))
def test_crps_gaussian_matches_library_and_is_minimised_by_the_truth(y, mu, sigma):
    got = M.crps_gaussian([y], mu, sigma)[0]
    assert got == pytest.approx(float(sr.crps_normal(y, mu, sigma)), rel=1e-9, abs=1e-12)
    assert got >= 0


def test_interval_coverage_by_hand():
    y = [0.0, 1.0, 2.0, 3.0]
    lower, upper = [-1.0, 1.5, 1.0, 2.5], [1.0, 2.0, 3.0, 2.9]  # in, out, in, out
    cov, width = M.interval_coverage(y, lower, upper)
    assert cov == 0.5
    assert width == pytest.approx((2 + 0.5 + 2 + 0.4) / 4)
    with pytest.raises(ValueError, match="swapped"):
        M.interval_coverage([0.0], [1.0], [0.0])


def test_calibration_curve_and_pit():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    q_pred = np.array([[0.5, 1.5], [0.5, 1.5], [0.5, 2.5], [0.5, 2.9]])
    assert M.calibration_curve(y, q_pred, [0.25, 0.75]) == {0.25: 0.25, 0.75: 0.75}
    u = M.pit_values(y, lambda v: stats.norm.cdf(v, loc=1.5))
    np.testing.assert_allclose(u, stats.norm.cdf(y - 1.5))
    with pytest.raises(ValueError, match="outside"):
        M.pit_values(y, lambda v: v)


def test_pit_of_calibrated_forecasts_is_uniform():
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=4000), rng.uniform(0.5, 2, 4000)
    u = M.pit_values(rng.normal(mu, sigma), lambda v: stats.norm.cdf(v, mu, sigma))
    assert stats.kstest(u, "uniform").pvalue > 0.01


# --------------------------------------------------------------------------------------- Diebold-Mariano


def test_diebold_mariano_by_hand_h2():
    d = [0.1, 0.3, 0.4, 0.2, -0.1, 0.0, 0.3, 0.5]
    loss_b = np.array([0.5, 1.0, 0.7, 0.9, 0.3, 1.1, 0.4, 0.8])
    loss_a = loss_b + np.array(d)
    n, h = 8, 2
    dbar = 1.7 / 8  # 0.2125
    # deviations e_t = d_t - dbar
    e = [-0.1125, 0.0875, 0.1875, -0.0125, -0.3125, -0.2125, 0.0875, 0.2875]
    gamma0 = sum(x * x for x in e) / n  # 0.03609375
    gamma1 = sum(e[t] * e[t - 1] for t in range(1, n)) / n  # 0.01013671875
    assert (gamma0, gamma1) == pytest.approx((0.03609375, 0.01013671875))
    dm = dbar / math.sqrt((gamma0 + 2 * gamma1) / n)  # 2.53157...
    hln = math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)  # sqrt(5.25 / 8)
    expected = dm * hln  # 2.05081
    p_two = 2 * stats.t.sf(expected, df=n - 1)  # 0.07944
    stat, p = M.diebold_mariano(loss_a, loss_b, h=2)
    assert stat == pytest.approx(expected, rel=1e-12) and stat == pytest.approx(2.05081, abs=1e-5)
    assert p == pytest.approx(p_two, rel=1e-10) and p == pytest.approx(0.07944, abs=1e-5)
    assert M.diebold_mariano(loss_a, loss_b, h=2, alternative="greater")[1] == pytest.approx(p_two / 2)
    assert M.diebold_mariano(loss_a, loss_b, h=2, alternative="less")[1] == pytest.approx(1 - p_two / 2)


def test_diebold_mariano_identical_losses():
    loss = np.random.default_rng(0).exponential(size=50)
    assert M.diebold_mariano(loss, loss, h=5) == (0.0, 1.0)


def test_diebold_mariano_detects_a_better_forecaster():
    rng = np.random.default_rng(42)
    y = rng.normal(size=500)
    good = y + rng.normal(scale=0.5, size=500)
    bad = y + rng.normal(scale=1.0, size=500)
    stat, p = M.diebold_mariano((y - good) ** 2, (y - bad) ** 2, h=1)
    assert stat < 0 and p < 0.01
    assert M.diebold_mariano((y - good) ** 2, (y - bad) ** 2, alternative="less")[1] < 0.005


def test_diebold_mariano_negative_variance_falls_back_to_h1(caplog):
    # d = 0.1, 0.3, -0.1, 0.4, ... has gamma0 + 2 gamma1 < 0 at h=2 (computed: -0.0223 / 8)
    d = np.array([0.1, 0.3, -0.1, 0.4, 0.1, 0.5, -0.05, 0.3])
    with caplog.at_level(logging.WARNING, logger="mambacast.evaluate.dm"):
        res = M.diebold_mariano(d, np.zeros(8), h=2)
    assert "redoing the test with h=1" in caplog.text
    assert res == M.diebold_mariano(d, np.zeros(8), h=1)


def test_diebold_mariano_constant_difference():
    stat, p = M.diebold_mariano(np.full(10, 2.0), np.full(10, 1.0))
    assert stat == math.inf and p == 0.0
    assert M.diebold_mariano(np.full(10, 2.0), np.full(10, 1.0), alternative="less")[1] == 1.0


def test_diebold_mariano_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least"):
        M.diebold_mariano([1.0, 2.0, 3.0], [1.0, 2.0, 2.0], h=2)


# ------------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("fn", [M.mae, M.rmse])
def test_bad_inputs_raise_clear_errors(fn):
    with pytest.raises(ValueError, match="shape mismatch"):
        fn([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        fn([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


def test_quantile_inputs_are_checked():
    with pytest.raises(ValueError, match="strictly increasing"):
        M.pinball_loss([1.0], [[1.0, 2.0]], [0.9, 0.1])
    with pytest.raises(ValueError, match=r"\(n, n_quantiles\)"):
        M.pinball_loss([1.0, 2.0], [[1.0, 2.0]], [0.1, 0.9])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        M.crps_gaussian([1.0], 0.0, 0.0)


# ----------------------------------------------------------------------------------------------- summary


def test_evaluate_forecasts_is_consistent_with_the_parts():
    rng = np.random.default_rng(3)
    h, n = 5, 300
    train = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 500)))
    origin = 100 * np.exp(rng.normal(0, 0.1, n))
    y = rng.normal(0, 0.01 * math.sqrt(h), n)
    pred = 0.3 * y + rng.normal(0, 0.01, n)
    sd = np.full(n, 0.01 * math.sqrt(h))
    levels = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    quantiles = {q: pred + sd * stats.norm.ppf(q) for q in levels}
    out = M.evaluate_forecasts(y, pred, origin, train, h, quantiles=quantiles, scale=sd)
    price_true, price_pred = origin * np.exp(y), origin * np.exp(pred)
    assert out["ret_mae"] == pytest.approx(M.mae(y, pred))
    assert out["ret_mase"] == pytest.approx(M.mase(y, pred, np.log(train), m=h))
    assert out["price_rmse"] == pytest.approx(M.rmse(price_true, price_pred))
    assert out["price_mase"] == pytest.approx(M.mase(price_true, price_pred, train, m=h))
    assert out["direction_accuracy"] > 0.55 and out["direction_n"] == n
    cov80, width80 = M.interval_coverage(y, quantiles[0.1], quantiles[0.9])
    assert (out["coverage_80"], out["ret_width_80"]) == pytest.approx((cov80, width80))
    assert out["price_width_90"] == pytest.approx(np.mean(origin * (np.exp(quantiles[0.95]) - np.exp(quantiles[0.05]))))
    assert out["ret_crps"] == pytest.approx(M.crps_gaussian(y, pred, sd).mean())
    assert out["calibration_q0.5"] == pytest.approx(np.mean(y <= pred))
    assert {"pinball_q0.05", "pinball_mean", "ret_crps_quantile", "price_crps_quantile", "coverage_50"} <= set(out)
    assert all(isinstance(v, float) for v in out.values())
    assert "coverage_80" not in M.evaluate_forecasts(y, pred, origin, train, h, quantiles={0.5: pred})


def test_crps_student_t_infinite_df_is_gaussian_and_evaluate_accepts_per_origin_df():
    y, loc, scale = np.array([0.3, -1.0]), np.array([0.0, 0.5]), np.array([1.0, 2.0])
    got = M.crps_student_t(y, np.array([np.inf, 5.0]), loc, scale)
    assert got[0] == pytest.approx(M.crps_gaussian(y[:1], 0.0, 1.0)[0])
    assert got[1] == pytest.approx(float(sr.crps_t(-1.0, 5.0, 0.5, 2.0)))
    out = M.evaluate_forecasts(y, loc, [10.0, 10.0], [9.0, 10.0, 11.0], 1, scale=scale, df=[np.inf, 5.0])
    assert out["ret_crps"] == pytest.approx(got.mean())
    with pytest.raises(ValueError, match="without scale"):
        M.evaluate_forecasts(y, loc, [10.0, 10.0], [9.0, 10.0, 11.0], 1, df=5.0)
