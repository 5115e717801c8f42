"""Forecast metrics and tests: point errors, direction, proper scoring rules, calibration, Diebold-Mariano
(`diebold_mariano` lives in `evaluate.dm` and is re-exported here; the argument checks in `evaluate._validate`).

Conventions
-----------
* Inputs are numpy arrays (anything `np.asarray` accepts); every function rejects empty arrays,
  NaN/inf and mismatched shapes with a `ValueError` that names the argument.
* Point metrics (`mae`, `rmse`, `mase`) return one float.
* Scoring rules (`pinball_loss`, `crps_*`) return one score per forecast, shape `(n,)` (`pinball_loss`:
  `(n, n_quantiles)`), so that they can feed `diebold_mariano`; average them for the mean score.
  All are negatively oriented: lower is better.
* `n` is the number of forecast origins of one series at one horizon; quantile forecasts are
  `(n, n_quantiles)` with levels `quantiles` of shape `(n_quantiles,)`, strictly increasing in (0, 1).

References: Diebold & Mariano (1995), JBES 13(3); Harvey, Leybourne & Newbold (1997), IJF 13(2);
Gneiting & Raftery (2007), JASA 102(477); Hyndman & Koehler (2006), IJF 22(4).
The formulas are written out in docs/evaluation.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import scoringrules as sr
from scipy import stats

from ._validate import finite_array, positive, quantile_forecasts, same_shape, vector
from .dm import Alternative, diebold_mariano

__all__ = [
    "INTERVALS",
    "DirectionCounts",
    "mae",
    "rmse",
    "mase",
    "direction_counts",
    "direction_accuracy",
    "pinball_loss",
    "crps_gaussian",
    "crps_student_t",
    "crps_from_quantiles",
    "crps_ensemble",
    "interval_coverage",
    "pit_values",
    "calibration_curve",
    "brier_score",
    "reliability_table",
    "pit_histogram",
    "diebold_mariano",
    "evaluate_forecasts",
]

logger = logging.getLogger(__name__)

#: Central prediction intervals reported by `evaluate_forecasts`: nominal coverage -> (lower, upper) level.
INTERVALS: dict[int, tuple[float, float]] = {50: (0.25, 0.75), 80: (0.1, 0.9), 90: (0.05, 0.95)}


# ------------------------------------------------------------------------------------------- point errors


def mae(y_true: object, y_pred: object) -> float:
    """Mean absolute error `mean|y - yhat|` over arrays of any (equal) shape."""
    y, p = finite_array("y_true", y_true), finite_array("y_pred", y_pred)
    same_shape(y_true=y, y_pred=p)
    return float(np.mean(np.abs(y - p)))


def rmse(y_true: object, y_pred: object) -> float:
    """Root mean squared error `sqrt(mean (y - yhat)^2)` over arrays of any (equal) shape."""
    y, p = finite_array("y_true", y_true), finite_array("y_pred", y_pred)
    same_shape(y_true=y, y_pred=p)
    return float(np.sqrt(np.mean((y - p) ** 2)))


def mase(y_true: object, y_pred: object, insample: object, m: int = 1) -> float:
    """Mean absolute scaled error (Hyndman & Koehler 2006).

    `MASE = mean|y - yhat| / Q`, `Q = mean_{t>m} |x_t - x_{t-m}|` over the in-sample (training) series `x`:
    the in-sample MAE of the naive forecast `x_{t-m}`. For `h`-step forecasts of a price, pass the training
    prices and `m=h`, so the scale is the in-sample error of the random walk at the same horizon and
    MASE < 1 means "better than the random walk". For `h`-day log-returns pass the training *log-prices*
    and `m=h`: a log-return error equals the log-price error, and the naive forecast is a zero log-return.

    Shapes: y_true, y_pred (n,) (any equal shape); insample (n_train,), n_train > m.
    """
    y, p = finite_array("y_true", y_true), finite_array("y_pred", y_pred)
    same_shape(y_true=y, y_pred=p)
    x = vector("insample", insample)
    if not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a positive integer lag, got {m!r}")
    if x.size <= m:
        raise ValueError(f"insample has {x.size} values: need more than m={m} for the naive scale")
    scale = float(np.mean(np.abs(x[m:] - x[:-m])))
    if scale == 0.0:
        raise ValueError(f"insample is constant at lag m={m}: the naive in-sample error is 0 and MASE is undefined")
    return float(np.mean(np.abs(y - p))) / scale


# ----------------------------------------------------------------------------------------------- direction


class DirectionCounts(NamedTuple):
    """Sign agreement of realised and predicted moves."""

    hits: int  #: pairs with sign(y) == sign(yhat), both non-zero
    n_used: int  #: pairs with both signs non-zero
    n_zero_pred: int  #: pairs excluded because the prediction is exactly 0 (no call)
    n_zero_true: int  #: pairs with a non-zero prediction excluded because the realised move is exactly 0


def direction_counts(y_true_ret: object, y_pred_ret: object) -> DirectionCounts:
    """Count sign hits; a zero prediction makes no directional call, a zero realised move has no direction.

    Shapes: y_true_ret, y_pred_ret (n,) (any equal shape).
    """
    y, p = finite_array("y_true_ret", y_true_ret), finite_array("y_pred_ret", y_pred_ret)
    same_shape(y_true_ret=y, y_pred_ret=p)
    zero_pred = p == 0
    zero_true = (y == 0) & ~zero_pred
    used = ~(zero_pred | zero_true)
    hits = int(np.count_nonzero(np.sign(y[used]) == np.sign(p[used])))
    return DirectionCounts(hits, int(used.sum()), int(zero_pred.sum()), int(zero_true.sum()))


def direction_accuracy(
    y_true_ret: object, y_pred_ret: object, alternative: Alternative = "two-sided"
) -> tuple[float, float]:
    """Hit rate of predicted signs and its exact binomial p-value against 50%.

    `accuracy = hits / n_used`; `p = binomtest(hits, n_used, 0.5, alternative)` (exact, scipy). Pairs with a
    zero prediction or a zero realised move are excluded (see `direction_counts`) and logged. With nothing
    left (e.g. the random walk, which always predicts 0) returns `(nan, nan)`.
    Note the test assumes independent signs; overlapping h-step returns (h > 1) are autocorrelated and
    make it anti-conservative.
    """
    c = direction_counts(y_true_ret, y_pred_ret)
    if c.n_zero_pred or c.n_zero_true:
        logger.info("direction_accuracy: excluded %d zero predictions and %d zero realised moves of %d",
                    c.n_zero_pred, c.n_zero_true, c.n_used + c.n_zero_pred + c.n_zero_true)
    if c.n_used == 0:
        logger.warning("direction_accuracy: no pair with a non-zero prediction and move; returning nan")
        return float("nan"), float("nan")
    p_value = stats.binomtest(c.hits, c.n_used, 0.5, alternative=alternative).pvalue
    return c.hits / c.n_used, float(p_value)


# ------------------------------------------------------------------------------------------- scoring rules


def pinball_loss(y: object, q_pred: object, quantiles: object) -> np.ndarray:
    """Pinball (quantile) loss `rho_tau(y - q) = (y - q) * (tau - 1{y < q})`, per observation and level.

    Shapes: y (n,), q_pred (n, n_q), quantiles (n_q,) -> (n, n_q). A proper score for the tau-quantile
    (Gneiting & Raftery 2007, sec. 9); `2 * mean` over a dense level grid approximates the CRPS.
    """
    y_, p, q = quantile_forecasts(y, q_pred, quantiles)
    u = y_[:, None] - p
    return u * (q[None, :] - (u < 0))


def crps_gaussian(y: object, mu: object, sigma: object) -> np.ndarray:
    """Closed-form CRPS of N(mu, sigma^2) at y (Gneiting & Raftery 2007, eq. 21).

    `CRPS = sigma * [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]`, `z = (y - mu) / sigma`.
    Shapes: y (n,); mu, sigma (n,) or scalars -> (n,).
    """
    y_ = vector("y", y)
    m = np.broadcast_to(finite_array("mu", mu), y_.shape)
    s = positive("sigma", sigma, y_.shape)
    z = (y_ - m) / s
    return s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


def crps_student_t(y: object, df: object, loc: object, scale: object) -> np.ndarray:
    """Closed-form CRPS of the location-scale Student-t `loc + scale * T_df` at y (scoringrules `crps_t`).

    `scale` is the t scale, not the standard deviation (`sd = scale * sqrt(df / (df - 2))`). Needs df > 1;
    df = inf is the Gaussian limit and uses `crps_gaussian`. Shapes: y (n,); df, loc, scale (n,) or scalars -> (n,).
    """
    y_ = vector("y", y)
    nu = np.broadcast_to(np.asarray(df, dtype=np.float64), y_.shape)
    if np.any(np.isnan(nu)) or np.any(nu <= 1):
        raise ValueError("df must be > 1 (inf allowed) for the CRPS of a Student-t to be finite")
    m = np.broadcast_to(finite_array("loc", loc), y_.shape)
    s = positive("scale", scale, y_.shape)
    gaussian = np.isinf(nu)
    out = np.empty_like(y_)
    out[gaussian] = crps_gaussian(y_[gaussian], m[gaussian], s[gaussian]) if gaussian.any() else 0.0
    t = ~gaussian
    out[t] = np.asarray(sr.crps_t(y_[t], nu[t], m[t], s[t]), dtype=np.float64) if t.any() else 0.0
    return out


def crps_from_quantiles(y: object, q_pred: object, quantiles: object) -> np.ndarray:
    """CRPS approximated from quantile forecasts (scoringrules `crps_quantile`): `(2 / n_q) * sum_tau rho_tau`.

    Accurate when the levels are a dense, evenly spaced grid; with a few levels it is the scaled
    mean pinball loss. Shapes: y (n,), q_pred (n, n_q), quantiles (n_q,) -> (n,).
    """
    y_, p, q = quantile_forecasts(y, q_pred, quantiles)
    return np.asarray(sr.crps_quantile(y_, p, q), dtype=np.float64)


def crps_ensemble(y: object, members: object) -> np.ndarray:
    """CRPS of an ensemble (sample) forecast, `E|X - y| - E|X - X'| / 2` (scoringrules `crps_ensemble`).

    Shapes: y (n,), members (n, n_members) -> (n,).
    """
    y_ = vector("y", y)
    e = finite_array("members", members)
    if e.ndim != 2 or e.shape[0] != y_.size:
        raise ValueError(f"members must have shape (n, n_members) with n={y_.size}, got {e.shape}")
    return np.asarray(sr.crps_ensemble(y_, e), dtype=np.float64)


# ------------------------------------------------------------------------------------------- calibration


def interval_coverage(y: object, lower: object, upper: object) -> tuple[float, float]:
    """Empirical coverage `mean(lower <= y <= upper)` and mean width `mean(upper - lower)`.

    Shapes: y, lower, upper (n,) (any equal shape). Raises if any lower > upper.
    """
    y_, lo, hi = finite_array("y", y), finite_array("lower", lower), finite_array("upper", upper)
    same_shape(y=y_, lower=lo, upper=hi)
    if np.any(lo > hi):
        raise ValueError(f"lower > upper at {int(np.count_nonzero(lo > hi))} position(s): bounds are swapped")
    return float(np.mean((lo <= y_) & (y_ <= hi))), float(np.mean(hi - lo))


def pit_values(y: object, cdf: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Probability integral transform `u_i = F_i(y_i)`: each forecast's CDF at its own realisation.

    `cdf` maps the realisations (n,) to their forecast CDF values (n,), e.g.
    `lambda v: forecast.cdf(v, j)` for a batched `Forecast`. For a calibrated forecaster u ~ U(0, 1)
    (Gneiting & Raftery 2007, sec. 2; Dawid 1984). Returns (n,) values in [0, 1].
    """
    y_ = vector("y", y)
    u = finite_array("cdf(y)", cdf(y_))
    if u.shape != y_.shape:
        raise ValueError(f"cdf returned shape {u.shape}, expected {y_.shape}")
    if np.any((u < 0) | (u > 1)):
        raise ValueError("cdf returned values outside [0, 1]: it is not a CDF")
    return u


