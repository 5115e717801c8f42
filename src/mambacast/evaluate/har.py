"""Pooled HAR-t: a heterogeneous-autoregressive model of realised variance with a market factor, Student-t law.

A stronger classical baseline than one GARCH(1,1)-t per symbol (Corsi 2009, "A simple approximate long-memory
model of realized volatility"; pooled across stocks as in Bollerslev, Patton & Quaedvlieg 2018). Per horizon h,
one regression pooled over every symbol of the panel, fitted on the rows dated on or before the refit cutoff:

    y_{s,t}  = log( sum_{k=1..h} r_{s,t+k}^2 + h f_s )                      target: log realised variance
    x_{s,t}  = [1, log(RV^(k)_{s,t} + f_s) for k in (1, 5, 22, 66), log(RV^(k)_{M,t} + f_M) for k in (1, 5, 22, 66)]
    RV^(k)_t = (1/k) sum_{j=0..k-1} r_{t-j}^2                                 mean squared daily log-return
    y = x b + e,  b by ordinary least squares

`r_{s,t}` is symbol s's daily log-return, `r_{M,t}` the market's: the equal-weighted mean daily log-return of
the panel's symbols that trade on date t (causal: it uses closes dated <= t only). `f = floor_frac x` the
training variance of the daily returns (1% by default) keeps a zero return (a stale quote) from turning into
log(0). Predictive variance of the h-day log-return (Duan's 1983 smearing estimate of E[exp(x b + e)], used
instead of the log-normal `exp(0.5 s^2)` because log squared daily returns are far from normal; the floor added
to the target is taken off again):

    V_{s,t,h} = max(exp(x_{s,t} b) * mean_i exp(e_i) - h f_s, h f_s)

and the law `r_{s,t,h} ~ mu_s h + c_h sqrt(V_{s,t,h}) t_{nu_h}`, with `(c_h, nu_h)` fitted by maximum likelihood
on the training standardised h-day returns `z = (r_{s,t,h} - mu_s h) / sqrt(V)` pooled over symbols
(nu_h in [2.5, 60]; c_h is the t scale, so it absorbs any bias of V, e.g. from the floors). mu_s is the
symbol's training-window mean daily log-return.

Pooling: `HarPool(panel)` holds the panel, the market series and a `CutoffCache`, so the regression of a refit
date is fitted once and reused by every symbol whose cutoff is that date (or a few days later). `HarT` is the
per-symbol forecaster the backtest refits; `walk_forward` calls its `fit_dated(closes, dates)`. Without a panel
(`fit(closes)`, or a symbol the panel does not hold) it fits the same regression on the symbol alone, without
the market terms, and logs that once.

Stale prices: a symbol's training rows start after its last stale-price stretch (`baselines.stale_sample_start`,
as for GARCH): an origin t is used only if its 66 lagged returns all lie after the stretch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .baselines import (
    Forecast,
    _check_fitted,
    _check_origins,
    _check_prices,
    _VectorisedForecaster,
    stale_sample_start,
)
from .forecast import check_horizons
from .panel import CutoffCache, Panel

__all__ = ["HarT", "HarPool", "HarFit", "LAGS", "market_returns"]

logger = logging.getLogger(__name__)

#: Look-backs of the realised-variance regressors (day, week, month, quarter) in trading days.
LAGS: tuple[int, ...] = (1, 5, 22, 66)


def market_returns(frames: Mapping[str, pd.DataFrame]) -> pd.Series:
    """Equal-weighted mean daily log-return of the symbols per date: a Series on the sorted union of dates.

    frames: {symbol: frame with `close`, DatetimeIndex}. The value on date d averages log(close_d / close_prev)
    over the symbols with a row on d and one before it, so it depends on closes dated <= d only.
    """
    rets = [np.log(f["close"].astype(np.float64)).diff().iloc[1:] for f in frames.values() if len(f) > 1]
    if not rets:
        return pd.Series(dtype=np.float64)
    return pd.concat(rets, axis=1).mean(axis=1).sort_index()


def _sq_cumsum(x: np.ndarray) -> np.ndarray:
    """(n + 1,): c[j] = sum of the first j values of x squared (c[0] = 0)."""
    return np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=np.float64) ** 2)])


def _log_rv(c2: np.ndarray, ends: np.ndarray, floor: float) -> np.ndarray:
    """log(RV^(k) + floor) for k in LAGS: (m, len(LAGS)).

    c2: `_sq_cumsum` of a return series; ends (m,): how many returns are known at each row (RV over the last
    min(k, end) of them; the floor alone where none is known).
    """
    cols = []
    for k in LAGS:
        kk = np.minimum(k, ends)
        safe = np.maximum(kk, 1)
        rv = np.where(kk > 0, (c2[ends] - c2[ends - kk]) / safe, 0.0)
        cols.append(np.log(rv + floor))
    return np.column_stack(cols)


class _Market:
    """The market's daily returns as cumulative squares, looked up by date."""

    def __init__(self, returns: pd.Series, floor: float):
        self.dates = pd.DatetimeIndex(returns.index)
        self.c2 = _sq_cumsum(returns.to_numpy())
        self.floor = floor

    def features(self, dates: pd.DatetimeIndex) -> np.ndarray:
        """(m, len(LAGS)) market log-RV regressors at each date from the market returns dated <= it."""
        return _log_rv(self.c2, self.dates.searchsorted(dates, side="right"), self.floor)


