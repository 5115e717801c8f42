"""Argument checks shared by the metrics and the Diebold-Mariano test: every function rejects empty arrays, NaN/inf
and mismatched shapes with a `ValueError` that names the argument (`evaluate.metrics`' conventions)."""

from __future__ import annotations

import numpy as np

__all__ = ["finite_array", "same_shape", "vector", "levels", "quantile_forecasts", "positive"]


def finite_array(name: str, x: object) -> np.ndarray:
    """`x` as a float64 array; raises if it is empty or holds NaN/inf."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"{name} is empty: need at least one value")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} holds {bad} NaN/inf value(s): drop or fill them before evaluating")
    return a


def same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {', '.join(f'{k}{v}' for k, v in shapes.items())}")


def vector(name: str, x: object) -> np.ndarray:
    a = finite_array(name, x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {a.shape}")
    return a


def levels(quantiles: object) -> np.ndarray:
    q = vector("quantiles", quantiles)
    if np.any((q <= 0) | (q >= 1)) or np.any(np.diff(q) <= 0):
        raise ValueError(f"quantiles must be strictly increasing levels in (0, 1), got {q.tolist()}")
    return q


def quantile_forecasts(y: object, q_pred: object, quantiles: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate y (n,), q_pred (n, n_q) and levels (n_q,)."""
    y_, q_ = vector("y", y), levels(quantiles)
    p = finite_array("q_pred", q_pred)
    if p.shape != (y_.size, q_.size):
        raise ValueError(f"q_pred must have shape (n, n_quantiles) = {(y_.size, q_.size)}, got {p.shape}")
    return y_, p, q_


def positive(name: str, x: object, shape: tuple[int, ...]) -> np.ndarray:
    a = np.broadcast_to(finite_array(name, x), shape)
    if np.any(a <= 0):
        raise ValueError(f"{name} must be > 0 everywhere")
    return a
