"""Bad calls to the Python API: a ValueError (or subclass) whose message is one line naming the problem, and a
good store left as it is."""

import asyncio

import numpy as np
import pytest

from mambacast import MambaConfig, MambaPredictor, TrainConfig, validate_data_quality
from mambacast.data.sources import load_prices
from mambacast.store import ModelNotFoundError, StoreError
from mambacast.train import train_symbol, train_symbols


def predict(good, *args, **kwargs):
    predictor = MambaPredictor(["AAPL"], model_dir=good.root, **kwargs)
    try:
        return asyncio.run(predictor.predict_detailed(*args))
    finally:
        predictor.close()


HISTORY = load_prices("AAPL", days=300)
CLOSE = float(HISTORY["close"].iloc[-1])

CASES = {
    # configs
    "d_model 0": (lambda g: MambaConfig(d_model=0), ValueError, "d_model=0 is invalid"),
    "no horizons": (lambda g: MambaConfig(prediction_horizons=[]), ValueError, "prediction_horizons=[]"),
    "unsorted horizons": (lambda g: MambaConfig(prediction_horizons=[5, 1]), ValueError, "must be sorted"),
    "unknown config key": (lambda g: MambaConfig.from_dict({"d_modle": 8}), ValueError, "unknown MambaConfig key"),
    "config not JSON": (lambda g: MambaConfig.from_json("{d_model: 8"), ValueError, "Expecting property name"),
    "batch size 0": (lambda g: TrainConfig(batch_size=0), ValueError, "batch_size=0 is invalid"),
    "validation split 1.5": (lambda g: TrainConfig(validation_split=1.5), ValueError, "validation_split=1.5"),
    "loss huber": (lambda g: TrainConfig(loss="huber"), ValueError, "loss='huber' is invalid"),
    # training
    "train into a file": (lambda g: train_symbol("AAPL", save_dir=g.root / "weights" / "AAPL.safetensors"),
                          StoreError, "is a file, not a folder"),
    "train on a banana": (lambda g: train_symbol("AAPL", save_dir=g.root, device="banana"), ValueError,
                          "--device 'banana' is not a device"),
    "train many into a file": (lambda g: train_symbols(["AAPL", "MSFT"], save_dir=g.root / "weights" /
                                                       "AAPL.safetensors"), StoreError, "is a file"),
    "train with parallel 0": (lambda g: train_symbols(["AAPL"], parallel=0, save_dir=g.root), ValueError,
                              "--parallel 0 is invalid"),
    "train on 2-D prices": (lambda g: train_symbol("AAPL", prices=np.ones((5, 5)), save_dir=g.root), ValueError,
                            "prices must be one series of closes"),
    # data
    "quality of a matrix": (lambda g: validate_data_quality(np.ones((3, 3))), ValueError, "one series of closes"),
    "unknown source": (lambda g: load_prices("AAPL", source="ftp"), ValueError, "ftp"),
    "unknown symbol": (lambda g: load_prices("NOPEX"), ValueError, "unknown symbol 'NOPEX'"),
    # the predictor
    "predictor model": (lambda g: MambaPredictor(["AAPL"], model="best"), ValueError, "model='best' is invalid"),
    "predictor calibration": (lambda g: MambaPredictor(["AAPL"], calibration="x"), ValueError,
                              "calibration='x' is invalid"),
    "predictor workers": (lambda g: MambaPredictor(["AAPL"], max_workers=0), ValueError, "max_workers=0"),
    "negative price": (lambda g: predict(g, "AAPL", HISTORY, -1.0), ValueError, "current_price=-1.0 is invalid"),
    "two closes": (lambda g: predict(g, "AAPL", HISTORY.iloc[:2], CLOSE), ValueError, "has 2 closes"),
    "half missing": (lambda g: predict(g, "AAPL", HISTORY["close"].where(np.arange(300) % 2 == 0), CLOSE),
                     ValueError, "150 of 300 closes of price_history are missing"),
    "quantile 1.5": (lambda g: predict(g, "AAPL", HISTORY, CLOSE, (0.5, 1.5)), ValueError, "quantile 1.5"),
    "strike -1": (lambda g: predict(g, "AAPL", HISTORY, CLOSE).prob_above(-1.0, 30), ValueError, "strike=-1.0"),
    "horizon 7d": (lambda g: predict(g, "AAPL", HISTORY, CLOSE).prob_above(130.0, "7d"), ValueError,
                   "horizon '7d' is not forecast"),
    "strict, no model": (lambda g: predict(g, "MSFT", HISTORY, CLOSE, strict=True), ModelNotFoundError,
                         "no model for MSFT"),
    "strict, other horizons": (lambda g: predict(g, "AAPL", HISTORY, CLOSE, strict=True,
                                                 config=MambaConfig(prediction_horizons=[1, 5])),
                               StoreError, "forecasts horizons [1, 5, 10, 30], not the [1, 5] asked for"),
    "strict, short history": (lambda g: predict(g, "AAPL", HISTORY.iloc[-50:], CLOSE, strict=True), ValueError,
                              "history has 50 days; the model needs at least 120"),
    "origins out of range": (lambda g: MambaPredictor(["AAPL"], model_dir=g.root).forecast_origins(
        "AAPL", HISTORY, [5]), ValueError, "origins must be row positions in [119, 299]"),
    "origins without a model": (lambda g: MambaPredictor(["MSFT"], model_dir=g.root).forecast_origins(
        "MSFT", HISTORY), ModelNotFoundError, "no model for MSFT"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_call_raises_one_clear_line(good, case):
    call, error, match = CASES[case]
    with pytest.raises(error) as info:
        call(good)
    message = str(info.value)
    assert match in message and "\n" not in message, message
    assert good.unchanged()
