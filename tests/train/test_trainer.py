"""The fit loop: seeded reproducibility, exact resume, NaN handling."""

import math

import numpy as np
import pytest
import torch

from mambacast import MambaConfig, MambaModel, TrainConfig
from mambacast.store import ModelStore
from mambacast.train.callbacks import Callback, TrainingCallbacks, TrainingStateCheckpoint
from mambacast.train.trainer import NonFiniteLossError, Trainer

CFG = MambaConfig(d_model=8, d_state=4, num_layers=1, prediction_horizons=[1, 5])


def data(n=96, seq_len=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, seq_len, 3)).astype(np.float32)
    y = np.stack([X[:, -1, 0] * 0.5, X[:, -3:, 1].mean(1)], axis=1).astype(np.float32)
    return X[:64], y[:64], X[64:], y[64:]


def make_trainer(tmp_path, epochs=4, seed=3, extra=()):
    torch.manual_seed(seed)
    model = MambaModel(CFG, 3)
    cfg = TrainConfig(epochs=epochs, batch_size=16, seed=seed, sequence_length=10)
    store = ModelStore(tmp_path)
    callbacks = [*TrainingCallbacks(tmp_path, "SYM", patience=50).get_callbacks(), *extra,
                 TrainingStateCheckpoint(store.state_path("SYM"))]
    return Trainer(model, cfg, callbacks, device="cpu"), store


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_same_seed_same_weights(tmp_path):
    a, _ = make_trainer(tmp_path / "a")
    b, _ = make_trainer(tmp_path / "b")
    ha, hb = a.fit(*data()), b.fit(*data())
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]
    for k, v in weights(a).items():
        assert torch.equal(v, weights(b)[k]), k


def test_loss_decreases_and_history_is_complete(tmp_path):
    trainer, _ = make_trainer(tmp_path, epochs=6)
    history = trainer.fit(*data())
    assert [h["epoch"] for h in history] == list(range(6))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"train_loss", "val_loss", "train_mae", "val_mae", "lr", "epoch_time"} <= set(history[0])


class Interrupt(Callback):
    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full, _ = make_trainer(tmp_path / "full", extra=[Interrupt(-1)])
    full_history = full.fit(*data())
    broken, store = make_trainer(tmp_path / "resumed", extra=[Interrupt(1)])
    with pytest.raises(KeyboardInterrupt):
        broken.fit(*data())
    # the interrupt fired before the state callback ran for epoch 1, so the state is after epoch 0
    resumed, _ = make_trainer(tmp_path / "resumed", seed=99, extra=[Interrupt(-1)])  # other seed: state wins
    history = resumed.fit(*data(), resume_from=store.load_tensors(store.state_path("SYM")))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["val_loss"] for h in history] == [h["val_loss"] for h in full_history[1:]]
    for k, v in weights(full).items():
        assert torch.equal(v, weights(resumed)[k]), k


class Poison(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 1:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(math.nan)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer, store = make_trainer(tmp_path, extra=[Poison()])
    with pytest.raises(NonFiniteLossError, match="training loss became nan at epoch 2.*lower --learning-rate"):
        trainer.fit(*data())
    tensors, info = store.load_tensors(store.best_checkpoint_path("SYM"))
    assert info["epoch"] in (0, 1)
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_mismatched_lengths_are_refused(tmp_path):
    trainer, _ = make_trainer(tmp_path)
    X, y, Xv, yv = data()
    with pytest.raises(ValueError, match="X and y lengths differ"):
        trainer.fit(X, y[:10], Xv, yv)


def test_unavailable_cuda_is_a_clear_error():
    from mambacast.train.trainer import resolve_device

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
        resolve_device("cuda")
