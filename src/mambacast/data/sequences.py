"""Training windows, the embargoed temporal split, and the feature/target scalers.

Recommended order (each step uses the training part only where it learns something):

    features = engineer.extract_features(prices)                          # (n_days, n_features)
    X, y = generator.generate_sequences(features, prices, start=engineer.warmup_)
    train_idx, val_idx = temporal_split(len(X), 0.2, embargo=max(horizons))
    scaler = FeatureScaler().fit(features[generator.rows_covered(train_idx)])
    X, y = generator.generate_sequences(scaler.transform(features), prices, start=engineer.warmup_)
    targets = TargetScaler().fit({h: v[train_idx] for h, v in y.items()})

Scaling the 2-D feature matrix before windowing keeps ``X`` a zero-copy view.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import DataError, InsufficientHistoryError
from .features import forward_fill_closes
from .sources import as_close_array

__all__ = ["SequenceGenerator", "temporal_split", "FeatureScaler", "TargetScaler"]

logger = logging.getLogger(__name__)

_MIN_STD = 1e-12  # a feature or target with a smaller spread is treated as constant (scale 1)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name}={value!r} is invalid: must be a positive integer")
    return int(value)


class SequenceGenerator:
    """Sliding windows of features with future log-return targets at several horizons.

    Args:
        sequence_length: days per window (``seq_len``).
        prediction_horizons: days ahead of each target.
        stride: days between consecutive windows' last days.
        min_samples: fewest windows accepted (fewer raises `InsufficientHistoryError`).

    Attributes:
        window_end_index_: ``(n_samples,)`` int64, the feature row ``t`` of each window's last
            day (set by `generate_sequences`), to map samples back to dates.
    """

    def __init__(self, sequence_length: int = 60, prediction_horizons: Sequence[int] = (1, 5, 10, 30),
                 stride: int = 1, min_samples: int = 1) -> None:
        self.sequence_length = _positive_int("sequence_length", sequence_length)
        horizons = list(prediction_horizons)
        if not horizons:
            raise DataError("prediction_horizons is empty: pass at least one horizon, e.g. [1, 5, 10, 30]")
        self.prediction_horizons = [_positive_int("prediction_horizons", h) for h in horizons]
        if len(set(self.prediction_horizons)) != len(self.prediction_horizons):
            raise DataError(f"prediction_horizons={horizons} has duplicates")
        self.stride = _positive_int("stride", stride)
        self.min_samples = _positive_int("min_samples", min_samples)
        self.window_end_index_ = np.empty(0, dtype=np.int64)

    @property
    def max_horizon(self) -> int:
        return max(self.prediction_horizons)

    def required_days(self, start: int = 0) -> int:
        """Fewest days that give `min_samples` windows when the first `start` rows are dropped."""
        return start + self.sequence_length + self.max_horizon + (self.min_samples - 1) * self.stride

    def generate_sequences(self, features: np.ndarray, prices: Any, start: int = 0
                           ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Windows and targets.

        Args:
            features: ``(n_days, n_features)`` matrix (e.g. from `TimeSeriesFeatureEngineer`).
            prices: the same days' closes (frame with ``close``, Series or array ``(n_days,)``);
                missing closes are forward-filled as the features do.
            start: leading rows to leave out (pass the engineer's ``warmup_``).

        Returns:
            ``(X, y)``: ``X`` is a read-only zero-copy view ``(n_samples, sequence_length,
            n_features)`` float32 over the features (float32 C-contiguous input is not copied);
            ``y[h]`` is ``(n_samples, 1)`` float32 ``log(p[t + h] / p[t])`` with ``t`` the window's
            last row. Only windows whose every target exists are kept; the last window ends
            ``max(horizons)`` days before the end, and windows are aligned so that it is included.
        """
        feats = self._as_features(features)
        symbol = getattr(prices, "attrs", {}).get("symbol") or "prices"
        close = as_close_array(prices)
        n = len(feats)
        if len(close) != n:
            raise DataError(f"{symbol}: features have {n} rows but prices have {len(close)}; pass the same days")
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise DataError(f"start={start!r} is invalid: pass the number of leading rows to drop (>= 0)")
        if n < self.required_days(start):
            raise InsufficientHistoryError(
                f"{symbol}: {n} days available but {self.required_days(start)} needed (sequence_length="
                f"{self.sequence_length} + max horizon {self.max_horizon} + warm-up {start}"
                f"{f' + {self.min_samples - 1} x stride {self.stride}' if self.min_samples > 1 else ''}); "
                "load more history (--days) or use a shorter sequence_length / fewer horizon days")
        close, lead = forward_fill_closes(close, symbol)
        if lead > start:
            raise DataError(f"{symbol}: the first {lead} closes are missing but start={start}; pass start >= {lead} "
                            "(the engineer's warmup_ does)")
        first_end, last_end = start + self.sequence_length - 1, n - 1 - self.max_horizon
        self._check_finite(feats[start: last_end + 1], start, symbol)

        n_samples = (last_end - first_end) // self.stride + 1
        ends = last_end - self.stride * np.arange(n_samples - 1, -1, -1, dtype=np.int64)
        windows = sliding_window_view(feats, self.sequence_length, axis=0)  # (n - L + 1, n_features, L)
        first_start = int(ends[0]) - self.sequence_length + 1
        X = windows[first_start: int(ends[-1]) - self.sequence_length + 2: self.stride].transpose(0, 2, 1)
        log_close = np.log(close)
        y = {h: (log_close[ends + h] - log_close[ends]).astype(np.float32)[:, None] for h in self.prediction_horizons}
        self.window_end_index_ = ends
        logger.debug("%s: %d windows of %d days, rows %d..%d", symbol, n_samples, self.sequence_length, start,
                     last_end)
        return X, y

    def latest_window(self, features: np.ndarray, start: int = 0) -> np.ndarray:
        """The most recent window ``(1, sequence_length, n_features)`` (a view), for prediction."""
        feats = self._as_features(features)
        if len(feats) - start < self.sequence_length:
            raise InsufficientHistoryError(
                f"{len(feats)} days of features, but a window needs sequence_length={self.sequence_length} days after "
                f"the warm-up of {start}: at least {start + self.sequence_length} days of price history")
        window = feats[len(feats) - self.sequence_length:]
        self._check_finite(window, len(feats) - self.sequence_length, "features")
        return window[None]

    def rows_covered(self, sample_idx: np.ndarray) -> slice:
        """Feature rows the windows `sample_idx` read (contiguous for a chronological range),
        e.g. the rows to fit a `FeatureScaler` on for the training samples."""
        ends = self.window_end_index_[np.asarray(sample_idx)]
        if ends.size == 0:
            raise DataError("rows_covered needs at least one sample index (call generate_sequences first)")
        return slice(int(ends.min()) - self.sequence_length + 1, int(ends.max()) + 1)

    @staticmethod
    def _as_features(features: np.ndarray) -> np.ndarray:
        feats = np.ascontiguousarray(features, dtype=np.float32)
        if feats.ndim != 2:
            raise DataError(f"features must be a (n_days, n_features) matrix, got shape {feats.shape}")
        return feats

    @staticmethod
    def _check_finite(block: np.ndarray, offset: int, symbol: str) -> None:
        bad = ~np.isfinite(block)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"{symbol}: feature column {col} is not finite at row {row + offset}; drop the warm-up "
                            "rows (start=engineer.warmup_) or fix the data")


