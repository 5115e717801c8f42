"""The CUDA-graphed training step (train.graphs) trains as the eager loop does.

Marked `cuda`: skipped with the reason on machines without a CUDA device (graphs exist only there).
"""

import copy

import numpy as np
import pytest
import torch

from mambacast import MambaConfig, MambaModel, TrainConfig
from mambacast.train import Trainer
from mambacast.train.callbacks import Callback

pytestmark = pytest.mark.cuda

SMALL = MambaConfig(d_model=32, d_state=8, num_layers=2)


def data(n: int = 300):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 30, 6, generator=g), torch.randn(n, 4, generator=g)


class HalveLrAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 0:
            trainer.lr = trainer.lr / 2


def fit(graphs: bool, monkeypatch, config: TrainConfig, callbacks=()):
    monkeypatch.setenv("MAMBACAST_CUDA_GRAPHS", "1" if graphs else "0")
    torch.manual_seed(1)
    model = MambaModel(SMALL, 6)
    trainer = Trainer(model, config, callbacks=[copy.deepcopy(c) for c in callbacks], device="cuda")
    X, y = data()
    history = trainer.fit(X[:250], y[:250], X[250:], y[250:])
    return trainer, history


# 250 windows in batches of 64: three full batches and one of 58, so two graphs per run.
CONFIG = TrainConfig(epochs=3, batch_size=64, seed=3, patience=10, lr_patience=10)


def test_graphed_training_equals_the_eager_loop(monkeypatch):
    graphed, h_graph = fit(True, monkeypatch, CONFIG)
    eager, h_eager = fit(False, monkeypatch, CONFIG)
    assert graphed._graphed is not None and len(graphed._graphed._graphs) == 2
    assert eager._graphed is None
    assert graphed.optimizer.defaults["capturable"] and not eager.optimizer.defaults["capturable"]
    # bf16 autocast in both: the same kernels, so the losses agree to 1e-3
    for a, b in zip(h_graph, h_eager, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    # The weights: far closer to each other than to where training started. Elementwise closeness is not the
    # test: cuBLAS may pick other GEMM algorithms inside a capture, and Adam turns bf16 rounding differences
    # in a near-zero gradient into a step of the full learning rate (a GPU run saw layers.0.in_proj.weight
    # outside rtol 1e-3 / atol 1e-4 after 12 steps); a graph that trained wrongly (stale inputs, learning
    # rate or gradients) would move them apart by as much as training moved them.
    torch.manual_seed(1)
    start = MambaModel(SMALL, 6).to("cuda")
    for (name, p), q, p0 in zip(graphed.model.named_parameters(), eager.model.parameters(), start.parameters(),
                                strict=True):
        assert (p - q).norm() <= 0.1 * (q - p0).norm(), name


def test_a_learning_rate_change_is_captured_again(monkeypatch):
    graphed, _ = fit(True, monkeypatch, CONFIG, callbacks=[HalveLrAfterFirstEpoch()])
    eager, _ = fit(False, monkeypatch, CONFIG, callbacks=[HalveLrAfterFirstEpoch()])
    assert graphed.lr == eager.lr == CONFIG.learning_rate / 2
    assert all(c.key == graphed.lr for c in graphed._graphed._graphs.values())
    for p, q in zip(graphed.model.parameters(), eager.model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-4)
    # a stale learning rate would show: the same run at the first rate throughout ends elsewhere
    same_lr, _ = fit(True, monkeypatch, CONFIG)
    assert max((p - q).abs().max().item() for p, q in zip(same_lr.model.parameters(), graphed.model.parameters(),
                                                          strict=True)) > 1e-4


def test_training_state_moves_between_graphed_cuda_and_the_cpu(monkeypatch):
    gpu, _ = fit(True, monkeypatch, TrainConfig(epochs=1, batch_size=64, seed=3))
    tensors, info = gpu.training_state(0)
    tensors = {k: v.cpu() for k, v in tensors.items()}   # as the store writes and reads them
    cpu = Trainer(MambaModel(SMALL, 6), TrainConfig(epochs=2, batch_size=64, seed=3), device="cpu")
    X, y = data()
    history = cpu.fit(X[:250], y[:250], X[250:], y[250:], resume_from=(tensors, info))
    assert [h["epoch"] for h in history] == [1] and np.isfinite(history[0]["train_loss"])
    assert not cpu.optimizer.param_groups[0]["capturable"]
    back = Trainer(MambaModel(SMALL, 6), TrainConfig(epochs=3, batch_size=64, seed=3), device="cuda")
    history = back.fit(X[:250], y[:250], X[250:], y[250:], resume_from=cpu.training_state(1))
    assert back.optimizer.state[next(back.model.parameters())]["step"].is_cuda
    assert [h["epoch"] for h in history] == [2] and np.isfinite(history[0]["train_loss"])
    assert back.optimizer.param_groups[0]["capturable"] and back._graphed is not None


def test_a_non_finite_loss_stops_graphed_training(monkeypatch):
    monkeypatch.setenv("MAMBACAST_CUDA_GRAPHS", "1")
    from mambacast.train import NonFiniteLossError
    X, y = data()
    y[200:] = float("nan")    # 50 of the 250 training windows: the first epoch meets them
    trainer = Trainer(MambaModel(SMALL, 6), TrainConfig(epochs=2, batch_size=64, seed=3), device="cuda")
    with pytest.raises(NonFiniteLossError, match="training loss became nan"):
        trainer.fit(X[:250], y[:250], X[250:], y[250:].nan_to_num())


def stacked_trainers(seeds, epochs=3):
    trainers = []
    for seed in seeds:
        torch.manual_seed(seed)
        cfg = TrainConfig(epochs=epochs, batch_size=64, seed=seed, patience=10, lr_patience=10)
        trainers.append(Trainer(MambaModel(SMALL, 6), cfg, device="cuda"))
    return trainers


def stacked_data(seed: int, n: int = 300):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, 30, 6, generator=g), torch.randn(n, 4, generator=g)
    return X[:256], y[:256], X[256:], y[256:]   # 256 windows: four full batches of 64 for every member


