"""Baseline forecasters behind one interface, so the backtest treats the Mamba model and the baselines alike.

Every forecaster predicts h-day log-returns `r = log(p[t+h] / p[t])` from the closes up to and including the
forecast origin t, for several horizons at once, as a point (`mean`) and a predictive distribution
(`quantiles`, and for the parametric baselines the exact location-scale law `mean + scale * Z`).

Baselines (exact rules in docs/evaluation.md):
  RandomWalk             r = 0;                  N(0, sigma_train^2 h)
  Drift                  r = mu_train h;         N(mu_train h, sigma_train^2 h)
  Momentum               r = shrink * mean of the last `lookback` daily log-returns * h;
                         N(r, sigma_60^2 h) with sigma_60 the sd of the last 60 daily log-returns
                         (`momentum_log_returns` is the rule the predictor falls back to)
  HistoricalVolGaussian  r = 0 (or mu_train h);  N(r, sigma_window^2 h), rolling window
  GarchT                 GARCH(1,1), Student-t innovations (arch); r = mu h; standardised t with the
                         fitted nu and variance sum_{k=1..h} sigma^2_{t+k|t}; the fit sample starts after the
                         last stale-price stretch (`stale_sample_start`) and degenerate fits are refused
  HarT (evaluate.har)    pooled HAR regression of log realised variance, Student-t (see that module)

`predict_many(prices, origins, horizons)` forecasts at many origins in one call (vectorised for the
baselines): the result equals stacking `predict(prices[:o + 1], horizons)` over the origins, so it never looks
past an origin. Arrays of a many-origin `Forecast` carry a leading origin axis: `(n_origins, n_horizons)`.
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import signal

from .forecast import DEFAULT_QUANTILES, Forecast, check_horizons

__all__ = [
    "DEFAULT_QUANTILES",
    "MIN_DAILY_VOL",
    "Forecast",
    "Forecaster",
    "BaseForecaster",
    "momentum_log_returns",
    "RandomWalk",
    "Drift",
    "Momentum",
    "HistoricalVolGaussian",
    "GarchT",
    "stale_sample_start",
]

logger = logging.getLogger(__name__)

#: Floor on a daily log-return volatility (a flat window would otherwise give a zero-width distribution).
MIN_DAILY_VOL = 1e-6


# ---------------------------------------------------------------------------------------------- interface


@runtime_checkable
class Forecaster(Protocol):
    """What the backtest needs from the model and from every baseline."""

    name: str

    def fit(self, prices: np.ndarray) -> Forecaster:
        """Estimate parameters on the training closes `prices` (n_days,) up to the forecast origin."""
        ...

    def predict(self, prices: np.ndarray, horizons: Sequence[int]) -> Forecast:
        """Forecast from the closes up to and including the origin t = prices[-1]; mean of shape (H,)."""
        ...

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        """Forecasts at the origins (indices into prices), each from prices[:o + 1]; mean (n_origins, H)."""
        ...


class BaseForecaster(ABC):
    """Base class: subclasses implement `fit` and `predict`; `predict_many` loops over `predict`."""

    name: str

    @abstractmethod
    def fit(self, prices: np.ndarray) -> BaseForecaster: ...

    @abstractmethod
    def predict(self, prices: np.ndarray, horizons: Sequence[int]) -> Forecast: ...

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        """Forecasts at many origins by calling `predict(prices[:o + 1], horizons)` for each origin."""
        p = _check_prices(prices)
        return Forecast.stack([self.predict(p[: o + 1], horizons) for o in _check_origins(origins, p.size, 0)])


class _VectorisedForecaster(BaseForecaster):
    """A baseline whose `predict_many` is vectorised; `predict` is its single-origin case."""

    def predict(self, prices: np.ndarray, horizons: Sequence[int]) -> Forecast:
        p = _check_prices(prices)
        return self.predict_many(p, [p.size - 1], horizons).at(0)

    @abstractmethod
    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast: ...


# ----------------------------------------------------------------------------------------------- helpers


def _check_prices(prices: object, min_len: int = 1) -> np.ndarray:
    p = np.asarray(prices, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"prices must be 1-D (n_days,), got shape {p.shape}")
    if p.size < min_len:
        raise ValueError(f"need at least {min_len} prices, got {p.size}")
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("prices must be finite and > 0 (drop NaN rows and bad ticks first)")
    return p


def _check_origins(origins: Sequence[int], n_prices: int, min_origin: int) -> np.ndarray:
    o = np.asarray(origins)
    if o.ndim != 1 or o.size == 0 or not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"origins must be a non-empty 1-D sequence of integer indices, got {origins!r}")
    if o.min() < min_origin or o.max() >= n_prices:
        raise ValueError(f"origins must lie in [{min_origin}, {n_prices - 1}] (enough history, inside prices), "
                         f"got range [{o.min()}, {o.max()}]")
    return o.astype(np.int64)


def _floor_vol(sigma: np.ndarray, who: str) -> np.ndarray:
    if np.any(sigma < MIN_DAILY_VOL):
        logger.warning("%s: daily volatility below %g at %d origin(s) (flat prices); floored",
                       who, MIN_DAILY_VOL, int(np.count_nonzero(sigma < MIN_DAILY_VOL)))
    return np.maximum(sigma, MIN_DAILY_VOL)


def _train_moments(prices: np.ndarray, who: str) -> tuple[float, float]:
    """Mean and sd (ddof=1) of the daily log-returns of the training closes (n_days >= 3)."""
    r = np.diff(np.log(_check_prices(prices, min_len=3)))
    return float(r.mean()), float(_floor_vol(np.array(r.std(ddof=1)), who))


def _trailing_mean_std(log_prices: np.ndarray, origins: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (ddof=1) of the last k = min(window, o) daily log-returns before each origin o (>= 2)."""
    r = np.diff(log_prices)
    k = np.minimum(window, origins)
    mean = (log_prices[origins] - log_prices[origins - k]) / k
    c2 = np.concatenate([[0.0], np.cumsum(r**2)])
    var = (c2[origins] - c2[origins - k] - k * mean**2) / (k - 1)
    return mean, np.sqrt(np.maximum(var, 0.0))


