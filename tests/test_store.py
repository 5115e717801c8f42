"""The model store: atomic files, verified loads, clear refusals."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mambacast import MambaConfig, MambaModel
from mambacast.data.features import TimeSeriesFeatureEngineer
from mambacast.store import ModelStore, StoreError, atomic_write_bytes

CFG = MambaConfig(d_model=16, d_state=4, num_layers=1, prediction_horizons=[1, 5])


ENGINEER = TimeSeriesFeatureEngineer()
N_FEATURES = ENGINEER.n_features


def complete_metadata(symbol, cfg=CFG):
    """Everything a predictor reads from the metadata, consistent with `cfg` and the default features."""
    n = len(cfg.prediction_horizons)
    return {"symbol": symbol, "model_config": cfg.to_dict(), "n_features": N_FEATURES,
            "feature_names": list(ENGINEER.feature_names_),
            "feature_config": {"windows": list(ENGINEER.windows), "include_volume": False, "warmup": 60},
            "sequence_length": 20, "calibration": {"scale_factor": [1.0] * n},
            "feature_scaler": {"mean": [0.0] * N_FEATURES, "scale": [1.0] * N_FEATURES},
            "target_scaler": {"horizons": list(cfg.prediction_horizons), "mean": [0.0] * n, "scale": [0.01] * n}}


def saved_store(tmp_path, symbol="AAPL"):
    torch.manual_seed(0)
    model = MambaModel(CFG, n_features=N_FEATURES)
    store = ModelStore(tmp_path)
    store.save_model(symbol, model, complete_metadata(symbol))
    return store, model


def test_round_trip_and_safetensors_alone(tmp_path):
    store, model = saved_store(tmp_path)
    loaded, meta = store.load_model("AAPL")
    x = torch.randn(2, 7, N_FEATURES)
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
    with pytest.raises(StoreError, match=r"tensor 'embed.weight' has shape \(16, 31\) but the config"):
        store.load_model("AAPL")


def test_feature_count_mismatch_is_refused(tmp_path):
    store, _ = saved_store(tmp_path)
    meta_path = store.metadata_path("AAPL")
    meta = json.loads(meta_path.read_text())
    meta["feature_names"] = ["a", "b"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="feature_names has 2 entries but n_features is 31"):
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
                 store.metrics_path("AAPL").with_name(".AAPL_metrics.json.tmp-z"),
                 tmp_path / "versions" / "AAPL" / "v1-abc" / ".weights.safetensors.tmp-v"]   # a killed version copy
    others = [store.weights_path("AAPLX").with_name(".AAPLX.safetensors.tmp-y"),
              store.checkpoint_dir("MSFT") / ".training_state.safetensors.tmp-q",
              tmp_path / "versions" / "AAPLX" / "v1-abc" / ".weights.safetensors.tmp-v"]
    for p in leftovers + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    assert store.clean_temporary_files("AAPL") == 4
    assert all(p.exists() for p in others) and not any(p.exists() for p in leftovers)


# ---- a model is replaced only by a complete, valid model (issue 14, finding 1) ----------------------------
def model_files(store, symbol="AAPL"):
    """sha256 of every file of the symbol's model (what `predict` reads and a user looks at)."""
    import hashlib

    paths = [store.weights_path(symbol), store.metadata_path(symbol), store.metrics_path(symbol),
             store.plot_path(symbol)]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def save_full(store, symbol="AAPL", seed=0, **changes):
    torch.manual_seed(seed)
    model = MambaModel(CFG, n_features=N_FEATURES)
    metadata = {**complete_metadata(symbol), **changes}
    return store.save_model(symbol, model, metadata, metrics={"history": [{"epoch": 1, "val_loss": 0.5}]},
                            plot_png=b"\x89PNG fake"), model


@pytest.mark.parametrize("change, match", [
    ({"data_stats": {"avg_return": float("nan")}}, r"data_stats.avg_return is not a finite number"),
    ({"calibration": {"scale_factor": [1.0, float("inf")]}}, r"calibration.scale_factor.1 is not a finite"),
    ({"calibration": {"scale_factor": [1.0, -2.0]}}, r"scale_factor is not 2 positive finite numbers"),
    ({"target_scaler": {"horizons": [1, 5], "mean": [0.0, 0.0], "scale": [0.0, 1.0]}}, r"bad TargetScaler data"),
    ({"target_scaler": {"horizons": [1, 10], "mean": [0.0, 0.0], "scale": [1.0, 1.0]}}, r"target_scaler does not"),
    ({"feature_config": {"windows": [5], "include_volume": False, "warmup": 60}}, r"feature_names differ"),
    ({"sequence_length": 0}, r"sequence_length 0 is not a positive integer"),
    ({"feature_names": ["x"] * N_FEATURES}, r"feature_names differ"),
    ({"n_features": 7}, r"feature_names has 31 entries but n_features is 7"),
    ({"model_config": {**CFG.to_dict(), "d_model": 8}}, r"embed.weight"),
    ({"note": object()}, r"cannot be written as JSON"),
])
def test_an_invalid_new_model_leaves_the_previous_one_byte_identical(tmp_path, change, match):
    store = ModelStore(tmp_path)
    save_full(store)
    before = model_files(store)
    with pytest.raises(StoreError, match=match) as info:
        save_full(store, seed=1, **change)
    assert "the new model was not saved" in str(info.value) and "\n" not in str(info.value)
    assert model_files(store) == before
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name.endswith(".commit.json")]