@dataclass(frozen=True)
class HarHorizon:
    """The fitted regression of one horizon h.

    coef (p,) for [1, own log-RV (4), market log-RV (4) if any]; smear = mean exp(residual); resid_var; scale_c
    and nu: the Student-t law of the standardised h-day return; n: training rows; r2: R^2 of the regression.
    """

    h: int
    coef: np.ndarray
    smear: float
    resid_var: float
    scale_c: float
    nu: float
    n: int
    r2: float

    def summary(self) -> dict[str, Any]:
        return {"coef": [float(c) for c in self.coef], "smear": self.smear, "resid_var": self.resid_var,
                "scale_c": self.scale_c, "nu": self.nu, "n": self.n, "r2": self.r2}

    @classmethod
    def from_summary(cls, h: int, state: Mapping[str, Any], n_params: int) -> HarHorizon:
        """The regression `summary()` describes, checked (ValueError when it cannot forecast)."""
        coef = np.asarray(state["coef"], dtype=np.float64)
        fit = cls(int(h), coef, float(state["smear"]), float(state["resid_var"]), float(state["scale_c"]),
                  float(state["nu"]), int(state["n"]), float(state["r2"]))
        if coef.shape != (n_params,) or not np.isfinite(coef).all() or not (
                np.isfinite([fit.smear, fit.scale_c, fit.nu]).all() and fit.smear > 0 and fit.scale_c > 0
                and fit.nu > 2 and fit.h >= 1):
            raise ValueError(f"HAR state of horizon {h} is not a valid fit: {dict(state)}")
        return fit


