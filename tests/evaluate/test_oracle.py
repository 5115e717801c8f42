"""The distribution model against a known answer: simulated GARCH(1,1)-t returns and their true predictive law.

* `test_zeroed_corrections_reproduce_the_garch_baseline`: with the learned corrections at zero the head is
  exactly the classical baseline, i.e. a GARCH(1,1) h-day standard deviation; recomputed here from the raw
  closes with an independent loop (not `data.features.garch_filter`), through real fitted scalers and a
  randomised trunk (so the baseline provably does not depend on the network's hidden state).
* `test_per_symbol_model_is_close_to_the_true_law`: `MambaForecaster` trained on one simulated GARCH-t series
  scores (CRPS) within 3% of the true conditional law out of sample, at 1 and 5 days, and beats a constant
  volatility forecast significantly (Diebold-Mariano).
* `test_global_model_is_close_to_the_true_law`: the pooled `GlobalMambaForecaster` in the walk-forward backtest
  on three such series: pooled 1-day CRPS within 3% of the true law, one shared fit per refit.

Why the true law is known: returns are simulated as r_t = mu + sqrt(s2_t) z_t with z_t a Student-t(6) scaled to
unit variance and s2_{t+1} = omega + alpha (r_t - mu)^2 + beta s2_t, so given the closes up to t the next return
is exactly mu + sqrt(s2_{t+1} (nu - 2) / nu) T_nu. For 5 days the law (a sum of GARCH-t returns) has no closed
form; it is simulated (2,000 paths per origin) and scored with the ensemble CRPS.

Thresholds: the truth is the best any forecaster can do in expectation, so "within 3%" (the issue's target)
measures how much of the achievable skill the model leaves on the table. Constant volatility is only 1-3%
worse than the truth on this process (alpha = 0.08 moves the variance slowly), so the DM test needs ~2,000
out-of-sample origins to have power; the figures measured when the file was written are in each test.

Tiny models (d_model 8, one layer, 20-day windows, <= 8 epochs) on one torch thread: each test runs in
seconds.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from mambacast.config import MambaConfig, TrainConfig
from mambacast.data.features import GARCH_ALPHA, GARCH_BETA
from mambacast.evaluate.backtest import BacktestConfig, run_backtest
from mambacast.evaluate.baselines import GarchT, HistoricalVolGaussian
from mambacast.evaluate.metrics import crps_ensemble, crps_gaussian, crps_student_t, diebold_mariano
from mambacast.evaluate.model import MambaForecaster, global_model_factory
from mambacast.evaluate.panel import Panel
from mambacast.nn.mamba import MambaModel
from mambacast.train.pipeline import configure_baseline, prepare_data

# ---------------------------------------------------------------------------------------- the simulated process

ALPHA, BETA, NU = 0.08, 0.90, 6.0          # typical daily equity GARCH(1,1), t(6) innovations
DAILY_VAR = 0.25 ** 2 / 252                # unconditional variance: 25% annual volatility
OMEGA = DAILY_VAR * (1.0 - ALPHA - BETA)
MU = 0.0003                                # ~7.5% a year drift

HORIZONS = [1, 5]


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine's cores are shared with other work; one thread also keeps the results reproducible.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def simulate_garch_t(n_returns: int, seed: int, burn: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Closes (n_returns + 1,) of a GARCH(1,1)-t process and the true one-step variances (n_returns + 1,).

    Indexing: the return of day i is log(closes[i] / closes[i - 1]); at origin o (after close o) the next return
    log(closes[o + 1] / closes[o]) has variance var_next[o] exactly (var_next[n_returns] is the one after the data).
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_t(NU, size=n_returns + burn) / np.sqrt(NU / (NU - 2.0))
    r = np.empty(n_returns + burn)
    s2 = np.empty(n_returns + burn + 1)
    s2[0] = DAILY_VAR
    for t in range(n_returns + burn):
        r[t] = MU + np.sqrt(s2[t]) * z[t]
        s2[t + 1] = OMEGA + ALPHA * (r[t] - MU) ** 2 + BETA * s2[t]
    r, var_next = r[burn:], s2[burn:]
    closes = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    return closes, var_next


def true_crps_1d(y: np.ndarray, var_next: np.ndarray) -> np.ndarray:
    """CRPS of the exact 1-day predictive law mu + sqrt(var (nu-2)/nu) T_nu at the realised returns y."""
    return crps_student_t(y, NU, MU, np.sqrt(var_next * (NU - 2.0) / NU))


def true_crps_hday(y: np.ndarray, var_next: np.ndarray, h: int, n_paths: int = 2000, seed: int = 123) -> np.ndarray:
    """CRPS of the exact h-day predictive law, by simulating `n_paths` continuations of the process per origin.

    The ensemble CRPS overstates the true CRPS by E|X - X'| / (2 n_paths), under 0.05% here.
    """
    rng = np.random.default_rng(seed)
    total = np.zeros((y.size, n_paths))
    s2 = np.repeat(var_next[:, None], n_paths, axis=1)
    for _ in range(h):
        eps = np.sqrt(s2) * rng.standard_t(NU, size=s2.shape) / np.sqrt(NU / (NU - 2.0))
        total += MU + eps
        s2 = OMEGA + ALPHA * eps ** 2 + BETA * s2
    return crps_ensemble(y, total)


def tiny_configs(horizons: list[int] = HORIZONS, epochs: int = 8, seed: int = 42) -> tuple[MambaConfig, TrainConfig]:
    mc = MambaConfig(d_model=8, d_state=4, num_layers=1, prediction_horizons=list(horizons))
    tc = TrainConfig(epochs=epochs, batch_size=64, sequence_length=20, learning_rate=1e-3, patience=3, seed=seed)
    return mc, tc


# ------------------------------------------------------------------------------------- 1. the baseline, exactly

# The feature code's floors on a daily variance (data.features._VAR_FLOOR): added to the long-run variance
# before the filter and to the filtered variance before its log. Their effect is ~4e-5 relative at 25% annual
# vol, above the 1e-5 tolerance, so the independent computation includes them.
VAR_FLOOR = 1e-8
LONG_RUN_WINDOW, LONG_RUN_MIN = 504, 22


def reference_garch_hday_std(closes: np.ndarray, horizons: list[int]) -> np.ndarray:
    """(n_days, H) h-day GARCH(1,1) std at every close, by a plain loop over the raw closes (NaN in the warm-up).

    vbar[t] = mean of the last 504 squared log-returns up to day t (fewer at the start, at least 22);
    s2[t]   = (1 - a - b) vbar[t] + a r[t]^2 + b s2[t-1], started at s2 = vbar on the first day vbar exists;
    V_h     = vbar (h - a_h) + s2 a_h with a_h = sum_{k<h} (a + b)^k.
    """
    a, b = GARCH_ALPHA, GARCH_BETA
    r = np.concatenate([[np.nan], np.diff(np.log(closes))])   # r[t]: the return ending at close t
    n = closes.size
    vbar = np.full(n, np.nan)
    s2 = np.full(n, np.nan)
    prev = None
    for t in range(1, n):
        window = r[max(1, t - LONG_RUN_WINDOW + 1): t + 1]
        if window.size < LONG_RUN_MIN:
            continue
        vbar[t] = np.mean(window ** 2) + VAR_FLOOR
        prev = vbar[t] if prev is None else prev
        prev = (1.0 - a - b) * vbar[t] + a * r[t] ** 2 + b * prev
        s2[t] = prev + VAR_FLOOR
    out = np.empty((n, len(horizons)))
    for j, h in enumerate(horizons):
        a_h = sum((a + b) ** k for k in range(h))
        out[:, j] = np.sqrt(vbar * (h - a_h) + s2 * a_h)
    return out


def test_zeroed_corrections_reproduce_the_garch_baseline():
    """loc == 0 and implied std == GARCH h-day std (in target units) whatever the trunk computes."""
    horizons = [1, 5, 10, 30]
    closes, _ = simulate_garch_t(1500, seed=1)
    mc, tc = tiny_configs(horizons)
    data = prepare_data("SIM", closes, mc, tc)
    torch.manual_seed(0)
    model = MambaModel(mc, len(data.feature_names))
    configure_baseline(model, data.feature_names, data.feature_scaler, data.target_scaler)
    with torch.no_grad():
        # A random trunk (large perturbations of every weight), the corrections exactly zero, a non-default tail.
        for name, p in model.named_parameters():
            if not name.startswith(("head.", "dist_head.")):
                p.add_(0.5 * torch.randn_like(p))
        for layer in (model.head.proj, model.dist_head.scale_proj):
            layer.weight.zero_()
            layer.bias.zero_()
        model.dist_head.df_raw.copy_(torch.linspace(-1.0, 2.0, len(horizons)))
        rows = np.arange(0, len(data.X), 7)      # every 7th window: early (short long-run window) and late ones
        X = torch.from_numpy(np.ascontiguousarray(data.X[rows]))
        loc, scale, df = (t.double().numpy() for t in model.forward_distribution(X))
        hidden = model.encode(X)[:, -1]
    assert hidden.std() > 0.1, "the trunk's hidden state should vary: the test needs a non-trivial trunk"
    assert np.all(loc == 0.0)
    implied_std = scale * np.sqrt(df / (df - 2.0)) * data.target_scaler.std_       # log-return units
    expected = reference_garch_hday_std(closes, horizons)[data.window_end[rows]]
    assert np.all(np.isfinite(expected))
    # Measured: max relative error 5e-7 (float32 features and scalers).
    np.testing.assert_allclose(implied_std, expected, rtol=1e-5)
    # The check is not vacuous: the windows span quiet and turbulent days, and a non-zero correction moves it.
    assert expected[:, 0].max() / expected[:, 0].min() > 2.0
    with torch.no_grad():
        model.dist_head.scale_proj.bias.fill_(0.1)
        _, scale2, _ = (t.double().numpy() for t in model.forward_distribution(X))
    np.testing.assert_allclose(scale2 / scale, np.exp(0.1), rtol=1e-5)


# -------------------------------------------------------------------------- 2. per-symbol model vs the truth

N_TRAIN_DAYS, N_ORIGINS = 3000, 2000


def test_per_symbol_model_is_close_to_the_true_law():
    t0 = time.perf_counter()
    closes, var_next = simulate_garch_t(N_TRAIN_DAYS + N_ORIGINS + max(HORIZONS), seed=0)
    mc, tc = tiny_configs()
    # Train on closes[0..N_TRAIN_DAYS - 1] (80/20 temporal split inside, calibrated on the validation tail);
    # forecast at origins from the first day after the training data on (no overlap with a training target).
    model = MambaForecaster(mc, tc, symbol="SIM", calibrate=True).fit(closes[:N_TRAIN_DAYS])
    origins = np.arange(N_TRAIN_DAYS - 1, N_TRAIN_DAYS - 1 + N_ORIGINS)
    fc = model.predict_many(closes, origins, HORIZONS)
    const = HistoricalVolGaussian(window=1000).fit(closes[:N_TRAIN_DAYS]).predict_many(closes, origins, HORIZONS)

    # 1 day: the truth is exactly Student-t.
    y1 = np.log(closes[origins + 1] / closes[origins])
    crps_model = crps_student_t(y1, fc.df[:, 0], fc.mean[:, 0], fc.scale[:, 0])
    crps_true = true_crps_1d(y1, var_next[origins])
    crps_const = crps_gaussian(y1, const.mean[:, 0], const.scale[:, 0])
    ratio_1d = crps_model.mean() / crps_true.mean()
    _, p_vs_const = diebold_mariano(crps_model, crps_const, h=1, alternative="less")
    # The setting has something to learn: the truth itself beats constant volatility clearly.
    assert diebold_mariano(crps_true, crps_const, h=1, alternative="less")[1] < 1e-3
    ratio_const = crps_const.mean() / crps_true.mean()
    # Measured (seed 0): ratio 1.0001, DM p 8e-7, constant vol / truth 1.013. Seeds 0-4 (exploration, origins
    # one day later): ratio 1.0004-1.0057, DM p <= 5e-4, constant vol / truth 1.013-1.028.
    assert ratio_1d < 1.03, f"1-day CRPS {ratio_1d:.4f} x the true law's (target: within 3%)"
    assert p_vs_const < 0.05, f"no significant gain over constant volatility (DM p = {p_vs_const:.3g})"
    # Constant volatility is itself within 3% of the truth on this process, so the 3% band alone does not tell
    # the model from it: the model must also close most of constant volatility's excess over the truth
    # (measured: 99% on seed 0; 70-99% over seeds 0-4).
    assert ratio_1d - 1.0 < 0.5 * (ratio_const - 1.0), (ratio_1d, ratio_const)

    # 5 days: the truth by simulation. Constant volatility is not significantly beaten at 5 days on every
    # seed (the GARCH variance mean-reverts within weeks), so only the distance to the truth is asserted.
    y5 = np.log(closes[origins + 5] / closes[origins])
    crps_model5 = crps_student_t(y5, fc.df[:, 1], fc.mean[:, 1], fc.scale[:, 1])
    crps_true5 = true_crps_hday(y5, var_next[origins], 5)
    ratio_5d = crps_model5.mean() / crps_true5.mean()
    # Measured (seed 0): ratio 1.0047. Seeds 0-4 (exploration, origins one day later): 1.001-1.029.
    assert ratio_5d < 1.03, f"5-day CRPS {ratio_5d:.4f} x the true law's (target: within 3%)"
    assert model.fit_info_["epochs"] <= tc.epochs
    print(f"\nper-symbol: 1d ratio {ratio_1d:.4f} (const {ratio_const:.4f}), DM p vs const {p_vs_const:.2e}, "
          f"5d ratio {ratio_5d:.4f}, {time.perf_counter() - t0:.1f}s")


# ------------------------------------------------------------------------------- 3. global model vs the truth

SYMBOLS = {"SIMA": 10, "SIMB": 11, "SIMC": 12}      # symbol -> simulation seed
N_DAYS = 3500


def test_global_model_is_close_to_the_true_law():
    t0 = time.perf_counter()
    dates = pd.bdate_range("2005-01-03", periods=N_DAYS + 1)
    frames, variances = {}, {}
    for symbol, seed in SYMBOLS.items():
        closes, var_next = simulate_garch_t(N_DAYS, seed=seed)
        frames[symbol] = pd.DataFrame({"close": closes}, index=dates)
        variances[symbol] = var_next
    panel = Panel(frames)
    mc, tc = tiny_configs()
    factory = global_model_factory(panel, mc, tc, max_days=None, train_stride=1)
    # Two refits (origins 2004.. in blocks of 750 days) on every symbol's history up to the same date.
    config = BacktestConfig(horizons=tuple(HORIZONS), refit_every=750, min_train_days=2000,
                            reference="mamba_global")
    res = run_backtest(frames, lambda s: [factory(s), GarchT(), HistoricalVolGaussian(window=1000)], config)

    # The true law's 1-day CRPS, pooled over the symbols, on the backtest's own origins and realised returns.
    crps_true, crps_model = [], []
    for symbol, r in res.symbols.items():
        ok = r.valid(0)
        y = r.realised[ok, 0]
        np.testing.assert_allclose(y, np.log(r.closes[r.origins[ok] + 1] / r.closes[r.origins[ok]]))
        crps_true.append(true_crps_1d(y, variances[symbol][r.origins[ok]]))
        fc = r.forecasts["mamba_global"]
        crps_model.append(crps_student_t(y, fc.df[ok, 0], fc.mean[ok, 0], fc.scale[ok, 0]))
    crps_true_all, crps_model_all = np.concatenate(crps_true), np.concatenate(crps_model)
    m = res.metrics.set_index(["symbol", "forecaster", "horizon"])
    # The backtest's pooled CRPS is the one recomputed here.
    np.testing.assert_allclose(m.loc[("ALL", "mamba_global", 1), "ret_crps"], crps_model_all.mean(), rtol=1e-9)
    ratio = crps_model_all.mean() / crps_true_all.mean()
    ratio_garch = m.loc[("ALL", "garch_t", 1), "ret_crps"] / crps_true_all.mean()
    ratio_const = m.loc[("ALL", "hist_vol", 1), "ret_crps"] / crps_true_all.mean()
    assert crps_true_all.size >= 4000
    # Measured: model 1.0012, garch_t (fitted by maximum likelihood, the right model class) 1.0003, constant
    # vol 1.0217; pooled DM p (model vs constant vol, CRPS) 1e-22.
    assert ratio < 1.03, f"pooled 1-day CRPS {ratio:.4f} x the true law's (target: within 3%)"
    assert ratio - 1.0 < 0.5 * (ratio_const - 1.0), (ratio, ratio_const)
    dm = res.dm.set_index(["symbol", "horizon", "other", "loss"])
    p_vs_const = dm.loc[("ALL", 1, "hist_vol", "crps"), "p_better"]
    assert p_vs_const < 0.05, f"no significant gain over constant volatility (DM p = {p_vs_const:.3g})"

    # One shared fit per refit: every symbol's block k reports the same pooled fit (same cutoff date, same
    # best validation CRPS, trained on all three symbols), and the two refits are different fits.
    n_blocks = {len(r.blocks) for r in res.symbols.values()}
    assert n_blocks == {2}
    for k in range(2):
        infos = [r.blocks[k]["fit_info"]["mamba_global"] for r in res.symbols.values()]
        assert len({r.blocks[k]["train_end"] for r in res.symbols.values()}) == 1
        assert len({info["best_monitored"] for info in infos}) == 1, infos
        assert len({info["seconds"] for info in infos}) == 1
        assert all(info["symbols"] == len(SYMBOLS) for info in infos)
    first = res.symbols["SIMA"].blocks
    assert first[0]["fit_info"]["mamba_global"]["train_samples"] < first[1]["fit_info"]["mamba_global"]["train_samples"]
    print(f"\nglobal: pooled 1d ratio {ratio:.4f} (garch_t {ratio_garch:.4f}, const {ratio_const:.4f}), "
          f"DM p vs const {p_vs_const:.2e}, {time.perf_counter() - t0:.1f}s")