def test_graphed_stack_equals_the_eager_stack(monkeypatch):
    from mambacast.train.stacked import StackedTrainer

    runs = {}
    for graphs in (True, False):
        monkeypatch.setenv("MAMBACAST_CUDA_GRAPHS", "1" if graphs else "0")
        trainers = stacked_trainers([1, 2, 3])
        histories = StackedTrainer(trainers).fit([stacked_data(s) for s in (1, 2, 3)])
        runs[graphs] = trainers, histories
    (graphed, h_graph), (eager, h_eager) = runs[True], runs[False]
    for a, b in zip(h_graph, h_eager, strict=True):
        assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-3)
    for seed, g, e in zip((1, 2, 3), graphed, eager, strict=True):
        torch.manual_seed(seed)
        start = MambaModel(SMALL, 6).to("cuda")     # as stacked_trainers made it
        # as in test_graphed_training_equals_the_eager_loop: far closer to each other than to the start
        for (name, p), q, p0 in zip(g.model.named_parameters(), e.model.parameters(), start.parameters(),
                                    strict=True):
            assert (p - q).norm() <= 0.1 * (q - p0).norm(), name
        assert float(g.optimizer.state[next(g.model.parameters())]["step"]) == 12   # 3 epochs x 4 batches


def test_a_diverging_member_leaves_the_graphed_stack(monkeypatch):
    from mambacast.train import NonFiniteLossError
    from mambacast.train.stacked import StackedTrainer

    monkeypatch.setenv("MAMBACAST_CUDA_GRAPHS", "1")
    Xt, yt, Xv, yv = stacked_data(2)
    yt = yt.clone()
    yt[::8] = float("nan")           # every batch of member 1 holds NaN targets, from the first (eager) one on
    trainer = StackedTrainer(stacked_trainers([1, 2]))
    histories = trainer.fit([stacked_data(1), (Xt, yt, Xv, yv)])
    assert trainer.errors[0] is None and isinstance(trainer.errors[1], NonFiniteLossError)
    assert len(histories[0]) == 3 and np.isfinite([h["train_loss"] for h in histories[0]]).all()


def test_the_graphed_stack_frees_its_graphs(monkeypatch):
    """The stack's graphs (and the stacked weights they read) are released when training ends, so what is left
    on the GPU does not depend on how many epochs ran, garbage collector or not."""
    import gc

    from mambacast.train.stacked import StackedTrainer

    monkeypatch.setenv("MAMBACAST_CUDA_GRAPHS", "1")
    gc.disable()   # the release must not depend on the garbage collector
    try:
        held = []
        for epochs in (2, 6):
            trainers = stacked_trainers([1, 2, 3], epochs=epochs)
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            StackedTrainer(trainers).fit([stacked_data(s) for s in (1, 2, 3)])
            torch.cuda.synchronize()
            held.append(torch.cuda.memory_allocated() - before)
            del trainers
    finally:
        gc.enable()
    assert held[1] <= held[0] + 2**20, held     # four more epochs, not one more byte per epoch (1 MiB slack)