def _gaussian(horizons: list[int], mean_daily: np.ndarray, vol_daily: np.ndarray, who: str) -> Forecast:
    """N(mean_daily * h, vol_daily^2 * h) per origin (rows) and horizon (columns)."""
    h = np.asarray(horizons, dtype=np.float64)
    vol = _floor_vol(np.asarray(vol_daily, dtype=np.float64), who)
    return Forecast.from_location_scale(horizons, np.outer(mean_daily, h), np.outer(vol, np.sqrt(h)))


def stale_sample_start(log_prices: np.ndarray, window: int = 60, max_zero_share: float = 0.5) -> int:
    """Index of the first close after the last stale-price stretch (0 when there is none).

    log_prices (n_days,). A daily log-return r_t = lp[t] - lp[t-1] (t = 1..n-1) is "zero" when it is exactly 0
    (the price did not move: no trade, or a stale quote). A window of `window` returns ending at t (t >= window)
    is stale when more than `max_zero_share` of its returns are zero. With t* the end of the last stale window,
    the clean sample is lp[t*:], whose returns r_{t*+1}, ... all lie after the stretch. Series shorter than
    `window` returns are never flagged.
    """
    lp = np.asarray(log_prices, dtype=np.float64)
    zero = np.concatenate([[0.0], (np.diff(lp) == 0).astype(np.float64)])  # zero[t] for return t; zero[0] = 0
    if lp.size <= window:
        return 0
    cz = np.cumsum(zero)
    share = (cz[window:] - cz[:-window]) / window  # share[i]: window of returns ending at t = i + window
    stale = np.flatnonzero(share > max_zero_share)
    return 0 if stale.size == 0 else int(stale[-1] + window)


def _check_fitted(value: object, who: str) -> None:
    if value is None:
        raise RuntimeError(f"{who} is not fitted: call fit(training_prices) first")


# -------------------------------------------------------------------------------------------- momentum


def _momentum_mean(log_prices: np.ndarray, origins: np.ndarray, lookback: int, shrink: float) -> np.ndarray:
    """shrink * (log p_o - log p_{o-k}) / k with k = min(lookback, o): the daily momentum drift, (n_origins,)."""
    k = np.minimum(lookback, origins)
    return shrink * (log_prices[origins] - log_prices[origins - k]) / k