def calibration_curve(y: object, q_pred: object, quantiles: object) -> dict[float, float]:
    """Observed frequency `mean(y <= q_tau)` for each nominal level tau (reliability of quantile forecasts).

    Shapes: y (n,), q_pred (n, n_q), quantiles (n_q,) -> {tau: frequency}; calibrated means frequency ~ tau.
    """
    y_, p, q = quantile_forecasts(y, q_pred, quantiles)
    freq = np.mean(y_[:, None] <= p, axis=0)
    return {float(t): float(f) for t, f in zip(q, freq, strict=True)}


# ------------------------------------------------------------------------------- probabilities of events


def _probabilities(prob: object, outcome: object) -> tuple[np.ndarray, np.ndarray]:
    p, o = vector("prob", prob), vector("outcome", outcome)
    same_shape(prob=p, outcome=o)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("prob must lie in [0, 1]")
    if np.any((o != 0) & (o != 1)):
        raise ValueError("outcome must be 0 or 1")
    return p, o


def brier_score(prob: object, outcome: object) -> np.ndarray:
    """Brier score `(p - o)^2` of a forecast probability p of a binary event o in {0, 1} (Brier 1950).

    A proper score for the probability of one event (e.g. P(S_T > K), a digital option's fair value):
    0 is perfect, 0.25 is the score of always saying 0.5. Shapes: prob, outcome (n,) -> (n,).
    """
    p, o = _probabilities(prob, outcome)
    return (p - o) ** 2


