"""The served distribution: the network's Student-t pooled with the stock's own GARCH(1,1)-t and HAR-t.

The network, GARCH(1,1)-t and a HAR regression of realised variance read the same closes but estimate
volatility differently (the network from a fixed-parameter GARCH baseline plus learned corrections over pooled
stocks, GARCH-t from its own maximum-likelihood fit per stock, HAR-t from a regression on 1/5/22/66-day realised
variance per stock). Their errors are far from perfectly correlated, so an equal-weight combination beats each
alone (the forecast-combination result of Bates & Granger 1969; Timmermann 2006 reviews why equal weights are
hard to beat). On the tuning period (2004-2009, docs/results.md) the network alone tied GARCH-t; pooled with
GARCH-t its CRPS was 0.1-0.6% lower, and pooled with GARCH-t and the per-stock HAR-t 0.1-0.8% lower, better
than both classical models at every horizon.

The pool is linear in the location and log-linear in the standard deviation, with the network's tail:

    mu     = w_net mu_net + sum_k w_k mu_k                    k in (GARCH-t, HAR-t), w_net = 1 - sum_k w_k
    log sd = w_net log sd_net + sum_k w_k log sd_k,           sd = scale sqrt(nu / (nu - 2)) of each Student-t
    scale  = sd sqrt((nu_net - 2) / nu_net),                  nu = nu_net

with w_GARCH = `garch_weight` and w_HAR = `har_weight` (both 1/3 by default; both 0: the network alone, the
model of earlier versions). A single Student-t keeps the product's closed forms (quantiles, P(S_T > K), the
CRPS) exact; a mixture of the laws would not.

Both classical models are fitted per symbol at training time on the training closes (stale-price stretches
excluded): `fit_garch` is the backtest's `GarchT` (degenerate fits refused for a historical-volatility
Gaussian), `fit_har` the backtest's HAR-t regression on the symbol alone (`HarT(per_symbol=True)`: without the
market terms of the pooled `har_t` baseline, so a request needs nothing but the symbol's closes). Their fits are
stored in the model's metadata (`Blend.to_dict`); a model serving a symbol it was not trained on fits both on
the request's history.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .evaluate.baselines import GarchT
from .evaluate.har import HarT

__all__ = ["GARCH_WEIGHT", "HAR_WEIGHT", "Blend", "pool_student_t", "check_weights", "fit_garch", "fit_har"]

log = logging.getLogger(__name__)

#: Weights of GARCH(1,1)-t and of HAR-t in the served distribution: equal thirds with the network, chosen on
#: the tuning period (docs/results.md, "the tuning period") before the 2010-2022 backtest, not fitted.
GARCH_WEIGHT = 1.0 / 3.0
HAR_WEIGHT = 1.0 / 3.0


def fit_garch(closes: np.ndarray) -> GarchT:
    """GARCH(1,1)-t fitted on one symbol's closes (n_days,), as the backtest's baseline fits it."""
    return GarchT().fit(np.asarray(closes, dtype=np.float64))


def fit_har(closes: np.ndarray, horizons: Sequence[int]) -> HarT:
    """HAR-t fitted on one symbol's closes (n_days,) alone, one regression per horizon."""
    return HarT(horizons=horizons, per_symbol=True).fit(np.asarray(closes, dtype=np.float64))


def _sd(scale: np.ndarray, df: np.ndarray | float | None) -> np.ndarray:
    """Standard deviation of `scale * t(df)` (Gaussian when df is None or infinite)."""
    if df is None:
        return np.asarray(scale, dtype=np.float64)
    d = np.asarray(df, dtype=np.float64)
    return scale * np.sqrt(np.where(np.isfinite(d), d / np.maximum(d - 2.0, 1e-12), 1.0))


Component = tuple[float, np.ndarray, np.ndarray, "np.ndarray | float | None"]


