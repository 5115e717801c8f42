"""The predictor's numbers are the stored model's numbers, and its calibration factor does what it says
(issue 14, finding 13).

A tiny model is trained, its heads are moved away from their zero start (so forecasts depend on the window and
the raw scale is visibly mis-calibrated), and it is recalibrated on its validation split and stored again.
"""

import asyncio

import numpy as np
import pytest
import torch
from scipy import stats

from mambacast import MambaConfig, MambaPredictor, TrainConfig
from mambacast.data.sources import load_prices
from mambacast.store import ModelStore
from mambacast.train import prepare_data, train_symbol
from mambacast.train.distribution import calibrate_distribution

QUANTILES = (0.05, 0.1, 0.5, 0.9, 0.95)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # weights 0: the served law is the network's own (the GARCH-t / HAR-t pool on top is tests/test_blend.py's)
    mc = MambaConfig(d_model=16, d_state=4, num_layers=1)
    tc = TrainConfig(epochs=1, batch_size=64, garch_weight=0.0, har_weight=0.0)
    train_symbol("AAPL", model_config=mc, train_config=tc, days=600, save_dir=root)
    store = ModelStore(root)
    model, meta = store.load_model("AAPL")
    data = prepare_data("AAPL", load_prices("AAPL", days=600), mc, tc)
    assert data.data_hash == meta["data_hash"]
    torch.manual_seed(5)
    with torch.no_grad():
        for p in (model.head.proj.weight, model.head.proj.bias, model.dist_head.scale_proj.weight):
            p.normal_(0.0, 0.3)
    meta["calibration"] = calibrate_distribution(model, data.X[data.val_idx], data.y_scaled[data.val_idx])
    derived = ("weights_sha256", "weights_file", "artifacts", "format_version")
    store.save_model("AAPL", model, {k: v for k, v in meta.items() if k not in derived})
    return root, data, model.eval(), np.asarray(meta["calibration"]["scale_factor"])


def test_calibrate_distribution_fits_the_split_conformal_factor():
    class Fixed(torch.nn.Module):
        """Location 0, scale 1, df (5, 30) for every window."""

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))   # where the model lives (calibration asks it)

        def forward_distribution(self, x):
            n = len(x)
            return torch.zeros(n, 2), torch.ones(n, 2), torch.tensor([5.0, 30.0])

    rng = np.random.default_rng(0)
    df = np.array([5.0, 30.0])
    y = np.stack([2.0 * rng.standard_t(5.0, 20000), 0.5 * rng.standard_t(30.0, 20000)], axis=1)  # too narrow, too wide
    out = calibrate_distribution(Fixed(), np.zeros((20000, 3, 1), np.float32), y)
    want = np.quantile(np.abs(y), 0.8, axis=0) / stats.t.ppf(0.9, df)
    np.testing.assert_allclose(out["scale_factor"], want, rtol=1e-12)
    np.testing.assert_allclose(out["scale_factor"], [2.0, 0.5], rtol=0.03)     # the true scales
    np.testing.assert_allclose(out["coverage_after"]["80"], [0.8, 0.8], atol=1e-4)
    before = 2 * stats.t.cdf(stats.t.ppf(0.9, df) / np.array([2.0, 0.5]), df) - 1     # 0.51 and 0.99
    np.testing.assert_allclose(out["coverage_before"]["80"], before, atol=0.01)
    np.testing.assert_allclose(out["coverage_after"]["50"], [0.5, 0.5], atol=0.02)


def test_the_stored_factor_is_applied_and_covers_80pc_of_its_validation_windows(stored):
    root, data, _, factor = stored
    assert np.any(np.abs(factor - 1.0) > 0.1), "the perturbed model should need a real correction"
    predictor = MambaPredictor(["AAPL"], model_dir=root)
    origins = data.window_end[data.val_idx]
    fc = predictor.forecast_origins("AAPL", data.prices, origins)
    np.testing.assert_allclose(fc.calibration, np.broadcast_to(factor, fc.loc.shape), rtol=1e-12)
    np.testing.assert_allclose(fc.scale, fc.raw_scale * factor)
    y = data.y[data.val_idx]                                 # the realised log-returns of those windows
    lo, hi = fc.interval(0.8)
    coverage = np.mean((lo <= y) & (y <= hi), axis=0)
    np.testing.assert_allclose(coverage, 0.8, atol=2.0 / len(origins))
    raw_lo, raw_hi = fc.interval(0.8, calibrated=False)
    raw = np.mean((raw_lo <= y) & (y <= raw_hi), axis=0)
    assert np.max(np.abs(raw - 0.8)) > 0.05, "without the factor the coverage should be off"


def test_predictor_prices_equal_the_model_through_its_stored_target_scaler(stored):
    root, data, model, factor = stored
    predictor = MambaPredictor(["AAPL"], model_dir=root)
    mean, std = data.target_scaler.mean_, data.target_scaler.std_
    samples = data.val_idx[[0, len(data.val_idx) // 2, -1]]
    with torch.no_grad():
        loc_z, scale_z, df = (t.double().numpy() for t in model.forward_distribution(torch.from_numpy(
            np.ascontiguousarray(data.X[samples], dtype=np.float32))))
    assert np.ptp(loc_z, axis=0).max() > 1e-3, "forecasts should depend on the window"
    for i, sample in enumerate(samples):
        row = int(data.window_end[sample])
        history = data.prices.iloc[: row + 1]
        current = float(history["close"].iloc[-1])
        result = asyncio.run(predictor.predict_detailed("AAPL", history, current, QUANTILES))
        assert result.source == "mamba"
        mu = mean + std * loc_z[i]                           # the model's location, through the stored scaler
        s = std * scale_z[i] * factor
        for j, key in enumerate(["1d", "5d", "10d", "30d"]):
            assert result.log_returns[key] == pytest.approx(mu[j], rel=1e-5, abs=1e-7)
            assert result.prices[key] == pytest.approx(current * np.exp(mu[j]), rel=1e-6)
            for q in QUANTILES:
                want = current * np.exp(mu[j] + s[j] * stats.t.ppf(q, df[j]))
                assert result.quantiles[key][q] == pytest.approx(want, rel=1e-5)
    predictor.close()
