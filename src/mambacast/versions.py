"""Model versions: an immutable copy of every trained model beside the guide's layout, promote and rollback.

The guide's files stay where they are and are what the predictor and the service read
(`weights/<SYMBOL>.safetensors`, `metadata/<SYMBOL>_metadata.json`). Beside them:

    versions/<SYMBOL>/<VERSION>/weights.safetensors    a copy of one training run's weights
    versions/<SYMBOL>/<VERSION>/metadata.json          its metadata (config, data hash, metrics, SHA-256s)
    versions/<SYMBOL>/<VERSION>/<SYMBOL>_metrics.json  the other artifacts its metadata records (history, plot)
    versions/<SYMBOL>/history.json                     the promotions, oldest first: [{"version", "at"}, ...]

`VERSION` is `v<training time, UTC>-<first 8 hex of the weights' SHA-256>`, so versions sort by time and
a retrained model never overwrites an older one. Training records its version (`record`); `promote`
makes a version's files current with the store's own journaled switch (`mambacast.commit`: readers see the
whole old model or the whole new one, also after a kill), and `rollback` promotes the version that was
current before the last promotion.
A running service notices the new metadata and switches (see `mambacast.serve.runtime.ModelHolder`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .commit import atomic_write_bytes, commit, discard, journal_path, stage
from .store import ModelStore, StoreError, atomic_write_json, sha256_bytes

__all__ = ["ModelVersions", "VersionInfo", "version_id"]

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^v\d{8}T\d{6}Z-[0-9a-f]{8}$")


def version_id(meta: dict[str, Any]) -> str:
    """`v<YYYYmmddTHHMMSSZ>-<sha8>` from a model's metadata (its training time and weights hash)."""
    when = datetime.fromisoformat(str(meta["training_date"])).astimezone(timezone.utc)
    return f"v{when:%Y%m%dT%H%M%SZ}-{str(meta['weights_sha256'])[:8]}"


@dataclass(frozen=True)
class VersionInfo:
    """One stored version of a symbol's model, as `mambacast models list` shows it."""

    version: str
    training_date: str
    data_hash: str | None
    best_val_crps: float | None
    current: bool
    config: dict[str, Any]


class ModelVersions:
    """The versions of the models in one `ModelStore` (see the module docstring)."""

    def __init__(self, store: ModelStore):
        self.store = store

    def _dir(self, symbol: str) -> Any:
        return self.store.root / "versions" / self.store._check_symbol(symbol)

    def _history(self, symbol: str) -> list[dict[str, str]]:
        path = self._dir(symbol) / "history.json"
        if not path.exists():
            return []
        try:
            return list(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise StoreError(f"{path} is corrupt ({exc})") from None

    def current(self, symbol: str) -> str | None:
        """The version the current (guide-layout) files hold; None when the symbol has no model."""
        try:
            return version_id(self.store.load_metadata(symbol))
        except StoreError:
            return None

    def folder(self, symbol: str, version: str) -> Path:
        """The folder of a complete stored version (read-only: unlike `list`, records nothing).

        Raises StoreError naming the versions that exist when `version` is not one of them.
        """
        folder = self._dir(symbol) / version
        if _VERSION_RE.match(version) and (folder / "metadata.json").exists():
            return folder
        root = self._dir(symbol)
        known = sorted(p.name for p in root.iterdir() if _VERSION_RE.match(p.name)
                       and (p / "metadata.json").exists()) if root.is_dir() else []
        raise StoreError(f"{symbol} has no version {version!r} in {root} (versions: {', '.join(known) or 'none'})")

    def record(self, symbol: str) -> str:
        """Copy the current model into its version folder (once: versions are immutable); returns its id."""
        meta = self.store.verify(symbol)           # every file matches the hashes in its metadata
        vid = version_id(meta)
        folder = self._dir(symbol) / vid
        if not (folder / "metadata.json").exists():
            atomic_write_bytes(folder / "weights.safetensors", self.store.weights_path(symbol).read_bytes())
            for rel in meta.get("artifacts") or {}:
                atomic_write_bytes(folder / Path(rel).name, (self.store.root / rel).read_bytes())
            atomic_write_json(folder / "metadata.json", meta)       # last: a version is complete when it exists
            log.info("%s: recorded version %s", symbol, vid)
        return vid

    def list(self, symbol: str) -> list[VersionInfo]:
        """Every complete version of the symbol, oldest first (the current model is recorded first if new)."""
        if self.store.metadata_path(symbol).exists():
            self.record(symbol)
        current = self.current(symbol)
        out = []
        root = self._dir(symbol)
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if not (_VERSION_RE.match(folder.name) and (folder / "metadata.json").exists()):
                continue
            meta = json.loads((folder / "metadata.json").read_text())
            out.append(VersionInfo(folder.name, meta["training_date"], meta.get("data_hash"),
                                   meta.get("performance_metrics", {}).get("best_val_crps"),
                                   folder.name == current, meta.get("model_config", {})))
        return out

    def promote(self, symbol: str, version: str) -> str:
        """Make `version` the symbol's current model; returns the version it replaced (None if none)."""
        folder = self._dir(symbol) / version
        if not _VERSION_RE.match(version) or not (folder / "metadata.json").exists():
            known = ", ".join(v.version for v in self.list(symbol)) or "none"
            raise StoreError(f"{symbol} has no version {version!r} in {self._dir(symbol)} (versions: {known})")
        previous = self.record(symbol) if self.store.metadata_path(symbol).exists() else None
        if previous == version:
            return previous
        meta = json.loads((folder / "metadata.json").read_text())
        files = [(self.store.weights_path(symbol), folder / "weights.safetensors", meta["weights_sha256"])]
        files += [(self.store.root / rel, folder / Path(rel).name, digest)
                  for rel, digest in (meta.get("artifacts") or {}).items()]
        staged = []
        try:
            for final, copy, digest in files:
                data = copy.read_bytes()
                if sha256_bytes(data) != digest:
                    raise StoreError(f"{copy} does not match the SHA-256 in {folder / 'metadata.json'}")
                staged.append(stage(final, data))
            staged.append(stage(self.store.metadata_path(symbol), (folder / "metadata.json").read_bytes()))
            commit(self.store.root, symbol, staged)   # the metadata last: it makes the version current
        except BaseException:
            if not journal_path(self.store.root, symbol).exists():   # before the commit point: nothing changed
                discard(staged)
            raise
        history = self._history(symbol)
        if not history and previous is not None:
            history.append({"version": previous, "at": ""})      # what was current before versions were used
        history.append({"version": version, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        atomic_write_json(self._dir(symbol) / "history.json", history)
        log.info("%s: promoted %s (was %s)", symbol, version, previous)
        return previous

    def rollback(self, symbol: str, version: str | None = None) -> str:
        """Promote `version`, or the version current before the latest promotion; returns the one now current."""
        if version is None:
            history = self._history(symbol)
            current = self.current(symbol)
            earlier = [h["version"] for h in history if h["version"] != current]
            if not earlier:
                raise StoreError(f"{symbol}: nothing to roll back to (no earlier promoted version; "
                                 "name one: mambacast models rollback SYMBOL VERSION)")
            version = earlier[-1]
        self.promote(symbol, version)
        return version
