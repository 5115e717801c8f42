"""Champion / challenger: a second model forecasts every request in the shadow, and may serve a share of them.

The champion is what the store's current files hold (what `mambacast models promote` makes current). A
challenger is either

- stored versions of given symbols (`--challenger AAPL=v20261127T173456Z-07e07dab`, repeatable; also
  `_GLOBAL=VERSION` for a stored version of the global model, which then challenges every symbol), or
- the store's current global model (`--challenger-global`), challenging every symbol's own model.

For every request whose symbol has a challenger, both forecasts are computed (in the same batch, so the
answer waits for the slower one only) and both are logged under their own version and role; the
monitor scores them on the same requests. With `traffic` > 0, a share of the requests is *served* by the
challenger instead: the choice is a hash of the request id and `seed`, so it is deterministic per
request id (a client retrying with the same `X-Request-ID` gets the same model) and about `traffic` of
distinct ids. A challenger that cannot answer with its model (it would fall back to momentum, or
failed) never serves: the champion does, and the response says so (`role`).

Stored versions are immutable, so a version challenger is staged once into a private folder in the
guide's layout (weights and metadata only) that a `MambaPredictor` reads like any store.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store import GLOBAL_MODEL, ModelStore, StoreError
from ..versions import ModelVersions, version_id

__all__ = ["ChallengerConfig", "parse_challenger", "route", "CHAMPION", "CHALLENGER"]

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def parse_challenger(text: str) -> tuple[str, str]:
    """`SYMBOL=VERSION` -> (SYMBOL, VERSION); ValueError with one line for anything else."""
    symbol, sep, version = text.rpartition("=")    # a version has no '='; a Yahoo symbol may (EURUSD=X)
    if not sep or not symbol or not version:
        raise ValueError(f"--challenger {text!r} is invalid: use SYMBOL=VERSION, e.g. "
                         "AAPL=v20261127T173456Z-07e07dab (see: mambacast models list SYMBOL)")
    return symbol.upper() if symbol != GLOBAL_MODEL else symbol, version


def route(request_id: str, traffic: float, seed: int = 0) -> str:
    """CHALLENGER for about `traffic` of request ids (a hash of id and seed: the same id, the same answer)."""
    if traffic <= 0.0:
        return CHAMPION
    digest = hashlib.blake2b(f"{seed}:{request_id}".encode(), digest_size=8).digest()
    return CHALLENGER if int.from_bytes(digest, "big") / 2.0**64 < traffic else CHAMPION


@dataclass
class ChallengerConfig:
    """Which model challenges which symbols, and the share of traffic it serves (see the module docstring).

    `versions`: {symbol: stored version id} (a `_GLOBAL` entry challenges every symbol); `global_model`:
    the store's current global model challenges every symbol. `traffic` in [0, 1]: share served by the
    challenger; `seed`: varies which request ids it serves.
    """

    versions: dict[str, str] = field(default_factory=dict)
    global_model: bool = False
    traffic: float = 0.0
    seed: int = 0
    _staged: Path | None = field(default=None, repr=False)

    @property
    def every_symbol(self) -> bool:
        """True when the challenger is a global model (it answers every symbol)."""
        return self.global_model or GLOBAL_MODEL in self.versions

    def applies(self, symbol: str) -> bool:
        return self.every_symbol or symbol in self.versions

    def describe(self) -> str:
        """One line for logs and the CLI's banner."""
        what = "the current global model" if self.global_model else \
            ", ".join(f"{s}={v}" for s, v in self.versions.items())
        return f"{what}, serving {self.traffic:.0%} of requests (seed {self.seed})"

    def check(self, store: ModelStore, model: str = "auto") -> None:
        """Raise ValueError (one line) for a challenger that cannot be used with this store and `model` option."""
        if not isinstance(self.traffic, (int, float)) or not math.isfinite(self.traffic) \
                or not 0.0 <= self.traffic <= 1.0:
            raise ValueError(f"--challenger-traffic {self.traffic!r} is invalid: must be a fraction from 0 to 1")
        if not self.versions and not self.global_model:
            if self.traffic > 0:
                raise ValueError("--challenger-traffic needs a challenger: --challenger SYMBOL=VERSION or "
                                 "--challenger-global")
            return
        if self.global_model and self.versions:
            raise ValueError("--challenger-global and --challenger SYMBOL=VERSION cannot be combined: pick one "
                             "challenger")
        if GLOBAL_MODEL in self.versions and len(self.versions) > 1:
            raise ValueError(f"--challenger {GLOBAL_MODEL}=VERSION challenges every symbol: do not name other "
                             "symbols too")
        has_global = store.metadata_path(GLOBAL_MODEL).exists()
        champion_global = has_global and model != "symbol"
        if self.global_model:
            if not has_global:
                raise ValueError(f"--challenger-global: no global model in {store.root} (train one: "
                                 "mambacast train --global)")
            if champion_global:
                raise ValueError("--challenger-global: the champion already is the global model (--model "
                                 f"{model} with a global model in the store); serve with --model symbol")
            return
        versions = ModelVersions(store)
        for symbol, version in self.versions.items():
            try:
                versions.folder(symbol, version)
                current = version_id(store.load_metadata(symbol)) if store.metadata_path(symbol).exists() else None
            except StoreError as exc:
                raise ValueError(f"--challenger {symbol}={version}: {exc}") from None
            serving_global = champion_global and symbol != GLOBAL_MODEL
            if current == version and not serving_global:
                raise ValueError(f"--challenger {symbol}={version} is the current version, the champion itself; "
                                 f"name another (mambacast models list {symbol})")

    def predictor_options(self, store: ModelStore) -> tuple[Path, str]:
        """(model folder, `MambaPredictor` model option) of the challenger; stages version files once."""
        if self.global_model:
            return store.root, "global"
        if self._staged is None:
            staged = Path(tempfile.mkdtemp(prefix="mambacast-challenger-"))
            target = ModelStore(staged)
            versions = ModelVersions(store)
            for symbol, version in self.versions.items():
                folder = versions.folder(symbol, version)
                target.weights_path(symbol).parent.mkdir(parents=True, exist_ok=True)
                target.metadata_path(symbol).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / "weights.safetensors", target.weights_path(symbol))
                shutil.copyfile(folder / "metadata.json", target.metadata_path(symbol))
            self._staged = staged
            log.info("challenger staged in %s: %s", staged, self.describe())
        return self._staged, "global" if GLOBAL_MODEL in self.versions else "symbol"

    def close(self) -> None:
        """Remove the staged copies."""
        if self._staged is not None:
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the `--workers N` processes rebuild the config from them)."""
        return {"versions": dict(self.versions), "global_model": self.global_model, "traffic": self.traffic,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChallengerConfig:
        return cls(versions=dict(data.get("versions") or {}), global_model=bool(data.get("global_model")),
                   traffic=float(data.get("traffic") or 0.0), seed=int(data.get("seed") or 0))
