"""Options-desk tables: Brier scores at strikes, their DM tests, reliability, PIT, coverage by year, seed spread."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mambacast.evaluate.backtest import BacktestConfig, run_backtest
from mambacast.evaluate.desk import MONEYNESS
from mambacast.evaluate.metrics import brier_score, diebold_mariano, pit_histogram, reliability_table

from .test_backtest import Constant


def test_brier_reliability_and_pit_histogram_by_hand():
    p = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.5])
    o = np.array([0, 1, 0, 1, 1, 0])
    np.testing.assert_allclose(brier_score(p, o), [0.0025, 0.7225, 0.0144, 0.0025, 0.0, 0.25])
    table = reliability_table(p, o)
    assert len(table) == 10
    assert table[0] == {"bin": 0.0, "bin_lo": 0.0, "bin_hi": 0.1, "mean_predicted": 0.05, "observed_frequency": 0.0,
                        "count": 1.0}
    assert table[1]["mean_predicted"] == pytest.approx(0.135) and table[1]["observed_frequency"] == 0.5
    assert table[5]["count"] == 1 and table[9]["count"] == 2 and table[9]["mean_predicted"] == pytest.approx(0.975)
    assert table[3]["count"] == 0 and np.isnan(table[3]["mean_predicted"])
    np.testing.assert_array_equal(pit_histogram([0.0, 0.05, 0.1, 0.55, 0.999, 1.0]), [2, 1, 0, 0, 0, 1, 0, 0, 0, 2])
    with pytest.raises(ValueError, match="outcome must be 0 or 1"):
        brier_score([0.5], [2])
    with pytest.raises(ValueError, match="prob must lie in"):
        reliability_table([1.5], [1])


MU, S = 0.0004, 0.012


@pytest.fixture(scope="module")
def result():
    """Two dated symbols of iid N(MU, S^2) daily log-returns; 'model' forecasts the true law, 'garch_t' (a
    stand-in) one twice too wide, 'har_t' one with the wrong mean."""
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2017-06-01", periods=1400)
    prices = {s: pd.DataFrame({"close": 50 * np.exp(np.cumsum(rng.normal(MU, S, 1400)))}, index=dates)
              for s in ("AAA", "BBB")}
    config = BacktestConfig(horizons=(1, 5), refit_every=300, min_train_days=250, reference="model")
    return run_backtest(prices, lambda s: [Constant("model", MU, S), Constant("garch_t", MU, 2 * S),
                                           Constant("har_t", -0.003, S)], config)


def _probs(r, h, j, mu, s, m):
    mask = r.valid(j)
    y = r.realised[mask, j]
    p = stats.norm.sf((np.log1p(m) - mu * h) / (s * np.sqrt(h)))
    return np.full(y.size, p), (y > np.log1p(m)).astype(float), r.origin_dates()[mask]


def test_brier_rows_and_dm_equal_the_hand_computation(result):
    t = result.tables
    r = result.symbols["AAA"]
    for j, h in enumerate((1, 5)):
        for m in MONEYNESS:
            p, o, _ = _probs(r, h, j, MU, S, m)
            p2, _, _ = _probs(r, h, j, MU, 2 * S, m)
            row = t["brier"].query("symbol == 'AAA' and forecaster == 'model' and horizon == @h and moneyness == @m")
            assert row["brier"].iloc[0] == pytest.approx(np.mean((p - o) ** 2))
            assert row["base_rate"].iloc[0] == pytest.approx(o.mean()) and row["n"].iloc[0] == o.size
            dm = t["brier_dm"].query("symbol == 'AAA' and horizon == @h and moneyness == @m and other == 'garch_t'")
            stat, pv = diebold_mariano((p - o) ** 2, (p2 - o) ** 2, h=h)
            assert dm["p_value"].iloc[0] == pytest.approx(pv, abs=1e-9)
            if abs(stat) < 1e6:  # far from the money both losses are ~0 and the statistic degenerates (+-inf)
                assert dm["stat"].iloc[0] == pytest.approx(stat)
    # pooled: concatenated symbols
    b = t["brier"].query("forecaster == 'model' and horizon == 5 and moneyness == 0.05").set_index("symbol")
    assert b.loc["ALL", "n"] == b.loc["AAA", "n"] + b.loc["BBB", "n"]
    assert b.loc["ALL", "brier"] == pytest.approx((b.loc["AAA", "brier"] * b.loc["AAA", "n"]
                                                   + b.loc["BBB", "brier"] * b.loc["BBB", "n"]) / b.loc["ALL", "n"])
    # the true law beats the mis-centred one at the money over 5 days, significantly
    dm = t["brier_dm"].query("symbol == 'ALL' and horizon == 5 and moneyness == 0.0 and other == 'har_t'")
    assert dm["p_better"].iloc[0] < 0.01


def test_the_true_law_is_reliable_and_has_a_flat_pit(result):
    rel = result.tables["reliability"].query("symbol == 'ALL' and forecaster == 'model' and horizon == 1 "
                                             "and moneyness == 'all' and count >= 200")
    assert len(rel) >= 2
    np.testing.assert_allclose(rel["observed_frequency"], rel["mean_predicted"], atol=0.05)
    pit = result.tables["pit"].query("symbol == 'ALL' and forecaster == 'model' and horizon == 1")
    assert len(pit) == 10 and pit["count"].sum() == result.metrics.query(
        "symbol == 'ALL' and forecaster == 'model' and horizon == 1")["n"].iloc[0]
    assert np.abs(pit["density"] - 1).max() < 0.2
    wide = result.tables["pit"].query("symbol == 'ALL' and forecaster == 'garch_t' and horizon == 1")
    assert wide["density"].iloc[[0, -1]].max() < 0.2 and wide["density"].iloc[4:6].min() > 1.5  # a hump: too wide


def test_coverage_by_year_counts_the_central_80_interval(result):
    cov = result.tables["coverage_by_year"].query("symbol == 'AAA' and forecaster == 'model' and horizon == 5")
    r = result.symbols["AAA"]
    mask = r.valid(1)
    y, years = r.realised[mask, 1], r.origin_dates()[mask].year
    lo = MU * 5 + S * np.sqrt(5) * stats.norm.ppf(0.1)
    hi = MU * 5 + S * np.sqrt(5) * stats.norm.ppf(0.9)
    for row in cov.itertuples():
        sel = years == row.year
        assert row.n == sel.sum() and row.coverage_80 == pytest.approx(np.mean((lo <= y[sel]) & (y[sel] <= hi)))
    assert list(cov["year"]) == sorted(set(years)) and 2020 in set(cov["year"])


def test_seed_spread_reports_each_seed_and_the_range():
    rng = np.random.default_rng(1)
    dates = pd.bdate_range("2018-01-01", periods=900)
    prices = {s: pd.DataFrame({"close": 50 * np.exp(np.cumsum(rng.normal(0.0, 0.01, 900)))}, index=dates)
              for s in ("AAA", "BBB")}
    config = BacktestConfig(horizons=(1, 5), refit_every=300, min_train_days=250, reference="m_s1",
                            references=("m_s1", "m_s2"))
    res = run_backtest(prices, lambda s: [Constant("m_s1", 0.0, 0.01), Constant("m_s2", 0.001, 0.013),
                                          Constant("garch_t", 0.0, 0.02)], config)
    assert set(res.dm["reference"]) == {"m_s1", "m_s2"} and set(res.dm["other"]) == {"garch_t"}
    spread = res.tables["seed_spread"]
    row = spread.query("symbol == 'ALL' and horizon == 5 and other == 'garch_t' and loss == 'crps'").iloc[0]
    dm = res.dm.query("symbol == 'ALL' and horizon == 5 and other == 'garch_t' and loss == 'crps'").set_index(
        "reference")
    assert row["ratio_m_s1"] == pytest.approx(dm.loc["m_s1", "loss_ratio"])
    assert row["ratio_m_s2"] == pytest.approx(dm.loc["m_s2", "loss_ratio"])
    assert row["ratio_min"] == pytest.approx(dm["loss_ratio"].min())
    assert row["ratio_max"] == pytest.approx(dm["loss_ratio"].max())
    assert row["p_better_max"] == pytest.approx(dm["p_better"].max())
    assert {"brier +5%", "squared_error", "crps"} <= set(spread["loss"])
