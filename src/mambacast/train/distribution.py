"""The predictive distribution around training: pointing the head at its baseline, fitting the
baseline's tail before training, and calibrating the scale on the validation split after it.

`configure_baseline` and `fit_baseline_tail` make an untrained model a complete classical forecaster
(the GARCH(1,1) baseline with a maximum-likelihood Student-t tail, `nn.heads`); `calibrate_distribution`
fits the split-conformal scale factor stored with every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.features import BASELINE_FEATURES, GARCH_ALPHA, GARCH_BETA
from ..data.sequences import FeatureScaler, TargetScaler
from ..nn.mamba import MambaModel

__all__ = ["configure_baseline", "fit_baseline_tail", "calibrate_distribution", "distribution_numpy"]

_BATCH = 512   # windows per forward: bounded memory on any device


def configure_baseline(model: MambaModel, feature_names: Sequence[str], feature_scaler: FeatureScaler,
                       target_scaler: TargetScaler) -> None:
    """Point the model's volatility baseline at its GARCH feature columns and the fitted scalers."""
    cols = [list(feature_names).index(name) for name in BASELINE_FEATURES]
    model.baseline.configure(cols, feature_scaler.mean_[cols], feature_scaler.scale_[cols],  # type: ignore[index]
                             target_scaler.std_, GARCH_ALPHA + GARCH_BETA)


@torch.no_grad()
def fit_baseline_tail(model: MambaModel, X_train: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Set the model's Student-t degrees of freedom per horizon to their maximum-likelihood value under the
    baseline (location 0, standard deviation sigma0), on the training windows; returns them (n_horizons,).

    The baseline's tail is then fitted as GARCH(1,1)-t fits its nu, so the untrained model is a complete
    classical forecaster; training continues from there. A grid of nu in [2.5, 100] (log-spaced) is
    searched; the likelihood is flat enough near its maximum that a finer search changes nothing visible.
    """
    from scipy import special

    x_last = torch.from_numpy(np.ascontiguousarray(X_train[:, -1], dtype=np.float32))
    device = model.baseline.horizons.device                                 # the model's device, CUDA included
    sigma0 = model.baseline(x_last.to(device)).exp().double().cpu().numpy()   # (n, n_horizons)
    z = np.asarray(y_train, dtype=np.float64) / sigma0                      # standardised by the baseline
    grid = np.geomspace(2.5, 100.0, 120)[:, None, None]
    scale = np.sqrt((grid - 2) / grid)                                      # t scale with unit std
    u = z[None] / scale
    loglik = (special.gammaln((grid + 1) / 2) - special.gammaln(grid / 2) - 0.5 * np.log(grid * np.pi)
              - np.log(scale) - (grid + 1) / 2 * np.log1p(u * u / grid)).mean(axis=1)   # (n_grid, n_horizons)
    nu = grid[np.argmax(loglik, axis=0), 0, 0]
    model.dist_head.df_raw.copy_(torch.from_numpy(np.log(np.expm1(nu - 2.0))).to(model.dist_head.df_raw))
    return nu


@torch.no_grad()
def distribution_numpy(model: MambaModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's Student-t per window, in eval mode on the model's own device, in batches: X (n, seq_len,
    n_features) -> loc, scale (n, n_horizons), df (n_horizons,) as float64 NumPy arrays."""
    model.eval()
    device = next(model.parameters()).device
    X = np.ascontiguousarray(X, dtype=np.float32)
    outs = [tuple(t.double().cpu() for t in model.forward_distribution(torch.from_numpy(X[i:i + _BATCH]).to(device)))
            for i in range(0, len(X), _BATCH)]
    loc, scale = (torch.cat([o[k] for o in outs]).numpy() for k in (0, 1))
    return loc, scale, outs[0][2].numpy()


@torch.no_grad()
def calibrate_distribution(model: MambaModel, X_val: np.ndarray, y_val_scaled: np.ndarray) -> dict[str, Any]:
    """Fit one scale factor per horizon so the central 80% interval covers 80% of validation outcomes.

    Split-conformal on the standardised residuals z = (y - loc) / scale: the factor is
    `quantile(|z|, 0.8) / t_ppf(0.9, df)`. Coverage of the 50/80/90% intervals is reported before
    and after; after is 80% for the 80% interval by construction on this split, so honest coverage
    comes from held-out data (`benchmarks/bench_calibration.py`, the backtest).
    """
    from scipy import stats

    loc, scale, df = distribution_numpy(model, X_val)
    z = np.abs((y_val_scaled - loc) / scale)                               # (n, n_horizons)
    factor = np.quantile(z, 0.8, axis=0) / stats.t.ppf(0.9, df)

    def coverage(f: np.ndarray) -> dict[str, list[float]]:
        return {str(level): [float(np.mean(z[:, j] <= f[j] * stats.t.ppf(0.5 + level / 200, df[j])))
                             for j in range(z.shape[1])] for level in (50, 80, 90)}

    return {"method": "split-conformal scale factor for the central 80% interval on the validation split",
            "scale_factor": [float(f) for f in factor], "df": [float(d) for d in df],
            "coverage_before": coverage(np.ones_like(factor)), "coverage_after": coverage(factor)}
