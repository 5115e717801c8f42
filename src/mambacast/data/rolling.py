"""NumPy rolling windows, lags and exponential averages with the semantics of their pandas counterparts.

The feature engineer (`data.features`) once called pandas for each of its ~35 columns; each call costs
about 60 µs of fixed overhead (index, dtype and window-bounds handling) whatever the length, which made
feature extraction most of a served forecast's CPU. These compute the same values with a few NumPy or
SciPy calls per series, and only at the rows asked for (``start``: a served forecast needs its last
window of 60 rows, not the whole history):

- `Trailing(x, lengths, start)`: ``pd.Series(x).rolling(w).mean()``, ``.std(ddof)``, ``.min()``,
  ``.max()`` for several window lengths w of one series at once: NaN where the window holds a NaN or
  reaches before row 0 (pandas' ``min_periods=w``).
- `rolling_mean_min_periods(x, w, min_periods)`: ``rolling(w, min_periods).mean()`` of a non-negative
  series at every row (the GARCH filter reads it at every row).
- `ewm_mean(x, alpha, min_periods)`: ``ewm(alpha=alpha, adjust=False, min_periods).mean()`` by a
  first-order recursive filter (`scipy.signal.lfilter`), for series whose only NaNs lead.

Values agree with pandas to rounding (tests/data/test_features_numpy.py, 1e-9 relative). Where they
differ more, pandas is the inexact one: its running variance (add the new value, remove the old) keeps an
error of about 1e-16 of the largest squared values seen so far, which in nearly flat windows or after
prices moved by orders of magnitude is far above 1e-9 of the variance. Every array is float64 ``(n,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["Trailing", "ffill", "lag", "diff", "rolling_mean_min_periods", "ewm_mean", "span_alpha"]

# Rows per block of `Trailing`'s (window length x rows) deviation arrays: 60 x 2048 doubles stay in cache.
_BLOCK = 2048


def ffill(x: np.ndarray) -> np.ndarray:
    """``pd.Series(x).ffill()``: each NaN takes the last value before it (leading NaNs stay), (n,)."""
    missing = np.isnan(x)
    if not missing.any():
        return x
    idx = np.where(missing, 0, np.arange(x.size))
    np.maximum.accumulate(idx, out=idx)
    return x[idx]          # rows before the first value take x[0], itself NaN


def lag(x: np.ndarray, k: int) -> np.ndarray:
    """``pd.Series(x).shift(k)`` for k >= 1: row t holds x[t - k], NaN for t < k, (n,)."""
    out = np.full(x.size, np.nan)
    if k < x.size:
        out[k:] = x[:-k]
    return out


def diff(x: np.ndarray) -> np.ndarray:
    """``pd.Series(x).diff()``: x[t] - x[t - 1], NaN at row 0, (n,)."""
    out = np.empty(x.size)
    out[:1] = np.nan
    np.subtract(x[1:], x[:-1], out=out[1:])
    return out


class Trailing:
    """Trailing windows of one series `x` (n,) ending at rows start..n-1, for the window `lengths` given.

    Each window's sums are taken of its deviations from its own last value, ``d = x[t - k] - x[t]``:
    the variance ``(sum d^2 - (sum d)^2 / w) / (w - ddof)`` then loses no digits to the price level (the
    last value lies inside the window), a window of one repeated value has exactly that mean and variance 0
    (as in pandas), and one-cent moves on a $100 price keep their variance to 1e-15. `spread` False skips
    the squares (means only). Results are ``(n - start,)``.
    """

    def __init__(self, x: np.ndarray, lengths: Sequence[int], start: int = 0, spread: bool = True):
        self.lengths = sorted({int(w) for w in lengths})
        longest = self.lengths[-1]
        lo = start - longest + 1
        # rows start - longest + 1 .. n - 1, NaN before row 0
        self._seg = x[lo:] if lo >= 0 else np.concatenate([np.full(-lo, np.nan), x])
        self.last = x[start:]
        rows = self.last.size
        self._sum = {w: np.empty(rows) for w in self.lengths}
        self._sq = {w: np.empty(rows) for w in self.lengths} if spread else None
        for b in range(0, rows, _BLOCK):
            e = min(b + _BLOCK, rows)
            # (longest, e - b): row k holds lag k of each row b..e-1, minus that row's value
            dev = sliding_window_view(self._seg[b:e + longest - 1], e - b)[::-1] - self.last[b:e]
            self._accumulate(dev, self._sum, b, e)
            if self._sq is not None:
                np.multiply(dev, dev, out=dev)
                self._accumulate(dev, self._sq, b, e)

    def _accumulate(self, dev: np.ndarray, out: dict[int, np.ndarray], b: int, e: int) -> None:
        """out[w][b:e] = sum of the first w rows of dev, for every length (one pass over the rows)."""
        total, done = 0.0, 0
        for w in self.lengths:
            total = total + dev[done:w].sum(axis=0)
            out[w][b:e] = total
            done = w

    def mean(self, w: int) -> np.ndarray:
        """``rolling(w).mean()``."""
        return self.last + self._sum[w] / w

    def std(self, w: int, ddof: int) -> np.ndarray:
        """``rolling(w).std(ddof=ddof)`` (needs `spread`); NaN for w <= ddof, as pandas."""
        if self._sq is None:
            raise ValueError("Trailing(spread=False) keeps no squares")
        if w <= ddof:
            return np.full(self.last.size, np.nan)
        s = self._sum[w]
        var = (self._sq[w] - s * s / w) / (w - ddof)
        return np.sqrt(np.maximum(var, 0.0))       # rounding can leave -1e-30 where the variance is 0

    def extremes(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """``rolling(w).min()`` and ``.max()``."""
        if not self.last.size:
            return self.last.copy(), self.last.copy()
        view = sliding_window_view(self._seg[self.lengths[-1] - w:], self.last.size)   # (w, rows), no copy
        return view.min(axis=0), view.max(axis=0)


def _repeat_run(x: np.ndarray) -> np.ndarray:
    """At each row: how many values up to and including it equal it without a break (n,); NaN breaks a run."""
    changed = np.ones(x.size, dtype=bool)
    changed[1:] = x[1:] != x[:-1]
    last_change = np.where(changed, np.arange(x.size), 0)
    np.maximum.accumulate(last_change, out=last_change)
    return np.arange(x.size) - last_change + 1


def rolling_mean_min_periods(x: np.ndarray, w: int, min_periods: int) -> np.ndarray:
    """``pd.Series(x).rolling(w, min_periods=min_periods).mean()`` at every row (n,), for x >= 0 or NaN.

    Window sums are differences of one cumulative sum: their rounding error is about 1e-16 of the sum of
    every value so far, negligible for what reads it (squared returns beside a 1e-8 variance floor). A
    window whose values are all one value (a flat stretch of squared returns: zeros) is exactly that value,
    as in pandas.
    """
    ok = ~np.isnan(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    count = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, x.size + 1)
    lo = np.maximum(hi - w, 0)
    n_obs = count[hi] - count[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[hi] - csum[lo]) / n_obs
    flat = ok & (_repeat_run(x) >= n_obs)
    out[flat] = x[flat]
    out[n_obs < min_periods] = np.nan
    return out


def span_alpha(span: int) -> float:
    """pandas' smoothing factor of ``ewm(span=span)``."""
    return 2.0 / (1.0 + span)


def ewm_mean(x: np.ndarray, alpha: float, min_periods: int) -> np.ndarray:
    """``pd.Series(x).ewm(alpha=alpha, adjust=False, min_periods=min_periods).mean()`` (n,).

    y[f] = x[f] at the first non-NaN row f, then y[t] = (1 - alpha) y[t-1] + alpha x[t]; NaN before row
    f + min_periods - 1. x may have leading NaNs only (after the first value pandas' NaN rules differ).
    """
    out = np.full(x.size, np.nan)
    valid = ~np.isnan(x)
    if not valid.any():
        return out
    f = int(np.argmax(valid))
    out[f] = x[f]
    if f + 1 < x.size:
        from scipy import signal  # here, not at import: scipy.signal takes ~0.7 s to import, every command paid it

        out[f + 1:] = signal.lfilter([alpha], [1.0, alpha - 1.0], x[f + 1:], zi=[(1.0 - alpha) * x[f]])[0]
    out[: f + min_periods - 1] = np.nan
    return out
