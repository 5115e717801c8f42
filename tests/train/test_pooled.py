"""The global model: pooled windows with shared scalers, `train --global`, and serving it for any symbol."""

import asyncio

import numpy as np
import pandas as pd
import pytest

from mambacast import MambaConfig, MambaPredictor, TrainConfig
from mambacast.cli import main
from mambacast.data import DataError
from mambacast.data.sources import load_prices
from mambacast.store import GLOBAL_MODEL, ModelStore
from mambacast.train.pipeline import prepare_data
from mambacast.train.pooled import prepare_pooled

from ..samples import needs_skfolio

FAST = ["--preset", "small", "--epochs", "2", "--days", "400", "--batch-size", "64", "--seed", "7"]
MC = MambaConfig(d_model=8, d_state=4, num_layers=1, prediction_horizons=[1, 5])
TC = TrainConfig(sequence_length=20, batch_size=32, epochs=1)


def walk(n, seed, vol=0.01):
    rng = np.random.default_rng(seed)
    close = 30 * np.exp(np.cumsum(vol * rng.standard_normal(n)))
    return pd.DataFrame({"close": close}, index=pd.bdate_range("2001-01-01", periods=n))


def test_pooled_windows_and_scalers_cover_every_symbol():
    frames = {"A": walk(400, 1), "B": walk(300, 2, vol=0.03), "C": walk(50, 3)}   # C is too short
    data = prepare_pooled(frames, MC, TC)
    assert set(data.counts) == {"A", "B"} and "C" in data.skipped
    # each symbol split as alone: the pooled arrays are the per-symbol ones, stacked, with pooled scalers
    a, b = (prepare_data(s, frames[s], MC, TC) for s in ("A", "B"))
    assert data.counts["A"] == (len(a.train_idx), len(a.val_idx)) and data.counts["B"] == (len(b.train_idx),
                                                                                        len(b.val_idx))
    y_train = np.concatenate([a.y[a.train_idx], b.y[b.train_idx]])
    np.testing.assert_allclose(data.target_scaler.std_, y_train.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(data.y_train, (y_train - y_train.mean(0)) / y_train.std(0), rtol=1e-4, atol=1e-5)
    assert data.X_train.shape == (len(y_train), 20, len(data.feature_names))
    # the volatile symbol's targets stay large after pooled scaling (a per-symbol scaler would hide it)
    n_a = data.counts["A"][0]
    assert data.y_train[n_a:].std() > 2 * data.y_train[:n_a].std()
    with pytest.raises(DataError, match="no symbol has usable data"):
        prepare_pooled({"C": walk(50, 3)}, MC, TC)


@needs_skfolio   # JPM and KO
def test_train_global_then_serve_any_symbol(tmp_path, capsys):
    code = main(["train", "--global", "--symbols", "JPM,KO,NOPE", "--save-dir", str(tmp_path), *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[_GLOBAL] ✓ Training complete!" in out and "left out: NOPE" in out and "val_crps" in out
    meta = ModelStore(tmp_path).load_metadata(GLOBAL_MODEL)
    assert meta["kind"] == "global" and meta["symbols"] == ["JPM", "KO"] and "NOPE" in meta["skipped_symbols"]
    assert meta["performance_metrics"]["monitor"] == "val_crps"

    history = load_prices("PG", days=400)           # never seen by the model
    price = float(history["close"].iloc[-1])

    def forecast(model):
        predictor = MambaPredictor(["PG"], model_dir=tmp_path, model=model)
        try:
            return asyncio.run(predictor.predict_detailed("PG", history, price))
        finally:
            predictor.close()

    auto = forecast("auto")
    assert auto.source == "mamba" and auto.model_version.startswith("global/")
    assert forecast("global").quantiles == auto.quantiles
    only_own = forecast("symbol")
    assert only_own.source == "momentum" and "PG" in only_own.reason
    # with both, auto serves the global model (the backtest's better one); symbol serves the symbol's own
    assert main(["train", "--symbols", "PG", "--save-dir", str(tmp_path), *FAST]) == 0
    assert forecast("auto").model_version.startswith("global/")
    own = forecast("symbol")
    assert own.source == "mamba" and not own.model_version.startswith("global/")
    with pytest.raises(ValueError, match="model='best'"):
        MambaPredictor(["PG"], model_dir=tmp_path, model="best")


def test_global_flag_conflicts_are_one_line(tmp_path, capsys):
    assert main(["train", "--global", "--stack", "--symbols", "JPM,KO", "--save-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--global" in err
