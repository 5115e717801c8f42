"""Training: the fit loop, Keras-style callbacks and the per-symbol pipeline."""

from .callbacks import (
    Callback,
    EarlyStopping,
    MetricsTracker,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TrainingCallbacks,
    TrainingStateCheckpoint,
)
from .pipeline import prepare_data, train_single_symbol, train_symbol, train_symbols
from .trainer import NonFiniteLossError, Trainer, resolve_device

__all__ = [
    "Callback", "EarlyStopping", "MetricsTracker", "ModelCheckpoint", "ReduceLROnPlateau", "TrainingCallbacks",
    "TrainingStateCheckpoint", "prepare_data", "train_single_symbol", "train_symbol", "train_symbols",
    "NonFiniteLossError", "Trainer", "resolve_device",
]
