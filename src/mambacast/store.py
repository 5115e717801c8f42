"""The model store: every trained model with its metadata, metrics and checkpoints.

Layout under `root` (the guide's, with safetensors instead of Keras h5):

    weights/<SYMBOL>.safetensors            final (best) weights
    metadata/<SYMBOL>_metadata.json         config, scalers, calibration, data provenance, metrics summary
    metrics/<SYMBOL>_metrics.json           per-epoch history (MetricsTracker)
    metrics/<SYMBOL>_training.png           training curves (when matplotlib is installed)
    checkpoints/<SYMBOL>/best_model.safetensors      best weights so far (the run in progress)
    checkpoints/<SYMBOL>/training_state.safetensors  resumable state (weights, optimiser, RNG, callbacks)
    checkpoints/<SYMBOL>/metrics.json                per-epoch history of the run in progress

A model is replaced only by a complete, valid one: `save_model` checks every artifact (finite weights that
fit the configuration, metadata and metrics that are strict JSON, scalers and calibration that load) before
it touches anything, then makes weights, metrics, plot and metadata current as one switch (`commit`). A
failure at any point before the switch leaves the previous model byte-identical; a kill during the switch is
finished by the next reader or writer. The metadata is the manifest: it records the SHA-256 of the weights
and of the other artifacts, so a symbol is complete exactly when its metadata exists and its files match.

Loading never unpickles (safetensors + JSON) and checks identity, not only integrity: the metadata must
name the symbol asked for, describe the weights (config, feature count and names, scalers, calibration)
and be of a format this version reads; `load_model(..., horizons=...)` also checks the horizons a caller
needs. Checkpoint and training-state files carry their own SHA-256 in their header, so a damaged or edited
state is refused instead of resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from . import __version__
from .commit import (
    TMP_MARK,
    atomic_write_bytes,
    commit,
    discard,
    fault_point,
    journal_path,
    prove_writable,
    recover,
    stage,
)
from .config import MambaConfig
from .nn.mamba import MambaModel
from .tensorfile import content_digest, serialize, serialize_with_digest

__all__ = ["ModelStore", "StoreError", "ModelNotFoundError", "FORMAT_VERSION", "GLOBAL_MODEL",
           "atomic_write_bytes", "atomic_write_json", "check_state_dict", "strict_json"]

log = logging.getLogger(__name__)

# Bump when the meaning of saved files changes; loading refuses another major version.
FORMAT_VERSION = 1
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9^._=-]{1,32}$")
#: the store name of the global model (`mambacast train --global`); no ticker starts with "_".
GLOBAL_MODEL = "_GLOBAL"
_RETRAIN = "retrain the symbol"


class StoreError(ValueError):
    """A stored model is missing, corrupt, tampered with or incompatible; the message names the file."""


class ModelNotFoundError(StoreError):
    """No model is stored under that name (as opposed to one that exists but cannot be used)."""


def _non_finite_path(obj: Any, path: str = "") -> str | None:
    """Dotted path of the first NaN or infinite float in a JSON-like object (None if there is none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "(value)"
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _non_finite_path(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def strict_json(obj: Any, what: str) -> bytes:
    """`obj` as strict JSON (no NaN/Infinity); StoreError naming the offending field otherwise."""
    bad = _non_finite_path(obj)
    if bad is not None:
        raise StoreError(f"{what}: {bad} is not a finite number")
    try:
        return (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} cannot be written as JSON ({exc})") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, strict_json(obj, str(path)))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise StoreError(f"{path} is a folder, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}); the file is corrupt — {_RETRAIN}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} must hold a JSON object")
    return data


