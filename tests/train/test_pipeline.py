"""End to end through the command line: the store's layout, its metadata, resume after SIGKILL."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mambacast import MambaConfig, TrainConfig
from mambacast.cli import main
from mambacast.data.sources import load_prices
from mambacast.ops.amp import cpu_bf16_autocast
from mambacast.store import ModelStore
from mambacast.train import Trainer, prepare_data, train_single_symbol

from ..samples import needs_bokeh, needs_sample

FAST = ["--preset", "small", "--epochs", "2", "--days", "400", "--batch-size", "64", "--seed", "7"]
ROOT = Path(__file__).resolve().parents[2]


@needs_bokeh
def test_cli_trains_two_symbols_into_the_guides_layout(tmp_path, capsys):
    code = main(["train", "--symbols", "AAPL,GOOGL", "--save-dir", str(tmp_path), *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    for symbol in ("AAPL", "GOOGL"):
        assert f"[{symbol}] Starting Mamba training..." in out
        assert f"[{symbol}] Loaded 400 days of price data" in out
        assert f"[{symbol}] ✓ Training complete! Best Val Loss:" in out
        store = ModelStore(tmp_path)
        for path in (store.weights_path(symbol), store.metadata_path(symbol), store.metrics_path(symbol),
                     store.best_checkpoint_path(symbol), store.state_path(symbol), store.plot_path(symbol)):
            assert path.is_file() and path.stat().st_size > 0, path
        meta = json.loads(store.metadata_path(symbol).read_text())
        assert {"symbol", "training_date", "model_config", "performance_metrics", "data_stats"} <= set(meta)
        assert {"best_val_loss", "best_epoch", "total_epochs"} <= set(meta["performance_metrics"])
        assert {"num_samples", "avg_return"} <= set(meta["data_stats"])
        assert meta["model_config"]["prediction_horizons"] == [1, 5, 10, 30]
        assert {"mambacast_version", "torch_version", "feature_names", "feature_scaler", "target_scaler",
                "data_source", "data_hash", "seed"} <= set(meta)
        assert meta["seed"] == 7 and meta["data_stats"]["days"] == 400
        # what the step computed in: bf16 autocast where the CPU has bf16 in hardware (ops.amp), else float32
        assert meta["precision"] == ("bfloat16 autocast" if cpu_bf16_autocast() else "float32")
        assert set(load_file(str(store.weights_path(symbol)))) == set(store.load_model(symbol)[0].state_dict())
    assert "symbol" in out and "best val loss" in out  # the summary table


@needs_sample("MSFT")
def test_saved_model_reproduces_its_validation_loss(tmp_path, capsys):
    assert main(["train", "--symbols", "MSFT", "--save-dir", str(tmp_path), *FAST]) == 0
    model, meta = ModelStore(tmp_path).load_model("MSFT")
    cfg = TrainConfig.from_dict(meta["train_config"])
    data = prepare_data("MSFT", load_prices("MSFT", days=meta["data_stats"]["days"]),
                        MambaConfig.from_dict(meta["model_config"]), cfg)
    assert data.data_hash == meta["data_hash"]
    # on the device it was trained and validated on (CUDA evaluates under bf16 autocast)
    trainer = Trainer(model, cfg, device=meta["device"])
    loss, _, crps = trainer.evaluate(data.X[data.val_idx], data.y_scaled[data.val_idx])
    assert loss == pytest.approx(meta["performance_metrics"]["best_val_loss"], rel=1e-5)
    assert crps == pytest.approx(meta["performance_metrics"]["best_val_crps"], rel=1e-5)


@needs_sample("AAPL")
def test_one_bad_symbol_does_not_stop_the_others(tmp_path, capsys):
    code = main(["train", "--symbols", "AAPL,NOPE", "--save-dir", str(tmp_path), *FAST])
    out = capsys.readouterr().out
    assert code == 1
    assert "[NOPE] ✗ Failed:" in out and "[AAPL] ✓ Training complete!" in out
    assert ModelStore(tmp_path).symbols() == ["AAPL"]


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--save-dir", str(tmp_path)]) == 2
    assert "say what to train" in capsys.readouterr().err
    assert main(["train", "--symbols", "TIER_9", "--save-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TIER_9" in err
    assert main(["train", "--test", "--source", "csv", "--save-dir", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


@needs_sample("AAPL")
def test_guide_example_2_runs(tmp_path):
    config = MambaConfig(d_model=16, d_state=8, num_layers=1, prediction_horizons=[1, 3, 7, 14, 30])
    symbol, result = asyncio.run(train_single_symbol(symbol="AAPL", epochs=1, batch_size=64, config=config,
                                                     historical_days=400, save_dir=tmp_path))
    assert symbol == "AAPL" and result["status"] == "ok"
    assert {"best_val_loss", "best_epoch", "total_epochs", "num_samples", "training_time", "n_parameters",
            "weights", "metadata"} <= set(result)
    assert np.isfinite(result["best_val_loss"])


def _run(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_mamba_models.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, **kw)


def _final_weights(root):
    store = ModelStore(root)
    return {s: store.load_model(s)[0].state_dict() for s in ("AAPL", "MSFT")}


# Bit-identical resumption is the CPU's promise (the GPU path: tests/test_cuda.py), so these runs pin the CPU.
KILL_ARGS = ["--symbols", "AAPL,MSFT", "--preset", "small", "--epochs", "4", "--days", "400",
             "--batch-size", "64", "--seed", "3", "--device", "cpu"]


def interrupted_progress(root, symbols=("AAPL", "MSFT")):
    """Per symbol, what a killed run left: "complete", the number of finished epochs in its saved state, or 0."""
    store = ModelStore(root)
    left = {}
    for symbol in symbols:
        if store.is_complete(symbol):
            left[symbol] = "complete"
        elif store.state_path(symbol).exists():
            left[symbol] = store.load_tensors(store.state_path(symbol))[1]["epoch"] + 1
        else:
            left[symbol] = 0
    return left


def assert_resumed(out, left, epochs=4):
    """The resumed run's output shows each symbol continue where the killed run stopped, never start over."""
    for symbol, done in left.items():
        if done == "complete":
            assert f"[{symbol}] already trained" in out, out
            continue
        trained = [int(e) for e in re.findall(rf"\[{symbol}\] epoch (\d+)/{epochs}", out)]
        assert trained == list(range(done + 1, epochs + 1)), (symbol, done, out)
        assert (f"[{symbol}] resumed from epoch {done} " in out) == (done > 0), (symbol, done, out)