def test_non_finite_weights_are_never_stored(tmp_path):
    store = ModelStore(tmp_path)
    save_full(store)
    before = model_files(store)
    torch.manual_seed(1)
    model = MambaModel(CFG, n_features=N_FEATURES)
    with torch.no_grad():
        model.embed.weight[0, 0] = float("nan")
    with pytest.raises(StoreError, match="embed.weight' holds NaN"):
        store.save_model("AAPL", model, complete_metadata("AAPL"))
    assert model_files(store) == before


def test_metrics_that_are_not_json_leave_the_previous_model(tmp_path):
    store = ModelStore(tmp_path)
    save_full(store)
    before = model_files(store)
    torch.manual_seed(1)
    with pytest.raises(StoreError, match=r"metrics: history.0.val_loss is not a finite number"):
        store.save_model("AAPL", MambaModel(CFG, N_FEATURES), complete_metadata("AAPL"),
                         metrics={"history": [{"val_loss": float("nan")}]})
    assert model_files(store) == before


def test_the_metadata_is_a_manifest_of_every_artifact(tmp_path):
    store = ModelStore(tmp_path)
    save_full(store)
    meta = store.verify("AAPL")
    assert set(meta["artifacts"]) == {"metrics/AAPL_metrics.json", "metrics/AAPL_training.png"}
    store.plot_path("AAPL").write_bytes(b"another picture")
    assert not store.is_complete("AAPL")
    with pytest.raises(StoreError, match="AAPL_training.png is missing or does not match"):
        store.verify("AAPL")


@pytest.mark.parametrize("fault", ["commit.staging:raise", "commit.switching:raise"])
def test_an_io_error_during_the_final_write(tmp_path, monkeypatch, fault):
    """Before the commit point the old model stays; after it, the next reader finishes the switch."""
    store = ModelStore(tmp_path)
    _, old = save_full(store)
    before = model_files(store)
    monkeypatch.setenv("MAMBACAST_FAULT", fault)
    with pytest.raises(OSError, match="injected fault"):
        _, new = save_full(store, seed=1)
    monkeypatch.delenv("MAMBACAST_FAULT")
    loaded, _ = store.load_model("AAPL")
    x = torch.randn(2, 7, N_FEATURES)
    if fault.startswith("commit.staging"):
        assert model_files(store) == before
        torch.testing.assert_close(loaded(x), old.eval()(x))
    else:
        assert model_files(store) != before and store.is_complete("AAPL")
        torch.manual_seed(1)
        torch.testing.assert_close(loaded(x), MambaModel(CFG, N_FEATURES).eval()(x))
    store.clean_temporary_files()
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name.endswith(".commit.json")]


# ---- loads check identity (finding 2) -----------------------------------------------------------------
def test_another_symbols_model_under_this_name_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    save_full(store, "MSFT")
    for kind in ("weights", "metadata"):   # the user: copy MSFT's files to AAPL's names
        src = getattr(store, f"{kind}_path")("MSFT")
        getattr(store, f"{kind}_path")("AAPL").write_bytes(src.read_bytes())
    with pytest.raises(StoreError, match=r"AAPL_metadata.json is the model of 'MSFT', not 'AAPL'"):
        store.load_model("AAPL")
    assert not store.is_complete("AAPL")
    # ... and with the metadata's symbol edited too, the weights still say whose they are
    meta = json.loads(store.metadata_path("AAPL").read_text()) | {"symbol": "AAPL",
                                                                  "weights_file": "weights/AAPL.safetensors"}
    store.metadata_path("AAPL").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"holds the weights of 'MSFT', not 'AAPL'"):
        store.load_model("AAPL")


def test_horizons_other_than_asked_for_are_refused(tmp_path):
    store, _ = saved_store(tmp_path)
    assert store.load_model("AAPL", horizons=[1, 5])[0].horizons == [1, 5]
    with pytest.raises(StoreError, match=r"forecasts horizons \[1, 5\], not the \[1, 5, 10, 30\] asked for"):
        store.load_model("AAPL", horizons=[1, 5, 10, 30])