def _load_tensors(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise StoreError(f"{path} is a folder, not a file") from None
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise StoreError(f"{path} does not match the SHA-256 recorded in its metadata: the file was truncated, "
                         f"modified or belongs to another training run — {_RETRAIN}")
    try:
        return st_load(data), data
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise StoreError(f"{path} is not a readable safetensors file ({exc})") from None


# 64 characters, as a SHA-256 hex digest; quoted in the header, it cannot come from the JSON-escaped info text.
def _header(data: bytes, path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (already known to parse)."""
    length = int.from_bytes(data[:8], "little")
    try:
        return json.loads(data[8:8 + length])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StoreError(f"{path} has a corrupt safetensors header") from None


def _content_digest(data: bytes, header: dict[str, Any], info_text: str) -> str:
    """`tensorfile.content_digest` of a tensors file read back: the stored digest itself sits in the header's
    metadata, so it covers the header without the metadata."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    return content_digest(entries, memoryview(data)[8 + int.from_bytes(data[:8], "little"):], info_text)


def _model_from(meta: dict[str, Any], tensors: dict[str, torch.Tensor], meta_path: Path,
                weights_path: Path) -> MambaModel:
    try:
        config = MambaConfig.from_dict(meta["model_config"])
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{meta_path}: model_config is invalid ({exc})") from None
    n_features = meta["n_features"]
    if not isinstance(n_features, int) or n_features < 1:
        raise StoreError(f"{meta_path}: n_features {n_features!r} is not a positive integer")
    if not isinstance(meta["feature_names"], list) or len(meta["feature_names"]) != n_features:
        raise StoreError(f"{meta_path}: feature_names has {len(meta['feature_names'])} entries "
                         f"but n_features is {n_features}")
    model = MambaModel(config, n_features)
    check_state_dict(model, tensors, weights_path)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise StoreError(f"{weights_path}: tensor {bad[0]!r} holds NaN or infinite values — {_RETRAIN}")
    model.load_state_dict(tensors)
    return model


def _version_tuple(text: Any) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", str(text).split("+")[0])[:3]
    return tuple(int(p) for p in parts) if parts else None


class ModelStore:
    """Reads and writes the files of trained models under one root folder."""

    def __init__(self, root: str | os.PathLike[str] = "models/mamba"):
        self.root = Path(root)

    # ---- paths -------------------------------------------------------------------------------
    @staticmethod
    def _check_symbol(symbol: str) -> str:
        if not isinstance(symbol, str) or not _SYMBOL_RE.match(symbol):
            raise ValueError(f"symbol {symbol!r} is not a valid ticker for a file name "
                             "(letters, digits and ^ . _ = - only)")
        return symbol

    def weights_path(self, symbol: str) -> Path:
        return self.root / "weights" / f"{self._check_symbol(symbol)}.safetensors"

    def metadata_path(self, symbol: str) -> Path:
        return self.root / "metadata" / f"{self._check_symbol(symbol)}_metadata.json"

    def metrics_path(self, symbol: str) -> Path:
        return self.root / "metrics" / f"{self._check_symbol(symbol)}_metrics.json"

    def plot_path(self, symbol: str) -> Path:
        return self.root / "metrics" / f"{self._check_symbol(symbol)}_training.png"

    def checkpoint_dir(self, symbol: str) -> Path:
        return self.root / "checkpoints" / self._check_symbol(symbol)

    def best_checkpoint_path(self, symbol: str) -> Path:
        return self.checkpoint_dir(symbol) / "best_model.safetensors"

    def state_path(self, symbol: str) -> Path:
        return self.checkpoint_dir(symbol) / "training_state.safetensors"

    def run_metrics_path(self, symbol: str) -> Path:
        """Per-epoch metrics of the run in progress (published to `metrics_path` with the model)."""
        return self.checkpoint_dir(symbol) / "metrics.json"

    # ---- housekeeping ------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Create the store's folders and prove each can take a file; StoreError naming the path if not.

        Called before any training work, so a bad --save-dir costs nothing."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"--save-dir {self.root} is a file, not a folder; pass a folder for the model store")
        for folder in (self.root, *(self.root / name for name in ("weights", "metadata", "metrics", "checkpoints"))):
            try:
                if folder.exists() and not folder.is_dir():
                    raise StoreError(f"{folder} is a file, but the model store needs a folder there; move it away")
                folder.mkdir(parents=True, exist_ok=True)
                prove_writable(folder)
            except OSError as exc:
                raise StoreError(f"--save-dir {self.root} is not writable ({exc.strerror or exc} at {folder}); "
                                 "pass a folder you can write to") from None

    def clean_temporary_files(self, symbol: str | None = None) -> int:
        """Finish an interrupted model switch, then remove temporary files left by a killed writer; returns how
        many were removed."""
        if not self.root.exists():
            return 0
        if symbol is None:
            for journal in self.root.glob(".*.commit.json"):
                recover(self.root, journal.name[1:-len(".commit.json")])
            candidates = list(self.root.rglob(f".*{TMP_MARK}*"))
        else:  # only this symbol's files: other symbols may be training in parallel right now
            recover(self.root, self._check_symbol(symbol))
            candidates = [*self.root.glob(f"*/.{symbol}[._]*{TMP_MARK}*"),
                          *self.root.glob(f"..{symbol}.commit.json{TMP_MARK}*"),
                          *self.checkpoint_dir(symbol).glob(f".*{TMP_MARK}*"),
                          # a version copy (`mambacast.versions`) killed mid-write
                          *(self.root / "versions" / symbol).glob(f"*/.*{TMP_MARK}*")]
        removed = 0
        for p in candidates:
            p.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d stale temporary file(s) under %s", removed, self.root)
        return removed

    def _recover(self, symbol: str) -> None:
        """Readers finish a switch a killed writer left (best effort: a read-only store stays as it is)."""
        if journal_path(self.root, symbol).exists():
            try:
                recover(self.root, symbol)
            except OSError as exc:
                log.warning("%s: cannot finish the interrupted model switch in %s: %s", symbol, self.root, exc)

    def symbols(self) -> list[str]:
        """Symbols with a metadata file (complete models), sorted."""
        folder = self.root / "metadata"
        if not folder.is_dir():
            return []
        return sorted(p.name[: -len("_metadata.json")] for p in folder.glob("*_metadata.json")
                      if not p.name.startswith("."))

    def is_complete(self, symbol: str) -> bool:
        """True when the symbol's metadata exists, names it, and every file it records matches its hash."""
        try:
            self.verify(symbol)
        except StoreError:
            return False
        return True

    def verify(self, symbol: str) -> dict[str, Any]:
        """The symbol's metadata after checking that each artifact it records matches its SHA-256."""
        meta = self.load_metadata(symbol)
        _load_tensors(self.weights_path(symbol), meta["weights_sha256"])
        for rel, digest in (meta.get("artifacts") or {}).items():
            path = self.root / rel
            try:
                ok = sha256_bytes(path.read_bytes()) == digest
            except OSError:
                ok = False
            if not ok:
                raise StoreError(f"{path} is missing or does not match the SHA-256 in {self.metadata_path(symbol)}"
                                 f" — {_RETRAIN}")
        return meta

    # ---- checkpoints -------------------------------------------------------------------------
    def save_tensors(self, path: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any] | None = None) -> None:
        """Atomically write tensors (on any device) with JSON-able `info` in the safetensors header and a SHA-256
        of both (`tensorfile.serialize_with_digest`)."""
        # Callback counters may hold +inf ("no best yet"); Python's JSON round-trips it.
        atomic_write_bytes(path, serialize_with_digest(tensors, json.dumps(info or {})))

    def load_tensors(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and info of a `save_tensors` file; StoreError when it is unreadable or not what it says."""
        tensors, data = _load_tensors(path)
        meta = _header(data, path).get("__metadata__") or {}
        info_text, digest = meta.get("mambacast"), meta.get("sha256")
        if info_text is None or digest is None:
            raise StoreError(f"{path} has no integrity hash (not written by this mambacast, or edited)")
        if _content_digest(data, _header(data, path), info_text) != digest:
            raise StoreError(f"{path} does not match its own SHA-256: the file was modified or damaged")
        try:
            info = json.loads(info_text)
        except json.JSONDecodeError:
            raise StoreError(f"{path} has a corrupt mambacast header") from None
        return tensors, info

    # ---- final model -------------------------------------------------------------------------
    def save_model(self, symbol: str, model: MambaModel, metadata: dict[str, Any], *,
                   metrics: dict[str, Any] | None = None, plot_png: bytes | None = None) -> dict[str, Path]:
        """Validate the run's artifacts, then make them current as one switch; returns their paths.

        Raises StoreError (nothing changed) when an artifact is invalid: non-finite weights or numbers,
        metadata or metrics that are not strict JSON, weights that do not fit the metadata, scalers or
        calibration that would not load."""
        self._check_symbol(symbol)
        what = f"{symbol}: the new model was not saved ({self.root} is unchanged)"
        if metadata.get("symbol", symbol) != symbol:
            raise StoreError(f"{what}: its metadata names {metadata['symbol']!r}")
        weights = serialize(model.state_dict(), {"mambacast": json.dumps({"symbol": symbol})})
        paths = {"weights": self.weights_path(symbol)}
        files: list[tuple[Path, bytes]] = [(paths["weights"], weights)]
        if metrics is not None:
            paths["metrics"] = self.metrics_path(symbol)
            files.append((paths["metrics"], strict_json(metrics, f"{what}: metrics")))
        if plot_png is not None:
            paths["plot"] = self.plot_path(symbol)
            files.append((paths["plot"], plot_png))
        full = {**metadata, "symbol": symbol, "format_version": FORMAT_VERSION,
                "mambacast_version": metadata.get("mambacast_version", __version__),
                "weights_sha256": sha256_bytes(weights),
                "weights_file": str(paths["weights"].relative_to(self.root)),
                "artifacts": {str(p.relative_to(self.root)): sha256_bytes(b) for p, b in files[1:]}}
        paths["metadata"] = self.metadata_path(symbol)
        meta_bytes = strict_json(full, f"{what}: metadata")
        try:
            self._validate(symbol, json.loads(meta_bytes), st_load(weights), paths["metadata"], paths["weights"])
        except StoreError as exc:
            raise StoreError(f"{what}: {exc}") from None
        files.append((paths["metadata"], meta_bytes))   # last: the metadata makes the model visible
        self.clean_temporary_files(symbol)
        staged = []
        try:
            for i, (path, data) in enumerate(files):
                staged.append(stage(path, data))
                if i == 0:
                    fault_point("commit.staging")
            commit(self.root, symbol, staged)
        except BaseException:
            if not journal_path(self.root, symbol).exists():   # before the commit point: roll back
                discard(staged)
            raise
        return paths

    def load_metadata(self, symbol: str) -> dict[str, Any]:
        """The symbol's metadata, checked for format, required fields and identity (it must name `symbol`)."""
        self._recover(symbol)
        path = self.metadata_path(symbol)
        meta = _read_json(path)
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{path} has format_version {version!r}; this mambacast reads version "
                             f"{FORMAT_VERSION} — {_RETRAIN} with this version")
        for key in ("symbol", "model_config", "n_features", "feature_names", "weights_sha256"):
            if key not in meta:
                raise StoreError(f"{path} lacks the field {key!r}; the metadata is incomplete — {_RETRAIN}")
        if meta["symbol"] != symbol:
            raise StoreError(f"{path} is the model of {meta['symbol']!r}, not {symbol!r} (a copied or renamed "
                             f"file) — {_RETRAIN}")
        expected = str(self.weights_path(symbol).relative_to(self.root))
        if meta.get("weights_file", expected) != expected:
            raise StoreError(f"{path} describes the weights {meta['weights_file']!r}, not {expected!r} — {_RETRAIN}")
        written, ours = _version_tuple(meta.get("mambacast_version")), _version_tuple(__version__)
        if written is not None and ours is not None and ours != (0, 0, 0) and written[:2] > ours[:2]:
            raise StoreError(f"{path} was written by mambacast {meta['mambacast_version']}, newer than this "
                             f"{__version__}; upgrade mambacast to use it")
        return meta

    def load_model(self, symbol: str, device: str | torch.device = "cpu", *,
                   horizons: Sequence[int] | None = None) -> tuple[MambaModel, dict[str, Any]]:
        """Rebuild the model from metadata and load its verified weights; refuses any mismatch.

        horizons: the forecast horizons the caller needs (e.g. a predictor's config); a model that forecasts
        other horizons is refused."""
        meta = self.load_metadata(symbol)
        meta_path, weights_path = self.metadata_path(symbol), self.weights_path(symbol)
        tensors, data = _load_tensors(weights_path, meta["weights_sha256"])
        model = self._validate(symbol, meta, tensors, meta_path, weights_path)
        owner = json.loads(_header(data, weights_path).get("__metadata__", {}).get("mambacast", "{}")).get("symbol")
        if owner is not None and owner != symbol:
            raise StoreError(f"{weights_path} holds the weights of {owner!r}, not {symbol!r} — {_RETRAIN}")
        if horizons is not None and list(model.horizons) != [int(h) for h in horizons]:
            raise StoreError(f"{meta_path}: the model forecasts horizons {list(model.horizons)}, not the "
                             f"{[int(h) for h in horizons]} asked for — {_RETRAIN} with those horizons")
        return model.to(device).eval(), meta

    def _validate(self, symbol: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor], meta_path: Path,
                  weights_path: Path) -> MambaModel:
        """The model `meta` describes, with `tensors` loaded, after checking that everything a predictor reads
        from the metadata (features, scalers, calibration, the GARCH-t / HAR-t blend, windows) is present, consistent
        and finite."""
        from .blend import Blend
        from .data.errors import DataError
        from .data.features import TimeSeriesFeatureEngineer
        from .data.sequences import FeatureScaler, TargetScaler

        for key in ("model_config", "n_features", "feature_names"):
            if key not in meta:
                raise StoreError(f"{meta_path} lacks the field {key!r} — {_RETRAIN}")
        model = _model_from(meta, tensors, meta_path, weights_path)
        horizons = list(model.horizons)
        try:
            fc = meta["feature_config"]
            engineer = TimeSeriesFeatureEngineer(windows=fc["windows"], include_volume=bool(fc["include_volume"]),
                                                 include_range=bool(fc.get("include_range", False)))
            if engineer.feature_names_ != meta["feature_names"]:
                raise StoreError(f"its feature_names differ from the features this mambacast computes for its "
                                 f"feature_config ({engineer.feature_names_[:3]}...)")
            if not isinstance(fc["warmup"], int) or fc["warmup"] < 0:
                raise StoreError(f"feature_config.warmup {fc['warmup']!r} is not a non-negative integer")
            if not isinstance(meta["sequence_length"], int) or meta["sequence_length"] < 1:
                raise StoreError(f"sequence_length {meta['sequence_length']!r} is not a positive integer")
            fs = FeatureScaler.from_dict(meta["feature_scaler"])
            ts = TargetScaler.from_dict(meta["target_scaler"])
            if fs.mean_.size != model.n_features or not (np.isfinite(fs.mean_).all() and np.isfinite(fs.scale_).all()):
                raise StoreError(f"feature_scaler does not hold {model.n_features} finite means and scales")
            if ts.horizons_ != horizons or not (np.isfinite(ts.mean_).all() and np.isfinite(ts.scale_).all()):
                raise StoreError(f"target_scaler does not hold finite statistics of the horizons {horizons}")
            Blend.from_metadata(meta)
            factor = (meta.get("calibration") or {}).get("scale_factor", [1.0] * len(horizons))
            factor = np.asarray(factor, dtype=np.float64)
            if factor.shape != (len(horizons),) or not (np.isfinite(factor).all() and (factor > 0).all()):
                raise StoreError(f"calibration.scale_factor is not {len(horizons)} positive finite numbers")
        except StoreError as exc:
            raise StoreError(f"{meta_path}: {exc} — {_RETRAIN}") from None
        except KeyError as exc:
            raise StoreError(f"{meta_path} lacks the field {exc} — {_RETRAIN}") from None
        except (TypeError, ValueError, DataError) as exc:
            raise StoreError(f"{meta_path}: {exc} — {_RETRAIN}") from None
        return model


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raise StoreError naming the first missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise StoreError(f"{path} does not fit the model described by its metadata: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise StoreError(f"{path}: tensor {key!r} has shape {tuple(tensors[key].shape)} but the config in "
                             f"its metadata needs {tuple(ref.shape)}")
