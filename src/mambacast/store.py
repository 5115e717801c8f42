"""The model store: every trained model with its metadata, metrics and checkpoints.

Layout under `root` (the guide's, with safetensors instead of Keras h5):

    weights/<SYMBOL>.safetensors            final (best) weights
    metadata/<SYMBOL>_metadata.json         config, scalers, data provenance, metrics summary
    metrics/<SYMBOL>_metrics.json           per-epoch history (MetricsTracker)
    metrics/<SYMBOL>_training.png           training curves (when matplotlib is installed)
    checkpoints/<SYMBOL>/best_model.safetensors   best weights so far
    checkpoints/<SYMBOL>/training_state.safetensors  resumable state (weights, optimiser, RNG, callbacks)

Every file is written atomically (temporary file in the same folder, fsync, `os.replace`), so a
crash leaves either the old file or the new one, never half of one. The metadata file is written
last and records the SHA-256 of the weights: a symbol is complete exactly when its metadata exists
and its weights match that hash. Loading never unpickles: weights are safetensors, the rest JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import MambaConfig
from .nn.mamba import MambaModel

__all__ = ["ModelStore", "StoreError", "FORMAT_VERSION", "GLOBAL_MODEL", "atomic_write_bytes", "atomic_write_json"]

log = logging.getLogger(__name__)

# Bump when the meaning of saved files changes; loading refuses another major version.
FORMAT_VERSION = 1
_TMP_MARK = ".tmp-"
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9^._=-]{1,32}$")
#: the store name of the global model (`mambacast train --global`); no ticker starts with "_".
GLOBAL_MODEL = "_GLOBAL"


class StoreError(ValueError):
    """A stored model is missing, corrupt, tampered with or incompatible; the message names the file."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}); the file is corrupt — retrain the symbol") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} must hold a JSON object")
    return data


def _load_tensors(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise StoreError(f"{path} does not match the SHA-256 recorded in its metadata: the file was truncated, "
                         "modified or belongs to another training run — retrain the symbol")
    try:
        return st_load(data), data
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise StoreError(f"{path} is not a readable safetensors file ({exc})") from None


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

    # ---- housekeeping ------------------------------------------------------------------------
    def clean_temporary_files(self, symbol: str | None = None) -> int:
        """Remove temporary files left by a killed writer; returns how many were removed."""
        if not self.root.exists():
            return 0
        if symbol is None:
            candidates = list(self.root.rglob(f".*{_TMP_MARK}*"))
        else:  # only this symbol's files: other symbols may be training in parallel right now
            candidates = [*self.root.glob(f"*/.{self._check_symbol(symbol)}[._]*{_TMP_MARK}*"),
                          *self.checkpoint_dir(symbol).glob(f".*{_TMP_MARK}*")]
        removed = 0
        for p in candidates:
            p.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d stale temporary file(s) under %s", removed, self.root)
        return removed

    def symbols(self) -> list[str]:
        """Symbols with a metadata file (complete models), sorted."""
        folder = self.root / "metadata"
        if not folder.is_dir():
            return []
        return sorted(p.name[: -len("_metadata.json")] for p in folder.glob("*_metadata.json")
                      if not p.name.startswith("."))

    def is_complete(self, symbol: str) -> bool:
        """True when the symbol's metadata exists and its weights match the recorded hash."""
        try:
            meta = _read_json(self.metadata_path(symbol))
            _load_tensors(self.weights_path(symbol), meta.get("weights_sha256"))
        except StoreError:
            return False
        return True

    # ---- checkpoints -------------------------------------------------------------------------
    def save_tensors(self, path: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any] | None = None) -> str:
        """Atomically write tensors (+ JSON-able `info` in the safetensors header); returns the SHA-256."""
        # Callback counters may hold +inf ("no best yet"); Python's JSON round-trips it.
        header = {"mambacast": json.dumps(info or {})}
        data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=header)
        atomic_write_bytes(path, data)
        return sha256_bytes(data)

    def load_tensors(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, data = _load_tensors(path)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        try:
            info = json.loads(header.get("mambacast", "{}"))
        except json.JSONDecodeError:
            raise StoreError(f"{path} has a corrupt mambacast header") from None
        return tensors, info

    # ---- final model -------------------------------------------------------------------------
    def save_model(self, symbol: str, model: MambaModel, metadata: dict[str, Any]) -> dict[str, Path]:
        """Write final weights then metadata (which records the weights' hash); returns the paths."""
        weights_sha = self.save_tensors(self.weights_path(symbol), model.state_dict())
        full = {**metadata, "format_version": FORMAT_VERSION, "weights_sha256": weights_sha,
                "weights_file": str(self.weights_path(symbol).relative_to(self.root))}
        atomic_write_json(self.metadata_path(symbol), full)
        return {"weights": self.weights_path(symbol), "metadata": self.metadata_path(symbol)}

    def load_metadata(self, symbol: str) -> dict[str, Any]:
        path = self.metadata_path(symbol)
        meta = _read_json(path)
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{path} has format_version {version!r}; this mambacast reads version "
                             f"{FORMAT_VERSION} — retrain the symbol with this version")
        for key in ("model_config", "n_features", "feature_names", "weights_sha256"):
            if key not in meta:
                raise StoreError(f"{path} lacks the field {key!r}; the metadata is incomplete — retrain the symbol")
        return meta

    def load_model(self, symbol: str, device: str | torch.device = "cpu") -> tuple[MambaModel, dict[str, Any]]:
        """Rebuild the model from metadata and load its verified weights; refuses any mismatch."""
        meta = self.load_metadata(symbol)
        meta_path, weights_path = self.metadata_path(symbol), self.weights_path(symbol)
        try:
            config = MambaConfig.from_dict(meta["model_config"])
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{meta_path}: model_config is invalid ({exc})") from None
        n_features = meta["n_features"]
        if not isinstance(meta["feature_names"], list) or len(meta["feature_names"]) != n_features:
            raise StoreError(f"{meta_path}: feature_names has {len(meta['feature_names'])} entries "
                             f"but n_features is {n_features}")
        tensors, _ = _load_tensors(weights_path, meta["weights_sha256"])
        model = MambaModel(config, n_features)
        check_state_dict(model, tensors, weights_path)
        model.load_state_dict(tensors)
        return model.to(device).eval(), meta


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