def reliability_table(prob: object, outcome: object, n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability (calibration) of event probabilities: per bin of predicted probability, the mean prediction,
    the observed frequency of the event and the count.

    Bins [k/n_bins, (k+1)/n_bins), the last one closed at 1. Calibrated: observed ~ mean predicted in every bin.
    Empty bins are reported with count 0 and NaN means. Shapes: prob, outcome (n,) -> n_bins dicts with keys
    bin, bin_lo, bin_hi, mean_predicted, observed_frequency, count.
    """
    p, o = _probabilities(prob, outcome)
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    k = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(k, minlength=n_bins)
    sum_p, sum_o = np.bincount(k, p, n_bins), np.bincount(k, o, n_bins)
    out = []
    for b in range(n_bins):
        c = int(count[b])
        out.append({"bin": float(b), "bin_lo": b / n_bins, "bin_hi": (b + 1) / n_bins,
                    "mean_predicted": float(sum_p[b] / c) if c else float("nan"),
                    "observed_frequency": float(sum_o[b] / c) if c else float("nan"), "count": float(c)})
    return out


def pit_histogram(u: object, n_bins: int = 10) -> np.ndarray:
    """Counts of PIT values u in [0, 1] per bin [k/n_bins, (k+1)/n_bins) (last bin closed): (n_bins,) ints.

    Flat = calibrated; U-shaped = intervals too narrow (outcomes in the tails too often); hump = too wide;
    sloped = biased location.
    """
    v = vector("u", u)
    if np.any((v < 0) | (v > 1)):
        raise ValueError("u must lie in [0, 1] (PIT values)")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return np.bincount(np.minimum((v * n_bins).astype(np.int64), n_bins - 1), minlength=n_bins)


# ------------------------------------------------------------------------------------------------ summary


def _level_key(quantiles: Mapping[float, object], level: float) -> float | None:
    return next((k for k in quantiles if abs(k - level) < 1e-9), None)


def evaluate_forecasts(
    y_true_ret: object,
    y_pred_ret: object,
    origin_prices: object,
    insample_prices: object,
    horizon: int,
    quantiles: Mapping[float, object] | None = None,
    scale: object | None = None,
    df: object | None = None,
) -> dict[str, float]:
    """All metrics for one series at one horizon, on h-day log-returns and on prices.

    Inputs, for the n forecast origins t in time order:
      y_true_ret (n,)     realised log-returns log(p[t+h] / p[t])
      y_pred_ret (n,)     point forecasts of the same (prices are derived as p[t] * exp(r))
      origin_prices (n,)  p[t]
      insample_prices (n_train,)  the training prices, for the MASE scale (in-sample h-step naive error)
      horizon             h in trading days
      quantiles           optional {level: (n,) log-return quantiles}, increasing in the level
      scale, df           optional predictive law of the log-return: `y_pred_ret + scale * Z` with Z standard
                          normal (df None) or Student-t with df degrees of freedom (scale = t scale; df a
                          scalar or (n,), inf = Gaussian)

    Keys (all floats): n; ret_mae, ret_rmse, ret_mase, price_mae, price_rmse, price_mase; direction_accuracy,
    direction_p_value, direction_n, direction_n_zero_pred, direction_n_zero_true; with quantiles:
    pinball_q{tau}, pinball_mean, ret_crps_quantile, price_crps_quantile, calibration_q{tau}, and for each
    interval of `INTERVALS` whose levels are present: coverage_{c}, ret_width_{c}, price_width_{c}
    (coverage is the same in both units, the transform being monotone); with scale: ret_crps (closed form).
    """
    y, p = vector("y_true_ret", y_true_ret), vector("y_pred_ret", y_pred_ret)
    p0 = vector("origin_prices", origin_prices)
    same_shape(y_true_ret=y, y_pred_ret=p, origin_prices=p0)
    train = vector("insample_prices", insample_prices)
    if np.any(p0 <= 0) or np.any(train <= 0):
        raise ValueError("prices must be > 0 to take logs")
    price_true, price_pred = p0 * np.exp(y), p0 * np.exp(p)
    out: dict[str, float] = {
        "n": float(y.size),
        "ret_mae": mae(y, p),
        "ret_rmse": rmse(y, p),
        "ret_mase": mase(y, p, np.log(train), m=horizon),
        "price_mae": mae(price_true, price_pred),
        "price_rmse": rmse(price_true, price_pred),
        "price_mase": mase(price_true, price_pred, train, m=horizon),
    }
    acc, p_value = direction_accuracy(y, p)
    counts = direction_counts(y, p)
    out.update(direction_accuracy=acc, direction_p_value=p_value, direction_n=float(counts.n_used),
               direction_n_zero_pred=float(counts.n_zero_pred), direction_n_zero_true=float(counts.n_zero_true))
    if quantiles:
        levels = sorted(quantiles)
        qp = np.column_stack([vector(f"quantiles[{k}]", quantiles[k]) for k in levels])
        pin = pinball_loss(y, qp, levels)
        out.update({f"pinball_q{k:g}": float(v) for k, v in zip(levels, pin.mean(axis=0), strict=True)})
        out["pinball_mean"] = float(pin.mean())
        out["ret_crps_quantile"] = float(crps_from_quantiles(y, qp, levels).mean())
        out["price_crps_quantile"] = float(crps_from_quantiles(price_true, p0[:, None] * np.exp(qp), levels).mean())
        out.update({f"calibration_q{k:g}": v for k, v in calibration_curve(y, qp, levels).items()})
        for c, (lo, hi) in INTERVALS.items():
            klo, khi = _level_key(quantiles, lo), _level_key(quantiles, hi)
            if klo is None or khi is None:
                continue
            lower, upper = np.asarray(quantiles[klo], float), np.asarray(quantiles[khi], float)
            out[f"coverage_{c}"], out[f"ret_width_{c}"] = interval_coverage(y, lower, upper)
            out[f"price_width_{c}"] = float(np.mean(p0 * (np.exp(upper) - np.exp(lower))))
    if df is not None and scale is None:
        raise ValueError("df was given without scale: the predictive law needs both")
    if scale is not None:
        out["ret_crps"] = float((crps_gaussian(y, p, scale) if df is None else crps_student_t(y, df, p, scale)).mean())
    return out