def _check_momentum_args(lookback: int, shrink: float) -> None:
    if not isinstance(lookback, (int, np.integer)) or lookback < 1:
        raise ValueError(f"lookback must be a positive integer, got {lookback!r}")
    if not 0.0 <= shrink <= 1.0:
        raise ValueError(f"shrink must lie in [0, 1], got {shrink!r}")


def momentum_log_returns(
    prices: np.ndarray, horizons: Sequence[int], lookback: int = 20, shrink: float = 0.5
) -> np.ndarray:
    """The momentum rule: predicted h-day log-returns `shrink * rbar * h`, shape (H,).

    `rbar = (log p_t - log p_{t-k}) / k`, the mean of the last k = min(lookback, n_days - 1) daily log-returns
    before the origin t = prices[-1]. `shrink` in [0, 1] pulls the extrapolated trend toward the random walk
    (0 = random walk, 1 = full extrapolation); 0.5 is a convention, not an estimate. Needs >= 2 prices.
    This is the fallback the predictor uses when no model can answer.
    """
    _check_momentum_args(lookback, shrink)
    p = _check_prices(prices, min_len=2)
    rbar = _momentum_mean(np.log(p), np.array([p.size - 1]), lookback, shrink)[0]
    return rbar * np.asarray(check_horizons(horizons), dtype=np.float64)


# ------------------------------------------------------------------------------------------- baselines


class RandomWalk(_VectorisedForecaster):
    """Zero log-return; Gaussian N(0, sigma^2 h) with sigma the sd of the training daily log-returns."""

    name = "random_walk"

    def __init__(self) -> None:
        self.sigma_: float | None = None

    def fit(self, prices: np.ndarray) -> RandomWalk:
        self.sigma_ = _train_moments(prices, self.name)[1]
        return self

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        _check_fitted(self.sigma_, self.name)
        o = _check_origins(origins, _check_prices(prices).size, 0)
        return _gaussian(check_horizons(horizons), np.zeros(o.size), np.full(o.size, self.sigma_), self.name)


class Drift(_VectorisedForecaster):
    """Training-mean daily log-return times h; Gaussian N(mu h, sigma^2 h) with training mean and sd."""

    name = "drift"

    def __init__(self) -> None:
        self.mu_: float | None = None
        self.sigma_: float | None = None

    def fit(self, prices: np.ndarray) -> Drift:
        self.mu_, self.sigma_ = _train_moments(prices, self.name)
        return self

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        _check_fitted(self.mu_, self.name)
        o = _check_origins(origins, _check_prices(prices).size, 0)
        return _gaussian(check_horizons(horizons), np.full(o.size, self.mu_), np.full(o.size, self.sigma_),
                         self.name)


class Momentum(_VectorisedForecaster):
    """`momentum_log_returns` as the mean; Gaussian with the sd of the last `vol_window` daily log-returns.

    Stateless: `fit` only checks its input. Needs >= 3 prices up to each origin (origins >= 2).
    """

    name = "momentum"

    def __init__(self, lookback: int = 20, shrink: float = 0.5, vol_window: int = 60) -> None:
        _check_momentum_args(lookback, shrink)
        if not isinstance(vol_window, (int, np.integer)) or vol_window < 2:
            raise ValueError(f"vol_window must be an integer >= 2, got {vol_window!r}")
        self.lookback, self.shrink, self.vol_window = lookback, shrink, vol_window

    def fit(self, prices: np.ndarray) -> Momentum:
        _check_prices(prices, min_len=3)
        return self

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        lp = np.log(_check_prices(prices, min_len=3))
        o = _check_origins(origins, lp.size, 2)
        mean = _momentum_mean(lp, o, self.lookback, self.shrink)
        return _gaussian(check_horizons(horizons), mean, _trailing_mean_std(lp, o, self.vol_window)[1], self.name)


