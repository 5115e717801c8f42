"""Serve forecasts: the guide's async `MambaPredictor`, with price distributions and a momentum fallback.

For each horizon h the model gives a Student-t distribution of the future log-return
`r_h = log(p[t+h] / p_t)`: location `mu_h` (the point forecast), scale `s_h` and degrees of
freedom `nu_h`, mapped from the model's standardised space with the training target scaler and
widened or narrowed by the calibration factor fitted on the validation split. Prices follow as
`p_t * exp(r)`, so the point forecast `p_t * exp(mu_h)` is the median price, and
`P(p[t+h] > K) = 1 - F_t((log(K / p_t) - mu_h) / s_h; nu_h)`.

When a symbol has no model, its model cannot be used (damaged, tampered, another symbol's, other
horizons: `ModelStore.load_model`'s checks), or the history is too short for its windows, the predictor
answers from the documented momentum rule (`evaluate.baselines`) and says so in
`PredictionResult.source` / `.reason`, and logs a warning; with `strict=True` it raises instead
(`ModelNotFoundError`, `StoreError`, `InsufficientHistoryError`), so callers can tell absence from damage.

Serving path (see docs/prediction.md; the loaded model, request checks and threads: `mambacast.inference`):

- Only the last `keep_days = warm-up + sequence_length + memory` closes are turned into
  features (`trim_history=True`). Rolling features depend on their window only; the exponential
  averages (EMA ratios, MACD, RSI) and the GARCH filter depend on the whole history, but the
  influence of rows before the cut decays as `(1 - alpha)^n` (`beta^n` for the GARCH filter, after
  its two-year long-run window): the memory is chosen so that it is below `EMA_TOLERANCE` (1e-9) of
  the starting gap, under float32 resolution (`ema_memory_days`, `volatility_memory_days`).
- Inference runs in the predictor's own thread pool whose threads use `inference_threads` torch
  threads each (1 by default): one 60-day window is far too small for intra-op parallelism, and
  on a busy machine OpenMP threads waiting for a descheduled sibling make a 1 ms forward take
  hundreds of ms. Parallelism comes from serving several calls (symbols) at once instead.
- `predict_many` stacks the windows of all requests for the same symbol into one forward pass and
  runs different symbols in parallel; `forecast_origins` forecasts every day of one history in a
  few forward passes (for backtests and calibration checks).

`calibration="rolling"` replaces the stored validation-split factor by the same split-conformal
estimator refitted on the model's residuals over the latest `calibration_window` (250) origins of the
given history whose outcome is known; held-out results of both are in docs/prediction.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .blend import Blend
from .config import MambaConfig
from .data.errors import InsufficientHistoryError
from .data.features import TimeSeriesFeatureEngineer, volatility_memory_days
from .data.sequences import FeatureScaler, TargetScaler
from .data.sources import as_close_array, as_price_frame
from .evaluate.baselines import Momentum
from .forecasts import OriginForecasts, PredictionResult, prediction_result, rolling_scale_factor, rolling_scale_factors
from .inference import (
    EMA_TOLERANCE,
    _as_of,
    _check_quantiles,
    _checked_closes,
    _init_inference_thread,
    _LoadedModel,
    _Prepared,
    ema_memory_days,
)
from .store import GLOBAL_MODEL, ModelNotFoundError, ModelStore, StoreError

__all__ = ["MambaPredictor", "PredictionResult", "OriginForecasts", "DEFAULT_QUANTILES", "EMA_TOLERANCE",
           "CALIBRATIONS", "ema_memory_days", "rolling_scale_factors"]

log = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
_MAX_BATCH = 512        # windows per forward pass (bounds memory: 512 x 60 x d_inner floats per layer)
_GROUP_CHUNK = 128      # requests of one symbol per worker task in predict_many
_FACTOR_CACHE = 256     # rolling factors kept per symbol, keyed by the history they were fitted on
CALIBRATIONS = ("validation", "rolling")
MODELS = ("auto", "symbol", "global")


class MambaPredictor:
    """High-level interface for Mamba predictions (the guide's API), safe for concurrent async callers.

    Models load lazily, once per symbol, from `model_dir`; inference runs in the predictor's worker
    threads (`max_workers`, default the number of CPUs, each with `inference_threads` torch threads,
    default 1; None leaves torch's setting alone) so the event loop stays responsive. `trim_history`
    (default True) turns only the last `keep_days` closes into features (see the module docstring);
    False uses the whole history as given. `close()` stops the worker threads.

    `calibration` chooses the factor that scales the model's distribution: "validation" (default) is
    the split-conformal factor fitted at training time on the validation split and stored with the
    model; "rolling" refits the same estimator at each forecast on the model's own residuals over the
    `calibration_window` latest origins whose outcome is in the given history (h days stale for
    horizon h), so the intervals follow volatility regimes the validation split never saw. It needs
    `calibration_window + max(horizons) - 1` more days of history (horizons without enough keep the
    validation factor) and one forward pass over those windows per new history; the factor is cached
    per symbol and history, so repeated calls on the same history cost what a "validation" call does.

    `model` chooses which stored model answers: "auto" (default) the global model (`mambacast train --global`,
    stored as `_GLOBAL`) when the store has one, since the backtest found it better than per-symbol models
    (docs/results.md), else the symbol's own model; "symbol" only per-symbol models (the guide's behaviour);
    "global" the global model for every symbol.

    `strict=True` never answers with the momentum fallback: a symbol without a model raises
    `ModelNotFoundError`, one whose model exists but cannot be used (damaged, tampered, another symbol's, other
    horizons, an incompatible version) raises `StoreError` (its base class), and a history too short for the
    model raises `InsufficientHistoryError`, so a service can tell "never trained" from "damaged".
    """

    def __init__(self, symbols: Sequence[str], config: MambaConfig | None = None,
                 model_dir: str | Path = "models/mamba", device: str = "cpu", *, trim_history: bool = True,
                 inference_threads: int | None = 1, max_workers: int | None = None,
                 calibration: str = "validation", calibration_window: int = 250, model: str = "auto",
                 strict: bool = False):
        if model not in MODELS:
            raise ValueError(f"model={model!r} is invalid: use one of {', '.join(MODELS)}")
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration={calibration!r} is invalid: use one of {', '.join(CALIBRATIONS)}")
        if not isinstance(calibration_window, int) or calibration_window < 10:
            raise ValueError(f"calibration_window={calibration_window!r} is invalid: must be an integer >= 10")
        if inference_threads is not None and (not isinstance(inference_threads, int) or inference_threads < 1):
            raise ValueError(f"inference_threads={inference_threads!r} is invalid: must be a positive integer "
                             "or None")
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers={max_workers!r} is invalid: must be a positive integer or None")
        self.symbols = list(symbols)
        self.config = config
        self.store = ModelStore(model_dir)
        self.device = torch.device(device)
        self.trim_history = bool(trim_history)
        self.inference_threads = inference_threads
        self.max_workers = max_workers or os.cpu_count() or 1
        self.calibration = calibration
        self.calibration_window = calibration_window
        self.model = model
        self.strict = bool(strict)
        self._models: dict[str, _LoadedModel | StoreError] = {}
        self._load_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ---- loading ------------------------------------------------------------------------------
    def _load(self, symbol: str) -> _LoadedModel | StoreError:
        with self._load_lock:
            if symbol not in self._models:
                try:
                    horizons = self.config.prediction_horizons if self.config else None
                    model, meta = self.store.load_model(symbol, device=self.device, horizons=horizons)
                    fc = meta["feature_config"]
                    engineer = TimeSeriesFeatureEngineer(windows=fc["windows"], include_volume=fc["include_volume"],
                                                         include_range=fc.get("include_range", False))
                    self._models[symbol] = _LoadedModel(
                        model=model, meta=meta, engineer=engineer,
                        feature_scaler=FeatureScaler.from_dict(meta["feature_scaler"]),
                        target_scaler=TargetScaler.from_dict(meta["target_scaler"]),
                        calibration=np.asarray(meta.get("calibration", {}).get("scale_factor",
                                               [1.0] * len(model.horizons)), dtype=np.float64),
                        lock=threading.Lock(), blend=Blend.from_metadata(meta),
                        keep_days=int(fc["warmup"]) + int(meta["sequence_length"])
                        + max(ema_memory_days(engineer.windows), volatility_memory_days(EMA_TOLERANCE)))
                except ModelNotFoundError:
                    self._models[symbol] = ModelNotFoundError(f"no model for {symbol} in {self.store.root}")
                except StoreError as exc:
                    # the fallback's own warning (or, strict, the error) says why; no second line here
                    log.debug("%s: model unavailable: %s", symbol, exc)
                    self._models[symbol] = exc
                except (KeyError, TypeError, ValueError) as exc:
                    self._models[symbol] = StoreError(f"{self.store.metadata_path(symbol)}: {exc}")
            return self._models[symbol]

    def _lookup(self, symbol: str) -> _LoadedModel | StoreError:
        has_global = self.store.metadata_path(GLOBAL_MODEL).exists()
        if self.model != "symbol" and has_global:
            return self._load(GLOBAL_MODEL)   # one pooled model serves every symbol (docs/results.md: it forecasts
            #                                   better than per-symbol models in the backtest)
        if self.model == "global":
            return ModelNotFoundError(f"no global model in {self.store.root} (train one: mambacast train --global)")
        if symbol in self.symbols or self.store.metadata_path(symbol).exists():
            return self._load(symbol)         # a load error names the missing or damaged file
        return ModelNotFoundError(f"no model for {symbol} in {self.store.root}")

    def model_version(self, symbol: str) -> str:
        """Load (once) the model that answers `symbol` and return its version; raises StoreError if none is usable.

        A server calls it at start-up so the first request does not pay for loading (blocking: file reads).
        """
        loaded = self._lookup(symbol)
        if isinstance(loaded, StoreError):
            raise loaded
        return loaded.version

    # ---- worker threads -----------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="mambacast-predict",
                                          initializer=_init_inference_thread,
                                          initargs=(self.inference_threads, torch.get_num_threads()))
                # Start every worker now (each waits at the barrier, so each task gets its own thread):
                # their thread settings are then done before any forecast, not while other threads start.
                barrier = threading.Barrier(self.max_workers)
                for future in [pool.submit(barrier.wait, 10.0) for _ in range(self.max_workers)]:
                    future.result()
                self._pool = pool
            return self._pool

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor(), fn, *args)

    def close(self) -> None:
        """Stop the worker threads (a later call starts new ones)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # ---- forecasting --------------------------------------------------------------------------
    def _prepare(self, symbol: str, price_history: Any, current_price: float, quantiles: Sequence[float]
                 ) -> PredictionResult | _Prepared:
        """Validate one request: a momentum answer, or the scaled windows the model must read."""
        closes = _checked_closes(symbol, as_close_array(price_history), current_price)
        _check_quantiles(quantiles)
        as_of = _as_of(price_history)
        loaded = self._lookup(symbol)
        if isinstance(loaded, StoreError):
            if self.strict:
                raise type(loaded)(f"{symbol}: {loaded}")
            return self._momentum(symbol, closes, current_price, quantiles, f"no usable model: {loaded}", as_of)
        if len(closes) < loaded.needed_days:
            short = f"history has {len(closes)} days; the model needs at least {loaded.needed_days}"
            if self.strict:
                raise InsufficientHistoryError(f"{symbol}: {short}")
            return self._momentum(symbol, closes, current_price, quantiles, short, as_of)
        rolling = self.calibration == "rolling"
        lookback = self.calibration_window + max(loaded.model.horizons) - 1 if rolling else 0
        keep = min(len(closes), loaded.keep_days + lookback if self.trim_history else len(closes))
        tail = closes[-keep:]
        key, factor = None, None
        if rolling:
            key = hashlib.blake2b(tail.tobytes(), digest_size=16).digest()
            with loaded.lock:
                factor = loaded.factors.get(key)
        # the current window, and before it (rolling, not cached) the windows of the residual origins
        n_windows = 1 if factor is not None or not rolling else \
            min(lookback, keep - loaded.needed_days) + 1
        rows = loaded.sequence_length + n_windows - 1     # the feature rows the windows read: the last ones
        if loaded.engineer.include_volume or loaded.engineer.include_range:
            part = price_history.iloc[-keep:] if isinstance(price_history, (pd.DataFrame, pd.Series)) else tail
            features = loaded.engineer.extract_features(as_price_frame(part), last=rows)
        else:
            features = loaded.engineer.extract_features(tail, last=rows)
        scaled = loaded.feature_scaler.transform(features)
        windows = np.lib.stride_tricks.sliding_window_view(scaled, loaded.sequence_length, axis=0).transpose(0, 2, 1)
        # The pool reads the whole history: GARCH-t's filter is cheap and its memory (beta^n) can outlast
        # keep_days; HAR-t needs the last 66 returns
        return _Prepared(loaded, windows, as_of, closes, tail if rolling else None, key, factor)

    def _infer(self, loaded: _LoadedModel, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """windows (batch, seq_len, n_features) -> loc, raw_scale (batch, n_horizons) in log-returns, df (n_horizons,).

        raw_scale is the model's scale before any calibration factor.
        """
        x = torch.from_numpy(np.array(windows, dtype=np.float32, order="C")).to(self.device)  # a writable copy
        with loaded.lock, torch.inference_mode():   # no autograd bookkeeping at all (no_grad keeps some)
            outs = [loaded.model.forward_distribution(x[i:i + _MAX_BATCH]) for i in range(0, len(x), _MAX_BATCH)]
        loc_z = torch.cat([o[0] for o in outs]).double().cpu().numpy()
        scale_z = torch.cat([o[1] for o in outs]).double().cpu().numpy()
        df = outs[0][2].double().cpu().numpy()
        mean, std = loaded.target_scaler.mean_, loaded.target_scaler.std_
        return mean + std * loc_z, std * scale_z, df

    def _finish(self, symbol: str, current_price: float, prep: _Prepared, loc: np.ndarray, raw: np.ndarray,
                df: np.ndarray, quantiles: Sequence[float]) -> PredictionResult:
        """Result from the outputs of one request's windows (the last one is the forecast)."""
        loaded = prep.loaded
        factor = loaded.calibration if prep.closes is None else prep.factor
        if factor is None:   # rolling, not cached: fit it on the residual windows' forecasts
            factor = rolling_scale_factor(prep.closes, loc, raw, df, loaded.model.horizons, self.calibration_window,
                                     loaded.calibration)
            with loaded.lock:
                if len(loaded.factors) >= _FACTOR_CACHE:
                    loaded.factors.pop(next(iter(loaded.factors)))
                loaded.factors[prep.key] = factor
        horizons = loaded.model.horizons
        mu, scale = loaded.blend.apply(symbol, prep.history, [len(prep.history) - 1], horizons, loc[-1:], df,
                                       raw[-1:] * factor)
        return prediction_result(symbol, current_price, horizons, mu[0], scale[0], df, quantiles, "mamba", None,
                       loaded.version, prep.as_of)

    def _forecast(self, symbol: str, price_history: Any, current_price: float,
                  quantiles: Sequence[float]) -> PredictionResult:
        prepared = self._prepare(symbol, price_history, current_price, quantiles)
        if isinstance(prepared, PredictionResult):
            return prepared
        loc, raw, df = self._infer(prepared.loaded, prepared.windows)
        return self._finish(symbol, current_price, prepared, loc, raw, df, quantiles)

    def _forecast_group(self, requests: Sequence[tuple[str, Any, float]], quantiles: Sequence[float],
                        return_exceptions: bool) -> list[PredictionResult | BaseException]:
        """Requests of one symbol: validate and window each, then one forward pass over all the windows."""
        results: list[PredictionResult | BaseException | None] = [None] * len(requests)
        pending: list[tuple[int, _Prepared]] = []
        for j, (symbol, history, price) in enumerate(requests):
            try:
                prepared = self._prepare(symbol, history, price, quantiles)
            except Exception as exc:
                if not return_exceptions:
                    raise
                results[j] = exc
                continue
            if isinstance(prepared, PredictionResult):
                results[j] = prepared
            else:
                pending.append((j, prepared))
        if pending:
            loc, raw, df = self._infer(pending[0][1].loaded, np.concatenate([p.windows for _, p in pending]))
            end = 0
            for j, prep in pending:
                start, end = end, end + len(prep.windows)
                symbol, _, price = requests[j]
                results[j] = self._finish(symbol, price, prep, loc[start:end], raw[start:end], df, quantiles)
        return results  # type: ignore[return-value]

    def _momentum(self, symbol: str, closes: np.ndarray, current_price: float, quantiles: Sequence[float],
                  reason: str, as_of: str | None) -> PredictionResult:
        horizons = list(self.config.prediction_horizons if self.config else MambaConfig().prediction_horizons)
        forecast = Momentum().fit(closes).predict(closes, horizons)
        loc, scale = np.asarray(forecast.mean, dtype=np.float64), np.asarray(forecast.scale, dtype=np.float64)
        log.warning("%s: answering with the momentum fallback (%s)", symbol, reason)
        return prediction_result(symbol, current_price, horizons, loc, scale, np.full(len(horizons), np.inf), quantiles,
                       "momentum", reason, None, as_of)

    # ---- the guide's API -----------------------------------------------------------------------
    async def predict_detailed(self, symbol: str, price_history: Any, current_price: float,
                               quantiles: Sequence[float] = DEFAULT_QUANTILES) -> PredictionResult:
        return await self._run(self._forecast, symbol, price_history, current_price, quantiles)

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

    async def predict_many(self, requests: Sequence[tuple[str, Any, float]],
                           quantiles: Sequence[float] = DEFAULT_QUANTILES, *, return_exceptions: bool = False
                           ) -> list[PredictionResult | BaseException]:
        """`predict_detailed` for many `(symbol, price_history, current_price)` requests, in request order.

        Requests for the same symbol (e.g. many as-of dates) share one forward pass over their stacked
        windows; different symbols run in parallel in the worker threads. The answers are those of
        `predict_detailed` (to float32 rounding of the batched matrix products). A bad request raises
        its ValueError, or with `return_exceptions=True` its exception takes that request's place.
        """
        requests = list(requests)
        _check_quantiles(quantiles)
        for i, req in enumerate(requests):
            if not (isinstance(req, tuple) and len(req) == 3):
                raise ValueError(f"request {i} must be a (symbol, price_history, current_price) tuple, got "
                                 f"{type(req).__name__}")
        groups: dict[str, list[int]] = {}
        for i, (symbol, _, _) in enumerate(requests):
            groups.setdefault(symbol, []).append(i)
        chunks = [idx[k:k + _GROUP_CHUNK] for idx in groups.values() for k in range(0, len(idx), _GROUP_CHUNK)]
        parts = await asyncio.gather(*(self._run(self._forecast_group, [requests[i] for i in chunk], quantiles,
                                                 return_exceptions) for chunk in chunks))
        out: list[PredictionResult | BaseException | None] = [None] * len(requests)
        for chunk, results in zip(chunks, parts, strict=True):
            for i, result in zip(chunk, results, strict=True):
                out[i] = result
        return out  # type: ignore[return-value]

    def forecast_origins(self, symbol: str, price_history: Any, origins: Sequence[int] | None = None
                         ) -> OriginForecasts:
        """The model's distributions at many origins of one history, in a few forward passes (blocking).

        The forecast at origin t uses rows 0..t only (features are causal), i.e. it is what
        `predict_detailed(symbol, history[:t + 1], ...)` answers without trimming, with this predictor's
        calibration (the rolling factor at t uses the residuals of origins up to t - h, as in serving).
        `origins` default to every row with a full window. Raises StoreError when the symbol has no
        usable model (no fallback: this is for backtests and calibration checks of the model itself).
        """
        loaded = self._lookup(symbol)
        if isinstance(loaded, StoreError):
            raise loaded
        closes = _checked_closes(symbol, as_close_array(price_history), 1.0)
        first = loaded.needed_days - 1
        rows = np.arange(first, len(closes)) if origins is None else np.asarray(origins, dtype=np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < first or rows.max() >= len(closes))):
            raise ValueError(f"{symbol}: origins must be row positions in [{first}, {len(closes) - 1}] (a full "
                             f"window of {loaded.needed_days} days up to the origin)")
        horizons = loaded.model.horizons
        if self.calibration == "rolling" and rows.size:   # every origin from the first residual one needed
            span = np.arange(max(first, int(rows.min()) - self.calibration_window - max(horizons) + 1),
                             int(rows.max()) + 1)
        else:
            span = rows
        frame = as_price_frame(price_history) if loaded.engineer.include_volume or loaded.engineer.include_range \
            else closes
        scaled = loaded.feature_scaler.transform(loaded.engineer.extract_features(frame))
        windows = np.lib.stride_tricks.sliding_window_view(scaled, loaded.sequence_length, axis=0)
        windows = windows.transpose(0, 2, 1)[span - loaded.sequence_length + 1]   # (n, seq_len, n_features)
        loc, raw, df = self._infer(loaded, windows)
        if self.calibration == "rolling" and rows.size:
            factor = rolling_scale_factors(closes, span, loc, raw, df, horizons, self.calibration_window,
                                      loaded.calibration)
            pick = rows - span[0]
            loc, raw, factor = loc[pick], raw[pick], factor[pick]
        else:
            factor = np.broadcast_to(loaded.calibration, loc.shape).copy()
        # The served law pools in GARCH(1,1)-t and HAR-t (`mambacast.blend`); raw_scale: the pool before calibration.
        loc, scale, raw = loaded.blend.apply(symbol, closes, rows, horizons, loc, df, raw * factor, raw)
        index = price_history.index if isinstance(price_history, (pd.DataFrame, pd.Series)) else None
        as_of = [index[r].date().isoformat() if index is not None and isinstance(index[r], pd.Timestamp) else None
                 for r in rows]
        return OriginForecasts(symbol=symbol, horizons=horizons, origins=rows, as_of=as_of, loc=loc,
                               scale=scale, raw_scale=raw, df=df, calibration=scale / raw,
                               model_version=loaded.version)

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
