"""A trained symbol's artifacts: what a run carries from set-up to storage (`TrainingRun`), the final weights,
metadata (validation report, calibration, classical fits), metrics and plot built from it (`model_artifacts`),
and their one-switch storage (`store_artifacts`). `train.pipeline` drives the runs; `train.distributed` builds
artifacts on Ray workers and stores them on the driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import MambaConfig, TrainConfig
from ..data.features import forward_fill_closes
from ..nn.mamba import MambaModel
from ..plots import render_curves
from ..store import ModelStore
from ..versions import ModelVersions
from .callbacks import MetricsTracker
from .distribution import calibrate_distribution
from .prepare import DEFAULT_WINDOWS, PreparedData
from .side_work import blend_state
from .trainer import Trainer

__all__ = ["ProgressFn", "TrainingRun", "ModelArtifacts", "model_artifacts", "store_artifacts", "blend_args",
           "result_from_metadata"]

# progress(event, symbol, data): events are "start", "loaded", "samples", "model", "baseline", "batch", "epoch",
# "done".
ProgressFn = Callable[[str, str, dict[str, Any]], None]


def _validation_report(trainer: Trainer, data: PreparedData, horizons: list[int]) -> dict[str, Any]:
    """Per-horizon validation errors in log-return units, beside the zero-return (random walk) forecast."""
    pred = data.target_scaler.inverse_transform(trainer.predict(data.X[data.val_idx]).numpy())
    actual = data.y[data.val_idx]
    report = {}
    for j, h in enumerate(horizons):
        err, rw = pred[:, j] - actual[:, j], actual[:, j]
        mse, rw_mse = float(np.mean(err ** 2)), float(np.mean(rw ** 2))
        nonzero = actual[:, j] != 0
        report[f"{h}d"] = {
            "rmse_log_return": mse ** 0.5,
            "random_walk_rmse_log_return": rw_mse ** 0.5,
            "mse_ratio_to_random_walk": mse / rw_mse if rw_mse > 0 else None,
            "direction_accuracy": float(np.mean(np.sign(pred[nonzero, j]) == np.sign(actual[nonzero, j]))),
            "n": int(len(actual)),
        }
    return report


@dataclass
class TrainingRun:
    """One symbol between set-up and storage: its data, Trainer (with callbacks) and bookkeeping."""

    symbol: str
    store: ModelStore
    data: PreparedData
    model_config: MambaConfig
    train_config: TrainConfig
    trainer: Trainer
    tracker: MetricsTracker
    fit_data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    resume_from: Any
    n_params: int
    source: str
    include_volume: bool
    include_range: bool
    emit: ProgressFn
    t0: float
    # artifacts computed elsewhere (train.side_work: the stack's fits and plot in worker processes), by name
    precomputed: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelArtifacts:
    """Everything `ModelStore.save_model` writes for one trained symbol, built where it was trained and stored
    wherever the store's one writer runs (the same process, or the driver of a Ray run)."""

    symbol: str
    model_config: MambaConfig
    n_features: int
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    plot_png: bytes | None
    elapsed: float          # seconds from the symbol's start to these artifacts


