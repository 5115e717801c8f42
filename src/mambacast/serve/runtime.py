"""The service's moving parts without the HTTP layer: loaded models, hot version switches, batching, histories.

- `ModelHolder` owns the current `MambaPredictor` (the champion) and, when configured, the challenger's
  (`serve.challenger`). `reload()` builds new predictors beside them, loads every stored model into
  them, and only then swaps the references: a request keeps the predictors it started with (and the
  models they already hold), so a promote never fails or mixes a request in flight. A champion load
  that fails where the old predictor had succeeded (e.g. a model caught in the middle of its switch, or
  a damaged file) keeps the old predictors; the next poll retries. A challenger that does not load is
  reported in /v1/models and challenges nothing. The replaced predictors' threads stop after a grace
  period.
- `Batcher` queues forecast requests and hands everything queued meanwhile to one `predict_many`
  call per model (champion, challenger): requests for the same symbol share a forward pass, different
  symbols run in parallel. A
  forecast is a pure function of (model version, symbol, history, price, levels), so identical
  requests share one answer (an LRU of recent answers, keyed with the version generation).
- `HistoryCache` reads a symbol's prices from the configured source when a request brings none.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.sources import load_prices
from ..predict import MambaPredictor, PredictionResult
from ..store import GLOBAL_MODEL, ModelStore, StoreError
from .challenger import CHALLENGER, CHAMPION, ChallengerConfig

__all__ = ["ModelHolder", "Batcher", "HistoryCache", "LoadedInfo"]

log = logging.getLogger(__name__)

_HISTORY_DAYS = 2000     # closes kept per symbol from the source: GARCH-t's filter reads them all, the network 742


@dataclass(frozen=True)
class LoadedInfo:
    """What /v1/models reports for one stored model."""

    symbol: str
    version: str | None
    training_date: str | None = None
    data_hash: str | None = None
    best_val_crps: float | None = None
    error: str | None = None


class ModelHolder:
    """The current predictor over one model store, swapped whole when the store changes (see module docstring)."""

    def __init__(self, store_dir: str | Path, *, model: str = "auto", max_workers: int | None = None,
                 grace_s: float = 30.0, challenger: ChallengerConfig | None = None):
        self.store = ModelStore(store_dir)
        self._options: dict[str, Any] = {"model": model, "max_workers": max_workers}
        self.grace_s = grace_s
        self.challenger = challenger if challenger is not None and (challenger.versions or
                                                                    challenger.global_model) else None
        self.predictor: MambaPredictor | None = None
        self.models: dict[str, LoadedInfo] = {}
        self.challenger_predictor: MambaPredictor | None = None
        self.challenger_models: dict[str, LoadedInfo] = {}
        self.fingerprint: tuple = ()
        self.reloads = 0
        self._lock = threading.Lock()          # one reload at a time
        self._warned: tuple | None = None

    def current_fingerprint(self) -> tuple:
        """The stored models' metadata files (name, size, mtime): a train, promote or rollback changes it."""
        folder = self.store.root / "metadata"
        if not folder.is_dir():
            return ()
        out = []
        for p in sorted(folder.glob("*_metadata.json")):
            if p.name.startswith("."):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:       # replaced between glob and stat
                continue
            out.append((p.name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    @staticmethod
    def _load_all(predictor: MambaPredictor, store: ModelStore, symbols: list[str]) -> dict[str, LoadedInfo]:
        """Load the model answering each symbol now (not on the first request) and describe it."""
        infos = {}
        for symbol in symbols:
            try:
                version = predictor.model_version(symbol)
                meta = store.load_metadata(symbol)
                infos[symbol] = LoadedInfo(symbol, version, meta.get("training_date"), meta.get("data_hash"),
                                           meta.get("performance_metrics", {}).get("best_val_crps"))
            except (StoreError, ValueError) as exc:
                infos[symbol] = LoadedInfo(symbol, None, error=str(exc))
        return infos

    def _build(self) -> tuple[MambaPredictor, dict[str, LoadedInfo]]:
        predictor = MambaPredictor(self.store.symbols(), model_dir=self.store.root, **self._options)
        return predictor, self._load_all(predictor, self.store, self.store.symbols())

    def _build_challenger(self) -> tuple[MambaPredictor | None, dict[str, LoadedInfo]]:
        if self.challenger is None:
            return None, {}
        try:
            root, model = self.challenger.predictor_options(self.store)
        except (StoreError, OSError) as exc:        # e.g. a version folder deleted since start-up
            return None, {"challenger": LoadedInfo("challenger", None, error=str(exc))}
        store = ModelStore(root)
        symbols = [GLOBAL_MODEL] if model == "global" else list(self.challenger.versions)
        predictor = MambaPredictor(symbols, model_dir=root, model=model, max_workers=self._options["max_workers"])
        return predictor, self._load_all(predictor, store, symbols)

    def challenges(self, symbol: str) -> bool:
        """True when a loaded challenger forecasts `symbol` beside the champion."""
        if self.challenger is None or self.challenger_predictor is None or not self.challenger.applies(symbol):
            return False
        key = GLOBAL_MODEL if self.challenger.every_symbol else symbol
        info = self.challenger_models.get(key)
        return info is not None and info.version is not None

    def reload(self, force: bool = False) -> bool:
        """Load the store again if it changed (blocking); True when the serving predictor was replaced."""
        with self._lock:
            fingerprint = self.current_fingerprint()
            if not force and self.predictor is not None and fingerprint == self.fingerprint:
                return False
            predictor, infos = self._build()
            regressed = sorted(s for s, info in infos.items()
                               if info.error and s in self.models and not self.models[s].error)
            if regressed and self.predictor is not None:
                if self._warned != fingerprint:
                    log.warning("model store changed but %s did not load (%s); still serving the previous "
                                "versions, retrying", ", ".join(regressed), infos[regressed[0]].error)
                    self._warned = fingerprint
                predictor.close()
                return False
            challenger, challenger_infos = self._build_challenger()
            for info in challenger_infos.values():
                if info.error:
                    log.warning("the challenger %s did not load (%s); it challenges nothing", info.symbol, info.error)
            old = (self.predictor, self.challenger_predictor)
            self.predictor, self.models, self.fingerprint = predictor, infos, fingerprint
            self.challenger_predictor, self.challenger_models = challenger, challenger_infos
            self.reloads += 1
        if old[0] is not None:
            log.info("model store changed: now serving %s",
                     ", ".join(f"{s}={i.version}" for s, i in infos.items() if i.version))
        for stale in old:
            if stale is not None:   # requests that started on it may still be queued on its threads
                threading.Timer(self.grace_s, stale.close).start()
        return True

    @property
    def ready(self) -> bool:
        return self.predictor is not None and any(i.version for i in self.models.values())

    def close(self) -> None:
        for predictor in (self.predictor, self.challenger_predictor):
            if predictor is not None:
                predictor.close()
        if self.challenger is not None:
            self.challenger.close()


class Batcher:
    """Collects concurrent forecast requests and answers them with `predict_many` (see module docstring)."""

    def __init__(self, holder: ModelHolder, max_batch: int = 64, consumers: int = 2, cache_size: int = 1024):
        self.holder, self.max_batch, self.consumers, self.cache_size = holder, max_batch, consumers, cache_size
        self._answers: OrderedDict[tuple, asyncio.Future] = OrderedDict()   # LRU of answers (and ones underway)
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._consume(), name=f"mambacast-batcher-{i}")
                       for i in range(self.consumers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def forecast(self, symbol: str, history: Any, price: float, quantiles: Sequence[float],
                       history_key: Hashable | None = None, arm: str = CHAMPION) -> PredictionResult:
        """One request's PredictionResult from the `arm`'s model (CHAMPION, CHALLENGER); a bad request raises
        its ValueError.

        `history_key` identifies the history's content (e.g. a digest): requests with the same symbol,
        history, price and levels on the same model version then share one answer, computed once, also
        while it is being computed (a burst of identical requests costs one forecast).
        """
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        key = None if history_key is None else \
            (self.holder.reloads, arm, symbol, history_key, price, tuple(quantiles))
        if key is not None:
            shared = self._answers.get(key)
            if shared is not None:
                self._answers.move_to_end(key)
                return await asyncio.shield(shared)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((symbol, history, price, tuple(quantiles), future, arm))
        if key is not None:
            self._answers[key] = future
            if len(self._answers) > self.cache_size:
                self._answers.popitem(last=False)
            future.add_done_callback(lambda f: self._forget_failure(key, f))
        return await asyncio.shield(future)

    def _forget_failure(self, key: tuple, future: asyncio.Future) -> None:
        """Keep answers, not errors: a request that failed is tried afresh next time."""
        if future.cancelled() or future.exception() is not None:
            self._answers.pop(key, None)

    async def _consume(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            holder = self.holder                  # the whole batch runs on one generation of models
            predictors = {CHAMPION: holder.predictor, CHALLENGER: holder.challenger_predictor}
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault((item[5], item[3]), []).append(item)
            await asyncio.gather(*(self._run(predictors[arm], levels, items)
                                   for (arm, levels), items in groups.items()))

    @staticmethod
    async def _run(predictor: MambaPredictor | None, levels: tuple, items: list) -> None:
        try:
            if predictor is None:
                raise RuntimeError("no models loaded yet")
            results = await predictor.predict_many([item[:3] for item in items], levels,
                                                   return_exceptions=True)
        except Exception as exc:                # every waiting request learns why, none hangs
            results = [exc] * len(items)
        for item, result in zip(items, results, strict=True):
            future = item[4]
            if future.done():                   # its client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class HistoryCache:
    """A symbol's recent prices from the configured source, re-read after `ttl_s` seconds."""

    def __init__(self, store: ModelStore, source: str = "sample", data: str | None = None, ttl_s: float = 300.0):
        self.store, self.source, self.data, self.ttl_s = store, source, data, ttl_s
        self._frames: dict[str, tuple[float, pd.DataFrame]] = {}
        self._loading: dict[str, threading.Lock] = {}     # one read per symbol at a time (see `get`)
        self._lock = threading.Lock()

    def _needs_ohlcv(self, symbol: str) -> bool:
        try:
            fc = self.store.load_metadata(symbol).get("feature_config", {})
        except (StoreError, ValueError):
            return False
        return bool(fc.get("include_volume") or fc.get("include_range"))

    def cached(self, symbol: str) -> tuple[pd.DataFrame, float] | None:
        """The symbol's prices and when they were read, if read less than `ttl_s` ago (never blocks)."""
        with self._lock:
            hit = self._frames.get(symbol)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1], hit[0]
        return None

    def get(self, symbol: str) -> tuple[pd.DataFrame, float]:
        """The symbol's prices and when they were read (a key for their content); blocking on a miss.

        Raises ValueError / FileNotFoundError when the source has no such symbol.
        """
        hit = self.cached(symbol)
        if hit is not None:
            return hit
        # Requests that miss together wait for one read instead of each reading the source (32 clients on a
        # cold or expired cache were 32 parses of the same file, half a second of CPU under the GIL).
        with self._lock:
            loading = self._loading.setdefault(symbol, threading.Lock())
        with loading:
            hit = self.cached(symbol)
            if hit is not None:
                return hit
            now = time.monotonic()
            frame = load_prices(symbol, days=_HISTORY_DAYS, source=self.source, path=self.data,
                                with_volume=self._needs_ohlcv(symbol))
            with self._lock:
                self._frames[symbol] = (now, frame)
            return frame, now
