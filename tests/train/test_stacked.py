"""Stacked training: M per-symbol models as one computation must equal training each alone.

The comparisons of whole trainings run in float32 (`float32_training`, tests/conftest.py: under bf16 autocast the
batched matmuls' other summation order flips bf16 roundings that training grows); the stack under bf16 autocast is
checked against each model alone under it by its own tests below.
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mambacast import MambaConfig, MambaModel, TrainConfig
from mambacast.nn.stacked import (
    stack_buffers,
    stack_parameters,
    stacked_forward,
    stacked_forward_distribution,
    unstack_parameters,
)
from mambacast.store import ModelStore
from mambacast.train.callbacks import Callback, TrainingCallbacks, TrainingStateCheckpoint
from mambacast.train.stacked import StackedTrainer
from mambacast.train.trainer import Trainer

from ..samples import needs_sample

pytestmark = pytest.mark.usefixtures("float32_training")

CFG = MambaConfig(d_model=8, d_state=4, num_layers=2, prediction_horizons=[1, 5])


def data(n_train, seed, signal=1.0):
    rng = np.random.default_rng(seed)
    n = n_train + 24
    X = rng.standard_normal((n, 10, 3)).astype(np.float32)
    y = signal * np.stack([X[:, -1, 0] * 0.5, X[:, -3:, 1].mean(1)], axis=1).astype(np.float32)
    y += 0.3 * rng.standard_normal(y.shape).astype(np.float32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


class RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.lrs.append(trainer.lr)


def make_trainer(root, symbol, seed, epochs=5, patience=50, lr_patience=1):
    torch.manual_seed(seed)
    model = MambaModel(CFG, 3)
    cfg = TrainConfig(epochs=epochs, batch_size=16, seed=seed, sequence_length=10, learning_rate=0.01)
    callbacks = [*TrainingCallbacks(root, symbol, patience=patience, lr_patience=lr_patience,
                                    min_delta=0.0).get_callbacks(),
                 RecordLR(), TrainingStateCheckpoint(ModelStore(root).state_path(symbol))]
    return Trainer(model, cfg, callbacks, device="cpu")


# Measured (2-core x86 CPU, fused kernel): stacked vs solo weights differ by at most 1.7e-6 after these short
# runs (the batched matmuls sum in another order), losses by 2.2e-7 relative; the bounds leave about 3x.
WEIGHT_TOL, LOSS_RTOL = 5e-6, 1e-6


def assert_same_weights(a, b, tol=WEIGHT_TOL):
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, atol=tol, rtol=tol, msg=k)


@pytest.mark.parametrize("path", ["fused", "pytorch"])
def test_stacked_forward_and_gradients_equal_each_model(monkeypatch, path):
    if path == "pytorch":   # the fallback without the compiled kernel: mamba_inner_ref, model by model
        import mambacast.nn.fused as fused

        monkeypatch.setattr(fused, "fused_ops", lambda *a, **k: None)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = MambaModel(CFG, 3).double()
        # Heads away from their zero start (so gradients reach the trunk) and a distinct baseline per model.
        for p in (model.head.proj.weight, model.head.proj.bias, model.dist_head.scale_proj.weight):
            torch.nn.init.normal_(p, std=0.3)
        model.baseline.configure([0, 2], [-9.0 + seed, -9.5], [0.5, 0.2 + seed / 10], [0.01, 0.02 * (seed + 1)],
                                 0.9 + seed / 50)
        models.append(model)
    params = stack_parameters(models)
    buffers = stack_buffers(models)
    x = torch.randn(3, 5, 12, 3, dtype=torch.float64)
    loc, scale, df = stacked_forward_distribution(params, models[0], x, buffers)
    torch.testing.assert_close(stacked_forward(params, models[0], x, buffers), loc)
    (loc.sin().sum() + scale.pow(2).sum() + df.sum()).backward()
    for m, model in enumerate(models):
        l_m, s_m, d_m = model.forward_distribution(x[m])
        torch.testing.assert_close(loc[m], l_m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(scale[m], s_m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(df[m, 0], d_m)
        (l_m.sin().sum() + s_m.pow(2).sum() + d_m.sum()).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[m], p.grad, rtol=1e-10, atol=1e-12, msg=name)
        for name, t in unstack_parameters(params, m).items():
            assert torch.equal(t, model.state_dict()[name])


def test_stacked_rejects_mixed_configurations():
    a = MambaModel(CFG, 3)
    b = MambaModel(MambaConfig(d_model=8, d_state=4, num_layers=1, prediction_horizons=[1, 5]), 3)
    with pytest.raises(ValueError, match="share one MambaConfig"):
        stack_parameters([a, b])


def test_stacked_training_equals_training_alone(tmp_path):
    # Different data sizes: 64 windows (4 batches), 56 (3 full + one of 8), 40 (2 + one of 8):
    # the smaller members sit out the last steps of each epoch and pad their short last batch.
    sizes, seeds = (64, 56, 40), (1, 2, 3)
    datasets = [data(n, seed) for n, seed in zip(sizes, seeds, strict=True)]
    alone = [make_trainer(tmp_path / "alone", f"S{i}", seed) for i, seed in enumerate(seeds)]
    histories = [t.fit(*d) for t, d in zip(alone, datasets, strict=True)]
    stacked = [make_trainer(tmp_path / "stacked", f"S{i}", seed) for i, seed in enumerate(seeds)]
    stacked_histories = StackedTrainer(stacked).fit(datasets)
    for a, b, ha, hb in zip(alone, stacked, histories, stacked_histories, strict=True):
        assert [h["epoch"] for h in ha] == [h["epoch"] for h in hb]
        for key in ("train_loss", "val_loss", "train_mae", "val_mae", "lr"):
            np.testing.assert_allclose([h[key] for h in hb], [h[key] for h in ha], rtol=LOSS_RTOL, err_msg=key)
        assert_same_weights(a, b)
        # The learning-rate schedule ran per symbol (lr_patience 1 with lr 0.01 halves it at some point).
        assert a.callbacks[-2].lrs == pytest.approx(b.callbacks[-2].lrs)
    assert any(h["lr"] < 0.01 for hs in histories for h in hs), "the test should exercise ReduceLROnPlateau"


def test_the_graphable_full_step_trains_as_the_eager_step(tmp_path, monkeypatch):
    """`_Stack._full_step` (what CUDA captures for batches every member fills: `where` instead of boolean
    indexing, step counts advanced in place) run eagerly on the CPU, against the ordinary step."""
    from mambacast.train import stacked as stacked_module

    original_init = stacked_module._Stack.__init__
    full_steps = []

    def with_full_step(self, members):
        original_init(self, members)

        def step(x, y):
            full_steps.append(x.shape[0])
            self._zero_grad()
            return self._full_step(x, y)

        self._graphed = step

    seeds = (1, 2, 3)
    datasets = [data(n, seed) for n, seed in zip((64, 56, 64), seeds, strict=True)]
    plain = [make_trainer(tmp_path / "plain", f"S{i}", seed) for i, seed in enumerate(seeds)]
    plain_histories = StackedTrainer(plain).fit(datasets)
    monkeypatch.setattr(stacked_module._Stack, "__init__", with_full_step)
    full = [make_trainer(tmp_path / "full", f"S{i}", seed) for i, seed in enumerate(seeds)]
    full_histories = StackedTrainer(full).fit(datasets)
    assert full_steps and set(full_steps) == {3}     # the full batches went through it; the padded one did not
    for a, b, ha, hb in zip(plain, full, plain_histories, full_histories, strict=True):
        for key in ("train_loss", "val_loss", "train_mae", "lr"):
            np.testing.assert_allclose([h[key] for h in hb], [h[key] for h in ha], rtol=LOSS_RTOL, err_msg=key)
        assert_same_weights(a, b)


def test_early_stopped_member_leaves_the_stack(tmp_path):
    datasets = [data(48, 5, signal=0.0), data(48, 6)]
    # Member 0 stops when its patience runs out (patience 1, a target of pure noise);
    # member 1 never stops early. Both equal their solo runs.
    alone = [make_trainer(tmp_path / "a", "S0", 5, epochs=8, patience=1),
             make_trainer(tmp_path / "a", "S1", 6, epochs=8, patience=50)]
    ha = [t.fit(*d) for t, d in zip(alone, datasets, strict=True)]
    stacked = [make_trainer(tmp_path / "b", "S0", 5, epochs=8, patience=1),
               make_trainer(tmp_path / "b", "S1", 6, epochs=8, patience=50)]
    hb = StackedTrainer(stacked).fit(datasets)
    assert len(ha[0]) < 8, "member 0 should stop early in this setup"
    assert len(hb[0]) == len(ha[0]) and len(hb[1]) == len(ha[1]) == 8
    for a, b in zip(alone, stacked, strict=True):
        assert_same_weights(a, b)   # member 0: its best weights restored, as alone


def test_stacked_state_resumes_alone(tmp_path):
    """A stacked run's saved training state is the Trainer's format: it resumes alone exactly."""
    d = data(48, 7)
    full = make_trainer(tmp_path / "full", "S", 7, epochs=4)
    full.fit(*d)

    first = make_trainer(tmp_path / "part", "S", 7, epochs=2)   # "interrupted" after epoch 1
    StackedTrainer([first]).fit([d])
    store = ModelStore(tmp_path / "part")
    tensors, info = store.load_tensors(store.state_path("S"))
    assert info["epoch"] == 1
    second = make_trainer(tmp_path / "part", "S", 99, epochs=4)   # another seed: only the saved state can fix it
    history = second.fit(*d, resume_from=(tensors, info))
    assert [h["epoch"] for h in history] == [2, 3]                 # it continued, it did not start over
    assert_same_weights(full, second, tol=1e-6)      # measured 4.8e-7


class MatmulDtypes(TorchDispatchMode):
    """The dtypes of the batched matmuls' inputs run under it (as autocast has cast them)."""
    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default):
            self.dtypes.add(args[-2].dtype)   # bmm(a, b) / baddbmm(c, a, b): a
        return func(*args, **(kwargs or {}))