def test_a_model_from_a_newer_mambacast_is_refused(tmp_path, monkeypatch):
    # a source checkout run with PYTHONPATH=src knows no version (0.0.0+unknown) and checks nothing: pin one
    monkeypatch.setattr("mambacast.store.__version__", "0.1.0")
    store, _ = saved_store(tmp_path)
    meta = json.loads(store.metadata_path("AAPL").read_text()) | {"mambacast_version": "99.0.0"}
    store.metadata_path("AAPL").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="written by mambacast 99.0.0, newer than this"):
        store.load_model("AAPL")


def test_missing_model_is_not_found_and_a_damaged_one_is_not(tmp_path):
    from mambacast.store import ModelNotFoundError

    store, _ = saved_store(tmp_path)
    with pytest.raises(ModelNotFoundError):
        store.load_model("MSFT")
    store.weights_path("AAPL").unlink()
    with pytest.raises(StoreError) as info:
        store.load_model("AAPL")
    assert not isinstance(info.value, ModelNotFoundError)


# ---- tensor files carry their own hash (finding 6) -----------------------------------------------------
def test_a_zeroed_training_state_is_refused(tmp_path):
    from safetensors.torch import save as st_save

    store = ModelStore(tmp_path)
    path = store.state_path("AAPL")
    store.save_tensors(path, {"w": torch.randn(3, 4), "step": torch.tensor(5)}, {"epoch": 2})
    tensors, info = store.load_tensors(path)
    assert info == {"epoch": 2} and tensors["step"].item() == 5
    header_meta = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"]
    path.write_bytes(st_save({k: torch.zeros_like(v) for k, v in tensors.items()}, metadata=header_meta))
    with pytest.raises(StoreError, match="does not match its own SHA-256"):
        store.load_tensors(path)
    path.write_bytes(st_save(tensors, metadata={"mambacast": json.dumps({"epoch": 9})}))   # no hash at all
    with pytest.raises(StoreError, match="has no integrity hash"):
        store.load_tensors(path)
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(StoreError, match="not a readable safetensors file"):
        store.load_tensors(path)


# ---- paths checked before any work (finding 3) --------------------------------------------------------
def test_a_store_that_cannot_be_written_is_refused_up_front(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        ModelStore(afile).ensure_writable()
    with pytest.raises(StoreError, match="is not writable"):
        ModelStore(afile / "sub").ensure_writable()
    with pytest.raises(StoreError, match="is not writable"):
        ModelStore("/sys/mambacast-store").ensure_writable()      # read-only for every user, root included
    (tmp_path / "s" / "metadata").parent.mkdir()
    (tmp_path / "s" / "metadata").write_text("x")
    with pytest.raises(StoreError, match="metadata is a file"):
        ModelStore(tmp_path / "s").ensure_writable()
    ModelStore(tmp_path / "ok").ensure_writable()
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["checkpoints", "metadata", "metrics", "weights"]
    assert not [p for p in (tmp_path / "ok").rglob("*") if p.is_file()], "the write probe left a file"


def test_the_write_probe_is_unnamed_and_refuses_a_read_only_folder(tmp_path, monkeypatch):
    """A run killed while probing must leave no file (the SIGKILL test once found one): the probe is an unnamed
    file (O_TMPFILE), never a name in the folder."""
    import os
    import tempfile

    from mambacast.commit import prove_writable

    named = []
    real = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: named.append(k) or real(*a, **k))
    prove_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
    if hasattr(os, "O_TMPFILE"):
        assert not named, "the probe created a named file"
    with pytest.raises(OSError):
        prove_writable(Path("/sys/kernel"))      # sysfs: no new files, root included


def test_a_store_given_a_relative_folder_saves_and_loads(tmp_path, monkeypatch):
    """The CLI's default store is the relative models/mamba: staged files (which tempfile names absolutely) must
    still switch into it (`make train` failed on every symbol with "is not in the subpath of 'models/mamba'")."""
    monkeypatch.chdir(tmp_path)
    store, model = saved_store(Path("models/mamba"))
    assert not store.root.is_absolute()
    loaded, meta = store.load_model("AAPL")
    torch.testing.assert_close(loaded(torch.ones(1, 5, N_FEATURES)), model.eval()(torch.ones(1, 5, N_FEATURES)))
    assert meta["weights_file"] == "weights/AAPL.safetensors"
    assert not list((tmp_path / "models/mamba").glob(".*commit.json"))    # the switch finished
    store.save_model("AAPL", model, complete_metadata("AAPL"))            # and a second one over it
    assert store.is_complete("AAPL")
