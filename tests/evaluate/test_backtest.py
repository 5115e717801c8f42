"""Walk-forward harness: what each forecaster may see, realised values, metric and DM wiring, leak detection.

These tests use the baselines and small hand-written forecasters (no training), so they run in seconds; the
Mamba model's own checks are in test_backtest_model.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mambacast.data.errors import InsufficientHistoryError
from mambacast.evaluate import (
    BacktestConfig,
    BaseForecaster,
    Forecast,
    RandomWalk,
    crps_student_t,
    diebold_mariano,
    evaluate_forecasts,
    leakage_warnings,
    make_baselines,
    run_backtest,
    walk_forward,
)


def random_walk_prices(n: int, seed: int = 0, sigma: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.concatenate([[0.0], np.cumsum(rng.normal(0, sigma, n - 1))]))


def ar1_prices(n: int, phi: float, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(0, sigma, n - 1)
    r = np.empty(n - 1)
    r[0] = e[0]
    for t in range(1, n - 1):
        r[t] = phi * r[t - 1] + e[t]
    return 100 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))


class Spy(BaseForecaster):
    """Records every array it is handed; forecasts zero with unit-ish scale."""

    name = "spy"

    def __init__(self) -> None:
        self.fits: list[np.ndarray] = []
        self.predicts: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(self, prices: np.ndarray) -> Spy:
        assert not prices.flags.writeable and prices.base is None
        self.fits.append(np.array(prices))
        return self

    def predict(self, prices: np.ndarray, horizons) -> Forecast:
        return self.predict_many(prices, [len(prices) - 1], horizons).at(0)

    def predict_many(self, prices: np.ndarray, origins, horizons) -> Forecast:
        assert not prices.flags.writeable and prices.base is None
        self.predicts.append((np.array(prices), np.asarray(origins)))
        n, hs = len(origins), np.asarray(horizons, float)
        return Forecast.from_location_scale(list(horizons), np.zeros((n, hs.size)), np.tile(0.01 * np.sqrt(hs), (n, 1)))


class StrictSpy(Spy):
    name = "strict_spy"

    def predict_many(self, prices, origins, horizons):  # force the looping BaseForecaster path
        return BaseForecaster.predict_many(self, prices, origins, horizons)

    def predict(self, prices, horizons):
        assert not prices.flags.writeable and prices.base is None
        self.predicts.append((np.array(prices), np.array([len(prices) - 1])))
        hs = np.asarray(horizons, float)
        return Forecast.from_location_scale(list(horizons), np.zeros(hs.size), 0.01 * np.sqrt(hs))


class Peeker(BaseForecaster):
    """A leaked forecaster: it was built with the whole series and reads the future it should not know."""

    name = "peeker"

    def __init__(self, full_prices: np.ndarray) -> None:
        self.full = np.asarray(full_prices)

    def fit(self, prices):
        return self

    def predict(self, prices, horizons):
        t = len(prices) - 1
        future = [np.log(self.full[min(t + h, self.full.size - 1)] / self.full[t]) for h in horizons]
        return Forecast.from_location_scale(list(horizons), np.array(future), np.full(len(horizons), 1e-3))


class AR1Oracle(BaseForecaster):
    """The true conditional law of an AR(1) log-return process, from prices up to the origin only."""

    name = "oracle"

    def __init__(self, phi: float, sigma: float) -> None:
        self.phi, self.sigma = phi, sigma

    def fit(self, prices):
        return self

    def predict(self, prices, horizons):
        r = np.log(prices[-1] / prices[-2])
        hs = np.asarray(horizons, float)
        coef = self.phi * (1 - self.phi**hs) / (1 - self.phi)  # E[r_{t,h} | r_t] = r_t (phi + ... + phi^h)
        var = np.array([self.sigma**2 * np.sum(((1 - self.phi ** (h - np.arange(h))) / (1 - self.phi)) ** 2)
                        for h in horizons])
        return Forecast.from_location_scale(list(horizons), r * coef, np.sqrt(var))


# ----------------------------------------------------------------------------------- what forecasters see


def check_spy(spy: Spy, result, config: BacktestConfig, closes: np.ndarray) -> None:
    emb = config.embargo_days
    blocks = result.blocks
    assert len(spy.fits) == len(blocks)
    for k, (fit, block) in enumerate(zip(spy.fits, blocks, strict=True)):
        a, c = block["train_start_index"], block["train_end_index"]
        first = int(np.searchsorted(result.origins, result.origins[0] + k * config.refit_every))
        b0 = int(result.origins[first])
        assert c == b0 - emb, "the embargo separates the last training target from the first origin"
        np.testing.assert_array_equal(fit, closes[a: c + 1])
        if config.window == "rolling":
            assert fit.size == min(config.train_days, c + 1)
    seen = np.concatenate([o for _, o in spy.predicts])
    np.testing.assert_array_equal(np.sort(seen), result.origins)
    for prices, origins in spy.predicts:
        assert prices.size == origins.max() + 1, "predict never receives data past the last origin it forecasts"
        np.testing.assert_array_equal(prices, closes[: prices.size])


def test_forecasters_only_see_data_up_to_the_cutoff_and_the_origin():
    closes = random_walk_prices(1400)
    config = BacktestConfig(horizons=(1, 5, 10), refit_every=100, min_train_days=300)
    spy = Spy()
    result = walk_forward("SIM", closes, [spy], config)
    assert result.origins[0] == 300 - 1 + 10 and result.origins[-1] == 1400 - 1 - 1
    check_spy(spy, result, config, closes)


@pytest.mark.parametrize("train_days", [None, 350])
def test_train_days_with_an_expanding_window_cuts_the_first_window_only(train_days):
    """What `mambacast backtest --train-days` says it does (issue 14, finding 9): with --window expanding, no
    cut by default (all history before the first cutoff), else the first window is the last TRAIN_DAYS days and
    later windows grow from its start."""
    closes = random_walk_prices(1400)
    config = BacktestConfig(horizons=(1, 5), refit_every=200, min_train_days=600, train_days=train_days)
    spy = Spy()
    result = walk_forward("SIM", closes, [spy], config)
    first_cutoff = result.blocks[0]["train_end_index"]
    start = 0 if train_days is None else first_cutoff + 1 - train_days
    assert [f.size for f in spy.fits] == [b["train_end_index"] + 1 - start for b in result.blocks]
    assert spy.fits[0].size == (first_cutoff + 1 if train_days is None else 350)
    assert len(spy.fits) > 2 and spy.fits[2].size == spy.fits[0].size + 400


def test_the_train_days_help_says_what_it_does():
    from mambacast.cli import build_parser

    backtest = next(a for a in build_parser()._subparsers._group_actions[0].choices["backtest"]._actions
                    if "--train-days" in a.option_strings)
    assert "default: no cut, all history before the first cutoff" in " ".join(backtest.help.split())
    assert "--model global reads each symbol's last 2520 days instead" in backtest.help


def test_strict_mode_hands_prices_up_to_each_origin():
    closes = random_walk_prices(700)
    config = BacktestConfig(horizons=(1, 5), refit_every=90, min_train_days=250, strict=True)
    spy = StrictSpy()
    result = walk_forward("SIM", closes, [spy], config)
    lengths = [p.size for p, _ in spy.predicts]
    assert lengths == [int(o) + 1 for o in result.origins]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(400, 900), refit=st.integers(20, 300), min_train=st.integers(60, 250),
       horizons=st.sampled_from([(1,), (1, 5), (2, 7, 30), (1, 5, 10, 30)]),
       window=st.sampled_from(["expanding", "rolling"]), train_days=st.integers(50, 400),
       embargo=st.one_of(st.none(), st.integers(0, 40)))
def test_no_look_ahead_for_any_protocol(n, refit, min_train, horizons, window, train_days, embargo):
    closes = random_walk_prices(n, seed=n)
    config = BacktestConfig(horizons=horizons, refit_every=refit, min_train_days=min_train, window=window,
                            train_days=train_days if window == "rolling" else None, embargo=embargo)
    spy = Spy()
    try:
        result = walk_forward("SIM", closes, [spy], config)
    except InsufficientHistoryError:
        assert min_train - 1 + config.embargo_days > n - 1 - horizons[0]
        return
    check_spy(spy, result, config, closes)
    # realised values come from the harness: log(p[o + h] / p[o]), NaN past the data
    for j, h in enumerate(horizons):
        ok = result.origins + h < n
        # the harness takes log p[o+h] - log p[o]: a few ulps of log p apart from log(p[o+h] / p[o]), which
        # is relatively large for a return near 0 (hypothesis found 5e-9 off by 7e-16): hence atol
        np.testing.assert_allclose(result.realised[ok, j],
                                   np.log(closes[result.origins[ok] + h] / closes[result.origins[ok]]), atol=1e-14)
        assert np.all(np.isnan(result.realised[~ok, j]))


def test_start_and_end_dates_select_origins_and_data():
    dates = pd.bdate_range("2000-01-03", periods=1500)
    frame = pd.DataFrame({"close": random_walk_prices(1500)}, index=dates)
    config = BacktestConfig(horizons=(1, 5), refit_every=250, min_train_days=200)
    r = walk_forward("SIM", frame, [RandomWalk()], config, start="2003-01-01", end="2005-06-30")
    assert r.origin_dates()[0] >= pd.Timestamp("2003-01-01")
    assert r.dates[-1] <= pd.Timestamp("2005-06-30") and r.closes.size == len(frame.loc[:"2005-06-30"])
    assert r.blocks[0]["train_end"] < "2003-01-01"
    with pytest.raises(InsufficientHistoryError):
        walk_forward("SIM", frame.iloc[:100], [RandomWalk()], config)


def test_a_symbol_without_origins_stops_the_run_before_anything_is_fitted():
    """The second symbol's history ends before the first origin: the run names it at once, before the first
    symbol's refits (with a global model, before all of its training); the same for a bad close."""
    dates = pd.bdate_range("2000-01-03", periods=1500)
    long = pd.DataFrame({"close": random_walk_prices(1500)}, index=dates)
    config = BacktestConfig(horizons=(1, 5), refit_every=250, min_train_days=200)
    spy = Spy()
    no_origin = r"^SHORT: 600 days \(2000-01-03..2002-04-19\) leave no forecast origin"
    with pytest.raises(InsufficientHistoryError, match=no_origin):
        run_backtest({"LONG": long, "SHORT": long.iloc[:600]}, [spy], config, start="2003-01-01")
    bad = long.copy()
    bad.iloc[700, 0] = -1.0
    with pytest.raises(ValueError, match="^BAD: closes must be finite and > 0"):
        run_backtest({"LONG": long, "BAD": bad}, [spy], config, start="2003-01-01")
    assert spy.fits == [] and spy.predicts == []
    run_backtest({"LONG": long}, [spy], config, start="2003-01-01")   # and the symbols that have origins run
    assert spy.fits


