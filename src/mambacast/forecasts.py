"""What the predictor answers, and the rolling calibration it can apply.

`PredictionResult`: one symbol's forecast at every horizon (median prices, quantiles, the Student-t law of each
log-return for `prob_above`/`prob_below`); `OriginForecasts`: the laws at many origins of one history
(`MambaPredictor.forecast_origins`); `prediction_result` builds the former from locations and scales;
`rolling_scale_factor(s)`: the split-conformal scale factor refitted on the latest known outcomes
(`MambaPredictor(calibration="rolling")`, docs/prediction.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = ["PredictionResult", "OriginForecasts", "prediction_result", "rolling_scale_factor",
           "rolling_scale_factors", "ROLLING_LEVEL"]

ROLLING_LEVEL = 0.8    # the rolling factor makes this central interval cover its share (as the validation one)


@dataclass
class PredictionResult:
    """One symbol's forecast at every horizon; keys are "1d", "5d", ...

    `prices[k]` is the median price (current * exp(predicted log-return)); `quantiles[k][q]` the
    price quantile q; `source` is "mamba" or "momentum", with `reason` saying why a fallback happened.
    """

    symbol: str
    current_price: float
    horizons: list[int]
    prices: dict[str, float]
    log_returns: dict[str, float]
    quantiles: dict[str, dict[float, float]]
    source: str
    reason: str | None = None
    model_version: str | None = None
    as_of: str | None = None
    _dist: dict[str, tuple[float, float, float]] = field(default_factory=dict, repr=False)

    def prob_above(self, strike: float, horizon: int | str) -> float:
        """P(price at the horizon > strike) under the forecast distribution."""
        if not (isinstance(strike, (int, float)) and math.isfinite(strike) and strike > 0):
            raise ValueError(f"strike={strike!r} is invalid: must be a positive finite price")
        key = horizon if isinstance(horizon, str) else f"{horizon}d"
        if key not in self._dist:
            raise ValueError(f"horizon {horizon!r} is not forecast; available: {', '.join(self._dist)}")
        loc, scale, df = self._dist[key]
        z = (math.log(strike / self.current_price) - loc) / scale
        return float(stats.t.sf(z, df) if math.isfinite(df) else stats.norm.sf(z))

    def prob_below(self, strike: float, horizon: int | str) -> float:
        return 1.0 - self.prob_above(strike, horizon)

    def distribution(self, horizon: int | str) -> tuple[float, float, float]:
        """The served law of the horizon's log-return: Student-t `(loc, scale, df)` (df = inf: Gaussian)."""
        key = horizon if isinstance(horizon, str) else f"{horizon}d"
        if key not in self._dist:
            raise ValueError(f"horizon {horizon!r} is not forecast; available: {', '.join(self._dist)}")
        return self._dist[key]

    def interval(self, horizon: int | str, level: float) -> tuple[float, float]:
        """The central `level` interval of the horizon's price (e.g. level=0.8: the 10% and 90% quantiles)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level={level!r} is invalid: must be strictly between 0 and 1")
        loc, scale, df = self.distribution(horizon)
        z = special.stdtrit(df, 0.5 + level / 2) if math.isfinite(df) else special.ndtri(0.5 + level / 2)
        return self.current_price * math.exp(loc - scale * z), self.current_price * math.exp(loc + scale * z)

    def prob_above_many(self, strikes: Sequence[float], horizon: int | str) -> np.ndarray:
        """P(price at the horizon > K) for every strike K at once (an options chain); same as `prob_above`."""
        k = np.asarray(strikes, dtype=np.float64)
        if k.ndim != 1 or not np.all(np.isfinite(k) & (k > 0)):
            raise ValueError("strikes must be a list of positive finite prices")
        loc, scale, df = self.distribution(horizon)
        z = (np.log(k / self.current_price) - loc) / scale
        return special.stdtr(df, -z) if math.isfinite(df) else special.ndtr(-z)

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "current_price": self.current_price, "horizons": self.horizons,
                "prices": self.prices, "log_returns": self.log_returns,
                "quantiles": {k: {str(q): v for q, v in qs.items()} for k, qs in self.quantiles.items()},
                "source": self.source, "reason": self.reason, "model_version": self.model_version,
                "as_of": self.as_of}


@dataclass(eq=False)
class OriginForecasts:
    """The model's log-return distributions at many forecast origins of one history (`forecast_origins`).

    `origins` are row positions in the history (the forecast uses rows `0..origin`), `as_of` their
    dates (None for plain arrays); `loc`, `scale` (calibrated) and `raw_scale` (before the calibration
    factor) are `(n_origins, n_horizons)` in log-return units, the served law (the network pooled with
    GARCH(1,1)-t and HAR-t, `mambacast.blend`); `calibration` is `scale / raw_scale` at each origin (the
    network's factor to the power 1 - garch_weight - har_weight, same shape); `df` is `(n_horizons,)`.
    """

    symbol: str
    horizons: list[int]
    origins: np.ndarray
    as_of: list[str | None]
    loc: np.ndarray
    scale: np.ndarray
    raw_scale: np.ndarray
    df: np.ndarray
    calibration: np.ndarray
    model_version: str

    def cdf(self, log_returns: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """F(r) per origin and horizon (the PIT when r is the realised log-return); r is (n_origins, n_horizons)."""
        scale = self.scale if calibrated else self.raw_scale
        return special.stdtr(self.df, (np.asarray(log_returns, dtype=np.float64) - self.loc) / scale)

    def interval(self, level: float, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Central `level` (e.g. 0.8) interval of the log-return, lower and upper, each (n_origins, n_horizons)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level={level!r} is invalid: must be strictly between 0 and 1")
        half = (self.scale if calibrated else self.raw_scale) * special.stdtrit(self.df, 0.5 + level / 2)
        return self.loc - half, self.loc + half


def rolling_scale_factor(closes: np.ndarray, loc: np.ndarray, raw: np.ndarray, df: np.ndarray, horizons: list[int],
                    window: int, fallback: np.ndarray) -> np.ndarray:
    """Rolling split-conformal factor per horizon at the last row T of `closes` (serving path).

    `loc`, `raw` (k, n_horizons) are the forecasts at the last k rows T-k+1..T. For horizon h the
    residuals are those of the `window` origins s in [T-h-window+1, T-h] (outcome p[s+h] known at T):
    `factor = quantile(|r - loc| / raw, 0.8) / t_ppf(0.9, df)`, the validation split's estimator on the
    most recent outcomes. Horizons with fewer than `window` such origins keep the `fallback` factor.
    """
    T, k = len(closes) - 1, len(loc)
    out = np.array(fallback, dtype=np.float64, copy=True)
    for j, h in enumerate(horizons):
        s = np.arange(T - h - window + 1, T - h + 1)
        if s[0] < T - k + 1:
            continue
        i = s - (T - k + 1)
        z = np.abs(np.log(closes[s + h] / closes[s]) - loc[i, j]) / raw[i, j]
        out[j] = np.quantile(z, ROLLING_LEVEL) / special.stdtrit(df[j], 0.5 + ROLLING_LEVEL / 2)
    return out


def rolling_scale_factors(closes: np.ndarray, origins: np.ndarray, loc: np.ndarray, raw: np.ndarray,
                          df: np.ndarray, horizons: list[int], window: int, fallback: np.ndarray) -> np.ndarray:
    """The rolling split-conformal factor at each of consecutive `origins` (rows of `closes`) at once.

    `loc`, `raw` (n_origins, n_horizons): log-return location and uncalibrated scale forecast at each
    origin; `df` (n_horizons,). At origin t and horizon h the factor is `quantile(|z|, 0.8) / t_ppf(0.9,
    df_h)` over the `window` origins s in [t-h-window+1, t-h] (outcome known at t), z = (r - loc) / raw;
    `fallback[h]` (e.g. the validation factor) where fewer exist. Returns (n_origins, n_horizons), to
    multiply `raw` by; `MambaPredictor(calibration="rolling")` uses the same rule at serving time.
    """
    out = np.empty_like(loc)
    for j, h in enumerate(horizons):
        z = np.full(len(origins), np.nan)
        known = origins + h < len(closes)
        s = origins[known]
        z[known] = np.abs(np.log(closes[s + h] / closes[s]) - loc[known, j]) / raw[known, j]
        q = pd.Series(z).rolling(window, min_periods=window).quantile(ROLLING_LEVEL).to_numpy()
        f = np.full(len(origins), np.nan)
        f[h:] = q[:-h] / special.stdtrit(df[j], 0.5 + ROLLING_LEVEL / 2)   # origins <= t - h only
        out[:, j] = np.where(np.isnan(f), fallback[j], f)
    return out


def prediction_result(symbol: str, current_price: float, horizons: list[int], loc: np.ndarray, scale: np.ndarray,
            df: np.ndarray, quantiles: Sequence[float], source: str, reason: str | None, version: str | None,
            as_of: str | None) -> PredictionResult:
    qs = np.asarray(sorted(quantiles), dtype=np.float64)
    keys = [f"{h}d" for h in horizons]
    # special.stdtrit / ndtri are what stats.t.ppf / stats.norm.ppf compute (bit for bit), without their
    # per-call argument handling; one call for every horizon and level.
    df_col = np.asarray(df, dtype=np.float64)[:, None]
    z = np.where(np.isfinite(df_col), special.stdtrit(np.where(np.isfinite(df_col), df_col, 1.0), qs),
                 special.ndtri(qs))
    price = current_price * np.exp(np.asarray(loc)[:, None] + np.asarray(scale)[:, None] * z)
    quant = {k: dict(zip(qs.tolist(), row.tolist(), strict=True)) for k, row in zip(keys, price, strict=True)}
    return PredictionResult(
        symbol=symbol, current_price=float(current_price), horizons=list(horizons),
        prices={k: float(current_price * math.exp(mu)) for k, mu in zip(keys, loc, strict=True)},
        log_returns={k: float(mu) for k, mu in zip(keys, loc, strict=True)}, quantiles=quant, source=source,
        reason=reason, model_version=version, as_of=as_of,
        _dist={k: (float(mu), float(s), float(nu)) for k, mu, s, nu in zip(keys, loc, scale, df, strict=True)})
