"""The GPU path end to end (issue 13): training under bf16 autocast, calibration, stacked and pooled training,
resume, prediction and backtest refits on CUDA; a model trained on the GPU serves on the CPU and back.

Every test here is marked `cuda` and skips, with the reason, where there is no CUDA device. Prices are synthetic
random walks, so no sample-data package is needed.
"""

import asyncio

import numpy as np
import pandas as pd
import pytest
import torch

from mambacast import MambaConfig, MambaModel, MambaPredictor, TrainConfig
from mambacast.evaluate.model import MambaForecaster
from mambacast.nn.scan import scan_impl
from mambacast.ops import triton as triton_ops
from mambacast.store import GLOBAL_MODEL, ModelStore
from mambacast.train import Trainer, train_symbol
from mambacast.train.pipeline import train_symbols
from mambacast.train.pooled import train_global

pytestmark = pytest.mark.cuda

SMALL = MambaConfig(d_model=32, d_state=8, num_layers=2)
FAST = TrainConfig(epochs=2, batch_size=64, seed=3)


def walk(seed: int, n: int = 700) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    index = pd.bdate_range("2015-01-01", periods=n, name="date")
    return pd.DataFrame({"close": close, "volume": rng.integers(10**5, 10**6, n).astype(float)}, index=index)


def write_csvs(folder, symbols):
    folder.mkdir(exist_ok=True)
    for i, s in enumerate(symbols):
        walk(i).to_csv(folder / f"{s}.csv")
    return folder


def test_auto_picks_the_triton_scan_on_cuda():
    u = torch.zeros(1, 1, 4, device="cuda")
    assert scan_impl(u, torch.zeros(4, 2, device="cuda")) == ("triton" if triton_ops.available() else "chunked")


def test_trainer_on_cuda_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(300, 30, 6, generator=g), torch.randn(300, 4, generator=g)
    trainer = Trainer(MambaModel(SMALL, 6), FAST, device="cuda")
    history = trainer.fit(X[:240], y[:240], X[240:], y[240:])
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert next(trainer.model.parameters()).is_cuda
    loc, scale, df = trainer.predict_distribution(X[:5])
    assert loc.device.type == "cpu" and loc.dtype == torch.float32 and (scale > 0).all()


def test_train_on_cuda_then_serve_on_the_cpu_and_back(tmp_path):
    """train_symbol on the GPU (its calibration included), the weights loaded on the CPU and on the GPU give the
    same forecasts, and the predictor serves them on either device."""
    prices = walk(1)
    result = train_symbol("WALK", prices=prices, model_config=SMALL, train_config=FAST, save_dir=tmp_path,
                          device="cuda")
    assert result["status"] == "ok"
    store = ModelStore(tmp_path)
    assert store.load_metadata("WALK")["device"].startswith("cuda")
    cpu_model, _ = store.load_model("WALK", device="cpu")
    gpu_model, _ = store.load_model("WALK", device="cuda")
    x = torch.randn(8, FAST.sequence_length, cpu_model.n_features)
    with torch.no_grad():
        for a, b in zip(cpu_model.forward_distribution(x), gpu_model.forward_distribution(x.cuda()), strict=True):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
    close = float(prices["close"].iloc[-1])
    out = {dev: asyncio.run(MambaPredictor(["WALK"], model_dir=tmp_path, device=dev).predict("WALK", prices, close))
           for dev in ("cpu", "cuda")}
    assert out["cpu"] == pytest.approx(out["cuda"], rel=1e-4)


class Interrupted(Exception):
    pass


def test_interrupted_cuda_run_resumes(tmp_path):
    def stop_after_first_epoch(event, symbol, data):
        if event == "epoch" and data["epoch"] == 0:
            raise Interrupted

    config = TrainConfig(epochs=3, batch_size=64, seed=3, patience=10, lr_patience=10)
    with pytest.raises(Interrupted):
        train_symbol("WALK", prices=walk(2), model_config=SMALL, train_config=config, save_dir=tmp_path,
                     device="cuda", progress=stop_after_first_epoch)
    result = train_symbol("WALK", prices=walk(2), model_config=SMALL, train_config=config, save_dir=tmp_path,
                          device="cuda", resume=True)
    assert result["status"] == "ok"
    assert ModelStore(tmp_path).load_metadata("WALK")["performance_metrics"]["total_epochs"] == 3


def test_stacked_training_on_cuda(tmp_path):
    data = write_csvs(tmp_path / "csv", ["AAA", "BBB", "CCC"])
    # side_work as `mambacast train` runs it: the fits and plots in worker processes beside the GPU
    results = train_symbols(["AAA", "BBB", "CCC"], stack=True, side_work=True, device="cuda", source="csv",
                            data_path=data, days=None, model_config=SMALL, train_config=FAST,
                            save_dir=tmp_path / "models")
    assert [r["status"] for r in results] == ["ok"] * 3, results
    model, _ = ModelStore(tmp_path / "models").load_model("BBB", device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_global_model_on_cuda(tmp_path):
    data = write_csvs(tmp_path / "csv", ["AAA", "BBB"])
    result = train_global(["AAA", "BBB"], source="csv", data_path=data, days=None, model_config=SMALL,
                          train_config=FAST, save_dir=tmp_path / "models", device="cuda")
    assert result["status"] == "ok"
    ModelStore(tmp_path / "models").load_model(GLOBAL_MODEL, device="cpu")


def test_backtest_refit_on_cuda():
    closes = walk(4)["close"].to_numpy()
    forecaster = MambaForecaster(SMALL, FAST, device="cuda").fit(closes[:600])
    forecast = forecaster.predict(closes[:650], [1, 5])
    assert np.isfinite(forecast.mean).all() and (forecast.scale > 0).all()


def test_encode_long_on_cuda_equals_the_cpu():
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(), 30).eval()
    x = torch.randn(1, 5000, 30)
    with torch.no_grad():
        cpu = model.encode_long(x, chunk_len=2048)
        gpu = model.cuda().encode_long(x.cuda(), chunk_len=1024).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_host_copies_of_cuda_tensors_are_exact_and_own_their_memory(tmp_path):
    """Tensors come to the host in one transfer per device (`tensorfile.host_copies`): every value,
    shape and dtype as `.cpu()` gives it, in the same order, each tensor with its own memory (safetensors
    refuses shared memory), CPU tensors untouched."""
    from mambacast.tensorfile import host_copies

    dev = torch.device("cuda")
    base = torch.randn(6, 5, device=dev)
    tensors = {"w": torch.randn(3, 4, device=dev), "step": torch.tensor(7.0, device=dev),
               "view": base[:, 1:4].t(), "empty": torch.empty(0, 2, device=dev),
               "ids": torch.arange(5, device=dev), "mask": torch.rand(4, device=dev) > 0.5,
               "half": torch.randn(2, 2, device=dev, dtype=torch.bfloat16), "host": torch.randn(2)}
    got = host_copies(tensors)
    assert list(got) == list(tensors)
    for k, v in tensors.items():
        assert got[k].device.type == "cpu" and got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], v.cpu()), k
    assert got["host"].data_ptr() == tensors["host"].data_ptr()      # CPU tensors are not copied
    pointers = [t.untyped_storage().data_ptr() for k, t in got.items() if t.numel()]
    assert len(set(pointers)) == len(pointers)
    ModelStore(tmp_path).save_tensors(tmp_path / "state.safetensors", tensors)
    loaded, _ = ModelStore(tmp_path).load_tensors(tmp_path / "state.safetensors")
    assert all(torch.equal(loaded[k], tensors[k].cpu()) for k in tensors)
