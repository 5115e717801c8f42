"""The Diebold-Mariano test of equal expected loss, and the row of it the backtest's tables report.

Diebold & Mariano (1995), JBES 13(3), with the small-sample correction of Harvey, Leybourne & Newbold (1997),
IJF 13(2); the formulas are written out in docs/evaluation.md. `evaluate.metrics` re-exports `diebold_mariano`.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from scipy import stats

from ._validate import same_shape, vector

__all__ = ["Alternative", "diebold_mariano", "dm_row"]

logger = logging.getLogger(__name__)

Alternative = Literal["two-sided", "less", "greater"]


def _dm_variance(d: np.ndarray, h: int) -> float:
    """`(gamma_0 + 2 sum_{k=1}^{h-1} gamma_k) / n` with `gamma_k = (1/n) sum_t (d_t - dbar)(d_{t-k} - dbar)`."""
    n = d.size
    e = d - d.mean()
    gamma = [float(e[k:] @ e[: n - k]) / n for k in range(h)]
    return (gamma[0] + 2 * sum(gamma[1:])) / n


def diebold_mariano(
    loss_a: object, loss_b: object, h: int = 1, alternative: Alternative = "two-sided"
) -> tuple[float, float]:
    """Diebold-Mariano test of equal expected loss with the Harvey-Leybourne-Newbold correction.

    `d_t = loss_a_t - loss_b_t`, `DM = dbar / sqrt(V)` with `V = (gamma_0 + 2 sum_{k=1}^{h-1} gamma_k) / n`
    (Diebold & Mariano 1995: h-step errors are MA(h-1)); the HLN statistic
    `DM* = DM * sqrt((n + 1 - 2h + h(h-1)/n) / n)` is compared with Student-t, n-1 df
    (Harvey, Leybourne & Newbold 1997).
    `alternative`: "two-sided"; "less" = a has lower expected loss than b; "greater" = a has higher.

    Degenerate variance: if V <= 0 with h > 1 (the rectangular window is not positive definite), the test is
    redone with h = 1, as R's `forecast::dm.test` does, and a warning is logged. If d is constant
    (gamma_0 = 0): identical losses give (0.0, 1.0); a constant non-zero difference gives stat = +-inf with the
    limiting p-value (0 for the side it favours, 1 for the other).

    Shapes: loss_a, loss_b (n,) per-period losses of the same targets, in time order; n >= 2h.
    """
    a, b = vector("loss_a", loss_a), vector("loss_b", loss_b)
    same_shape(loss_a=a, loss_b=b)
    if not isinstance(h, (int, np.integer)) or h < 1:
        raise ValueError(f"h must be a positive integer horizon, got {h!r}")
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(f"alternative must be 'two-sided', 'less' or 'greater', got {alternative!r}")
    d = a - b
    n = d.size
    if n < max(2, 2 * h):
        raise ValueError(f"need at least max(2, 2h) = {max(2, 2 * h)} loss pairs for h={h}, got {n}")
    var = _dm_variance(d, h)
    if var <= 0 and h > 1:
        logger.warning("diebold_mariano: non-positive variance estimate at h=%d; redoing the test with h=1", h)
        return diebold_mariano(a, b, h=1, alternative=alternative)
    dbar = float(d.mean())
    if var <= 0:
        if dbar == 0:
            return 0.0, 1.0
        stat = float(np.copysign(np.inf, dbar))
    else:
        hln = np.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
        stat = float(dbar / np.sqrt(var) * hln)
    t = stats.t(df=n - 1)
    if alternative == "two-sided":
        p = 2 * t.sf(abs(stat))
    elif alternative == "less":
        p = t.cdf(stat)
    else:
        p = t.sf(stat)
    return stat, float(min(p, 1.0))


def dm_row(loss_ref: np.ndarray, loss_other: np.ndarray, h: int) -> dict[str, float]:
    """One table row of the test of `loss_ref` against `loss_other` (n,) at horizon h: the statistic, the two-sided
    p-value, `p_better` (ref has the lower expected loss), `p_worse`, the mean-loss ratio and n; NaN figures when
    n < max(2, 2h)."""
    n = loss_ref.size
    if n < max(2, 2 * h):
        return {"stat": float("nan"), "p_value": float("nan"), "p_better": float("nan"), "p_worse": float("nan"),
                "loss_ratio": float("nan"), "n": float(n)}
    stat, p = diebold_mariano(loss_ref, loss_other, h=h)
    _, p_less = diebold_mariano(loss_ref, loss_other, h=h, alternative="less")
    _, p_greater = diebold_mariano(loss_ref, loss_other, h=h, alternative="greater")
    other = float(loss_other.mean())
    return {"stat": stat, "p_value": p, "p_better": p_less, "p_worse": p_greater,
            "loss_ratio": float(loss_ref.mean()) / other if other > 0 else float("nan"), "n": float(n)}
