"""The Mamba model behind the `Forecaster` interface: fit on a price array in memory, no files.

`MambaForecaster.fit(prices)` runs exactly what `mambacast train` runs on a price series
(`train.pipeline.prepare_data`: quality check, causal features, windows, 80/20 temporal split with an
embargo of `max(horizons)` samples, scalers fitted on the training rows; `Trainer` with the guide's
early stopping (best weights restored) and reduce-LR-on-plateau on the validation tail;
`calibrate_distribution` for the per-horizon scale factor), but keeps the model in memory instead of
writing a model store. `predict_many(prices, origins, horizons)` recomputes the causal features on the
given closes, cuts the `sequence_length`-day window ending at each origin, and maps the Student-t heads
back to log-return units as `MambaPredictor` does:

    loc   = target_mean + target_std * loc_z
    scale = target_std * scale_z * calibration_factor
    r_h   ~ loc + scale * t(df_h)

Because every feature at row t depends on closes 0..t only, the forecast at origin o from
`predict_many(prices, ...)` equals the one from `predict(prices[:o + 1])` (tested).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..blend import Blend
from ..config import MambaConfig, TrainConfig
from ..data.features import TimeSeriesFeatureEngineer
from ..data.sequences import FeatureScaler, TargetScaler
from ..nn.mamba import MambaModel
from ..train.callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from ..train.distribution import calibrate_distribution, configure_baseline, fit_baseline_tail
from ..train.pooled import PooledData, prepare_pooled
from ..train.prepare import DEFAULT_WINDOWS, prepare_data
from ..train.trainer import Trainer
from .baselines import (
    DEFAULT_QUANTILES,
    BaseForecaster,
    Forecast,
    _check_origins,
    _check_prices,
    stale_sample_start,
)
from .forecast import check_horizons
from .panel import CutoffCache, Panel

__all__ = ["MambaForecaster", "GlobalMambaForecaster", "global_model_factory"]

logger = logging.getLogger(__name__)

_PREDICT_BATCH = 512
# A pooled refit reads each symbol's last ten years and every second training window (neighbours share all
# but one day): 20 symbols give ~25,000 windows, a refit a minute on one core.
POOLED_DAYS, POOLED_STRIDE = 2520, 2
EpochFn = Callable[[int, int, dict[str, float]], None]


class _EpochHook(Callback):
    def __init__(self, fn: EpochFn, epochs: int):
        self.fn, self.epochs = fn, epochs

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self.fn(epoch, self.epochs, logs)


class MambaForecaster(BaseForecaster):
    """Mamba model trained in memory on closes; Student-t forecast of the h-day log-returns.

    Args:
        model_config: architecture (its `prediction_horizons` are the horizons it can forecast).
        train_config: fit settings (epochs, batch size, patience, sequence_length, seed, ...).
        symbol: name used in log lines and data errors.
        windows: feature look-backs (the pipeline's default).
        calibrate: apply the split-conformal scale factor fitted on the validation tail (as
            `mambacast train` stores it); False leaves the raw Student-t scale.
            The served distribution then pools in a GARCH(1,1)-t and a HAR-t fitted on the same closes with
            weights `train_config.garch_weight` and `har_weight` (`mambacast.blend`), as `mambacast train`
            stores and serves it.
        device: torch device for training and inference ("cpu" by default).
        on_epoch: optional `fn(epoch, epochs, logs)` called after every epoch (progress).

    After `fit`: `model_`, `feature_scaler_`, `target_scaler_`, `calibration_` (per-horizon factor),
    `blend_` (the classical side of the served law: GARCH-t and HAR-t fits), `fit_info_` (days, samples, epochs run,
    best validation loss, seconds).
    """

    name = "mamba"

    def __init__(self, model_config: MambaConfig | None = None, train_config: TrainConfig | None = None, *,
                 symbol: str = "series", windows: Sequence[int] = DEFAULT_WINDOWS, calibrate: bool = True,
                 device: str = "cpu", on_epoch: EpochFn | None = None) -> None:
        self.model_config = model_config or MambaConfig.small()
        self.train_config = train_config or TrainConfig.small()
        self.symbol, self.windows, self.calibrate = symbol, tuple(windows), calibrate
        self.device, self.on_epoch = device, on_epoch
        self.model_: MambaModel | None = None
        self.feature_scaler_: FeatureScaler | None = None
        self.target_scaler_: TargetScaler | None = None
        self.calibration_: np.ndarray | None = None
        self.blend_: Blend = Blend.network_alone()
        self.warmup_: int | None = None
        self.fit_info_: dict[str, Any] = {}

    @property
    def horizons(self) -> list[int]:
        return list(self.model_config.prediction_horizons)

    @property
    def sequence_length(self) -> int:
        return self.train_config.sequence_length

    def min_origin(self) -> int:
        """Smallest origin index with a full window after the feature warm-up (needs a fitted model)."""
        warmup = self.warmup_ if self.warmup_ is not None else TimeSeriesFeatureEngineer(self.windows).warmup_
        return warmup + self.sequence_length - 1

    def fit(self, prices: np.ndarray) -> MambaForecaster:
        t0 = time.perf_counter()
        closes = _check_prices(prices, min_len=3)
        # A stale-price stretch (e.g. RRC's 1990-92 quotes) fails the data checks and says nothing about
        # volatility: train on the closes after it, as GarchT fits (`stale_sample_start`).
        start = stale_sample_start(np.log(closes))
        if start:
            logger.info("%s: training starts after a stale-price stretch, at close %d of %d", self.symbol, start,
                        closes.size)
        mc, tc = self.model_config, self.train_config
        data = prepare_data(self.symbol, closes[start:], mc, tc, windows=self.windows)
        self._train(data.feature_names, data.feature_scaler, data.target_scaler, data.warmup,
                    data.X[data.train_idx], data.y_scaled[data.train_idx], data.X[data.val_idx],
                    data.y_scaled[data.val_idx])
        self._fit_blend(closes)
        self.fit_info_ = {"days": int(closes.size - start), "stale_days_dropped": int(start),
                          "samples": int(len(data.X)), **self.fit_info_,
                          "seconds": time.perf_counter() - t0}
        logger.info("%s: fitted on %d days (%d windows) in %d epochs, best %s %.4f, %.1fs", self.symbol, closes.size,
                    len(data.X), self.fit_info_["epochs"], tc.monitor, self.fit_info_["best_monitored"],
                    self.fit_info_["seconds"])
        return self

    def _train(self, feature_names: list[str], feature_scaler: FeatureScaler, target_scaler: TargetScaler,
               warmup: int, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> None:
        """Train a fresh model with the guide's callbacks on `train_config.monitor`; set the fitted attributes."""
        mc, tc = self.model_config, self.train_config
        torch.manual_seed(tc.seed)
        model = MambaModel(mc, len(feature_names))
        configure_baseline(model, feature_names, feature_scaler, target_scaler)
        fit_baseline_tail(model, X_train, y_train)
        early = EarlyStopping(monitor=tc.monitor, patience=tc.patience, min_delta=tc.min_delta,
                              restore_best_weights=True)
        callbacks: list[Callback] = [
            early,
            ReduceLROnPlateau(monitor=tc.monitor, factor=tc.lr_factor, patience=tc.lr_patience,
                              min_delta=tc.min_delta, min_lr=tc.min_lr),
        ]
        if self.on_epoch is not None:
            callbacks.append(_EpochHook(self.on_epoch, tc.epochs))
        trainer = Trainer(model, tc, callbacks, device=self.device)
        history = trainer.fit(X_train, y_train, X_val, y_val)
        if self.calibrate:   # on the training device; the fitted model then forecasts on the CPU
            calibration = np.asarray(calibrate_distribution(trainer.model, X_val, y_val)["scale_factor"],
                                     dtype=np.float64)
        else:
            calibration = np.ones(len(mc.prediction_horizons))
        model = trainer.model.cpu().eval()
        self.model_, self.calibration_ = model, calibration
        self.feature_scaler_, self.target_scaler_, self.warmup_ = feature_scaler, target_scaler, warmup
        # early.best_epoch is -1 when no epoch beat the untrained model (the baseline's weights were kept).
        best = trainer.baseline_logs if early.best_epoch < 0 else history[early.best_epoch - history[0]["epoch"]]
        self.fit_info_ = {
            "seed": tc.seed, "train_samples": int(len(X_train)), "val_samples": int(len(X_val)), "epochs": len(history),
            "best_epoch": early.best_epoch + 1, "monitor": tc.monitor, "best_monitored": float(early.best),
            "best_val_loss": float(best.get("val_loss", np.nan)), "best_val_crps": float(best.get("val_crps", np.nan)),
            "df": [float(d) for d in (2.0 + torch.nn.functional.softplus(model.dist_head.df_raw.detach()))],
            "calibration": [float(c) for c in calibration],
        }

    def _fit_blend(self, closes: np.ndarray) -> None:
        """The blend's GARCH(1,1)-t and HAR-t on this symbol's training closes (both drop stale stretches)."""
        tc = self.train_config
        self.blend_ = Blend.fit({self.symbol: closes}, self.horizons, tc.garch_weight, tc.har_weight)
        self.fit_info_.update(garch_weight=tc.garch_weight, har_weight=tc.har_weight)

    def predict(self, prices: np.ndarray, horizons: Sequence[int]) -> Forecast:
        p = _check_prices(prices)
        return self.predict_many(p, [p.size - 1], horizons).at(0)

    @torch.no_grad()
    def predict_many(self, prices: np.ndarray, origins: Sequence[int], horizons: Sequence[int]) -> Forecast:
        """Forecasts at `origins` (indices into prices), each from the window ending at the origin.

        prices (n_days,); origins (n_origins,) with origin >= `min_origin()`; returns mean/scale (n_origins, H)
        and df (n_origins, H) of the Student-t law of each log-return, with the default quantile levels.
        """
        if self.model_ is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit(training_prices) first")
        hs = check_horizons(horizons)
        missing = [h for h in hs if h not in self.horizons]
        if missing:
            raise ValueError(f"horizons {missing} are not forecast by this model (trained for {self.horizons})")
        cols = [self.horizons.index(h) for h in hs]
        p = _check_prices(prices)
        o = _check_origins(origins, p.size, self.min_origin())
        engineer = TimeSeriesFeatureEngineer(windows=self.windows)
        # Features are causal: only closes up to the last origin matter, so later ones are not even read.
        features = engineer.extract_features(p[: o.max() + 1])
        if engineer.warmup_ != self.warmup_:
            raise ValueError(f"prices have leading missing values (warm-up {engineer.warmup_} != {self.warmup_})")
        scaled = self.feature_scaler_.transform(features).astype(np.float32)  # type: ignore[union-attr]
        L = self.sequence_length
        locs, scales = [], []
        df = None
        for i in range(0, o.size, _PREDICT_BATCH):
            ends = o[i:i + _PREDICT_BATCH]
            windows = np.stack([scaled[e - L + 1: e + 1] for e in ends])
            loc_z, scale_z, df_t = self.model_.forward_distribution(torch.from_numpy(windows))
            locs.append(loc_z.double().numpy())
            scales.append(scale_z.double().numpy())
            df = df_t.double().numpy()
        mean_, std_ = self.target_scaler_.mean_, self.target_scaler_.std_  # type: ignore[union-attr]
        loc = (mean_ + std_ * np.concatenate(locs))[:, cols]
        scale = (std_ * np.concatenate(scales) * self.calibration_)[:, cols]
        loc, scale = self.blend_.apply(self.symbol, p, o, hs, loc, np.asarray(df)[cols], scale)
        return Forecast.from_location_scale(hs, loc, scale, df=np.asarray(df)[cols], levels=DEFAULT_QUANTILES)


class GlobalMambaForecaster(MambaForecaster):
    """One Mamba model trained on the pooled windows of every symbol of a `Panel` (`train.pooled`).

    `fit_dated(closes, dates)` (the backtest's hook for pooled forecasters) fetches the model trained on
    every panel symbol's rows dated on or before `dates[-1]` from a shared `CutoffCache`, so the symbols
    of one refit share one training run; `predict_many` is `MambaForecaster`'s, on this symbol's closes.
    A plain `fit(closes)` (no dates) trains on this symbol alone, as `MambaForecaster` does.
    """

    name = "mamba_global"

    def __init__(self, cache: CutoffCache[GlobalMambaForecaster], model_config: MambaConfig | None = None,
                 train_config: TrainConfig | None = None, **kwargs: Any) -> None:
        super().__init__(model_config, train_config, **kwargs)
        self.cache = cache

    def fit_dated(self, prices: np.ndarray, dates: pd.DatetimeIndex) -> GlobalMambaForecaster:
        fitted = self.cache.get(dates[-1])
        self.model_, self.calibration_ = fitted.model_, fitted.calibration_
        self.feature_scaler_, self.target_scaler_, self.warmup_ = (fitted.feature_scaler_, fitted.target_scaler_,
                                                                   fitted.warmup_)
        self.fit_info_ = dict(fitted.fit_info_)
        self._fit_blend(prices)   # per symbol: the pooled network is shared, GARCH-t and HAR-t are the stock's own
        return self

    def fit_pooled(self, data: PooledData) -> GlobalMambaForecaster:
        t0 = time.perf_counter()
        self._train(data.feature_names, data.feature_scaler, data.target_scaler, data.warmup, data.X_train,
                    data.y_train, data.X_val, data.y_val)
        self.fit_info_.update(symbols=len(data.counts), skipped=dict(data.skipped), seconds=time.perf_counter() - t0)
        logger.info("global model: %d symbols, %d windows, %d epochs, best %s %.4f, %.1fs", len(data.counts),
                    len(data.X_train), self.fit_info_["epochs"], self.train_config.monitor,
                    self.fit_info_["best_monitored"], self.fit_info_["seconds"])
        return self


def global_model_factory(panel: Panel, model_config: MambaConfig | None = None,
                         train_config: TrainConfig | None = None, *, max_days: int | None = POOLED_DAYS,
                         train_stride: int = POOLED_STRIDE, calibrate: bool = True, device: str = "cpu",
                         on_epoch: EpochFn | None = None) -> Callable[[str], GlobalMambaForecaster]:
    """`symbol -> GlobalMambaForecaster` sharing one pooled fit per refit date over every panel symbol.

    Each fit reads every symbol's last `max_days` rows up to the cutoff (the backtest's --window and
    --train-days do not apply) and keeps every `train_stride`-th training window.
    """
    mc, tc = model_config or MambaConfig.small(), train_config or TrainConfig.small()

    def build(cutoff: pd.Timestamp) -> GlobalMambaForecaster:
        frames = panel.until(cutoff)
        data = prepare_pooled(frames, mc, tc, max_days=max_days, train_stride=train_stride)
        trained = GlobalMambaForecaster(cache, mc, tc, symbol="GLOBAL", calibrate=calibrate, device=device,
                                        on_epoch=on_epoch)
        return trained.fit_pooled(data)

    cache: CutoffCache[GlobalMambaForecaster] = CutoffCache(build)
    return lambda symbol: GlobalMambaForecaster(cache, mc, tc, symbol=symbol, device=device)
