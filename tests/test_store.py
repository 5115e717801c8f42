"""The model store: atomic files, verified loads, clear refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mambacast import MambaConfig, MambaModel
from mambacast.store import ModelStore, StoreError, atomic_write_bytes

CFG = MambaConfig(d_model=16, d_state=4, num_layers=1, prediction_horizons=[1, 5])


def saved_store(tmp_path, symbol="AAPL"):
    torch.manual_seed(0)
    model = MambaModel(CFG, n_features=3)
    store = ModelStore(tmp_path)
    store.save_model(symbol, model, {"model_config": CFG.to_dict(), "n_features": 3,
                                     "feature_names": ["a", "b", "c"], "symbol": symbol})
    return store, model


def test_round_trip_and_safetensors_alone(tmp_path):
    store, model = saved_store(tmp_path)
    loaded, meta = store.load_model("AAPL")
    x = torch.randn(2, 7, 3)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    plain = load_file(str(store.weights_path("AAPL")))   # no mambacast needed to read the weights
    assert set(plain) == set(model.state_dict())
    assert meta["format_version"] == 1 and len(meta["weights_sha256"]) == 64
    assert store.symbols() == ["AAPL"] and store.is_complete("AAPL")


def test_tampered_weights_are_refused(tmp_path):
    store, _ = saved_store(tmp_path)
    path = store.weights_path("AAPL")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"AAPL.safetensors does not match the SHA-256"):
        store.load_model("AAPL")
    assert not store.is_complete("AAPL")


def test_truncated_weights_are_refused(tmp_path):
    store, _ = saved_store(tmp_path)
    path = store.weights_path("AAPL")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StoreError, match="AAPL.safetensors"):
        store.load_model("AAPL")


def test_weights_that_do_not_fit_the_metadata_are_refused(tmp_path):
    store, _ = saved_store(tmp_path)
    meta_path = store.metadata_path("AAPL")
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["d_model"] = 32               # config no longer matches the weights
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"tensor 'embed.weight' has shape \(16, 3\) but the config"):
        store.load_model("AAPL")


def test_feature_count_mismatch_is_refused(tmp_path):
    store, _ = saved_store(tmp_path)
    meta_path = store.metadata_path("AAPL")
    meta = json.loads(meta_path.read_text())
    meta["feature_names"] = ["a", "b"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="feature_names has 2 entries but n_features is 3"):
        store.load_model("AAPL")


def test_other_format_version_is_refused(tmp_path):
    store, _ = saved_store(tmp_path)
    meta_path = store.metadata_path("AAPL")
    meta = json.loads(meta_path.read_text()) | {"format_version": 99}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format_version 99"):
        store.load_model("AAPL")


def test_corrupt_metadata_and_missing_model(tmp_path):
    store, _ = saved_store(tmp_path)
    store.metadata_path("AAPL").write_text("{not json")
    with pytest.raises(StoreError, match="AAPL_metadata.json is not valid JSON"):
        store.load_model("AAPL")
    with pytest.raises(StoreError, match="MSFT_metadata.json does not exist"):
        store.load_model("MSFT")


def test_bad_symbol_names_never_reach_the_file_system(tmp_path):
    with pytest.raises(ValueError, match="not a valid ticker"):
        ModelStore(tmp_path).weights_path("../../etc/passwd")


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    (tmp_path / ".x.bin.tmp-123").write_bytes(b"partial")   # what a killed writer leaves
    assert ModelStore(tmp_path).clean_temporary_files() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_cleaning_one_symbol_leaves_the_others(tmp_path):
    store = ModelStore(tmp_path)
    leftovers = [store.checkpoint_dir("AAPL") / ".best_model.safetensors.tmp-x",
                 store.weights_path("AAPL").with_name(".AAPL.safetensors.tmp-y"),
                 store.metrics_path("AAPL").with_name(".AAPL_metrics.json.tmp-z")]
    others = [store.weights_path("AAPLX").with_name(".AAPLX.safetensors.tmp-y"),
              store.checkpoint_dir("MSFT") / ".training_state.safetensors.tmp-q"]
    for p in leftovers + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    assert store.clean_temporary_files("AAPL") == 3
    assert all(p.exists() for p in others) and not any(p.exists() for p in leftovers)
