"""Each callback on a scripted loss sequence, with Keras' rules."""

from types import SimpleNamespace

import pytest
import torch

from mambacast.train.callbacks import (
    EarlyStopping,
    MetricsTracker,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TrainingCallbacks,
)


def fake_trainer(lr=1e-3):
    return SimpleNamespace(model=torch.nn.Linear(2, 1), lr=lr, stop_training=False)


def run(callback, losses, trainer=None, mark_weights=False):
    """Feed val losses epoch by epoch; returns (trainer, epoch at which training stopped or None)."""
    trainer = trainer or fake_trainer()
    for epoch, loss in enumerate(losses):
        if mark_weights:
            with torch.no_grad():
                trainer.model.weight.fill_(epoch)
        callback.on_epoch_end(trainer, epoch, {"val_loss": loss})
        if trainer.stop_training:
            return trainer, epoch
    return trainer, None


def test_early_stopping_stops_after_patience_and_restores_best():
    es = EarlyStopping(patience=5, min_delta=1e-4)
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.5]
    trainer, stopped = run(es, losses, mark_weights=True)
    assert stopped == 6 and es.best_epoch == 1 and es.best == 0.9
    es.on_train_end(trainer)
    assert torch.all(trainer.model.weight == 1)  # epoch 1's weights are back


def test_early_stopping_ignores_improvements_below_min_delta():
    es = EarlyStopping(patience=2, min_delta=1e-3)
    _, stopped = run(es, [1.0, 0.9995, 0.9991, 0.5])
    assert stopped == 2 and es.best_epoch == 0


def test_early_stopping_counter_resets_on_improvement():
    es = EarlyStopping(patience=3)
    _, stopped = run(es, [1.0, 1.1, 1.1, 0.8, 0.9, 0.9, 0.9])
    assert stopped == 6 and es.best_epoch == 3


def test_reduce_lr_on_plateau_halves_at_the_right_epochs():
    cb = ReduceLROnPlateau(factor=0.5, patience=3)
    trainer = fake_trainer(1e-3)
    lrs = []
    for epoch, loss in enumerate([1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6]):
        cb.on_epoch_end(trainer, epoch, {"val_loss": loss})
        lrs.append(trainer.lr)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 5e-4, 2.5e-4])


def test_reduce_lr_respects_min_lr():
    cb = ReduceLROnPlateau(factor=0.1, patience=1, min_lr=5e-4)
    trainer, _ = run(cb, [1.0, 1.0, 1.0, 1.0], trainer=fake_trainer(1e-3))
    assert trainer.lr == pytest.approx(5e-4)


def test_model_checkpoint_saves_only_improvements(tmp_path):
    from mambacast.store import ModelStore

    path = tmp_path / "best.safetensors"
    cb = ModelCheckpoint(path)
    trainer = fake_trainer()
    for epoch, loss in enumerate([1.0, 0.8, 0.9]):
        with torch.no_grad():
            trainer.model.weight.fill_(epoch)
        cb.on_epoch_end(trainer, epoch, {"val_loss": loss})
    tensors, info = ModelStore(tmp_path).load_tensors(path)
    assert info == {"epoch": 1, "val_loss": 0.8}
    assert torch.all(tensors["weight"] == 1)


def test_callback_state_round_trip():
    es = EarlyStopping(patience=5)
    run(es, [1.0, 0.9, 0.95])
    clone = EarlyStopping(patience=5)
    clone.load_state_dict(es.state_dict())
    assert (clone.best, clone.best_epoch, clone.wait) == (0.9, 1, 1)


def test_training_callbacks_bundle_has_the_guides_three(tmp_path):
    bundle = TrainingCallbacks(save_dir=tmp_path, symbol="AAPL", patience=5, min_delta=0.0001)
    kinds = [type(c) for c in bundle.get_keras_callbacks()]
    assert kinds == [ModelCheckpoint, EarlyStopping, ReduceLROnPlateau]
    assert bundle.get_callbacks()[0].path == tmp_path / "checkpoints" / "AAPL" / "best_model.safetensors"


def test_metrics_tracker_writes_the_guides_file(tmp_path):
    import json

    tracker = MetricsTracker(save_dir=tmp_path, symbol="AAPL")
    for epoch, (tl, vl) in enumerate([(1.0, 0.9), (0.8, 0.85), (0.7, 0.88)]):
        tracker.update(epoch=epoch, train_loss=tl, val_loss=vl, train_mae=tl / 2, val_mae=vl / 2, lr=1e-3,
                       epoch_time=2.0)
    path = tracker.save()
    assert path == tmp_path / "metrics" / "AAPL_metrics.json"
    saved = json.loads(path.read_text())
    assert [h["epoch"] for h in saved["history"]] == [1, 2, 3]
    summary = tracker.get_summary()
    assert summary["best_val_loss"] == 0.85 and summary["best_epoch"] == 2 and summary["total_epochs"] == 3
    assert summary["training_time"] == pytest.approx(6.0)
    assert saved["summary"] == summary
