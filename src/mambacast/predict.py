"""Serve forecasts: the guide's async `MambaPredictor`, with price distributions and a momentum fallback.

For each horizon h the model gives a Student-t distribution of the future log-return
`r_h = log(p[t+h] / p_t)`: location `mu_h` (the MSE point forecast), scale `s_h` and degrees of
freedom `nu_h`, mapped from the model's standardised space with the training target scaler and
widened or narrowed by the calibration factor fitted on the validation split. Prices follow as
`p_t * exp(r)`, so the point forecast `p_t * exp(mu_h)` is the median price, and
`P(p[t+h] > K) = 1 - F_t((log(K / p_t) - mu_h) / s_h; nu_h)`.

When a symbol has no model, its model cannot be loaded, or the history is too short for its
windows, the predictor answers from the documented momentum rule (`evaluate.baselines`) and says
so in `PredictionResult.source` / `.reason`; `predict` also logs a warning.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .config import MambaConfig
from .data.features import TimeSeriesFeatureEngineer
from .data.sequences import FeatureScaler, TargetScaler
from .data.sources import as_price_frame
from .evaluate.baselines import Momentum
from .nn.mamba import MambaModel
from .store import ModelStore, StoreError

__all__ = ["MambaPredictor", "PredictionResult", "DEFAULT_QUANTILES"]

log = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
_MIN_CLOSES = 3  # the momentum rule's minimum (two returns)


@dataclass
class PredictionResult:
    """One symbol's forecast at every horizon; keys are "1d", "5d", ...

    `prices[k]` is the median price (current * exp(predicted log-return)); `quantiles[k][q]` the
    price quantile q; `source` is "mamba" or "momentum", with `reason` saying why a fallback happened.
    """

    symbol: str
    current_price: float
    horizons: list[int]
    prices: dict[str, float]
    log_returns: dict[str, float]
    quantiles: dict[str, dict[float, float]]
    source: str
    reason: str | None = None
    model_version: str | None = None
    as_of: str | None = None
    _dist: dict[str, tuple[float, float, float]] = field(default_factory=dict, repr=False)

    def prob_above(self, strike: float, horizon: int | str) -> float:
        """P(price at the horizon > strike) under the forecast distribution."""
        if not (isinstance(strike, (int, float)) and math.isfinite(strike) and strike > 0):
            raise ValueError(f"strike={strike!r} is invalid: must be a positive finite price")
        key = horizon if isinstance(horizon, str) else f"{horizon}d"
        if key not in self._dist:
            raise ValueError(f"horizon {horizon!r} is not forecast; available: {', '.join(self._dist)}")
        loc, scale, df = self._dist[key]
        z = (math.log(strike / self.current_price) - loc) / scale
        return float(stats.t.sf(z, df) if math.isfinite(df) else stats.norm.sf(z))

    def prob_below(self, strike: float, horizon: int | str) -> float:
        return 1.0 - self.prob_above(strike, horizon)

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "current_price": self.current_price, "horizons": self.horizons,
                "prices": self.prices, "log_returns": self.log_returns,
                "quantiles": {k: {str(q): v for q, v in qs.items()} for k, qs in self.quantiles.items()},
                "source": self.source, "reason": self.reason, "model_version": self.model_version,
                "as_of": self.as_of}


@dataclass
class _LoadedModel:
    model: MambaModel
    meta: dict[str, Any]
    engineer: TimeSeriesFeatureEngineer
    feature_scaler: FeatureScaler
    target_scaler: TargetScaler
    calibration: np.ndarray          # (n_horizons,) multiplier of the distribution scale
    lock: threading.Lock

    @property
    def needed_days(self) -> int:
        return int(self.meta["feature_config"]["warmup"]) + int(self.meta["sequence_length"])


def _check_inputs(symbol: str, closes: np.ndarray, current_price: float) -> None:
    if not (isinstance(current_price, (int, float)) and math.isfinite(current_price) and current_price > 0):
        raise ValueError(f"{symbol}: current_price={current_price!r} is invalid: must be a positive finite price")
    if closes.size < _MIN_CLOSES:
        raise ValueError(f"{symbol}: price_history has {closes.size} closes; even the momentum fallback needs at "
                         f"least {_MIN_CLOSES} (the model needs warm-up + sequence_length days, 120 by default)")
    if not np.all(np.isfinite(closes)):
        raise ValueError(f"{symbol}: price_history contains NaN or infinite closes; clean or drop them first")
    if np.any(closes <= 0):
        raise ValueError(f"{symbol}: price_history contains zero or negative closes")


class MambaPredictor:
    """High-level interface for Mamba predictions (the guide's API), safe for concurrent async callers.

    Models load lazily, once per symbol, from `model_dir`; inference runs in a worker thread so the
    event loop stays responsive.
    """

    def __init__(self, symbols: Sequence[str], config: MambaConfig | None = None,
                 model_dir: str | Path = "models/mamba", device: str = "cpu"):
        self.symbols = list(symbols)
        self.config = config
        self.store = ModelStore(model_dir)
        self.device = torch.device(device)
        self._models: dict[str, _LoadedModel | StoreError] = {}
        self._load_lock = threading.Lock()

    # ---- loading ------------------------------------------------------------------------------
    def _load(self, symbol: str) -> _LoadedModel | StoreError:
        with self._load_lock:
            if symbol not in self._models:
                try:
                    model, meta = self.store.load_model(symbol, device=self.device)
                    fc = meta["feature_config"]
                    self._models[symbol] = _LoadedModel(
                        model=model, meta=meta,
                        engineer=TimeSeriesFeatureEngineer(windows=fc["windows"], include_volume=fc["include_volume"]),
                        feature_scaler=FeatureScaler.from_dict(meta["feature_scaler"]),
                        target_scaler=TargetScaler.from_dict(meta["target_scaler"]),
                        calibration=np.asarray(meta.get("calibration", {}).get("scale_factor",
                                               [1.0] * len(model.horizons)), dtype=np.float64),
                        lock=threading.Lock())
                except StoreError as exc:
                    log.warning("%s: model unavailable: %s", symbol, exc)
                    self._models[symbol] = exc
                except (KeyError, TypeError, ValueError) as exc:
                    self._models[symbol] = StoreError(f"{self.store.metadata_path(symbol)}: {exc}")
            return self._models[symbol]

    # ---- forecasting --------------------------------------------------------------------------
    def _forecast(self, symbol: str, price_history: Any, current_price: float,
                  quantiles: Sequence[float]) -> PredictionResult:
        frame = as_price_frame(price_history)
        closes = frame["close"].to_numpy(dtype=np.float64)
        _check_inputs(symbol, closes, current_price)
        for q in quantiles:
            if not 0.0 < q < 1.0:
                raise ValueError(f"quantile {q!r} is invalid: must be strictly between 0 and 1")
        as_of = frame.index[-1].date().isoformat() if isinstance(frame.index[-1], pd.Timestamp) else None
        loaded = self._load(symbol) if symbol in self.symbols or self.store.metadata_path(symbol).exists() \
            else StoreError(f"no model for {symbol} in {self.store.root}")
        if isinstance(loaded, StoreError):
            return self._momentum(symbol, closes, current_price, quantiles, f"no usable model: {loaded}", as_of)
        if len(closes) < loaded.needed_days:
            return self._momentum(symbol, closes, current_price, quantiles,
                                  f"history has {len(closes)} days; the model needs at least {loaded.needed_days}",
                                  as_of)
        horizons = loaded.model.horizons
        features = loaded.engineer.extract_features(frame)
        window = features[-loaded.meta["sequence_length"]:][None]
        x = torch.from_numpy(loaded.feature_scaler.transform(window).astype(np.float32)).to(self.device)
        with loaded.lock, torch.no_grad():
            loc_t, scale_t, df_t = loaded.model.forward_distribution(x)
        loc_z, scale_z = loc_t[0].double().cpu().numpy(), scale_t[0].double().cpu().numpy()
        df = df_t.double().cpu().numpy()
        mean, std = loaded.target_scaler.mean_, loaded.target_scaler.std_
        loc = mean + std * loc_z
        scale = std * scale_z * loaded.calibration
        version = f"{loaded.meta['training_date']}/{loaded.meta['weights_sha256'][:12]}"
        return _result(symbol, current_price, horizons, loc, scale, df, quantiles, "mamba", None, version, as_of)

    def _momentum(self, symbol: str, closes: np.ndarray, current_price: float, quantiles: Sequence[float],
                  reason: str, as_of: str | None) -> PredictionResult:
        horizons = list(self.config.prediction_horizons if self.config else MambaConfig().prediction_horizons)
        forecast = Momentum().fit(closes).predict(closes, horizons)
        loc, scale = np.asarray(forecast.mean, dtype=np.float64), np.asarray(forecast.scale, dtype=np.float64)
        log.warning("%s: answering with the momentum fallback (%s)", symbol, reason)
        return _result(symbol, current_price, horizons, loc, scale, np.full(len(horizons), np.inf), quantiles,
                       "momentum", reason, None, as_of)

    # ---- the guide's API -----------------------------------------------------------------------
    async def predict_detailed(self, symbol: str, price_history: Any, current_price: float,
                               quantiles: Sequence[float] = DEFAULT_QUANTILES) -> PredictionResult:
        return await asyncio.to_thread(self._forecast, symbol, price_history, current_price, quantiles)

    async def predict(self, symbol: str, price_history: Any, current_price: float) -> dict[str, float]:
        """`{'1d': price, '5d': price, ...}`: median predicted price per horizon."""
        return (await self.predict_detailed(symbol, price_history, current_price)).prices

    async def predict_distribution(self, symbol: str, price_history: Any, current_price: float,
                                   quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, dict[float, float]]:
        """Price quantiles per horizon: `{'1d': {0.05: p, ..., 0.95: p}, ...}`, monotone in q."""
        return (await self.predict_detailed(symbol, price_history, current_price, quantiles)).quantiles

    async def prob_above(self, symbol: str, price_history: Any, current_price: float, strike: float,
                         horizon: int | str) -> float:
        return (await self.predict_detailed(symbol, price_history, current_price)).prob_above(strike, horizon)

    async def prob_below(self, symbol: str, price_history: Any, current_price: float, strike: float,
                         horizon: int | str) -> float:
        return (await self.predict_detailed(symbol, price_history, current_price)).prob_below(strike, horizon)

    def train(self, training_data: dict[str, Any], epochs: int = 50, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Train and store a model per symbol from its price history (closes array, Series or DataFrame)."""
        from .config import TrainConfig
        from .train.pipeline import train_symbol

        results = {}
        for symbol, prices in training_data.items():
            results[symbol] = train_symbol(symbol, prices=prices, model_config=self.config,
                                           train_config=TrainConfig(epochs=epochs, **kwargs),
                                           save_dir=self.store.root, device=str(self.device))
            with self._load_lock:
                self._models.pop(symbol, None)
            if symbol not in self.symbols:
                self.symbols.append(symbol)
        return results


def _result(symbol: str, current_price: float, horizons: list[int], loc: np.ndarray, scale: np.ndarray,
            df: np.ndarray, quantiles: Sequence[float], source: str, reason: str | None, version: str | None,
            as_of: str | None) -> PredictionResult:
    qs = sorted(quantiles)
    keys = [f"{h}d" for h in horizons]
    quant: dict[str, dict[float, float]] = {}
    for k, mu, s, nu in zip(keys, loc, scale, df, strict=True):
        z = stats.t.ppf(qs, nu) if math.isfinite(nu) else stats.norm.ppf(qs)
        quant[k] = {q: float(current_price * math.exp(mu + s * zq)) for q, zq in zip(qs, z, strict=True)}
    return PredictionResult(
        symbol=symbol, current_price=float(current_price), horizons=list(horizons),
        prices={k: float(current_price * math.exp(mu)) for k, mu in zip(keys, loc, strict=True)},
        log_returns={k: float(mu) for k, mu in zip(keys, loc, strict=True)}, quantiles=quant, source=source,
        reason=reason, model_version=version, as_of=as_of,
        _dist={k: (float(mu), float(s), float(nu)) for k, mu, s, nu in zip(keys, loc, scale, df, strict=True)})
