"""One network for many symbols: pooled training windows with shared scalers (`train --global`).

Per-symbol models see a few thousand noisy windows each; a global model sees every symbol's, so
what it learns about volatility and its dynamics is estimated on far more data, and it can forecast
symbols it never saw. The features are scale-free (ratios, returns, log volatilities) and the
distribution head starts from each window's own GARCH baseline, so one feature scaler and one
target scaler fitted on the pooled training rows serve every symbol; a volatile stock differs
from a quiet one through its volatility features and its baseline, not through its own scalers.

Each symbol is split by time as in per-symbol training (the last `validation_split` of its
windows validate, an embargo of the longest horizon before them), so validation is on the most
recent dates of every symbol and no training target reaches into them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..blend import Blend
from ..config import MambaConfig, TrainConfig
from ..data.errors import DataError
from ..data.features import TimeSeriesFeatureEngineer, forward_fill_closes
from ..data.quality import check_data_quality
from ..data.sequences import FeatureScaler, SequenceGenerator, TargetScaler, temporal_split
from ..data.sources import as_price_frame, load_prices
from ..nn.mamba import MambaModel
from ..plots import render_curves
from ..store import GLOBAL_MODEL, ModelStore
from ..versions import ModelVersions
from .distribution import calibrate_distribution, configure_baseline, fit_baseline_tail
from .pipeline import ProgressFn, stored_trainer
from .prepare import DEFAULT_WINDOWS, data_fingerprint
from .trainer import resolve_device

__all__ = ["PooledData", "prepare_pooled", "train_global"]

log = logging.getLogger(__name__)


@dataclass
class PooledData:
    """Training and validation windows of many symbols, scaled with pooled statistics.

    X_train (n_train, seq_len, n_features), y_train (n_train, n_horizons) standardised; the same for
    validation. `counts[symbol] = (n_train, n_val)`; `skipped[symbol]` the reason a symbol was left out.
    """

    feature_names: list[str]
    warmup: int
    feature_scaler: FeatureScaler
    target_scaler: TargetScaler
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def prepare_pooled(frames: Mapping[str, Any], model_config: MambaConfig, train_config: TrainConfig,
                   windows: Sequence[int] = (5, 10, 20, 60), max_days: int | None = None,
                   train_stride: int = 1) -> PooledData:
    """Quality-check, featurise and window every symbol, split each by time, fit pooled scalers.

    max_days: keep each symbol's last `max_days` rows (bounds the cost of long histories);
    train_stride: keep every k-th training window (neighbouring windows overlap in all but one day).
    A symbol whose data fails the checks or is too short is skipped with its reason in `skipped`;
    raises `DataError` when none is left.
    """
    engineer = TimeSeriesFeatureEngineer(windows=list(windows))
    horizons = model_config.prediction_horizons
    gen = SequenceGenerator(train_config.sequence_length, horizons, stride=1)
    parts, skipped = [], {}
    for symbol, prices in frames.items():
        frame = as_price_frame(prices)
        frame.attrs.setdefault("symbol", symbol)
        if max_days is not None:
            frame = frame.iloc[-max_days:]
        try:
            check_data_quality(frame, symbol)
            feats = engineer.extract_features(frame)
            _, y_dict = gen.generate_sequences(feats, frame, start=engineer.warmup_)
            y = np.hstack([y_dict[h] for h in horizons]).astype(np.float32)
            tr, va = temporal_split(len(y), train_config.validation_split, embargo=model_config.max_horizon)
        except DataError as exc:
            skipped[symbol] = str(exc)
            log.warning("global model: leaving %s out: %s", symbol, exc)
            continue
        parts.append((symbol, frame, feats, engineer.warmup_, y, tr[::-1][::train_stride][::-1], va,
                      gen.rows_covered(tr)))
    if not parts:
        raise DataError("no symbol has usable data for the global model: " +
                        "; ".join(f"{s}: {r}" for s, r in skipped.items()))
    feature_scaler = FeatureScaler().fit(np.concatenate([p[2][p[7]] for p in parts]))
    target_scaler = TargetScaler(horizons).fit(np.concatenate([p[4][p[5]] for p in parts]))
    Xt, yt, Xv, yv, counts = [], [], [], [], {}
    for symbol, frame, feats, warmup, y, tr, va, _ in parts:
        X, _ = gen.generate_sequences(feature_scaler.transform(feats), frame, start=warmup)
        y_scaled = target_scaler.transform(y)
        Xt.append(X[tr])
        yt.append(y_scaled[tr])
        Xv.append(X[va])
        yv.append(y_scaled[va])
        counts[symbol] = (len(tr), len(va))
    log.info("global model: %d symbols, %d training and %d validation windows", len(parts),
             sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
    return PooledData(list(engineer.feature_names_), int(engineer.warmup_), feature_scaler, target_scaler,
                      np.concatenate(Xt), np.concatenate(yt).astype(np.float32), np.concatenate(Xv),
                      np.concatenate(yv).astype(np.float32), counts, skipped)


def _filled_closes(prices: Any, symbol: str) -> np.ndarray:
    """A symbol's closes as training reads them: gaps forward-filled, the rows before the first price dropped."""
    closes, lead = forward_fill_closes(as_price_frame(prices)["close"].to_numpy(dtype=np.float64), symbol)
    return closes[lead:]