def test_block_forecasts_equal_one_origin_at_a_time_for_every_baseline():
    closes = random_walk_prices(800, seed=3)
    fast = walk_forward("SIM", closes, make_baselines(), BacktestConfig(refit_every=150, min_train_days=300))
    slow = walk_forward("SIM", closes, make_baselines(),
                        BacktestConfig(refit_every=150, min_train_days=300, strict=True))
    for name in fast.forecasts:
        a, b = fast.forecasts[name], slow.forecasts[name]
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(a.scale, b.scale, rtol=1e-10)


# ------------------------------------------------------------------------------------------- wiring


class Constant(BaseForecaster):
    """Forecasts the same Gaussian law everywhere: mean `mu`, scale `s` (per horizon)."""

    def __init__(self, name: str, mu: float, s: float) -> None:
        self.name, self.mu, self.s = name, mu, s

    def fit(self, prices):
        return self

    def predict(self, prices, horizons):
        hs = np.asarray(horizons, float)
        return Forecast.from_location_scale(list(horizons), self.mu * hs, self.s * np.sqrt(hs))


def tiny_result():
    closes = np.array([100, 101, 99, 102, 103, 101, 104, 106, 105, 107, 108, 106, 109, 111, 110, 112], float)
    config = BacktestConfig(horizons=(1, 2), refit_every=5, min_train_days=4, embargo=2, reference="a")
    return closes, run_backtest({"X": closes, "Y": closes[::-1].copy()},
                                [Constant("a", 0.004, 0.015), Constant("b", 0.0, 0.02)], config)


