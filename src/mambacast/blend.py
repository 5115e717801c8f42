"""The served distribution: the network's Student-t pooled with a per-stock GARCH(1,1)-t.

The network and GARCH(1,1)-t read the same closes but estimate volatility differently (the network from a
fixed-parameter GARCH baseline plus learned corrections over pooled stocks, GARCH-t from its own
maximum-likelihood fit per stock). Their errors are far from perfectly correlated, so an equal-weight
combination beats either alone (the forecast-combination result of Bates & Granger 1969; Timmermann 2006
reviews why equal weights are hard to beat). On the tuning period (2004-2009, docs/results.md) the
network alone tied GARCH-t while the combination's CRPS was 0.1-0.6% lower at every horizon.

The pool is log-linear in the standard deviation and linear in the location, with the network's tail:

    mu   = (1 - w) mu_net + w mu_garch
    log sd = (1 - w) log sd_net + w log sd_garch,     sd = scale sqrt(nu / (nu - 2)) of each Student-t
    scale = sd sqrt((nu_net - 2) / nu_net),           nu = nu_net

with w = `garch_weight` (0: the network alone, the model of earlier versions; 1: GARCH-t's location and
scale with the network's tail). A single Student-t keeps the product's closed forms (quantiles, P(S_T > K),
the CRPS) exact; a mixture of the two laws would not.

GARCH-t is fitted per symbol at training time on the training closes (`fit_garch`, the backtest's `GarchT`:
stale-price stretches excluded, degenerate fits refused for a historical-volatility Gaussian) and stored in
the model's metadata (`GarchBlend.to_dict`); a global model serving a symbol it was not trained on fits
GARCH-t on the request's history.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .evaluate.baselines import GarchT

__all__ = ["GARCH_WEIGHT", "GarchBlend", "blend_student_t", "fit_garch"]

log = logging.getLogger(__name__)

#: Weight of GARCH(1,1)-t in the served distribution: equal weights, chosen before the 2010-2022 backtest
#: (docs/results.md, "the tuning period"), not fitted.
GARCH_WEIGHT = 0.5


def fit_garch(closes: np.ndarray) -> GarchT:
    """GARCH(1,1)-t fitted on one symbol's closes (n_days,), as the backtest's baseline fits it."""
    return GarchT().fit(np.asarray(closes, dtype=np.float64))


def _sd(scale: np.ndarray, df: np.ndarray | float | None) -> np.ndarray:
    """Standard deviation of `scale * t(df)` (Gaussian when df is None or infinite)."""
    if df is None:
        return np.asarray(scale, dtype=np.float64)
    d = np.asarray(df, dtype=np.float64)
    return scale * np.sqrt(np.where(np.isfinite(d), d / np.maximum(d - 2.0, 1e-12), 1.0))


def blend_student_t(loc: np.ndarray, scale: np.ndarray, df: np.ndarray, g_loc: np.ndarray, g_scale: np.ndarray,
                    g_df: float | None, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale of the pooled Student-t (module docstring), its df being the network's `df`.

    loc, scale (n, H) the network's (scale calibrated); df (H,) its degrees of freedom (> 2);
    g_loc, g_scale (n, H) GARCH-t's, g_df its nu (None: Gaussian). Returns loc, scale (n, H).
    """
    if weight == 0.0:
        return loc, scale
    df = np.asarray(df, dtype=np.float64)
    log_sd = (1.0 - weight) * np.log(_sd(scale, df)) + weight * np.log(_sd(g_scale, g_df))
    return (1.0 - weight) * loc + weight * g_loc, np.exp(log_sd) * np.sqrt((df - 2.0) / df)


@dataclass
class GarchBlend:
    """The GARCH-t side of a model: its weight and the fits per symbol, kept with the model's metadata."""

    weight: float = GARCH_WEIGHT
    fits: dict[str, GarchT] = field(default_factory=dict)

    @classmethod
    def fit(cls, closes_by_symbol: Mapping[str, np.ndarray], weight: float = GARCH_WEIGHT) -> GarchBlend:
        """Fit GARCH-t on each symbol's closes (none when weight is 0: the network alone)."""
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"garch_weight={weight!r} is invalid: must be in [0, 1]")
        fits = {s: fit_garch(c) for s, c in closes_by_symbol.items()} if weight > 0 else {}
        return cls(weight, fits)

    def to_dict(self) -> dict[str, object]:
        return {"garch_weight": self.weight, "garch": {s: g.to_dict() for s, g in self.fits.items()},
                "rule": "loc and log-sd pooled with weight garch_weight on GARCH(1,1)-t; the network's tail"}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object]) -> GarchBlend:
        """The blend stored in a model's metadata; a model stored without one is the network alone."""
        state = meta.get("blend")
        if state is None:
            return cls(0.0)
        weight = float(state["garch_weight"])  # type: ignore[index]
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"blend.garch_weight={weight!r} must be in [0, 1]")
        return cls(weight, {s: GarchT.from_dict(g) for s, g in state["garch"].items()})  # type: ignore[index]

    def garch_for(self, symbol: str, closes: np.ndarray) -> GarchT:
        """The stored fit of `symbol`, or (a symbol the model was not trained on) one fitted on `closes`,
        kept for the next request."""
        if symbol not in self.fits:
            log.info("%s: no stored GARCH(1,1)-t fit; fitting one on the %d closes given", symbol, len(closes))
            self.fits[symbol] = fit_garch(closes)
        return self.fits[symbol]

    def apply(self, symbol: str, closes: np.ndarray, origins: Sequence[int], horizons: Sequence[int],
              loc: np.ndarray, df: np.ndarray, *scales: np.ndarray) -> tuple[np.ndarray, ...]:
        """The served loc and scales (n_origins, H) at `origins` (rows of closes) from the network's loc and
        one or more of its scales (e.g. calibrated and raw), GARCH-t filtered once for all of them."""
        if self.weight == 0.0:
            return (loc, *scales)
        g = self.garch_for(symbol, closes).predict_many(closes, origins, horizons)
        pooled = [blend_student_t(loc, s, df, g.mean, g.scale, g.df, self.weight) for s in scales]  # type: ignore[arg-type]
        return (pooled[0][0], *(scale for _, scale in pooled))