def test_stacked_forward_under_bf16_autocast_equals_each_model_under_it():
    """Under the CPU training autocast (bf16 Linear layers) the stack rounds the same inputs as each model alone
    does: their outputs agree to bf16's resolution (measured: equal), and differ from float32's (autocast is on)."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = MambaModel(CFG, 3)
        for p in (model.head.proj.weight, model.head.proj.bias, model.dist_head.scale_proj.weight):
            torch.nn.init.normal_(p, std=0.3)
        models.append(model)
    params, buffers = stack_parameters(models), stack_buffers(models)
    x = torch.randn(3, 5, 12, 3)
    with torch.no_grad():
        loc32 = stacked_forward_distribution(params, models[0], x, buffers)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loc, scale, df = stacked_forward_distribution(params, models[0], x, buffers)
            for m, model in enumerate(models):
                l_m, s_m, d_m = model.forward_distribution(x[m])
                torch.testing.assert_close(loc[m], l_m, rtol=8e-3, atol=1e-3)   # 8e-3: one bf16 ulp
                torch.testing.assert_close(scale[m], s_m, rtol=8e-3, atol=1e-3)
                torch.testing.assert_close(df[m, 0], d_m)
    assert (loc.float() - loc32).abs().max() > 1e-4


def test_stacked_training_under_bf16_follows_training_alone(tmp_path, monkeypatch):
    """MAMBACAST_CPU_BF16=1 (the default where the CPU has bf16): the stack trains under the Trainer's bf16 autocast
    (its batched matmuls see bf16 inputs) as each model alone does. Not to 1e-6 (see the module's note): the losses
    of two epochs agree to 2e-3 relative (measured 4.6e-4 at most, 8e-5-1.6e-4 in the first epoch)."""
    monkeypatch.setenv("MAMBACAST_CPU_BF16", "1")
    sizes, seeds = (64, 56, 40), (1, 2, 3)
    datasets = [data(n, seed) for n, seed in zip(sizes, seeds, strict=True)]
    alone = [make_trainer(tmp_path / "alone", f"S{i}", seed, epochs=2) for i, seed in enumerate(seeds)]
    histories = [t.fit(*d) for t, d in zip(alone, datasets, strict=True)]
    stacked = [make_trainer(tmp_path / "stacked", f"S{i}", seed, epochs=2) for i, seed in enumerate(seeds)]
    with MatmulDtypes() as seen:
        stacked_histories = StackedTrainer(stacked).fit(datasets)
    assert torch.bfloat16 in seen.dtypes   # the Linear layers' and the fused block's x_proj
    assert {t.precision for t in alone + stacked} == {"bfloat16 autocast"}
    for ha, hb in zip(histories, stacked_histories, strict=True):
        assert [h["epoch"] for h in ha] == [h["epoch"] for h in hb] == [0, 1]
        for key in ("train_loss", "val_loss", "val_crps"):
            np.testing.assert_allclose([h[key] for h in hb], [h[key] for h in ha], rtol=2e-3, err_msg=key)


def test_stacked_trainer_validates_inputs(tmp_path):
    t = make_trainer(tmp_path, "S", 1)
    with pytest.raises(ValueError, match="datasets for"):
        StackedTrainer([t]).fit([data(32, 1), data(32, 2)])
    with pytest.raises(ValueError, match="at least one"):
        StackedTrainer([])


def _assert_stores_agree(alone: ModelStore, other: ModelStore, symbols: list[str]) -> None:
    """`other`'s models of `symbols` equal `alone`'s to float rounding, with their files."""
    assert other.symbols() == symbols
    for symbol in symbols:
        (ma, meta_a), (mb, meta_b) = alone.load_model(symbol), other.load_model(symbol)
        for k, v in ma.state_dict().items():
            # measured: at most 2.4e-7 apart after 3 epochs of the small preset
            torch.testing.assert_close(mb.state_dict()[k], v, atol=1e-6, rtol=1e-5, msg=k)
        pa, pb = meta_a["performance_metrics"], meta_b["performance_metrics"]
        assert pb["best_epoch"] == pa["best_epoch"] and pb["total_epochs"] == pa["total_epochs"]
        assert pb["best_val_loss"] == pytest.approx(pa["best_val_loss"], rel=LOSS_RTOL)
        assert other.state_path(symbol).is_file() and other.plot_path(symbol).is_file()


# equal to float rounding: a float32 property (CUDA trains under bf16 autocast: tests/test_cuda.py)
FAST = ["--preset", "small", "--epochs", "3", "--days", "400", "--batch-size", "64", "--seed", "7", "--device", "cpu"]


@needs_sample("AAPL")
@needs_sample("MSFT")
def test_cli_stack_stores_what_training_alone_stores(tmp_path, capsys):
    from mambacast.cli import main

    assert main(["train", "--symbols", "AAPL,MSFT", "--save-dir", str(tmp_path / "alone"), *FAST]) == 0
    code = main(["train", "--symbols", "AAPL,NOPE,MSFT", "--stack", "--save-dir", str(tmp_path / "stack"), *FAST])
    out = capsys.readouterr().out
    assert code == 1 and "[NOPE] ✗ Failed:" in out and "[MSFT] ✓ Training complete!" in out
    _assert_stores_agree(ModelStore(tmp_path / "alone"), ModelStore(tmp_path / "stack"), ["AAPL", "MSFT"])


@pytest.mark.slow
@needs_sample("AAPL")
@needs_sample("MSFT")
@pytest.mark.parametrize("stack", [True, False], ids=["stacks", "symbols"])
def test_cli_parallel_workers_store_what_training_alone_stores(tmp_path, capsys, stack):
    """--parallel 2 in two worker processes of one thread each (--stack: two stacks of consecutive symbols,
    AAPL with NOPE, then MSFT): a failing symbol reported through the workers' progress, the others as alone."""
    from mambacast.cli import main

    assert main(["train", "--symbols", "AAPL,MSFT", "--save-dir", str(tmp_path / "alone"), *FAST]) == 0
    capsys.readouterr()
    argv = ["train", "--symbols", "AAPL,NOPE,MSFT", "--parallel", "2", "--save-dir", str(tmp_path / "workers"), *FAST]
    code = main(argv + (["--stack"] if stack else []))
    out = capsys.readouterr().out
    assert code == 1 and "[NOPE] ✗ Failed:" in out and "[MSFT] ✓ Training complete!" in out, out
    _assert_stores_agree(ModelStore(tmp_path / "alone"), ModelStore(tmp_path / "workers"), ["AAPL", "MSFT"])


@pytest.mark.slow
@needs_sample("AAPL")
@needs_sample("MSFT")
def test_sigkill_during_stacked_training_then_resume(tmp_path):
    """Kill a --stack run once both symbols have saved a training state; --stack --resume finishes it,
    and the final weights equal an uninterrupted run of each symbol alone."""
    import signal
    import time

    from .test_pipeline import KILL_ARGS, _final_weights, _run, assert_resumed, interrupted_progress

    reference = tmp_path / "reference"
    proc = _run([*KILL_ARGS, "--save-dir", str(reference)])
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()
    expected = _final_weights(reference)

    root = tmp_path / "killed"
    proc = _run([*KILL_ARGS, "--stack", "--save-dir", str(root)])
    states = [root / "checkpoints" / s / "training_state.safetensors" for s in ("AAPL", "MSFT")]
    deadline = time.monotonic() + 300
    while not all(p.exists() for p in states) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the stacked run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    store = ModelStore(root)
    assert store.symbols() == []           # killed mid-training: nothing is visible as complete
    left = interrupted_progress(root)
    assert all(isinstance(d, int) and d > 0 for d in left.values()), left
    resumed = _run([*KILL_ARGS, "--stack", "--save-dir", str(root), "--resume"])
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out
    assert_resumed(out, left)
    assert store.symbols() == ["AAPL", "MSFT"]
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name], "temporary files left behind"
    for symbol, weights in _final_weights(root).items():
        for key, value in weights.items():
            torch.testing.assert_close(value, expected[symbol][key], atol=1e-6, rtol=1e-5, msg=f"{symbol} {key}")