def pool_student_t(loc: np.ndarray, scale: np.ndarray, df: np.ndarray,
                   others: Sequence[Component]) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale of the pooled Student-t (module docstring), its df being the network's `df`.

    loc, scale (n, H) the network's (scale calibrated); df (H,) its degrees of freedom (> 2);
    others: (weight, loc (n, H), scale (n, H), df ((n, H), a number, or None: Gaussian)) of each classical
    model, weights summing to at most 1 (the network gets the rest). Returns loc, scale (n, H).
    """
    others = [o for o in others if o[0] > 0.0]
    if not others:
        return loc, scale
    w_net = 1.0 - sum(w for w, *_ in others)
    df = np.asarray(df, dtype=np.float64)
    mu = w_net * loc + sum(w * m for w, m, _, _ in others)
    log_sd = w_net * np.log(_sd(scale, df)) + sum(w * np.log(_sd(s, d)) for w, _, s, d in others)
    return mu, np.exp(log_sd) * np.sqrt((df - 2.0) / df)


def check_weights(garch_weight: float, har_weight: float) -> None:
    """ValueError unless both weights lie in [0, 1] and leave the network a non-negative share."""
    for name, w in (("garch_weight", garch_weight), ("har_weight", har_weight)):
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"{name}={w!r} is invalid: must be in [0, 1]")
    if garch_weight + har_weight > 1.0 + 1e-9:
        raise ValueError(f"garch_weight + har_weight = {garch_weight + har_weight:g} is invalid: must be <= 1 "
                         "(the network's weight is 1 minus their sum)")


@dataclass
class Blend:
    """The classical side of a model: the weights and the per-symbol fits, kept with the model's metadata."""

    garch_weight: float = GARCH_WEIGHT
    har_weight: float = HAR_WEIGHT
    horizons: list[int] = field(default_factory=list)
    garch: dict[str, GarchT] = field(default_factory=dict)
    har: dict[str, HarT] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_weights(self.garch_weight, self.har_weight)

    @classmethod
    def network_alone(cls) -> Blend:
        return cls(0.0, 0.0)

    @classmethod
    def fit(cls, closes_by_symbol: Mapping[str, np.ndarray], horizons: Sequence[int],
            garch_weight: float = GARCH_WEIGHT, har_weight: float = HAR_WEIGHT) -> Blend:
        """Fit each weighted model on each symbol's closes (none for a weight of 0)."""
        blend = cls(garch_weight, har_weight, [int(h) for h in horizons])
        for symbol, closes in closes_by_symbol.items():
            blend._fit_symbol(symbol, closes)
        return blend

    def _fit_symbol(self, symbol: str, closes: np.ndarray) -> None:
        if self.garch_weight > 0:
            self.garch[symbol] = fit_garch(closes)
        if self.har_weight > 0:
            self.har[symbol] = fit_har(closes, self.horizons)

    def to_dict(self) -> dict[str, object]:
        return {"garch_weight": self.garch_weight, "har_weight": self.har_weight, "horizons": self.horizons,
                "garch": {s: g.to_dict() for s, g in self.garch.items()},
                "har": {s: h.to_dict() for s, h in self.har.items()},
                "rule": "loc and log-sd pooled with weights garch_weight on GARCH(1,1)-t and har_weight on the "
                        "per-symbol HAR-t; the network's tail"}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object]) -> Blend:
        """The blend stored in a model's metadata (ValueError when invalid). A model stored without one is the
        network alone; one stored with GARCH-t only (before HAR-t joined the pool) is served as it was."""
        state = meta.get("blend")
        if state is None:
            return cls.network_alone()
        blend = cls(float(state["garch_weight"]), float(state.get("har_weight", 0.0)),  # type: ignore[union-attr]
                    [int(h) for h in state.get("horizons", [])])  # type: ignore[union-attr]
        blend.garch = {s: GarchT.from_dict(g) for s, g in state["garch"].items()}  # type: ignore[index]
        blend.har = {s: HarT.from_dict(h) for s, h in state.get("har", {}).items()}  # type: ignore[union-attr]
        if blend.har_weight > 0 and not blend.horizons:
            raise ValueError("blend.har_weight > 0 but blend.horizons is empty")
        return blend

    def _fits_for(self, symbol: str, closes: np.ndarray) -> tuple[GarchT | None, HarT | None]:
        """The stored fits of `symbol`, or (a symbol the model was not trained on) ones fitted on `closes`,
        kept for the next request."""
        if (self.garch_weight > 0 and symbol not in self.garch) or (self.har_weight > 0 and symbol not in self.har):
            log.info("%s: no stored GARCH-t / HAR-t fit; fitting them on the %d closes given", symbol, len(closes))
            self._fit_symbol(symbol, np.asarray(closes, dtype=np.float64))
        return self.garch.get(symbol), self.har.get(symbol)

    def apply(self, symbol: str, closes: np.ndarray, origins: Sequence[int], horizons: Sequence[int],
              loc: np.ndarray, df: np.ndarray, *scales: np.ndarray) -> tuple[np.ndarray, ...]:
        """The served loc and scales (n_origins, H) at `origins` (rows of closes) from the network's loc and
        one or more of its scales (e.g. calibrated and raw), each classical model run once for all of them."""
        if self.garch_weight == 0.0 and self.har_weight == 0.0:
            return (loc, *scales)
        garch, har = self._fits_for(symbol, closes)
        others: list[Component] = []
        for w, model in ((self.garch_weight, garch), (self.har_weight, har)):
            if w > 0:   # the law alone: the pool reads no quantile of its members
                others.append((w, *model.law_many(closes, origins, horizons)))  # type: ignore[union-attr]
        pooled = [pool_student_t(loc, s, df, others) for s in scales]
        return (pooled[0][0], *(scale for _, scale in pooled))