class HarFit:
    """HAR regressions on some symbols' training rows (one per horizon, fitted on first use and kept).

    series: {symbol: (closes (n_s,), dates (n_s,) or None)}; market: the market return Series (pooled fit) or
    None (no market terms; then dates may be None).
    """

    def __init__(self, series: Mapping[str, tuple[np.ndarray, pd.DatetimeIndex | None]],
                 market: pd.Series | None = None, *, floor_frac: float = 0.01,
                 df_bounds: tuple[float, float] = (2.5, 60.0), max_ml_samples: int = 20000,
                 stale_window: int = 60, max_zero_share: float = 0.5, fits: Mapping[int, HarHorizon] | None = None):
        if not series and not fits:
            raise ValueError("har_t: no training series")
        self.floor_frac, self.df_bounds, self.max_ml_samples = floor_frac, df_bounds, max_ml_samples
        self.market = None
        if market is not None and len(market) > 1:
            mvar = float(np.var(market.to_numpy()))
            self.market = _Market(market, max(floor_frac * mvar, 1e-12))
        self.lp: dict[str, np.ndarray] = {}
        self.dates: dict[str, pd.DatetimeIndex | None] = {}
        self.floor: dict[str, float] = {}
        self.mu: dict[str, float] = {}
        self.start: dict[str, int] = {}
        for sym, (closes, dates) in series.items():
            lp = np.log(_check_prices(closes, min_len=3))
            t0 = stale_sample_start(lp, stale_window, max_zero_share)
            r = np.diff(lp[t0:]) if lp.size - t0 >= 3 else np.diff(lp)
            self.lp[sym], self.dates[sym], self.start[sym] = lp, dates, t0
            self.floor[sym] = max(floor_frac * float(np.var(r)), 1e-12)
            self.mu[sym] = float(np.mean(r))
        # `fits`: regressions fitted earlier (a stored model's); with no series, only those horizons exist.
        self._fits: dict[int, HarHorizon] = dict(fits or {})
        self._lock = threading.Lock()

    @property
    def n_params(self) -> int:
        return 1 + len(LAGS) * (2 if self.market is not None else 1)

    def features(self, lp: np.ndarray, origins: np.ndarray, floor: float,
                 dates: pd.DatetimeIndex | None) -> np.ndarray:
        """Design rows at the origins: (m, n_params). lp: log closes with index 0 the first close; dates: the
        origins' dates (needed with the market terms)."""
        own = _log_rv(_sq_cumsum(np.diff(lp)), origins, floor)
        cols = [np.ones((origins.size, 1)), own]
        if self.market is not None:
            if dates is None:
                raise ValueError("har_t: the pooled regression needs the dates of the origins")
            cols.append(self.market.features(dates))
        return np.hstack(cols)

    def horizon(self, h: int) -> HarHorizon:
        """The regression of horizon h (fitted once)."""
        with self._lock:
            if h not in self._fits:
                if not self.lp:
                    raise ValueError(f"har_t: horizon {h} was not stored (stored: {sorted(self._fits)})")
                self._fits[h] = self._fit(h)
            return self._fits[h]

    def _rows(self, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Training design X (N, p), target y (N,), centred h-day returns (N,) and floors f_s (N,), all symbols."""
        Xs, ys, rs, fs = [], [], [], []
        lag = max(LAGS)
        for sym, lp in self.lp.items():
            t = np.arange(max(lag, self.start[sym] + lag), lp.size - h)
            if t.size == 0:
                continue
            c2 = _sq_cumsum(np.diff(lp))
            dates = self.dates[sym]
            Xs.append(self.features(lp, t, self.floor[sym], None if dates is None else dates[t]))
            ys.append(np.log(c2[t + h] - c2[t] + h * self.floor[sym]))
            rs.append(lp[t + h] - lp[t] - self.mu[sym] * h)
            fs.append(np.full(t.size, self.floor[sym]))
        if not Xs:
            raise ValueError(f"har_t: no training row for horizon {h}: every symbol needs more than "
                             f"{lag + h} days after its last stale stretch")
        return np.vstack(Xs), np.concatenate(ys), np.concatenate(rs), np.concatenate(fs)

    def _fit(self, h: int) -> HarHorizon:
        X, y, r, floors = self._rows(h)
        if y.size < 5 * X.shape[1]:  # too few rows for the full regression: a constant variance (intercept)
            logger.info("har_t: %d rows at h=%d; intercept-only variance", y.size, h)
            X = X[:, :1]
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        if coef.size < self.n_params:
            coef = np.concatenate([coef, np.zeros(self.n_params - coef.size)])
            X = np.hstack([X, np.zeros((X.shape[0], self.n_params - 1))])
        fitted = X @ coef
        e = y - fitted
        smear = float(np.mean(np.exp(e)))
        z = r / np.sqrt(_variance(fitted, smear, floors * h))
        c, nu = _fit_t(z, self.df_bounds, self.max_ml_samples)
        r2 = float(1 - e.var() / y.var()) if y.var() > 0 else float("nan")
        return HarHorizon(h, coef, smear, float(e.var(ddof=min(X.shape[1], y.size - 1))), c, nu, int(y.size), r2)

    def law(self, lp: np.ndarray, origins: np.ndarray, symbol_floor: float, dates: pd.DatetimeIndex | None,
            horizons: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """t scale (m, H) and nu (H,) of the h-day log-return at the origins."""
        X = self.features(lp, origins, symbol_floor, dates)
        fits = [self.horizon(h) for h in horizons]
        scale = np.column_stack([f.scale_c * np.sqrt(_variance(X @ f.coef, f.smear, f.h * symbol_floor))
                                 for f in fits])
        return scale, np.array([f.nu for f in fits])


def _variance(fitted: np.ndarray, smear: float, floor_h: np.ndarray | float) -> np.ndarray:
    """V = max(exp(fitted) smear - h f, h f): the smeared variance with the target's floor taken off, (m,)."""
    return np.maximum(np.exp(fitted) * smear - floor_h, floor_h)


def _fit_t(z: np.ndarray, df_bounds: tuple[float, float], max_samples: int) -> tuple[float, float]:
    """Maximum-likelihood (scale c, nu) of `z ~ c t_nu` with nu in df_bounds; at most max_samples evenly spaced
    values are used (overlapping h-day returns are strongly dependent anyway)."""
    if z.size > max_samples:
        z = z[np.linspace(0, z.size - 1, max_samples).astype(np.int64)]
    lo, hi = df_bounds

    def nll(theta: np.ndarray) -> float:
        return -float(np.sum(stats.t.logpdf(z, theta[1], scale=np.exp(theta[0]))))

    nu0 = min(max(6.0, lo), hi)
    c0 = float(np.log(max(np.std(z) * np.sqrt((nu0 - 2) / nu0), 1e-6)))
    res = optimize.minimize(nll, np.array([c0, nu0]), method="L-BFGS-B", bounds=[(c0 - 5, c0 + 5), (lo, hi)])
    return float(np.exp(res.x[0])), float(res.x[1])


class HarPool:
    """What every symbol's `HarT` of one backtest shares: the panel, its market returns, one fit per cutoff.

    The market Series is computed once from the whole panel; its value on a date uses closes dated on or before
    it only, so a forecast at origin t reads nothing after t. Each refit's regression reads
    `panel.until(cutoff)` (every symbol's rows up to the cutoff, an expanding window).
    """

    def __init__(self, panel: Panel, tolerance_days: int = 7, **fit_kwargs: Any):
        self.panel, self.fit_kwargs = panel, fit_kwargs
        self.market = market_returns(panel.frames)
        self.cache: CutoffCache[HarFit] = CutoffCache(self._build, tolerance_days=tolerance_days)

    def _build(self, cutoff: pd.Timestamp) -> HarFit:
        frames = self.panel.until(cutoff)
        series = {s: (f["close"].to_numpy(np.float64), pd.DatetimeIndex(f.index)) for s, f in frames.items()}
        return HarFit(series, market_returns(frames), **self.fit_kwargs)


class HarT(_VectorisedForecaster):
    """Pooled HAR-t forecaster of one symbol (see the module docstring for the model).

    Args:
        pool: the backtest's shared `HarPool` (or pass `panel` to build a private one).
        symbol: this forecaster's symbol in the panel; None = found by matching the training closes.
        horizons: horizons fitted eagerly in `fit` (others on first use), so `fit_info_` reports them.
        per_symbol: the per-symbol regression without market terms is intended (the served pool's HAR-t,
            `mambacast.blend`), so `fit` does not warn that no panel was given.
    """

    name = "har_t"

    def __init__(self, pool: HarPool | None = None, symbol: str | None = None, *, panel: Panel | None = None,
                 horizons: Sequence[int] = (1, 5, 10, 30), per_symbol: bool = False, **fit_kwargs: Any) -> None:
        if pool is None and panel is not None:
            pool = HarPool(panel, **fit_kwargs)
        self.pool, self.symbol, self.horizons = pool, symbol, check_horizons(horizons)
        self.per_symbol = per_symbol   # the per-symbol regression is wanted (the served pool's): no warning
        self.fit_kwargs = fit_kwargs
        self.fit_: HarFit | None = None
        self.mu_: float | None = None
        self.floor_: float | None = None
        self.frame_: pd.DataFrame | None = None  # the panel's frame of this symbol (pooled fits)
        self.fit_info_: dict[str, Any] = {}
        self._warned = False

    def _log_once(self, message: str) -> None:
        level = logging.INFO if self._warned else logging.WARNING
        self._warned = True
        logger.log(level, "%s%s: %s", self.name, f" ({self.symbol})" if self.symbol else "", message)

    def fit(self, prices: np.ndarray) -> HarT:
        """Per-symbol regression without the market terms (no panel, or no dates)."""
        p = _check_prices(prices, min_len=3)
        if not self.per_symbol:
            self._log_once("no panel of dated prices: per-symbol HAR regression without the market terms")
        kwargs = self.pool.fit_kwargs if self.pool is not None else self.fit_kwargs
        self.fit_ = HarFit({self.symbol or "series": (p, None)}, None, **kwargs)
        self.frame_ = None
        return self._finish(p, next(iter(self.fit_.floor.values())), {"mode": "per-symbol"})

    def fit_dated(self, prices: np.ndarray, dates: pd.DatetimeIndex) -> HarT:
        """Pooled regression at the cutoff `dates[-1]` (shared through the pool); per-symbol without a panel."""
        p = _check_prices(prices, min_len=3)
        symbol = self._resolve(p, dates)
        if symbol is None:
            return self.fit(p)
        self.symbol = symbol
        fit = self.pool.cache.get(pd.Timestamp(dates[-1]))  # type: ignore[union-attr]
        if symbol not in fit.floor:
            self._log_once(f"{symbol} has no rows in the pooled fit; per-symbol regression")
            return self.fit(p)
        self.fit_, self.frame_ = fit, self.pool.panel.frames[symbol]  # type: ignore[union-attr]
        return self._finish(p, fit.floor[symbol], {"mode": "pooled", "cutoff": str(pd.Timestamp(dates[-1]).date()),
                                                   "n_symbols": len(fit.lp)})

    def _finish(self, p: np.ndarray, floor: float, info: dict[str, Any]) -> HarT:
        self.mu_, self.floor_ = float(np.mean(np.diff(np.log(p)))), floor
        info["horizons"] = {str(h): self.fit_.horizon(h).summary() for h in self.horizons}  # type: ignore[union-attr]
        self.fit_info_ = info
        return self

    def to_dict(self) -> dict[str, Any]:
        """A per-symbol fit as JSON-ready values (stored in a model's metadata); `from_dict` restores it."""
        _check_fitted(self.fit_, self.name)
        if self.fit_.market is not None:  # type: ignore[union-attr]
            raise ValueError("har_t: only a per-symbol fit (no market terms) can be stored")
        return {"mu": self.mu_, "floor": self.floor_,
                "horizons": {str(h): self.fit_.horizon(h).summary() for h in self.horizons}}  # type: ignore[union-attr]

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> HarT:
        """A fitted per-symbol HarT from `to_dict`'s output (no refit); ValueError for an invalid state."""
        fits = {int(h): HarHorizon.from_summary(int(h), v, 1 + len(LAGS)) for h, v in state["horizons"].items()}
        mu, floor = float(state["mu"]), float(state["floor"])
        if not fits or not (np.isfinite(mu) and np.isfinite(floor) and floor > 0):
            raise ValueError(f"HAR state is not a valid fit: mu {mu}, floor {floor}, horizons {sorted(fits)}")
        har = cls(horizons=sorted(fits), per_symbol=True)
        har.fit_, har.mu_, har.floor_ = HarFit({}, None, fits=fits), mu, floor
        har.fit_info_ = {"mode": "per-symbol", "stored": True}
        return har

    def _resolve(self, p: np.ndarray, dates: pd.DatetimeIndex) -> str | None:
        """The panel symbol whose closes on `dates` are `p` (the given symbol first), or None."""
        if self.pool is None or not isinstance(dates, pd.DatetimeIndex) or len(dates) != p.size:
            return None
        frames = self.pool.panel.frames
        candidates = [self.symbol] if self.symbol in frames else list(frames)
        for s in candidates:
            f = frames[s]
            if dates[0] in f.index and dates[-1] in f.index:
                part = f["close"].loc[dates[0]: dates[-1]].to_numpy(np.float64)
                if part.size == p.size and np.allclose(part, p, rtol=1e-12, atol=0):
                    return s
        self._log_once(f"training closes not found in the panel (symbol {self.symbol!r})")
        return None

    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        """Student-t forecasts at the origins (indices into prices, >= 1): mean mu h, scale c_h sqrt(V), df nu_h.

        Pooled fits read the origins' dates from the panel's frame of the symbol, whose first row must be
        prices[0] (as in the backtest, which hands over the same frame's closes).
        """
        hs = check_horizons(horizons)
        return Forecast.from_location_scale(hs, *self.law_many(prices, origins, hs))

    def law_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`predict_many`'s law without its quantiles: mean, scale and df, each (n_origins, H)."""
        _check_fitted(self.fit_, self.name)
        p = _check_prices(prices)
        o = _check_origins(origins, p.size, 1)
        hs = check_horizons(horizons)
        lp = np.log(p[: o.max() + 1])
        dates = None
        if self.frame_ is not None:
            closes = self.frame_["close"].to_numpy(np.float64)
            k = o.max() + 1
            if closes.size < k or not np.allclose(closes[[0, k - 1]], p[[0, k - 1]], rtol=1e-12, atol=0):
                raise ValueError(f"{self.name}: prices do not start at the first row of {self.symbol}'s panel "
                                 "frame; pass the same closes the panel holds")
            dates = pd.DatetimeIndex(self.frame_.index[o])
        scale, nu = self.fit_.law(lp, o, self.floor_, dates, hs)  # type: ignore[union-attr, arg-type]
        mean = np.outer(np.full(o.size, self.mu_), np.asarray(hs, dtype=np.float64))
        return mean, scale, np.broadcast_to(nu, mean.shape)