def test_stacked_validation_equals_trainer_evaluate(tmp_path, monkeypatch):
    """Validation sets of different lengths, spread over several padded chunks."""
    import mambacast.train.stacked as stacked_module

    monkeypatch.setattr(stacked_module, "_EVAL_BATCH", 8)     # chunks of 32 rows per model
    trainers = [make_trainer(tmp_path, f"S{i}", seed) for i, seed in enumerate((1, 2, 3))]
    members = []
    for t, n_val in zip(trainers, (70, 20, 33), strict=True):
        Xt, yt, _, _ = data(32, n_val)
        Xv, yv, _, _ = data(n_val, n_val + 1)
        members.append(stacked_module._Member(t, *(torch.as_tensor(a) for a in (Xt, yt, Xv, yv))))
    got = stacked_module._Stack(members).evaluate()
    for (loss, mae, crps), m in zip(got, members, strict=True):
        want_loss, want_mae, want_crps = m.trainer.evaluate(m.Xv, m.yv)
        assert loss == pytest.approx(want_loss, rel=LOSS_RTOL) and mae == pytest.approx(want_mae, rel=LOSS_RTOL)
        assert crps == pytest.approx(want_crps, rel=LOSS_RTOL)


@pytest.mark.parametrize("step", ["ordinary", "graphable"])
def test_diverging_member_leaves_the_stack_and_the_others_finish(tmp_path, monkeypatch, step):
    from mambacast.train import stacked as stacked_module
    from mambacast.train.trainer import NonFiniteLossError

    if step == "graphable":   # every batch here is full: all go through `_full_step`, as CUDA replays it
        original_init = stacked_module._Stack.__init__

        def with_full_step(self, members):
            original_init(self, members)
            self._graphed = lambda x, y: (self._zero_grad(), self._full_step(x, y))[1]

        monkeypatch.setattr(stacked_module._Stack, "__init__", with_full_step)

    good = data(48, 8)
    Xt, yt, Xv, yv = data(48, 9)
    Xt = Xt.copy()
    Xt[5, 3, 1] = np.nan                     # one poisoned training window: its batch's loss is NaN
    alone = make_trainer(tmp_path / "a", "S0", 8, epochs=3)
    alone.fit(*good)
    stacked = [make_trainer(tmp_path / "b", "S0", 8, epochs=3), make_trainer(tmp_path / "b", "S1", 9, epochs=3)]
    trainer = StackedTrainer(stacked)
    histories = trainer.fit([good, (Xt, yt, Xv, yv)])
    assert trainer.errors[0] is None and isinstance(trainer.errors[1], NonFiniteLossError)
    assert "loss became nan" in str(trainer.errors[1]) and histories[1] == []
    assert len(histories[0]) == 3
    assert_same_weights(alone, stacked[0])


