"""The stack's fits and plots in worker processes (`train.side_work`): the stored models are what the same
stack stores with everything in one process, and a job that fails in the pool is computed again here.

The pool is used only when asked for (`side_work=True`, as `mambacast train` asks) beside an accelerator on a
machine with 4 or more cores; these tests force it on the CPU (`side_workers` patched) so that it runs
everywhere."""

import json

import numpy as np
import pandas as pd
import torch

from mambacast import MambaConfig, TrainConfig
from mambacast.store import ModelStore
from mambacast.train import pipeline, side_work
from mambacast.train.side_work import SideWork, side_workers

TINY = MambaConfig(d_model=8, d_state=4, num_layers=1)
FAST = TrainConfig(epochs=2, batch_size=64, seed=1)
SYMBOLS = ["AAA", "BBB", "CCC"]


def write_csvs(folder):
    folder.mkdir()
    for i, s in enumerate(SYMBOLS):
        rng = np.random.default_rng(i)
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, 400)))
        pd.DataFrame({"close": close}, index=pd.bdate_range("2016-01-01", periods=400, name="date")).to_csv(
            folder / f"{s}.csv")
    return folder


def train(tmp_path, name, data, side_work=True):
    root = tmp_path / name
    results = pipeline.train_symbols(SYMBOLS, stack=True, side_work=side_work, device="cpu", source="csv",
                                     data_path=data, days=None, model_config=TINY, train_config=FAST, save_dir=root)
    assert [r["status"] for r in results] == ["ok"] * 3, results
    return ModelStore(root)


def test_no_pool_unless_asked(tmp_path, monkeypatch):
    """A library call has no pool by default: spawn would import the caller's script again."""
    monkeypatch.setattr(pipeline, "side_workers", lambda device, n: 2)
    monkeypatch.setattr(SideWork, "__init__", _fails)
    train(tmp_path, "plain", write_csvs(tmp_path / "csv"), side_work=False)


def test_side_workers_only_beside_an_accelerator(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert side_workers(torch.device("cpu"), 50) == 0          # a CPU stack keeps the cores busy itself
    assert side_workers(torch.device("cuda"), 50) == 8
    assert side_workers(torch.device("cuda"), 3) == 3
    assert side_workers(torch.device("cuda"), 1) == 0
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert side_workers(torch.device("cuda"), 50) == 0


def test_stack_with_the_pool_stores_what_it_stores_without(tmp_path, monkeypatch):
    data = write_csvs(tmp_path / "csv")
    alone = train(tmp_path, "inline", data, side_work=False)
    submitted = []
    real_submit = SideWork.submit_blend

    def spy(self, *args):
        submitted.append(args[0])
        return real_submit(self, *args)

    monkeypatch.setattr(pipeline, "side_workers", lambda device, n: 2)
    monkeypatch.setattr(SideWork, "submit_blend", spy)
    pooled = train(tmp_path, "pooled", data)
    assert submitted == SYMBOLS
    for s in SYMBOLS:
        a, b = alone.load_metadata(s), pooled.load_metadata(s)
        assert a["blend"] == b["blend"], s
        assert alone.plot_path(s).read_bytes() == pooled.plot_path(s).read_bytes()
        untimed = [[{k: v for k, v in row.items() if k != "epoch_time"} for row in
                    json.loads(st.metrics_path(s).read_text())["history"]] for st in (alone, pooled)]
        assert untimed[0] == untimed[1]


def _fails(*args, **kwargs):
    raise RuntimeError("worker lost")


def test_a_job_that_fails_in_the_pool_is_computed_here(tmp_path, monkeypatch, caplog):
    """The pool's failure is logged and the fits are computed in this process: the run still stores them."""
    data = write_csvs(tmp_path / "csv")
    monkeypatch.setattr(pipeline, "side_workers", lambda device, n: 2)
    monkeypatch.setattr(side_work, "blend_state", _fails)     # what the workers are sent (pickled by name)
    with caplog.at_level("WARNING", logger="mambacast.train.side_work"):
        store = train(tmp_path, "pooled", data)
    assert sum("the blend job failed in a worker process" in r.getMessage() for r in caplog.records) == 3
    assert all(store.load_metadata(s)["blend"]["garch"] for s in SYMBOLS)


def test_side_work_results_by_symbol():
    work = SideWork(1)
    try:
        closes = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 600)))
        work.submit_blend("X", closes, [1, 5], 0.5, 0.0)
        done = work.take("X")
        assert done["blend"] == side_work.blend_state("X", closes, [1, 5], 0.5, 0.0)
        assert work.take("X") == {}
    finally:
        work.close()
    work.submit_blend("Y", closes, [1], 0.5, 0.0)       # a closed pool takes no job: left to the caller
    assert work.take("Y") == {}


class _NoProcesses:
    """A pool where processes cannot start (a sandbox without them, /dev/shm missing)."""

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, *args, **kwargs):
        raise OSError("[Errno 38] Function not implemented")

    def shutdown(self, *args, **kwargs):
        pass


def test_no_processes_here_means_the_work_is_done_in_this_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "side_workers", lambda device, n: 2)
    monkeypatch.setattr(side_work, "ProcessPoolExecutor", _NoProcesses)
    with caplog.at_level("WARNING", logger="mambacast.train.side_work"):
        store = train(tmp_path, "here", write_csvs(tmp_path / "csv"))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "unavailable (OSError" in said[0]          # said once, not once per job
    assert all(store.load_metadata(s)["blend"]["garch"] and store.plot_path(s).exists() for s in SYMBOLS)
