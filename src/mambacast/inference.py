"""What `MambaPredictor` (`mambacast.predict`) works with besides the predictor itself: a stored model loaded
for serving (`_LoadedModel`: network, feature engineer, scalers, calibration, the GARCH-t / HAR-t pool and the
days of history it keeps, from `ema_memory_days`), the checks of a request's closes and quantiles, a request made
ready for the model (`_Prepared`) and the torch set-up of an inference worker thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from .blend import Blend
from .data.features import MACD_FAST, MACD_SIGNAL, MACD_SLOW, RSI_PERIOD, TimeSeriesFeatureEngineer
from .data.rolling import ffill
from .data.sequences import FeatureScaler, TargetScaler
from .nn.mamba import MambaModel

__all__ = ["EMA_TOLERANCE", "ema_memory_days"]

_MIN_CLOSES = 3  # the momentum rule's minimum (two returns)
_MAX_MISSING = 0.05  # share of missing closes forward-filled, as validate_data_quality's max_missing_ratio
EMA_TOLERANCE = 1e-9


def ema_memory_days(windows: Sequence[int], tol: float = EMA_TOLERANCE) -> int:
    """Days after which every exponential average of the features forgets its start to within `tol`.

    An EMA with smoothing `alpha` started `n` rows before row t at a different value differs at t by
    `(1 - alpha)^n` times the gap at the start; the slowest of the feature engineer's averages (EMA
    ratios with span w: alpha = 2 / (w + 1); MACD spans 12, 26 and signal 9; Wilder RSI alpha = 1/14)
    sets `n = ceil(log(tol) / log(1 - alpha_min))`: 622 days for the default windows and tol=1e-9.
    """
    alphas = [2.0 / (w + 1) for w in windows]
    alphas += [2.0 / (MACD_FAST + 1), 2.0 / (MACD_SLOW + 1), 2.0 / (MACD_SIGNAL + 1), 1.0 / RSI_PERIOD]
    return math.ceil(math.log(tol) / math.log1p(-min(alphas)))


@dataclass
class _LoadedModel:
    model: MambaModel
    meta: dict[str, Any]
    engineer: TimeSeriesFeatureEngineer
    feature_scaler: FeatureScaler
    target_scaler: TargetScaler
    calibration: np.ndarray          # (n_horizons,) multiplier of the distribution scale
    lock: threading.Lock
    blend: Blend = field(default_factory=Blend.network_alone)   # the classical side of the served law
    keep_days: int = 0               # rows of history turned into features when trimming
    factors: dict[bytes, np.ndarray] = field(default_factory=dict)   # rolling factors by history digest

    @property
    def needed_days(self) -> int:
        return int(self.meta["feature_config"]["warmup"]) + int(self.meta["sequence_length"])

    @property
    def sequence_length(self) -> int:
        return int(self.meta["sequence_length"])

    @property
    def version(self) -> str:
        kind = "global/" if self.meta.get("kind") == "global" else ""
        return f"{kind}{self.meta['training_date']}/{self.meta['weights_sha256'][:12]}"


@dataclass
class _Prepared:
    """A request ready for the model: windows (k, seq_len, n_features), the last one the forecast's.

    With the rolling calibration and no cached factor, the k - 1 windows before it are those of the
    residual origins, `closes` the history rows they index (the last is the forecast origin).
    """

    loaded: _LoadedModel
    windows: np.ndarray
    as_of: str | None
    history: np.ndarray              # the request's closes (the last is the origin): GARCH-t's filter reads them
    closes: np.ndarray | None = None
    key: bytes | None = None
    factor: np.ndarray | None = None


def _checked_closes(symbol: str, closes: np.ndarray, current_price: float) -> np.ndarray:
    """The history's closes with missing ones forward-filled (as training fills them); ValueError for bad input."""
    if not (isinstance(current_price, (int, float)) and math.isfinite(current_price) and current_price > 0):
        raise ValueError(f"{symbol}: current_price={current_price!r} is invalid: must be a positive finite price")
    if closes.size < _MIN_CLOSES:
        raise ValueError(f"{symbol}: price_history has {closes.size} closes; even the momentum fallback needs at "
                         f"least {_MIN_CLOSES} (the model needs warm-up + sequence_length days, 120 by default)")
    if np.any(np.isinf(closes)):
        raise ValueError(f"{symbol}: price_history contains infinite closes; clean or drop them first")
    if np.any(closes <= 0):
        raise ValueError(f"{symbol}: price_history contains zero or negative closes")
    missing = np.isnan(closes)
    if missing.any():
        if missing[0]:
            raise ValueError(f"{symbol}: the first close of price_history is missing; drop the leading rows "
                             "without a price")
        if missing.mean() > _MAX_MISSING:
            raise ValueError(f"{symbol}: {int(missing.sum())} of {closes.size} closes of price_history are missing "
                             f"(more than {_MAX_MISSING:.0%}); fill the gaps in the data")
        closes = ffill(closes)       # causal, as the features and training targets fill them
    return closes


def _check_quantiles(quantiles: Sequence[float]) -> None:
    for q in quantiles:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile {q!r} is invalid: must be strictly between 0 and 1")


def _as_of(price_history: Any) -> str | None:
    if isinstance(price_history, (pd.DataFrame, pd.Series)) and len(price_history.index):
        last = price_history.index[-1]
        return last.date().isoformat() if isinstance(last, pd.Timestamp) else None
    return None


def _init_inference_thread(threads: int | None, process_default: int) -> None:
    """Give this worker thread `threads` torch threads without changing anyone else's.

    torch.set_num_threads sets this thread's OpenMP and MKL thread counts (both per thread) and the
    count that threads created later start with; a short-lived helper thread puts the latter back
    (a thread started elsewhere in between, while the pool starts, would begin with `threads`).
    """
    if threads is None:
        return
    torch.get_num_threads()            # initialise this thread from the process setting first
    torch.set_num_threads(threads)
    helper = threading.Thread(target=torch.set_num_threads, args=(process_default,))
    helper.start()
    helper.join()
