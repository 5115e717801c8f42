"""Keras-style training callbacks with the guide's behaviour, for the PyTorch `Trainer`.

The guide trains with `EarlyStopping(patience=5)`, `ReduceLROnPlateau(factor=0.5, patience=3)` and
`ModelCheckpoint` (best weights). These classes reproduce Keras' rules exactly (improvement means
`current < best - min_delta`; the wait counter resets on improvement; stopping happens when it reaches
`patience`), and each can save and restore its counters so an interrupted run resumes identically.

A callback sees the trainer, which exposes `model`, `optimizer`, `lr` and `stop_training`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

import torch

from ..store import ModelStore, atomic_write_json

__all__ = [
    "Callback", "EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint", "TrainingStateCheckpoint",
    "MetricsTracker", "TrainingCallbacks",
]

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """What a callback may use of the loop that calls it (`train.trainer.Trainer` is one). Declared here so
    callbacks do not import the trainer that imports them."""

    model: torch.nn.Module
    lr: float
    stop_training: bool

    def training_state(self, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...


class Callback:
    """Hooks called by `Trainer.fit`; `logs` holds train_loss, val_loss, train_mae, val_mae, val_crps, lr,
    epoch_time."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_baseline(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """The untrained model's validation logs (val_loss, val_mae, val_crps), before a fresh run's first
        epoch: the distribution head starts at the classical baseline, which training must beat."""

    def on_batch_end(self, trainer: Trainer, batch: int, n_batches: int, loss: float) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to save with the training state (e.g. best weights)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    With `restore_best_weights`, the model ends training with the weights of its best epoch.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 1e-4,
                 restore_best_weights: bool = True):
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        self.restore_best_weights = restore_best_weights
        self.best = math.inf
        self.best_epoch = -1
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_baseline(self, trainer: Trainer, logs: dict[str, float]) -> None:
        # The untrained model is "epoch -1": if no epoch beats it, its weights are restored.
        self.best, self.best_epoch = logs[self.monitor], -1
        if self.restore_best_weights:
            self.best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        current = logs[self.monitor]
        if current < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True
            log.info("early stopping at epoch %d: %s has not improved on %.6f (epoch %d) for %d epochs",
                     epoch, self.monitor, self.best, self.best_epoch, self.patience)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.best_weights or {})

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.best_weights = {k: v.clone() for k, v in tensors.items()} or None


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` after `patience` epochs without improvement."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.5, patience: int = 3,
                 min_delta: float = 1e-4, min_lr: float = 1e-6, cooldown: int = 0):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor={factor} is invalid: must be strictly between 0 and 1")
        self.monitor, self.factor, self.patience = monitor, factor, patience
        self.min_delta, self.min_lr, self.cooldown = abs(min_delta), min_lr, cooldown
        self.best = math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def on_baseline(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.best = logs[self.monitor]

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        current = logs[self.monitor]
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if current < self.best - self.min_delta:
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = trainer.lr
                if old > self.min_lr:
                    trainer.lr = max(old * self.factor, self.min_lr)
                    log.info("epoch %d: reducing learning rate %.3g -> %.3g", epoch, old, trainer.lr)
                self.cooldown_counter, self.wait = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}


class ModelCheckpoint(Callback):
    """Save the weights of every epoch that improves `monitor` (Keras `save_best_only=True`)."""

    def __init__(self, path: str | Path, monitor: str = "val_loss"):
        self.path = Path(path)
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch = -1
        self._store = ModelStore(self.path.parent)

    def on_baseline(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.on_epoch_end(trainer, -1, logs)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        current = logs[self.monitor]
        if current < self.best:
            self.best, self.best_epoch = current, epoch
            self._store.save_tensors(self.path, trainer.model.state_dict(),
                                     {"epoch": epoch, self.monitor: current})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}


class TrainingStateCheckpoint(Callback):
    """After every epoch, atomically save everything `Trainer.fit(resume_from=...)` needs to continue.

    Put it last so the saved state includes what the other callbacks changed this epoch.
    """

    def __init__(self, path: str | Path, info: dict[str, Any] | None = None):
        self.path = Path(path)
        self.info = info or {}
        self._store = ModelStore(self.path.parent)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        tensors, state = trainer.training_state(epoch)
        self._store.save_tensors(self.path, tensors, {**state, "info": self.info})


class MetricsTracker(Callback):
    """Per-epoch metrics, saved to `metrics/<SYMBOL>_metrics.json` (the guide's API).

    Losses are the training objective on per-horizon standardised log-return targets (the Student-t
    negative log-likelihood by default, the guide's MSE with `loss="mse"`), the MAE of the location
    and the Student-t CRPS, in target standard deviations, averaged over horizons; lower is better.
    The best epoch is the one with the lowest `monitor`. Epochs in the file and the summary count
    from 1 (`best_epoch` 38 of `total_epochs` 50, as in the guide).
    """

    def __init__(self, save_dir: str | Path, symbol: str, monitor: str = "val_loss", loss: str = "mse",
                 path: str | Path | None = None):
        self.store = ModelStore(save_dir)
        self.symbol, self.monitor, self.loss = symbol, monitor, loss
        # The training pipeline points `path` into the run's checkpoint folder: the stored model's metrics file
        # changes only together with the model (`ModelStore.save_model`).
        self.path = Path(path) if path is not None else self.store.metrics_path(symbol)
        self.history: list[dict[str, float]] = []
        self.baseline: dict[str, float] | None = None
        self.extra: dict[str, Any] = {}

    def on_baseline(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.baseline = {k: float(logs[k]) for k in ("val_loss", "val_mae", "val_crps")}

    def update(self, epoch: int, train_loss: float, val_loss: float, train_mae: float, val_mae: float,
               lr: float, epoch_time: float, val_crps: float = math.nan) -> None:
        # `epoch` is the 0-based loop index (as Keras passes it); files and summaries count from 1.
        self.history = [h for h in self.history if h["epoch"] <= epoch]  # a resumed epoch replaces its old row
        self.history.append({"epoch": int(epoch) + 1, "train_loss": float(train_loss), "val_loss": float(val_loss),
                             "train_mae": float(train_mae), "val_mae": float(val_mae),
                             "val_crps": None if math.isnan(val_crps) else float(val_crps), "lr": float(lr),
                             "epoch_time": float(epoch_time)})

    def get_summary(self) -> dict[str, Any]:
        if not self.history:
            return {"symbol": self.symbol, "total_epochs": 0}
        best = min(self.history, key=lambda h: h[self.monitor])
        if self.baseline is not None and self.baseline[self.monitor] <= best[self.monitor]:
            best = {**self.baseline, "epoch": 0}   # no epoch beat the untrained model (the baseline)
        return {
            "symbol": self.symbol,
            "monitor": self.monitor,
            "best_val_loss": best["val_loss"],
            "best_val_crps": best["val_crps"],
            "best_epoch": best["epoch"],
            "baseline": self.baseline,
            "total_epochs": len(self.history),
            "final_train_loss": self.history[-1]["train_loss"],
            "final_val_loss": self.history[-1]["val_loss"],
            "final_lr": self.history[-1]["lr"],
            "training_time": sum(h["epoch_time"] for h in self.history),
            "mean_epoch_time": sum(h["epoch_time"] for h in self.history) / len(self.history),
        }

    def to_dict(self) -> dict[str, Any]:
        """What `save` writes: symbol, loss, summary, per-epoch history and `extra`."""
        loss = "student_t_nll" if self.loss == "nll" else "mse"
        return {"symbol": self.symbol, "loss": f"{loss}_standardised_log_return", "summary": self.get_summary(),
                "history": self.history, **self.extra}

    def save(self) -> Path:
        atomic_write_json(self.path, self.to_dict())
        return self.path

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self.update(epoch, logs["train_loss"], logs["val_loss"], logs["train_mae"], logs["val_mae"],
                    logs["lr"], logs["epoch_time"], logs.get("val_crps", math.nan))
        self.save()

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "baseline": self.baseline}


class TrainingCallbacks:
    """The guide's callback bundle: best-weights checkpoint, early stopping, LR reduction on plateau."""

    def __init__(self, save_dir: str | Path, symbol: str, patience: int = 5, min_delta: float = 1e-4,
                 lr_factor: float = 0.5, lr_patience: int = 3, min_lr: float = 1e-6, monitor: str = "val_loss"):
        self.store = ModelStore(save_dir)
        self.monitor = monitor
        self.symbol = symbol
        self.patience, self.min_delta = patience, min_delta
        self.lr_factor, self.lr_patience, self.min_lr = lr_factor, lr_patience, min_lr

    def get_callbacks(self) -> list[Callback]:
        return [
            ModelCheckpoint(self.store.best_checkpoint_path(self.symbol), monitor=self.monitor),
            EarlyStopping(monitor=self.monitor, patience=self.patience, min_delta=self.min_delta,
                          restore_best_weights=True),
            ReduceLROnPlateau(monitor=self.monitor, factor=self.lr_factor, patience=self.lr_patience,
                              min_delta=self.min_delta, min_lr=self.min_lr),
        ]

    # The guide's name for the same list.
    get_keras_callbacks = get_callbacks

