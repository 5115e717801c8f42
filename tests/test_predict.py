"""MambaPredictor: the guide's async API, distributions, fallback and concurrency."""

import asyncio
import json
import math
import time

import numpy as np
import pytest

from mambacast import MambaConfig, MambaPredictor, TrainConfig
from mambacast.cli import main
from mambacast.data.sources import load_prices
from mambacast.store import ModelStore
from mambacast.train import train_symbol

from .samples import needs_sample, needs_skfolio

pytestmark = needs_sample("AAPL")   # the models here are trained on AAPL

KEYS = ["1d", "5d", "10d", "30d"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    train_symbol("AAPL", model_config=MambaConfig(d_model=16, d_state=4, num_layers=1),
                 train_config=TrainConfig(epochs=2, batch_size=64), days=500, save_dir=root)
    return root


@pytest.fixture(scope="module")
def history():
    return load_prices("AAPL", days=300)


def run(coro):
    return asyncio.run(coro)


@needs_skfolio   # AAPL's history to 2022
def test_predict_returns_the_guides_dict(model_dir, history):
    predictor = MambaPredictor(["AAPL"], model_dir=model_dir)
    current = float(history["close"].iloc[-1])
    out = run(predictor.predict("AAPL", history, current_price=current))
    assert list(out) == KEYS
    assert all(math.isfinite(v) and v > 0 for v in out.values())
    detail = run(predictor.predict_detailed("AAPL", history, current))
    assert detail.source == "mamba" and detail.reason is None
    assert detail.as_of == "2022-12-28" and detail.model_version
    assert detail.prices == out


def test_numpy_series_and_frame_give_the_same_answer(model_dir, history):
    predictor = MambaPredictor(["AAPL"], model_dir=model_dir)
    current = float(history["close"].iloc[-1])
    a = run(predictor.predict("AAPL", history, current))
    b = run(predictor.predict("AAPL", history["close"], current))
    c = run(predictor.predict("AAPL", history["close"].to_numpy(), current))
    assert a == b == c


def test_fallbacks_say_why(model_dir, history, tmp_path):
    current = float(history["close"].iloc[-1])
    predictor = MambaPredictor(["AAPL", "ZZZZ"], model_dir=model_dir)
    unknown = run(predictor.predict_detailed("ZZZZ", history, current))
    assert unknown.source == "momentum" and unknown.reason == f"no usable model: no model for ZZZZ in {model_dir}"
    short = run(predictor.predict_detailed("AAPL", history.iloc[-40:], current))
    assert short.source == "momentum" and "history has 40 days; the model needs at least 120" in short.reason
    assert list(short.prices) == KEYS and all(v > 0 for v in short.prices.values())

    # a corrupt weights file: copy the store and flip one byte
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = ModelStore(broken).weights_path("AAPL")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    corrupt = run(MambaPredictor(["AAPL"], model_dir=broken).predict_detailed("AAPL", history, current))
    assert corrupt.source == "momentum" and "SHA-256" in corrupt.reason


@pytest.mark.parametrize("history_arg, price, match", [
    (np.array([]), 100.0, "has 0 closes"),
    (np.array([100.0, 101.0]), 100.0, "has 2 closes"),
    (np.array([100.0, np.nan, 101.0, 102.0]), 100.0, "1 of 4 closes of price_history are missing"),
        (np.array([np.nan, 100.0, 101.0, 102.0]), 100.0, "first close of price_history is missing"),
        (np.array([100.0, np.inf, 101.0, 102.0]), 100.0, "infinite"),
    (np.array([100.0, -1.0, 101.0, 102.0]), 100.0, "zero or negative"),
    (np.array([100.0, 101.0, 102.0]), 0.0, "current_price=0.0 is invalid"),
    (np.array([100.0, 101.0, 102.0]), float("nan"), "current_price=nan is invalid"),
])
def test_bad_inputs_raise_clear_errors(model_dir, history_arg, price, match):
    with pytest.raises(ValueError, match=match):
        run(MambaPredictor(["AAPL"], model_dir=model_dir).predict("AAPL", history_arg, price))


@pytest.mark.parametrize("symbol", ["AAPL", "NOMODEL"])
def test_distribution_is_monotone_and_consistent(model_dir, history, symbol):
    predictor = MambaPredictor(["AAPL"], model_dir=model_dir)
    current = float(history["close"].iloc[-1])
    quant = run(predictor.predict_distribution(symbol, history, current))
    for key in KEYS:
        values = [quant[key][q] for q in sorted(quant[key])]
        assert all(a < b for a, b in zip(values, values[1:], strict=False)), (key, values)
    detail = run(predictor.predict_detailed(symbol, history, current))
    for h in (1, 30):
        strikes = current * np.linspace(0.7, 1.3, 13)
        above = [detail.prob_above(k, h) for k in strikes]
        assert all(a >= b for a, b in zip(above, above[1:], strict=False)) and above[0] > above[6] > above[-1]
        near = [detail.prob_above(k, h) for k in current * np.linspace(0.99, 1.01, 5)]
        assert all(a > b for a, b in zip(near, near[1:], strict=False))     # strictly near the money
        for k in strikes:
            assert detail.prob_above(k, h) == pytest.approx(1 - detail.prob_below(k, h))
        # the median quantile is where P(above) is one half
        assert detail.prob_above(quant[f"{h}d"][0.5], h) == pytest.approx(0.5, abs=1e-9)
    assert run(predictor.prob_above(symbol, history, current, current * 2, 30)) < 0.05
    with pytest.raises(ValueError, match="horizon 7 is not forecast"):
        detail.prob_above(current, 7)
    with pytest.raises(ValueError, match="strike"):
        detail.prob_above(-1.0, 1)


def test_many_concurrent_calls_match_sequential_and_keep_the_loop_responsive(model_dir, history):
    predictor = MambaPredictor(["AAPL"], model_dir=model_dir)
    closes = history["close"].to_numpy()
    cases = [(closes[: len(closes) - i], float(closes[len(closes) - i - 1])) for i in range(20)]
    expected = [run(predictor.predict("AAPL", h, p)) for h, p in cases]

    async def scenario():
        gaps = []
        stop = asyncio.Event()

        async def heartbeat():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async def worker(w):
            return [(i, await predictor.predict("AAPL", *cases[i % 20])) for i in range(w % 20, 1000, 50)]

        beat = asyncio.create_task(heartbeat())
        results = await asyncio.gather(*(worker(w) for w in range(50)))
        stop.set()
        await beat
        return [r for rs in results for r in rs], gaps

    results, gaps = run(scenario())
    assert len(results) == 1000
    for i, out in results:
        assert out == expected[i % 20]
    assert len(gaps) > 10 and max(gaps) < 1.0, max(gaps)


@needs_skfolio   # AAPL's history to 2022
def test_predict_command(model_dir, tmp_path, capsys):
    png = tmp_path / "fan.png"
    assert main(["predict", "--symbols", "AAPL,MSFT", "--save-dir", str(model_dir), "--strike", "130",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "80% interval" in out and "P(>130)" in out and "mamba" in out and "momentum" in out
    assert png.stat().st_size > 10_000
    assert main(["predict", "--symbols", "AAPL", "--save-dir", str(model_dir), "--as-of", "2020-03-20",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["as_of"] == "2020-03-20" and data[0]["source"] == "mamba"
    assert main(["predict", "--symbols", "AAPL", "--save-dir", str(model_dir), "--as-of", "1980-01-01"]) == 2
    assert "--as-of 1980-01-01 is outside AAPL's prices (1990-01-02 .. 2022-12-28)" in capsys.readouterr().err


def test_guide_example_3_runs(model_dir):
    from mambacast import fetch_historical_prices, validate_data_quality

    async def example():
        prices = await fetch_historical_prices(["AAPL"], days=2000)
        is_valid, msg = validate_data_quality(prices["AAPL"])
        assert is_valid, msg
        predictor = MambaPredictor(["AAPL"], model_dir=model_dir)
        return await predictor.predict("AAPL", prices["AAPL"], current_price=175.50)

    predictions = run(example())
    assert list(predictions) == KEYS and all(100 < v < 300 for v in predictions.values())