def temporal_split(n_samples: int, validation_split: float = 0.2, embargo: int = 30
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Chronological train/validation indices with an embargo gap.

    The last ``round(n_samples * validation_split)`` samples validate; the `embargo` samples
    before them are dropped, so with stride 1 and ``embargo >= max(horizons)`` the last training
    target day (window end + max horizon) is before the first validation window's last day.
    The embargo counts samples: with stride ``s``, ``ceil(max(horizons) / s)`` suffices.

    Returns:
        ``(train_idx, val_idx)`` int64 arrays, both ascending and non-empty.
    """
    n = int(n_samples)
    if not 0.0 < validation_split < 1.0:
        raise DataError(f"validation_split={validation_split!r} is invalid: pass a fraction in (0, 1), e.g. 0.2")
    if isinstance(embargo, bool) or not isinstance(embargo, (int, np.integer)) or embargo < 0:
        raise DataError(f"embargo={embargo!r} is invalid: pass a number of samples >= 0 (the longest horizon)")
    n_val = max(1, round(n * validation_split))
    n_train = n - n_val - int(embargo)
    if n_train < 1:
        raise InsufficientHistoryError(
            f"{n} samples cannot be split: validation {n_val} + embargo {embargo} leave {max(n_train, 0)} for "
            f"training; need at least {math.ceil((embargo + 1) / (1 - validation_split))} samples "
            "(load more history with --days)")
    return np.arange(n_train, dtype=np.int64), np.arange(n - n_val, n, dtype=np.int64)


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]  # Python floats: JSON keeps every float64 bit (repr round-trips)


class FeatureScaler:
    """Per-feature standardisation ``(x - mean) / scale`` fitted on training data only.

    Fit on the 2-D feature rows the training windows cover (``features[generator.rows_covered(
    train_idx)]``): each day counts once. Fitting on 3-D windows works too, but counts a day
    once per window that holds it (days near the split edge count less). A feature whose std is
    0 gets scale 1, so a constant column stays constant instead of dividing by zero.

    Attributes:
        mean_, scale_: ``(n_features,)`` float64.
    """

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> FeatureScaler:
        """Fit on ``(n_rows, n_features)`` rows or ``(n_samples, seq_len, n_features)`` windows."""
        arr = np.asarray(X)
        if arr.ndim not in (2, 3) or arr.shape[-1] == 0 or arr.size == 0:
            raise DataError(f"FeatureScaler.fit needs (rows, n_features) or (samples, seq_len, n_features) data, got "
                            f"shape {arr.shape}")
        axes = tuple(range(arr.ndim - 1))
        mean = arr.mean(axis=axes, dtype=np.float64)
        std = arr.std(axis=axes, dtype=np.float64)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise DataError("FeatureScaler.fit got NaN or infinite features; drop the warm-up rows first")
        self.mean_, self.scale_ = mean, np.where(std < _MIN_STD, 1.0, std)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardised float32 copy of `X` (any shape ending in ``n_features``)."""
        mean, scale = self._fitted()
        arr = np.asarray(X)
        if arr.shape[-1:] != mean.shape:
            raise DataError(f"FeatureScaler was fitted on {mean.size} features but got shape {arr.shape}")
        return ((arr - mean) / scale).astype(np.float32)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean_ is None or self.scale_ is None:
            raise DataError("FeatureScaler is not fitted: call fit(training features) first")
        return self.mean_, self.scale_

    def to_dict(self) -> dict[str, Any]:
        mean, scale = self._fitted()
        return {"mean": _floats(mean), "scale": _floats(scale)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureScaler:
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad FeatureScaler data (needs lists 'mean' and 'scale'): {exc}") from exc
        if mean.ndim != 1 or mean.shape != scale.shape or not (scale > 0).all():
            raise DataError("bad FeatureScaler data: 'mean' and 'scale' must be equal-length lists, scale > 0")
        scaler = cls()
        scaler.mean_, scaler.scale_ = mean, scale
        return scaler


class TargetScaler:
    """Per-horizon standardisation of the log-return targets, fitted on training targets only.

    Targets come either as the generator's dict ``{horizon: (n_samples, 1)}`` or as one array
    ``(n_samples, n_horizons)`` whose columns follow `horizons` (positions 0, 1, ... when None).

    Attributes:
        horizons_: horizon of each column, in fitted order.
        mean_, scale_: ``(n_horizons,)`` float64; ``std_`` is the same as ``scale_``.
    """

    def __init__(self, horizons: Sequence[int] | None = None) -> None:
        self.horizons = None if horizons is None else [int(h) for h in horizons]
        self.horizons_: list[int] = []
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    @property
    def std_(self) -> np.ndarray | None:
        return self.scale_

    def fit(self, y: Mapping[int, np.ndarray] | np.ndarray) -> TargetScaler:
        """Fit on training targets ``{h: (n_samples, 1)}`` or ``(n_samples, n_horizons)``."""
        if isinstance(y, Mapping):
            horizons = [int(h) for h in y]
            columns = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in y.values()], axis=1) \
                if y else np.empty((0, 0))
        else:
            columns = np.asarray(y, dtype=np.float64)
            columns = columns[:, None] if columns.ndim == 1 else columns
            horizons = self.horizons if self.horizons is not None else list(range(columns.shape[-1]))
        if columns.ndim != 2 or columns.size == 0 or columns.shape[1] != len(horizons):
            raise DataError(f"TargetScaler.fit needs targets {{horizon: (n_samples, 1)}} or (n_samples, n_horizons) "
                            f"matching horizons={horizons}, got shape {columns.shape}")
        if not np.isfinite(columns).all():
            raise DataError("TargetScaler.fit got non-finite targets; check the prices for zeros or gaps")
        std = columns.std(axis=0)
        self.horizons_, self.mean_, self.scale_ = horizons, columns.mean(axis=0), np.where(std < _MIN_STD, 1.0, std)
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean_ is None or self.scale_ is None:
            raise DataError("TargetScaler is not fitted: call fit(training targets) first")
        return self.mean_, self.scale_

    def _column(self, horizon: int) -> int:
        try:
            return self.horizons_.index(int(horizon))
        except ValueError as exc:
            raise DataError(f"horizon {horizon} was not fitted (fitted: {self.horizons_})") from exc

    def _columns(self, arr: np.ndarray) -> np.ndarray:
        mean, _ = self._fitted()
        if arr.shape[-1:] != mean.shape:
            raise DataError(f"TargetScaler has {mean.size} horizons {self.horizons_} but got shape {arr.shape}")
        return arr

    def transform(self, y: Mapping[int, np.ndarray] | np.ndarray) -> dict[int, np.ndarray] | np.ndarray:
        """Standardised float32 targets, in the form given (dict, or array ``(..., n_horizons)``)."""
        mean, scale = self._fitted()
        if isinstance(y, Mapping):
            return {h: ((np.asarray(v, dtype=np.float64) - mean[self._column(h)]) / scale[self._column(h)])
                    .astype(np.float32) for h, v in y.items()}
        return ((self._columns(np.asarray(y, dtype=np.float64)) - mean) / scale).astype(np.float32)

    def inverse_transform(self, y: Mapping[int, np.ndarray] | np.ndarray) -> dict[int, np.ndarray] | np.ndarray:
        """Back to log returns (float64), in the form given: a dict ``{h: values}``, or an array
        ``(..., n_horizons)`` such as a model's ``(batch, n_horizons)`` output."""
        mean, scale = self._fitted()
        if isinstance(y, Mapping):
            return {h: np.asarray(v, dtype=np.float64) * scale[self._column(h)] + mean[self._column(h)]
                    for h, v in y.items()}
        return self._columns(np.asarray(y, dtype=np.float64)) * scale + mean

    def to_dict(self) -> dict[str, Any]:
        mean, scale = self._fitted()
        return {"horizons": list(self.horizons_), "mean": _floats(mean), "scale": _floats(scale)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetScaler:
        try:
            horizons = [int(h) for h in data["horizons"]]
            mean = np.asarray(data["mean"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad TargetScaler data (needs 'horizons', 'mean', 'scale'): {exc}") from exc
        if not (len(horizons) == mean.size == scale.size) or mean.ndim != 1 or not (scale > 0).all():
            raise DataError("bad TargetScaler data: 'horizons', 'mean' and 'scale' must have equal lengths, scale > 0")
        scaler = cls(horizons)
        scaler.horizons_, scaler.mean_, scaler.scale_ = horizons, mean, scale
        return scaler
