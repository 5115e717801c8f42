"""`Forecast`: what every forecaster (the model and the baselines) returns, at one origin or many.

A multi-horizon forecast of log-returns `log(p[t+h] / p[t])`: a point (`mean`), optional quantiles and, for a
location-scale law, its scale and Student-t degrees of freedom; with the quantities a desk reads from it
(price quantiles, P(S_T > K)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["DEFAULT_QUANTILES", "Forecast", "check_horizons"]

#: Quantile levels every baseline reports: the 50/80/90% central intervals and the median.
DEFAULT_QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def check_horizons(horizons: object) -> list[int]:
    """`horizons` as a list of distinct positive ints; ValueError naming the problem otherwise."""
    hs = list(horizons)  # type: ignore[call-overload]
    if not hs or any(not isinstance(h, (int, np.integer)) or isinstance(h, bool) or h < 1 for h in hs):
        raise ValueError(f"horizons must be a non-empty list of positive integers, got {hs!r}")
    if len(set(hs)) != len(hs):
        raise ValueError(f"horizons must not repeat, got {hs!r}")
    return [int(h) for h in hs]


def _float_array(name: str, x: object) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"Forecast.{name} holds NaN/inf")
    return a


@dataclass(frozen=True, eq=False)
class Forecast:
    """Multi-horizon forecast of log-returns `log(p[t+h] / p[t])` at one origin or many.

    horizons   [h_1, ..., h_H] in trading days
    mean       (H,) or (n_origins, H): point forecast of the log-return (price point: p_t * exp(mean))
    quantiles  optional {level: array shaped like mean}, non-decreasing in the level
    scale      optional, shaped like mean: the predictive law is `mean + scale * Z`, Z ~ N(0, 1) if df is None,
               else Student-t(df) (scale is then the t scale; sd = scale * sqrt(df / (df - 2)))
    df         Student-t degrees of freedom, > 2 (inf = Gaussian): a scalar or an array broadcastable to mean
               (e.g. one per horizon), stored shaped like mean; or None (Gaussian)
    """

    horizons: list[int]
    mean: np.ndarray
    quantiles: dict[float, np.ndarray] | None = None
    scale: np.ndarray | None = None
    df: np.ndarray | float | None = None

    def __post_init__(self) -> None:
        horizons = check_horizons(self.horizons)
        mean = _float_array("mean", self.mean)
        if mean.ndim not in (1, 2) or mean.shape[-1] != len(horizons):
            raise ValueError(f"Forecast.mean must be (n_horizons,) or (n_origins, n_horizons) with "
                             f"n_horizons={len(horizons)}, got shape {mean.shape}")
        quantiles = None
        if self.quantiles is not None:
            quantiles = {float(q): _float_array(f"quantiles[{q}]", v) for q, v in sorted(self.quantiles.items())}
            if not quantiles or any(not 0 < q < 1 for q in quantiles):
                raise ValueError(f"Forecast.quantiles needs levels in (0, 1), got {list(quantiles)}")
            if any(v.shape != mean.shape for v in quantiles.values()):
                raise ValueError(f"every Forecast.quantiles array must have the shape of mean {mean.shape}")
            if np.any(np.diff(np.stack(list(quantiles.values())), axis=0) < 0):
                raise ValueError("Forecast.quantiles must be non-decreasing in the level")
        scale = None
        if self.scale is not None:
            scale = _float_array("scale", self.scale)
            if scale.shape != mean.shape or np.any(scale <= 0):
                raise ValueError(f"Forecast.scale must be > 0 with the shape of mean {mean.shape}")
        df = None
        if self.df is not None:
            df = np.asarray(self.df, dtype=np.float64)
            if scale is None or np.any(np.isnan(df)) or np.any(df <= 2):
                raise ValueError(f"Forecast.df must be > 2 (inf allowed) and needs a scale, got {self.df}")
            try:
                df = np.broadcast_to(df, mean.shape).copy()
            except ValueError:
                raise ValueError(f"Forecast.df of shape {df.shape} does not broadcast to mean {mean.shape}") from None
        object.__setattr__(self, "horizons", horizons)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "quantiles", quantiles)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "df", df)

    @classmethod
    def from_location_scale(
        cls,
        horizons: Sequence[int],
        mean: np.ndarray,
        scale: np.ndarray,
        df: np.ndarray | float | None = None,
        levels: Sequence[float] = DEFAULT_QUANTILES,
    ) -> Forecast:
        """Forecast of the law `mean + scale * Z` (Gaussian, or Student-t with df), with its quantiles at `levels`."""
        m, s = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        quantiles = {float(q): m + s * (stats.norm.ppf(q) if df is None else stats.t.ppf(q, df)) for q in levels}
        return cls(list(horizons), m, quantiles, s, df)

    @classmethod
    def stack(cls, forecasts: Sequence[Forecast]) -> Forecast:
        """Stack single-origin forecasts (same horizons and quantile levels) into one (n_origins, H) forecast."""
        if not forecasts:
            raise ValueError("cannot stack an empty list of forecasts")
        first = forecasts[0]
        for f in forecasts:
            if f.mean.ndim != 1 or f.horizons != first.horizons:
                raise ValueError("stack needs single-origin forecasts with equal horizons")
            if any((getattr(f, a) is None) != (getattr(first, a) is None) for a in ("quantiles", "scale", "df")):
                raise ValueError("stack needs forecasts that all have (or all lack) quantiles, scale and df")
            if f.quantiles is not None and list(f.quantiles) != list(first.quantiles or {}):
                raise ValueError("stack needs forecasts with the same quantile levels")
        quantiles = None if first.quantiles is None else {
            q: np.stack([f.quantiles[q] for f in forecasts]) for q in first.quantiles  # type: ignore[index]
        }
        scale = None if first.scale is None else np.stack([f.scale for f in forecasts])
        df = None if first.df is None else np.stack([f.df for f in forecasts])
        return cls(first.horizons, np.stack([f.mean for f in forecasts]), quantiles, scale, df)

    @property
    def n_origins(self) -> int | None:
        """Number of origins of a many-origin forecast; None for a single-origin one."""
        return self.mean.shape[0] if self.mean.ndim == 2 else None

    def at(self, i: int) -> Forecast:
        """The single-origin forecast at row `i` of a many-origin forecast."""
        if self.mean.ndim != 2:
            raise ValueError("at() needs a many-origin forecast (mean of shape (n_origins, n_horizons))")
        quantiles = None if self.quantiles is None else {q: v[i] for q, v in self.quantiles.items()}
        return Forecast(self.horizons, self.mean[i], quantiles, None if self.scale is None else self.scale[i],
                        None if self.df is None else self.df[i])

    def price_point(self, current_price: float | np.ndarray) -> np.ndarray:
        """Point price forecast `p_t * exp(mean)`: (H,), or (n_origins, H) with current_price (n_origins,)."""
        return self._prices(current_price) * np.exp(self.mean)

    def price_quantiles(self, current_price: float | np.ndarray) -> dict[float, np.ndarray]:
        """Price quantiles `p_t * exp(q_level)` (exact: exp is increasing), shaped like mean."""
        if self.quantiles is None:
            raise ValueError("this forecast has no quantiles")
        p = self._prices(current_price)
        return {q: p * np.exp(v) for q, v in self.quantiles.items()}

    def cdf(self, log_return: float | np.ndarray, horizon_index: int) -> float | np.ndarray:
        """P(r_h <= log_return) at horizon `horizons[horizon_index]`: scalar, or (n_origins,).

        Exact for a parametric forecast (scale set). From quantiles alone, the CDF is interpolated linearly
        between the quantile points and clamped to [lowest level, highest level] outside them: beyond the
        outermost quantiles a quantile forecast only bounds the tail probability.
        """
        x = np.asarray(log_return, dtype=np.float64)
        m = self.mean[..., horizon_index]
        if self.scale is not None:
            z = (x - m) / self.scale[..., horizon_index]
            u = stats.norm.cdf(z) if self.df is None else stats.t.cdf(z, self.df[..., horizon_index])
        elif self.quantiles is not None and len(self.quantiles) >= 2:
            levels = np.array(list(self.quantiles))
            qv = np.stack([v[..., horizon_index] for v in self.quantiles.values()], axis=-1)
            u = _interp_cdf(np.broadcast_to(x, m.shape), qv, levels)
        else:
            raise ValueError("this forecast has no distribution (needs scale, or at least two quantiles)")
        return float(u) if np.ndim(u) == 0 else u

    def prob_above(self, current_price: float | np.ndarray, strike: float, horizon_index: int) -> float | np.ndarray:
        """P(p_{t+h} > strike) = 1 - F_h(log(strike / p_t)) at horizon `horizons[horizon_index]`."""
        if not strike > 0:
            raise ValueError(f"strike must be > 0, got {strike}")
        return 1.0 - self.cdf(np.log(strike / self._origin_prices(current_price)), horizon_index)

    def _origin_prices(self, current_price: float | np.ndarray) -> np.ndarray:
        """current_price as a scalar array (single origin) or (n_origins,) (many origins)."""
        p = np.asarray(current_price, dtype=np.float64)
        if np.any(~np.isfinite(p)) or np.any(p <= 0):
            raise ValueError("current_price must be finite and > 0")
        expected = () if self.mean.ndim == 1 else (self.mean.shape[0],)
        if p.shape != expected and not (p.ndim == 0 and self.mean.ndim == 2):
            raise ValueError(f"current_price must have shape {expected} (a scalar is also accepted for many "
                             f"origins), got {p.shape}")
        return p

    def _prices(self, current_price: float | np.ndarray) -> np.ndarray:
        """current_price broadcastable against mean."""
        p = self._origin_prices(current_price)
        return p[..., None] if p.ndim == 1 else p


def _interp_cdf(x: np.ndarray, qv: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Piecewise-linear CDF through the points (qv[..., k], levels[k]), clamped to [levels[0], levels[-1]]."""
    idx = np.clip(np.sum(qv <= x[..., None], axis=-1), 1, levels.size - 1)
    lo = np.take_along_axis(qv, (idx - 1)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(qv, idx[..., None], axis=-1)[..., 0]
    gap = hi - lo
    w = np.divide(x - lo, gap, out=np.ones_like(gap), where=gap > 0)
    return np.clip(levels[idx - 1] + w * (levels[idx] - levels[idx - 1]), levels[0], levels[-1])