def test_metrics_rows_are_evaluate_forecasts_on_the_out_of_sample_arrays():
    closes, res = tiny_result()
    r = res.symbols["X"]
    assert r.origins[0] == 4 - 1 + 2 and r.insample == (0, 3)
    for j, h in enumerate((1, 2)):
        o = np.arange(5, closes.size - h)
        y = np.log(closes[o + h] / closes[o])
        want = evaluate_forecasts(y, np.full(o.size, 0.004 * h), closes[o], closes[:4], h,
                                  quantiles={q: v[: o.size, j] for q, v in r.forecasts["a"].quantiles.items()},
                                  scale=np.full(o.size, 0.015 * np.sqrt(h)), df=np.full(o.size, np.inf))
        row = res.metrics[(res.metrics.symbol == "X") & (res.metrics.forecaster == "a") & (res.metrics.horizon == h)]
        assert len(row) == 1
        for key, value in want.items():
            assert row[key].iloc[0] == pytest.approx(value, nan_ok=True), key
        assert row["ret_mse"].iloc[0] == pytest.approx(np.mean((y - 0.004 * h) ** 2))
        assert row["oos_r2"].iloc[0] == pytest.approx(1 - np.mean((y - 0.004 * h) ** 2) / np.mean(y**2))


def test_dm_rows_are_diebold_mariano_of_the_per_origin_losses():
    closes, res = tiny_result()
    h = 2
    o = np.arange(5, closes.size - h)
    y = np.log(closes[o + h] / closes[o])
    se_a, se_b = (y - 0.004 * h) ** 2, y**2
    stat, p = diebold_mariano(se_a, se_b, h=h)
    row = res.dm[(res.dm.symbol == "X") & (res.dm.horizon == h) & (res.dm.loss == "squared_error")]
    assert row["other"].iloc[0] == "b" and row["reference"].iloc[0] == "a"
    assert row["stat"].iloc[0] == pytest.approx(stat) and row["p_value"].iloc[0] == pytest.approx(p)
    assert row["loss_ratio"].iloc[0] == pytest.approx(se_a.mean() / se_b.mean())
    ca = crps_student_t(y, np.inf, 0.004 * h, 0.015 * np.sqrt(h))
    cb = crps_student_t(y, np.inf, 0.0, 0.02 * np.sqrt(h))
    row = res.dm[(res.dm.symbol == "X") & (res.dm.horizon == h) & (res.dm.loss == "crps")]
    assert row["stat"].iloc[0] == pytest.approx(diebold_mariano(ca, cb, h=h)[0])