def model_artifacts(run: TrainingRun) -> ModelArtifacts:
    """The trained run's final weights, metadata (validation report, calibration, GARCH blend), metrics and
    training plot, ready for the store."""
    symbol, data, trainer, tracker = run.symbol, run.data, run.trainer, run.tracker
    model_config, train_config, include_volume = run.model_config, run.train_config, run.include_volume
    include_range = run.include_range
    summary = tracker.get_summary()
    validation = _validation_report(trainer, data, model_config.prediction_horizons)
    calibration = calibrate_distribution(trainer.model, data.X[data.val_idx], data.y_scaled[data.val_idx])
    tracker.extra = {"validation": validation}
    train_rows = data.window_end[data.train_idx]
    closes, _ = _closes(run)
    returns = np.diff(np.log(closes))
    done = run.precomputed
    metadata = {
        "symbol": symbol,
        "training_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_config": model_config.to_dict(),
        "performance_metrics": {
            "best_val_loss": summary["best_val_loss"], "best_epoch": summary["best_epoch"],
            "best_val_crps": summary["best_val_crps"], "monitor": summary["monitor"],
            "total_epochs": summary["total_epochs"],
            "loss": ("Student-t negative log-likelihood" if train_config.loss == "nll" else "mse")
                    + " of per-horizon standardised log-returns",
            "validation": validation,
        },
        "data_stats": {
            "num_samples": int(len(data.X)), "num_train_samples": int(len(data.train_idx)),
            "num_val_samples": int(len(data.val_idx)), "days": int(len(data.prices)),
            "avg_return": float(np.nanmean(returns[: int(train_rows[-1])])),
            "volatility": float(np.nanstd(returns[: int(train_rows[-1])])),
            "first_date": data.date_at(0), "last_date": data.date_at(len(data.prices) - 1),
            "train_end_date": data.date_at(int(train_rows[-1])),
            "val_start_date": data.date_at(int(data.window_end[data.val_idx[0]])),
        },
        "train_config": train_config.to_dict(),
        "n_features": len(data.feature_names),
        "feature_names": data.feature_names,
        "feature_config": {"windows": list(DEFAULT_WINDOWS), "include_volume": include_volume,
                           "include_range": include_range,
                           "warmup": data.warmup},
        "sequence_length": train_config.sequence_length,
        "calibration": calibration,
        "blend": done["blend"] if "blend" in done else blend_state(*blend_args(run)),
        "feature_scaler": data.feature_scaler.to_dict(),
        "target_scaler": data.target_scaler.to_dict(),
        "data_source": data.prices.attrs.get("source", run.source),
        "data_hash": data.data_hash,
        "seed": train_config.seed,
        "n_parameters": run.n_params,
        "device": str(trainer.device),
        "precision": trainer.precision,
        "mambacast_version": __version__,
        "torch_version": torch.__version__,
    }
    model = trainer.model.cpu()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plot = done["plot"] if "plot" in done else render_curves(tracker.history, symbol)
    return ModelArtifacts(symbol, model_config, model.n_features, state, metadata, tracker.to_dict(), plot,
                          time.perf_counter() - run.t0)


def _closes(run: TrainingRun) -> tuple[np.ndarray, int]:
    """(the symbol's closes with missing ones forward-filled, as the features and targets saw them; the index
    of the first present one)."""
    return forward_fill_closes(run.data.prices["close"].to_numpy(dtype=np.float64), run.symbol)


def blend_args(run: TrainingRun) -> tuple[str, np.ndarray, list[int], float, float]:
    """`blend_state`'s arguments: the classical fits read the closes from the first one present."""
    closes, lead = _closes(run)
    return (run.symbol, closes[lead:], run.model_config.prediction_horizons, run.train_config.garch_weight,
            run.train_config.har_weight)


def store_artifacts(store: ModelStore, art: ModelArtifacts, emit: ProgressFn | None = None,
                    extra_time: float = 0.0) -> dict[str, Any]:
    """Make a trained model current in `store` (one atomic switch) and record its version; returns the
    symbol's result and emits its "done" event. extra_time: seconds to add to the training time (e.g. the
    transfer from a remote worker)."""
    t0 = time.perf_counter()
    model = MambaModel(art.model_config, art.n_features)
    model.load_state_dict(art.state_dict)
    paths = store.save_model(art.symbol, model, art.metadata, metrics=art.metrics, plot_png=art.plot_png)
    ModelVersions(store).record(art.symbol)      # an immutable copy for `mambacast models promote|rollback`
    elapsed = art.elapsed + extra_time + time.perf_counter() - t0
    result = {**result_from_metadata(art.symbol, store.load_metadata(art.symbol), store), "status": "ok",
              "training_time": elapsed, "plot": str(paths["plot"]) if "plot" in paths else None,
              **{k: str(v) for k, v in paths.items() if k != "plot"}}
    if emit:
        emit("done", art.symbol, result)
    return result


def result_from_metadata(symbol: str, meta: dict[str, Any], store: ModelStore) -> dict[str, Any]:
    perf, stats = meta["performance_metrics"], meta["data_stats"]
    return {
        "symbol": symbol, "best_val_loss": perf["best_val_loss"], "best_val_crps": perf.get("best_val_crps"),
        "best_epoch": perf["best_epoch"],
        "total_epochs": perf["total_epochs"], "num_samples": stats["num_samples"], "days": stats["days"],
        "n_parameters": meta["n_parameters"], "training_time": None, "validation": perf.get("validation"),
        "weights": str(store.weights_path(symbol)), "metadata": str(store.metadata_path(symbol)),
        "metrics": str(store.metrics_path(symbol)), "checkpoint": str(store.checkpoint_dir(symbol)),
    }