class HistoricalVolGaussian(_VectorisedForecaster):
    """Zero mean (or training drift); Gaussian with the sd of the last `window` daily log-returns (rolling).

    Needs >= 3 prices up to each origin (origins >= 2).
    """

    def __init__(self, window: int = 60, drift: bool = False) -> None:
        if not isinstance(window, (int, np.integer)) or window < 2:
            raise ValueError(f"window must be an integer >= 2, got {window!r}")
        self.window, self.drift = window, drift
        self.name = "hist_vol_drift" if drift else "hist_vol"
        self.mu_: float | None = None

    def fit(self, prices: np.ndarray) -> HistoricalVolGaussian:
        self.mu_ = _train_moments(prices, self.name)[0] if self.drift else 0.0
        return self

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        _check_fitted(self.mu_, self.name)
        lp = np.log(_check_prices(prices, min_len=3))
        o = _check_origins(origins, lp.size, 2)
        vol = _trailing_mean_std(lp, o, self.window)[1]
        return _gaussian(check_horizons(horizons), np.full(o.size, self.mu_), vol, self.name)


class GarchT(_VectorisedForecaster):
    """GARCH(1,1) with Student-t innovations (Bollerslev 1986, 1987), fitted with `arch` on 100 x log-returns.

    Model (percent units): `100 r_s = mu + eps_s`, `eps_s = sigma_s z_s`, z standardised t(nu),
    `sigma^2_{s+1} = omega + alpha eps_s^2 + beta sigma^2_s`. Parameters are estimated only in `fit` (the backtest
    refits every 252 days); `predict_many` filters sigma^2 through the given history with the fitted parameters,
    starting from the training sample variance of eps at prices[0]. With phi = alpha + beta,
    `sigma^2_{t+k|t} = omega sum_{j<k-1} phi^j + phi^{k-1} sigma^2_{t+1|t}`; the h-day log-return is forecast as
    `mu h / 100` with variance `V_h = sum_{k=1..h} sigma^2_{t+k|t} / 100^2` and the standardised t(nu) law
    (an approximation: a sum of GARCH-t returns is not exactly t).

    Fit sample: the training returns after the last stale-price stretch (`stale_sample_start`: more than
    `max_zero_share` zero returns in a `stale_window`-day window), so months of unchanged quotes do not pose as
    a calm regime.

    Refused fits: if the fit fails, does not converge, or the sample has fewer than `min_obs` returns, or the
    parameters are degenerate (alpha + beta >= `max_persistence`, default just above 1: an explosive variance;
    nu at arch's bounds 2.05 / 500; omega <= 0 or at arch's bounds), the model falls back to a constant historical
    volatility (Gaussian, sample mean and sd): omega = sample variance, alpha = beta = 0, nu = None. The first
    refusal of an instance is logged as a warning, later ones at INFO; every fit leaves `fit_info_` (status
    "garch" or "fallback", the reason, the estimated parameters, the sample start), which the backtest stores
    in each refit block of metrics.json.
    """

    name = "garch_t"
    #: arch's bounds on nu for the Student-t (StudentsT.bounds) and the margin that counts as "at the bound".
    NU_BOUNDS: tuple[float, float] = (2.05, 500.0)

    def __init__(self, min_obs: int = 250, max_persistence: float = 1.0 + 1e-6, stale_window: int = 60,
                 max_zero_share: float = 0.5) -> None:
        self.min_obs, self.max_persistence = min_obs, max_persistence
        self.stale_window, self.max_zero_share = stale_window, max_zero_share
        self.params_: dict[str, float] | None = None  # mu, omega, alpha, beta in percent units
        self.nu_: float | None = None  # Student-t degrees of freedom; None after a fallback (Gaussian)
        self.init_var_: float | None = None
        self.fit_info_: dict[str, object] = {}
        self._warned = False

    @property
    def converged(self) -> bool:
        """True if the GARCH-t fit is in use, False after a fallback to historical volatility."""
        _check_fitted(self.params_, self.name)
        return self.nu_ is not None

    @property
    def persistence(self) -> float:
        """alpha + beta of the fitted model (0 after a fallback)."""
        _check_fitted(self.params_, self.name)
        return self.params_["alpha"] + self.params_["beta"]  # type: ignore[index]

    def _refuse(self, reason: str) -> None:
        """Log a refused fit: a warning the first time for this instance, INFO afterwards."""
        level = logging.INFO if self._warned else logging.WARNING
        self._warned = True
        logger.log(level, "%s: %s; falling back to historical volatility (see fit_info in the backtest's "
                   "metrics.json)", self.name, reason)

    def fit(self, prices: np.ndarray) -> GarchT:
        lp = np.log(_check_prices(prices, min_len=3))
        start = stale_sample_start(lp, self.stale_window, self.max_zero_share)
        r_all = 100 * np.diff(lp)
        r = r_all[start:] if r_all.size - start >= 2 else r_all
        info: dict[str, object] = {"n_returns": int(r_all.size), "sample_start_index": int(start),
                                   "stale_returns_dropped": int(start)}
        fitted, reason, raw = None, None, None
        if r.size < self.min_obs:
            reason = (f"{r.size} training returns after the last stale stretch < min_obs={self.min_obs}"
                      if start else f"{r.size} training returns < min_obs={self.min_obs}")
        else:
            raw, reason = self._fit_arch(r)
            if raw is not None and reason is None:
                reason = self._degenerate(raw[0], raw[1], r)
            fitted = raw if reason is None else None
        if raw is not None:
            info["estimate"] = {**raw[0], "nu": raw[1]}
        if fitted is None:
            self._refuse(str(reason))
            var = 1e4 * float(_floor_vol(np.array(r.std(ddof=1) / 100), self.name)) ** 2
            self.params_, self.nu_ = {"mu": float(r.mean()), "omega": var, "alpha": 0.0, "beta": 0.0}, None
            self.init_var_ = var
            info.update(status="fallback", reason=reason)
        else:
            self.params_, self.nu_ = fitted
            self.init_var_ = float(np.var(r - self.params_["mu"]))
            # An integrated fit (alpha + beta = 1, arch's constraint binding, typical of 20-30 year samples with
            # volatility regimes) is IGARCH(1,1)-t: a valid forecaster (RiskMetrics is one), kept and flagged.
            info.update(status="garch", persistence=self.persistence, integrated=self.persistence >= 0.9999)
        self.fit_info_ = info
        return self

    def _degenerate(self, params: dict[str, float], nu: float, r: np.ndarray) -> str | None:
        """Why the estimate is degenerate (a sentence), or None when it is usable."""
        phi = params["alpha"] + params["beta"]
        var = float(np.var(r))
        omega_hi = 10 * var  # arch's GARCH bounds: omega in [1e-8 var, 10 var] (percent^2)
        if phi >= self.max_persistence:
            return f"degenerate GARCH fit: alpha + beta = {phi:.6f} >= {self.max_persistence}"
        lo, hi = self.NU_BOUNDS
        if nu <= lo * 1.001 or nu >= hi * 0.999:
            return f"degenerate GARCH fit: nu = {nu:.4g} at its bound [{lo}, {hi}]"
        if params["omega"] <= 1e-8 * var * 1.001 or params["omega"] >= omega_hi * 0.999:
            return f"degenerate GARCH fit: omega = {params['omega']:.4g} at or beyond its bounds"
        return None

    def _fit_arch(self, r: np.ndarray) -> tuple[tuple[dict[str, float], float] | None, str | None]:
        """Maximum-likelihood fit with arch: ((params, nu), None), or (estimate or None, why it is refused)."""
        # Imported here: arch brings scipy.stats and matplotlib (1.2-1.9 s), and serving a stored model restores its
        # fit (`from_dict`) without fitting.
        from arch import arch_model

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = arch_model(r, mean="Constant", vol="GARCH", p=1, q=1, dist="t", rescale=False).fit(disp="off")
        except Exception as exc:  # noqa: BLE001 - any optimiser failure must degrade to the fallback, not crash
            return None, f"GARCH fit failed ({type(exc).__name__}: {exc})"
        for w in caught:
            logger.info("%s: arch: %s", self.name, w.message)
        p = res.params
        params = {"mu": float(p["mu"]), "omega": float(p["omega"]), "alpha": float(p["alpha[1]"]),
                  "beta": float(p["beta[1]"])}
        nu = float(p["nu"])
        if res.convergence_flag != 0 or not np.all(np.isfinite([*params.values(), nu])) or nu <= 2:
            return ((params, nu) if np.all(np.isfinite([*params.values(), nu])) else None,
                    f"GARCH fit did not converge (flag {res.convergence_flag}, params {params}, nu {nu})")
        return (params, nu), None

    def to_dict(self) -> dict[str, object]:
        """The fitted state as JSON-ready values (stored in a model's metadata); `from_dict` restores it."""
        _check_fitted(self.params_, self.name)
        return {"params": dict(self.params_), "nu": self.nu_, "init_var": self.init_var_,  # type: ignore[arg-type]
                "status": self.fit_info_.get("status"), "reason": self.fit_info_.get("reason")}

    @classmethod
    def from_dict(cls, state: dict[str, object]) -> GarchT:
        """A fitted GarchT from `to_dict`'s output (no refit)."""
        g = cls()
        params = {k: float(v) for k, v in state["params"].items()}  # type: ignore[attr-defined]
        if set(params) != {"mu", "omega", "alpha", "beta"}:
            raise ValueError(f"GARCH parameters must be mu, omega, alpha, beta; got {sorted(params)}")
        nu = state.get("nu")
        g.params_, g.nu_ = params, None if nu is None else float(nu)  # type: ignore[arg-type]
        g.init_var_ = float(state["init_var"])  # type: ignore[arg-type]
        values = [*params.values(), g.init_var_] + ([] if g.nu_ is None else [g.nu_])
        if not np.all(np.isfinite(values)) or g.init_var_ <= 0 or (g.nu_ is not None and g.nu_ <= 2):
            raise ValueError(f"GARCH state is not a valid fit: {state}")
        g.fit_info_ = {"status": state.get("status"), "reason": state.get("reason")}
        return g

    def conditional_variance(self, prices: np.ndarray) -> np.ndarray:
        """One-step variances sigma^2_{t+1|t} (percent^2) at every origin t = 0..n_days-1 of prices, (n_days,)."""
        _check_fitted(self.params_, self.name)
        pr: dict[str, float] = self.params_  # type: ignore[assignment]
        eps = 100 * np.diff(np.log(_check_prices(prices))) - pr["mu"]
        drive = np.concatenate([[self.init_var_], pr["omega"] + pr["alpha"] * eps**2])
        return signal.lfilter([1.0], [1.0, -pr["beta"]], drive)  # s2[i] = drive[i] + beta * s2[i-1]

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        hs = check_horizons(horizons)
        return Forecast.from_location_scale(hs, *self.law_many(prices, origins, hs))

    def law_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray, float | None]:
        """`predict_many`'s law without its quantiles: mean and scale (n_origins, H), df (None: Gaussian)."""
        p = _check_prices(prices)
        o = _check_origins(origins, p.size, 0)
        hs = check_horizons(horizons)
        s2 = self.conditional_variance(p[: o.max() + 1])[o]
        pr: dict[str, float] = self.params_  # type: ignore[assignment]
        coeffs = np.array([_garch_sum_coeffs(pr["alpha"] + pr["beta"], h) for h in hs])  # (H, 2)
        var = (np.outer(s2, coeffs[:, 0]) + pr["omega"] * coeffs[:, 1]) / 1e4
        mean = np.outer(np.full(o.size, pr["mu"] / 100), hs)
        scale = np.sqrt(var if self.nu_ is None else var * (self.nu_ - 2) / self.nu_)
        return mean, scale, self.nu_


def _garch_sum_coeffs(phi: float, h: int) -> tuple[float, float]:
    """(A_h, B_h) with sum_{k=1..h} sigma^2_{t+k|t} = A_h sigma^2_{t+1|t} + B_h omega for GARCH(1,1).

    A_h = sum_{k=1..h} phi^{k-1};  B_h = sum_{k=1..h} sum_{j=0..k-2} phi^j.
    """
    powers = phi ** np.arange(h)
    partial = np.concatenate([[0.0], np.cumsum(powers)[:-1]])  # sum_{j<k-1} phi^j for k = 1..h
    return float(powers.sum()), float(partial.sum())