def test_pooled_rows_concatenate_symbols():
    closes, res = tiny_result()
    m = res.metrics
    for h in (1, 2):
        rows = m[(m.forecaster == "a") & (m.horizon == h)].set_index("symbol")
        n = rows.loc["X", "n"] + rows.loc["Y", "n"]
        assert rows.loc["ALL", "n"] == n
        mse = (rows.loc["X", "ret_mse"] * rows.loc["X", "n"] + rows.loc["Y", "ret_mse"] * rows.loc["Y", "n"]) / n
        assert rows.loc["ALL", "ret_mse"] == pytest.approx(mse)
        assert rows.loc["ALL", "ret_mase"] == pytest.approx((rows.loc["X", "ret_mase"] + rows.loc["Y", "ret_mase"]) / 2)
        cov = sum(rows.loc[s, "coverage_80"] * rows.loc[s, "n"] for s in "XY") / n
        assert rows.loc["ALL", "coverage_80"] == pytest.approx(cov)
    assert set(res.dm.symbol) == {"X", "Y", "ALL"}


def test_results_save_json_and_csv(tmp_path):
    import json

    _, res = tiny_result()
    paths = res.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["config"]["horizons"] == [1, 2] and len(data["metrics"]) == len(res.metrics)
    assert pd.read_csv(paths["metrics_csv"]).shape == res.metrics.shape
    assert len(pd.read_csv(paths["dm_csv"])) == len(res.dm)
    f = pd.read_csv(paths["forecasts_csv"])
    assert set(f.forecaster) == {"a", "b"} and {"mean", "scale", "q0.05", "q0.95", "realised"} <= set(f.columns)


# -------------------------------------------------------------------------------------------- leakage


def test_a_leaked_forecaster_is_caught():
    phi, sigma = 0.5, 0.01
    closes = ar1_prices(1500, phi, sigma, seed=11)
    config = BacktestConfig(horizons=(1, 5), refit_every=400, min_train_days=500, reference="peeker")
    res = run_backtest({"SIM": closes}, [Peeker(closes), AR1Oracle(phi, sigma), RandomWalk()], config)
    m = res.metrics.set_index(["forecaster", "horizon"])
    # No honest forecaster beats the true conditional mean; the leaked one is far below it.
    assert m.loc[("peeker", 1), "ret_mse"] < 0.1 * m.loc[("oracle", 1), "ret_mse"]
    assert any("peeker" in w for w in res.warnings)
    assert not any("oracle" in w or "random_walk" in w for w in res.warnings)
    # The oracle itself is right at the theory: MSE ~ sigma^2 and 1 - 1/(1 + phi^2 / (1 - phi^2)) = R^2 = phi^2.
    assert m.loc[("oracle", 1), "ret_mse"] == pytest.approx(sigma**2, rel=0.1)
    assert m.loc[("oracle", 1), "oos_r2"] == pytest.approx(phi**2, abs=0.06)


def test_leakage_warnings_thresholds():
    frame = pd.DataFrame([{"symbol": "A", "forecaster": "f", "horizon": 1, "n": 500.0, "oos_r2": 0.02,
                           "direction_accuracy": 0.53},
                          {"symbol": "A", "forecaster": "g", "horizon": 1, "n": 500.0, "oos_r2": 0.9,
                           "direction_accuracy": 0.97},
                          {"symbol": "A", "forecaster": "h", "horizon": 1, "n": 10.0, "oos_r2": 0.9,
                           "direction_accuracy": 0.9}])
    w = leakage_warnings(frame)
    assert len(w) == 1 and "A g 1d" in w[0]


def test_config_validation():
    with pytest.raises(ValueError, match="window"):
        BacktestConfig(window="sliding")
    with pytest.raises(ValueError, match="horizons"):
        BacktestConfig(horizons=(5, 1))
    with pytest.raises(ValueError, match="refit_every"):
        BacktestConfig(refit_every=0)
    assert BacktestConfig(window="rolling").train_days == 2000
    assert BacktestConfig(horizons=(1, 5, 10, 30)).embargo_days == 30
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baselines(["arima"])
