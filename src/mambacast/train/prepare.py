"""One symbol's training data: quality-checked prices, causal features, windows, a time split with an embargo,
and scalers fitted on the training rows (`prepare_data`), as `mambacast train` and the backtest's model use it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import MambaConfig, TrainConfig
from ..data.features import TimeSeriesFeatureEngineer
from ..data.quality import check_data_quality
from ..data.sequences import FeatureScaler, SequenceGenerator, TargetScaler, temporal_split
from ..data.sources import as_price_frame

__all__ = ["DEFAULT_WINDOWS", "PreparedData", "data_fingerprint", "prepare_data"]

#: Look-backs of the rolling features (days).
DEFAULT_WINDOWS = (5, 10, 20, 60)


@dataclass
class PreparedData:
    """Windows, targets and scalers of one symbol, split by time with an embargo.

    X: (n_samples, seq_len, n_features) standardised with training statistics;
    y: (n_samples, n_horizons) future log-returns (raw); y_scaled standardised per horizon.
    """

    symbol: str
    prices: pd.DataFrame
    feature_names: list[str]
    warmup: int
    X: np.ndarray
    y: np.ndarray
    y_scaled: np.ndarray
    window_end: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    feature_scaler: FeatureScaler
    target_scaler: TargetScaler
    data_hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    def date_at(self, row: int) -> str:
        value = self.prices.index[row]
        return value.date().isoformat() if isinstance(value, pd.Timestamp) else str(value)


def data_fingerprint(prices: pd.DataFrame) -> str:
    """SHA-256 of the dates and closes used for training (identifies the exact training data)."""
    h = hashlib.sha256()
    h.update(np.asarray(prices.index.astype(str)).astype("U").tobytes())
    h.update(np.ascontiguousarray(prices["close"].to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()


def prepare_data(symbol: str, prices: Any, model_config: MambaConfig, train_config: TrainConfig,
                 windows: Sequence[int] = DEFAULT_WINDOWS, include_volume: bool = False,
                 include_range: bool = False) -> PreparedData:
    """Quality-check prices, extract causal features, cut windows, split with embargo, fit scalers.

    include_volume / include_range: add the volume features / the range-based (Parkinson) volatility, which
    need `volume` / `high` and `low` columns."""
    frame = as_price_frame(prices)
    frame.attrs.setdefault("symbol", symbol)  # so data errors name the symbol, also for plain arrays
    check_data_quality(frame, symbol)
    engineer = TimeSeriesFeatureEngineer(windows=list(windows), include_volume=include_volume,
                                         include_range=include_range)
    features = engineer.extract_features(frame)
    gen = SequenceGenerator(train_config.sequence_length, model_config.prediction_horizons, stride=1)
    _, y_dict = gen.generate_sequences(features, frame, start=engineer.warmup_)
    y = np.hstack([y_dict[h] for h in model_config.prediction_horizons]).astype(np.float32)
    train_idx, val_idx = temporal_split(len(y), train_config.validation_split, embargo=model_config.max_horizon)
    # Scale the (n_days, n_features) matrix with statistics of the rows the training windows read
    # (each day once), then window it again: X stays a zero-copy view of the scaled matrix.
    feature_scaler = FeatureScaler().fit(features[gen.rows_covered(train_idx)])
    X, _ = gen.generate_sequences(feature_scaler.transform(features), frame, start=engineer.warmup_)
    target_scaler = TargetScaler(model_config.prediction_horizons).fit(y[train_idx])
    return PreparedData(
        symbol=symbol, prices=frame, feature_names=list(engineer.feature_names_), warmup=int(engineer.warmup_),
        X=X, y=y, y_scaled=target_scaler.transform(y), window_end=np.asarray(gen.window_end_index_),
        train_idx=train_idx, val_idx=val_idx, feature_scaler=feature_scaler, target_scaler=target_scaler,
        data_hash=data_fingerprint(frame),
    )