@pytest.mark.slow
@needs_sample("AAPL")
@needs_sample("MSFT")
@pytest.mark.usefixtures("float32_training")   # bit for bit (tests/conftest.py)
def test_sigkill_then_resume_completes_with_valid_files(tmp_path):
    reference = tmp_path / "reference"
    proc = _run([*KILL_ARGS, "--save-dir", str(reference)])
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()
    expected = _final_weights(reference)

    # kill at several moments: during the first epoch, after AAPL's first checkpoint, during MSFT
    moments = [
        lambda root: (root / "checkpoints" / "AAPL").exists(),
        lambda root: (root / "checkpoints" / "AAPL" / "training_state.safetensors").exists(),
        lambda root: (root / "metadata" / "AAPL_metadata.json").exists(),
        lambda root: (root / "checkpoints" / "MSFT" / "training_state.safetensors").exists(),
    ]
    resumed_epochs = []
    for i, reached in enumerate(moments):
        root = tmp_path / f"killed{i}"
        proc = _run([*KILL_ARGS, "--save-dir", str(root)])
        deadline = time.monotonic() + 300
        while not reached(root) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"moment {i}: the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        store = ModelStore(root)
        for symbol in store.symbols():        # whatever is visible as complete is valid
            assert store.is_complete(symbol)
        left = interrupted_progress(root)
        resumed = _run([*KILL_ARGS, "--save-dir", str(root), "--resume"])
        out = resumed.communicate(timeout=300)[0].decode()
        assert resumed.returncode == 0, out
        assert_resumed(out, left)
        resumed_epochs += [d for d in left.values() if d != "complete" and d > 0]
        assert store.symbols() == ["AAPL", "MSFT"]
        assert not [p for p in root.rglob("*") if ".tmp-" in p.name], "temporary files left behind"
        for symbol, weights in _final_weights(root).items():
            for key, value in weights.items():
                assert torch.equal(value, expected[symbol][key]), (i, symbol, key)
    assert resumed_epochs, "no moment interrupted a symbol after a saved epoch: the test proved nothing about resume"


@needs_bokeh
def test_with_range_trains_on_highs_and_lows_and_predicts(tmp_path, capsys):
    assert main(["train", "--symbols", "IBM", "--with-range", "--save-dir", str(tmp_path), *FAST]) == 0
    meta = ModelStore(tmp_path).load_metadata("IBM")
    assert meta["feature_config"]["include_range"] is True
    assert meta["feature_names"][-3:] == ["log_range_vol_1", "log_range_vol_5", "log_range_vol_22"]
    capsys.readouterr()
    # predict reads the OHLCV file the model needs (the sample's AAPL/MSFT default files are close-only)
    assert main(["predict", "--symbols", "IBM", "--save-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["source"] == "mamba"