class _DiesWhenUnpickled:
    """Sent to a worker process as a `train_symbols` argument, it ends that process as it arrives (os._exit),
    as a kill or the out-of-memory killer would."""

    def __reduce__(self):
        import os

        return os._exit, (70,)


@pytest.mark.parametrize("stack", [True, False], ids=["stacks", "symbols"])
def test_a_dead_worker_fails_its_symbols_and_returns(tmp_path, stack):
    from mambacast.train import train_symbols

    events = []
    results = train_symbols(["AAPL", "MSFT", "GOOGL"], parallel=2, stack=stack, prices=_DiesWhenUnpickled(),
                            save_dir=tmp_path, progress=lambda event, symbol, data: events.append((event, symbol)))
    assert [r["symbol"] for r in results] == ["AAPL", "MSFT", "GOOGL"]
    for r in results:
        assert r["status"] == "failed" and "worker process ended abruptly" in r["error"], r
    assert sorted(s for e, s in events if e == "done") == ["AAPL", "GOOGL", "MSFT"]


@pytest.mark.slow
@needs_sample("AAPL")
@needs_sample("MSFT")
def test_sigterm_to_the_parent_alone_stops_the_stacks_workers(tmp_path):
    """`train --stack --parallel 2` sent SIGTERM in its own process only (as `kill` or a supervisor does): it stops
    its workers at once and exits 143 with one line. (SIGINT there takes the same path as a KeyboardInterrupt; a
    terminal's Ctrl-C reaches every process of the group.)"""
    import json
    import signal
    import subprocess
    import sys
    import time

    from mambacast.config import preset

    # the small model, no early stopping: the workers would train for minutes
    endless = tmp_path / "endless.json"
    endless.write_text(json.dumps({"model_config": preset("small")[0].to_dict(),
                                   "train_config": {"epochs": 1000, "patience": 10000, "lr_patience": 10000}}))
    argv = [sys.executable, "-m", "mambacast.cli", "train", "--symbols", "AAPL,MSFT", "--stack", "--parallel", "2",
            "--preset", str(endless), "--days", "400", "--device", "cpu", "--quiet", "--save-dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    states = [ModelStore(tmp_path).state_path(s) for s in ("AAPL", "MSFT")]
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in states) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "mambacast: terminated", err
    saved = [p.stat().st_mtime_ns for p in states]
    time.sleep(2)   # the small preset saves a state every ~0.2 s per symbol: a worker still training would show
    assert [p.stat().st_mtime_ns for p in states] == saved
