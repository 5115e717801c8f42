"""A model is replaced only by a complete, valid model (issue 14, finding 1), through the real command.

The crash tests kill a training process during its final write (MAMBACAST_FAULT makes it exit at once, as a
SIGKILL would, at a chosen point of the switch) and check what a user is left with.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambacast.cli import main
from mambacast.data.sources import load_prices
from mambacast.store import ModelStore

TINY = ["--preset", "small", "--epochs", "1", "--days", "400", "--batch-size", "64"]


def model_digest(root, symbol="AAPL"):
    store = ModelStore(root)
    paths = [store.weights_path(symbol), store.metadata_path(symbol), store.metrics_path(symbol),
             store.plot_path(symbol)]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def train_cli(*args, env=None):
    """`mambacast train` in a fresh process (so a fault can end it without ending the test)."""
    return subprocess.run([sys.executable, "-m", "mambacast.cli", "train", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    assert main(["train", "--symbols", "AAPL", "--save-dir", str(root), "--seed", "1", "--quiet", *TINY]) == 0
    return root


@pytest.fixture
def store_copy(good_store, tmp_path):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(good_store, root)
    return root


@pytest.mark.parametrize("point", ["commit.staging", "commit.switching"])
def test_killed_during_the_final_write(store_copy, point):
    before = model_digest(store_copy)
    proc = train_cli("--symbols", "AAPL", "--save-dir", str(store_copy), "--seed", "2", "--quiet", *TINY,
                     env={"MAMBACAST_FAULT": point})
    assert proc.returncode == 70, proc.stdout + proc.stderr      # it died inside the write, no clean-up ran
    store = ModelStore(store_copy)
    if point == "commit.staging":      # before the commit point: the previous model, byte for byte
        assert model_digest(store_copy) == before
        assert [p for p in store_copy.rglob("*") if ".tmp-" in p.name], "the kill should leave staged files"
        assert store.load_model("AAPL")[1]["seed"] == 1
    else:                              # after it: half renamed on disk; the next reader finishes the switch
        assert (store_copy / ".AAPL.commit.json").exists()
        model, meta = store.load_model("AAPL")
        assert meta["seed"] == 2 and store.is_complete("AAPL")
        assert model_digest(store_copy) != before
    assert main(["train", "--symbols", "AAPL", "--save-dir", str(store_copy), "--resume", "--quiet", *TINY]) == 0
    assert not [p for p in store_copy.rglob("*") if ".tmp-" in p.name or p.name.endswith(".commit.json")]


def test_a_run_that_fails_validation_keeps_the_previous_model(store_copy, monkeypatch, capsys):
    """The issue's failure, forced: a non-finite number reaches the metadata after every epoch was trained."""
    import mambacast.train.artifacts as artifacts

    before = model_digest(store_copy)
    real = artifacts._validation_report

    def nan_report(*args, **kwargs):
        report = real(*args, **kwargs)
        report["1d"]["rmse_log_return"] = float("nan")
        return report

    monkeypatch.setattr(artifacts, "_validation_report", nan_report)
    code = main(["train", "--symbols", "AAPL", "--save-dir", str(store_copy), "--seed", "2", "--quiet", *TINY])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "rmse_log_return is not a finite number" in err and "unchanged" in err
    assert model_digest(store_copy) == before


def test_a_blank_close_trains_and_predicts_end_to_end(store_copy, tmp_path, capsys):
    """The issue's user: one blank close in a CSV over a good model. Handled as docs/data.md says (forward fill)."""
    frame = load_prices("AAPL", days=500)
    rows = frame[["close"]].reset_index()
    rows.insert(0, "symbol", "AAPL")
    rows.loc[250, "close"] = np.nan
    csv = tmp_path / "prices.csv"
    rows.to_csv(csv, index=False)
    assert ",AAPL" not in csv.read_text().splitlines()[251] and csv.read_text().splitlines()[251].endswith(",")
    data = ["--source", "csv", "--data", str(csv)]
    assert main(["data", "check", "--symbols", "AAPL", *data]) == 0
    assert main(["train", "--symbols", "AAPL", "--save-dir", str(store_copy), "--quiet", *data, *TINY]) == 0
    meta = json.loads(ModelStore(store_copy).metadata_path("AAPL").read_text())
    assert np.isfinite(meta["data_stats"]["avg_return"]) and np.isfinite(meta["data_stats"]["volatility"])
    capsys.readouterr()
    assert main(["predict", "--symbols", "AAPL", "--save-dir", str(store_copy), "--strict", "--json", *data]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert answer["source"] == "mamba" and all(np.isfinite(v) for v in answer["prices"].values())


def test_the_global_model_goes_through_the_same_switch(tmp_path, monkeypatch):
    """`train --global` writes _GLOBAL through `ModelStore.save_model` too: a failed validation keeps the old one."""
    import mambacast.train.pooled as pooled

    root = tmp_path / "g"
    args = ["train", "--global", "--symbols", "AAPL,MSFT", "--save-dir", str(root), "--quiet", *TINY]
    assert main(args) == 0
    before = model_digest(root, "_GLOBAL")
    assert set(before) == {"_GLOBAL.safetensors", "_GLOBAL_metadata.json", "_GLOBAL_metrics.json",
                           "_GLOBAL_training.png"}
    monkeypatch.setattr(pooled, "calibrate_distribution", lambda *a, **k: {"scale_factor": [float("inf")] * 4})
    assert main([*args, "--seed", "3"]) == 2
    assert model_digest(root, "_GLOBAL") == before
    model, _ = ModelStore(root).load_model("_GLOBAL")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_metrics_of_a_run_in_progress_stay_out_of_the_stored_model(store_copy):
    """Per-epoch metrics go to the run's checkpoint folder; the stored metrics change only with the model."""
    store = ModelStore(store_copy)
    run_metrics = json.loads(store.run_metrics_path("AAPL").read_text())
    stored = json.loads(store.metrics_path("AAPL").read_text())
    assert run_metrics["history"] == stored["history"] and "validation" in stored
    assert Path(store.metrics_path("AAPL")).parent.name == "metrics"


def test_train_and_predict_into_the_default_relative_store(tmp_path, monkeypatch, capsys):
    """`mambacast train` without --save-dir writes models/mamba under the working directory (relative), as the
    README's `make train` does; `predict` then reads it from there."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--symbols", "AAPL", "--quiet", *TINY]) == 0
    assert ModelStore("models/mamba").is_complete("AAPL")
    capsys.readouterr()
    assert main(["predict", "--symbols", "AAPL"]) == 0
    assert "AAPL" in capsys.readouterr().out
