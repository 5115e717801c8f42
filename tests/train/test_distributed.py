"""`mambacast train --ray` on a real local Ray cluster (2 CPUs, started once for the module, no mocks).

The Ray models must equal the same symbols trained one at a time with the same seed (to float rounding: the
workers run one torch thread; in float32, `float32_module` in tests/conftest.py), a worker that dies
mid-training (a real process exit, not an exception) must be retried and resume from its checkpoint, and user
mistakes are one line.
"""

from __future__ import annotations

import sys

import pytest
import torch

from mambacast.cli import main
from mambacast.store import ModelStore

from ..samples import needs_bokeh

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mambacast[ray]')")

SYMBOLS = ["AAPL", "MSFT", "GOOGL"]
FAST = ["--preset", "small", "--epochs", "3", "--days", "400", "--batch-size", "64", "--seed", "7",
        "--quiet"]


@pytest.fixture(scope="module")
def cluster(float32_module, ray_cluster):   # float32 first: Ray's workers inherit the environment at its start
    return ray_cluster


@pytest.fixture(scope="module")
def reference(float32_module, tmp_path_factory):
    """The three symbols trained one at a time in this process (no Ray)."""
    root = tmp_path_factory.mktemp("alone")
    assert main(["train", "--symbols", ",".join(SYMBOLS), "--save-dir", str(root), *FAST]) == 0
    return ModelStore(root)


def assert_same_models(store: ModelStore, reference: ModelStore, symbols=SYMBOLS) -> None:
    assert store.symbols() == sorted(symbols)
    for symbol in symbols:
        (ma, meta_a), (mb, meta_b) = reference.load_model(symbol), store.load_model(symbol)
        for key, value in ma.state_dict().items():
            # one torch thread in a worker vs two here: float rounding of the reductions only
            torch.testing.assert_close(mb.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=f"{symbol} {key}")
        pa, pb = meta_a["performance_metrics"], meta_b["performance_metrics"]
        assert (pb["best_epoch"], pb["total_epochs"]) == (pa["best_epoch"], pa["total_epochs"])
        assert pb["best_val_crps"] == pytest.approx(pa["best_val_crps"], rel=1e-5)
        assert pb["validation"]["1d"]["rmse_log_return"] == pytest.approx(pa["validation"]["1d"]["rmse_log_return"],
                                                                          rel=1e-5)
        assert meta_b["data_hash"] == meta_a["data_hash"] and meta_b["seed"] == 7
        # the guide's layout, written by the driver: weights, metadata, metrics, plot, checkpoints, a version
        for path in (store.weights_path(symbol), store.metadata_path(symbol), store.metrics_path(symbol),
                     store.plot_path(symbol), store.best_checkpoint_path(symbol), store.state_path(symbol)):
            assert path.is_file() and path.stat().st_size > 0, path
        assert (store.root / "versions" / symbol).is_dir()
    assert not [p for p in store.root.rglob("*") if ".tmp-" in p.name or ".ray-store-probe" in p.name]


@needs_bokeh
def test_ray_trains_three_symbols_like_one_at_a_time(cluster, reference, tmp_path, capsys):
    code = main(["train", "--symbols", ",".join(SYMBOLS), "--ray", "--save-dir", str(tmp_path), *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    for symbol in SYMBOLS:
        assert f"[{symbol}] ✓ Training complete!" in out
    assert "3/3 symbols trained" in out
    assert_same_models(ModelStore(tmp_path), reference)


@needs_bokeh
def test_ray_stacked_groups_equal_one_at_a_time(cluster, reference, tmp_path, capsys):
    """--ray --stack: two tasks (one per CPU), each training its group of symbols as one stack."""
    code = main(["train", "--symbols", ",".join(SYMBOLS), "--ray", "--stack", "--save-dir", str(tmp_path), *FAST])
    assert code == 0, capsys.readouterr().out
    assert_same_models(ModelStore(tmp_path), reference)


@needs_bokeh
def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(cluster, reference, tmp_path, monkeypatch,
                                                                  capsys):
    """MSFT's worker exits (os._exit, a real process death) after saving epoch 2 on its first attempt; the
    driver resubmits MSFT, which resumes at epoch 3 and ends where an uninterrupted run ends."""
    marker = tmp_path / "died"
    monkeypatch.setenv("MAMBACAST_RAY_CRASH", f"MSFT:2:{marker}")
    store_dir = tmp_path / "store"
    code = main(["train", "--symbols", ",".join(SYMBOLS), "--ray", "--save-dir", str(store_dir),
                 *[a for a in FAST if a != "--quiet"]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert marker.exists(), "the worker was never killed"
    assert "[MSFT] its Ray worker died (WorkerCrashedError); retrying (attempt 2/3)" in out
    assert "[MSFT] resumed from epoch 2" in out
    assert "3/3 symbols trained" in out
    assert_same_models(ModelStore(store_dir), reference)


def test_ray_user_errors_are_one_line(cluster, tmp_path, capsys, monkeypatch):
    def run(*argv: str) -> str:
        assert main(["train", "--symbols", "AAPL", "--save-dir", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        # Ray itself may log to stderr (e.g. a raylet line about an earlier test's killed worker): count ours
        assert len([x for x in err.splitlines() if x.startswith("mambacast:")]) == 1, err
        assert "Traceback" not in err, err
        return err

    assert "--parallel" in run("--ray", "--parallel", "2")
    assert "--device" in run("--ray", "--device", "cuda")
    # a fresh driver: the module's cluster is set aside so that the address is really dialled
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in run("--ray", "127.0.0.1:1")
    assert "is not a cluster address" in run("--ray", "nowhere")
    monkeypatch.setitem(sys.modules, "ray", None)          # as if Ray were not installed
    assert "pip install 'mambacast[ray]'" in run("--ray")