def train_global(symbols: Sequence[str], *, model_config: MambaConfig | None = None,
                 train_config: TrainConfig | None = None, days: int | None = 2000, source: str = "sample",
                 data_path: str | Path | None = None, save_dir: str | Path = "models/mamba", resume: bool = False,
                 device: str | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train one model on the pooled windows of `symbols` and store it as `GLOBAL_MODEL` (the guide's layout:
    weights/_GLOBAL.safetensors, metadata/_GLOBAL_metadata.json, ...); returns the result summary.

    A symbol whose data cannot be loaded or fails the checks is left out (named in the metadata and the
    log); `DataError` when none is left. `resume` continues an interrupted run with the same data and config.
    """
    model_config = model_config or MambaConfig()
    train_config = train_config or TrainConfig()
    name = GLOBAL_MODEL
    resolve_device(device)                        # a bad device or store fails before any work
    store = ModelStore(save_dir)
    store.ensure_writable()
    store.clean_temporary_files(name)
    emit = progress or (lambda event, sym, data: None)
    emit("start", name, {})
    t0 = time.perf_counter()
    frames, skipped = {}, {}
    for symbol in symbols:
        try:
            frames[symbol] = load_prices(symbol, days=days, source=source, path=data_path)
        except DataError as exc:
            skipped[symbol] = str(exc)
            log.warning("global model: leaving %s out: %s", symbol, exc)
    emit("loaded", name, {"days": sum(len(f) for f in frames.values())})
    data = prepare_pooled(frames, model_config, train_config)
    data.skipped.update(skipped)
    emit("samples", name, {"samples": len(data.X_train) + len(data.X_val), "train": len(data.X_train),
                           "val": len(data.X_val)})
    torch.manual_seed(train_config.seed)
    model = MambaModel(model_config, len(data.feature_names))
    configure_baseline(model, data.feature_names, data.feature_scaler, data.target_scaler)
    fit_baseline_tail(model, data.X_train, data.y_train)
    data_hash = hashlib.sha256("".join(data_fingerprint(as_price_frame(frames[s])) for s in data.counts).encode()
                               ).hexdigest()
    trainer, tracker, resume_from = stored_trainer(model, model_config, train_config, store, name, data_hash,
                                                   len(data.feature_names), device, resume, progress)
    trainer.fit(data.X_train, data.y_train, data.X_val, data.y_val, resume_from=resume_from)
    calibration = calibrate_distribution(trainer.model, data.X_val, data.y_val)   # on the training device
    model = trainer.model.cpu().eval()
    summary = tracker.get_summary()
    metadata = {
        "symbol": name, "kind": "global", "symbols": sorted(data.counts), "skipped_symbols": data.skipped,
        "training_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_config": model_config.to_dict(),
        "performance_metrics": {
            "best_val_loss": summary["best_val_loss"], "best_epoch": summary["best_epoch"],
            "best_val_crps": summary["best_val_crps"], "monitor": summary["monitor"],
            "total_epochs": summary["total_epochs"], "baseline": summary["baseline"],
            "loss": ("Student-t negative log-likelihood" if train_config.loss == "nll" else "mse")
                    + " of per-horizon standardised log-returns, pooled over the symbols",
        },
        "data_stats": {"num_samples": int(len(data.X_train) + len(data.X_val)),
                       "num_train_samples": int(len(data.X_train)), "num_val_samples": int(len(data.X_val)),
                       "days": int(sum(len(frames[s]) for s in data.counts)),
                       "windows_per_symbol": {s: list(c) for s, c in data.counts.items()}},
        "train_config": train_config.to_dict(),
        "n_features": len(data.feature_names), "feature_names": data.feature_names,
        "feature_config": {"windows": list(DEFAULT_WINDOWS), "include_volume": False, "warmup": data.warmup},
        "sequence_length": train_config.sequence_length,
        "calibration": calibration,
        "blend": Blend.fit({s: _filled_closes(frames[s], s) for s in data.counts}, model_config.prediction_horizons,
                           train_config.garch_weight, train_config.har_weight).to_dict(),
        "feature_scaler": data.feature_scaler.to_dict(), "target_scaler": data.target_scaler.to_dict(),
        "data_source": source, "data_hash": data_hash, "seed": train_config.seed,
        "n_parameters": model.count_parameters(), "device": str(trainer.device),
        "precision": trainer.precision, "mambacast_version": __version__, "torch_version": torch.__version__,
    }
    paths = store.save_model(name, model, metadata, metrics=tracker.to_dict(),
                             plot_png=render_curves(tracker.history, name))
    ModelVersions(store).record(name)            # an immutable copy for `mambacast models promote|rollback`
    plot = paths.pop("plot", None)
    result = {"symbol": name, "status": "ok", "best_val_loss": summary["best_val_loss"],
              "best_val_crps": summary["best_val_crps"], "best_epoch": summary["best_epoch"],
              "total_epochs": summary["total_epochs"], "num_samples": metadata["data_stats"]["num_samples"],
              "days": metadata["data_stats"]["days"], "symbols": metadata["symbols"], "skipped": data.skipped,
              "training_time": time.perf_counter() - t0, "plot": str(plot) if plot else None,
              **{k: str(v) for k, v in paths.items()}}
    emit("done", name, result)
    return result
