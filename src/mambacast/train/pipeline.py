"""From a symbol to a stored model: load prices, check them, build windows, train, save.

`train_symbol` is the synchronous unit of work (one symbol, one process); `train_single_symbol`
is the guide's async API around it; `train_symbols` trains many: one after another, in
`parallel` worker processes with the CPU threads divided between them, or `stack`ed (every
symbol's own model trained in one batched computation, `train.stacked`; on a GPU with the fits and plots in
worker processes, `train.side_work`). What a run produces and how it is stored: `train.artifacts`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from ..config import MambaConfig, TrainConfig
from ..data.augment import DataAugmentor
from ..data.errors import DataError
from ..data.sources import as_price_frame, load_prices
from ..nn.mamba import MambaModel
from ..plots import render_curves
from ..store import ModelStore, StoreError
from .artifacts import (
    ModelArtifacts,
    ProgressFn,
    TrainingRun,
    blend_args,
    model_artifacts,
    result_from_metadata,
    store_artifacts,
)
from .callbacks import Callback, MetricsTracker, TrainingCallbacks, TrainingStateCheckpoint
from .distribution import calibrate_distribution, configure_baseline, fit_baseline_tail
from .prepare import DEFAULT_WINDOWS, PreparedData, prepare_data
from .side_work import SideWork, side_workers
from .stacked import StackedTrainer
from .trainer import NonFiniteLossError, Trainer, resolve_device

__all__ = ["PreparedData", "prepare_data", "configure_baseline", "fit_baseline_tail", "calibrate_distribution",
           "train_symbol", "train_single_symbol", "train_symbols", "DEFAULT_WINDOWS", "ProgressFn", "render_curves",
           "ModelArtifacts", "model_artifacts", "store_artifacts"]

log = logging.getLogger(__name__)



class _ProgressCallback(Callback):
    def __init__(self, symbol: str, epochs: int, progress: ProgressFn | None):
        self.symbol, self.epochs, self.progress = symbol, epochs, progress

    def on_batch_end(self, trainer: Trainer, batch: int, n_batches: int, loss: float) -> None:
        if self.progress:
            self.progress("batch", self.symbol, {"batch": batch, "n_batches": n_batches, "loss": loss})

    def on_baseline(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.progress:
            self.progress("baseline", self.symbol, dict(logs))

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.progress:
            self.progress("epoch", self.symbol, {"epoch": epoch, "epochs": self.epochs, **logs})




def train_symbol(symbol: str, *, model_config: MambaConfig | None = None, train_config: TrainConfig | None = None,
                 days: int | None = 2000, source: str = "sample", data_path: str | Path | None = None,
                 prices: Any = None, save_dir: str | Path = "models/mamba", resume: bool = False,
                 device: str | None = None, include_volume: bool = False, include_range: bool = False,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train one symbol end to end and store it; returns the result summary.

    Raises DataError for bad or missing data and NonFiniteLossError when training diverges.
    With `resume`, a complete stored model is returned as is, and an interrupted run continues
    from its last epoch if the data and configuration are unchanged.
    """
    run = _prepare_run(symbol, model_config=model_config, train_config=train_config, days=days, source=source,
                       data_path=data_path, prices=prices, save_dir=save_dir, resume=resume, device=device,
                       include_volume=include_volume, include_range=include_range, progress=progress)
    if isinstance(run, dict):
        return run
    run.trainer.fit(*run.fit_data, resume_from=run.resume_from)
    return _finish_run(run)




def _prepare_run(symbol: str, *, model_config: MambaConfig | None = None, train_config: TrainConfig | None = None,
                 days: int | None = 2000, source: str = "sample", data_path: str | Path | None = None,
                 prices: Any = None, save_dir: str | Path = "models/mamba", resume: bool = False,
                 device: str | None = None, include_volume: bool = False, include_range: bool = False,
                 progress: ProgressFn | None = None, continue_run: bool = False) -> TrainingRun | dict[str, Any]:
    """Load, check and window the data and build the model and its Trainer; a complete stored model
    under `resume` returns its result (status "skipped") instead.

    continue_run: continue the symbol's saved training state when it matches (as `resume` does) without
    skipping a complete stored model: a retried distributed task picks up its own interrupted run."""
    model_config = model_config or MambaConfig()
    train_config = train_config or TrainConfig()
    store = ModelStore(save_dir)
    store.ensure_writable()
    store.clean_temporary_files(symbol)
    emit = progress or (lambda event, sym, data: None)
    emit("start", symbol, {})
    t0 = time.perf_counter()
    if resume and store.is_complete(symbol):
        meta = store.load_metadata(symbol)
        log.info("%s: a complete model exists in %s; skipping", symbol, store.root)
        return {**result_from_metadata(symbol, meta, store), "status": "skipped"}

    # The sample files with volume are the ones with highs and lows too (OHLCV).
    ohlc = include_volume or (include_range and source == "sample")
    frame = load_prices(symbol, days=days, source=source, path=data_path, with_volume=ohlc) \
        if prices is None else as_price_frame(prices)
    emit("loaded", symbol, {"days": len(frame)})
    data = prepare_data(symbol, frame, model_config, train_config, include_volume=include_volume,
                        include_range=include_range)
    emit("samples", symbol, {"samples": len(data.X), "train": len(data.train_idx), "val": len(data.val_idx)})

    torch.manual_seed(train_config.seed)
    model = MambaModel(model_config, len(data.feature_names))
    n_params = model.count_parameters()
    X_train, y_train = data.X[data.train_idx], data.y_scaled[data.train_idx]
    if train_config.augmentation_rate > 0:
        augmentor = DataAugmentor(train_config.augmentation_rate, seed=train_config.seed)
        X_train, y_aug = augmentor.augment(X_train, {0: y_train})
        y_train = y_aug[0]

    configure_baseline(model, data.feature_names, data.feature_scaler, data.target_scaler)
    fit_baseline_tail(model, X_train, y_train)
    trainer, tracker, resume_from = stored_trainer(model, model_config, train_config, store, symbol,
                                                   data.data_hash, len(data.feature_names), device,
                                                   resume or continue_run, progress)
    return TrainingRun(symbol, store, data, model_config, train_config, trainer, tracker,
                (X_train, y_train, data.X[data.val_idx], data.y_scaled[data.val_idx]), resume_from, n_params,
                source, include_volume, include_range, emit, t0)


def stored_trainer(model: MambaModel, model_config: MambaConfig, train_config: TrainConfig, store: ModelStore,
                   name: str, data_hash: str, n_features: int, device: str | None, resume: bool,
                   progress: ProgressFn | None) -> tuple[Trainer, MetricsTracker, Any]:
    """A Trainer with the guide's callbacks writing `name`'s files in `store` (checkpoint, metrics, resumable
    state, progress); returns it, its MetricsTracker and the state to resume from (None: a fresh run).
    Emits the "model" progress event."""
    tracker = MetricsTracker(store.root, name, monitor=train_config.monitor, loss=train_config.loss,
                             path=store.run_metrics_path(name))
    run_info = {"data_hash": data_hash, "model_config": model_config.to_dict(),
                "train_config": train_config.to_dict(), "n_features": n_features}
    callbacks = [
        *TrainingCallbacks(store.root, name, patience=train_config.patience, min_delta=train_config.min_delta,
                           lr_factor=train_config.lr_factor, lr_patience=train_config.lr_patience,
                           min_lr=train_config.min_lr, monitor=train_config.monitor).get_callbacks(),
        tracker,
        TrainingStateCheckpoint(store.state_path(name), info=run_info),
        _ProgressCallback(name, train_config.epochs, progress),
    ]
    trainer = Trainer(model, train_config, callbacks, device=device)
    resume_from = _resumable_state(store, name, run_info) if resume else None
    if progress:
        progress("model", name, {"parameters": model.count_parameters(), "epochs": train_config.epochs,
                                 "resumed_epoch": None if resume_from is None else resume_from[1]["epoch"] + 1})
    return trainer, tracker, resume_from




def _finish_run(run: TrainingRun) -> dict[str, Any]:
    """After training: validation report, distribution calibration, plots, metadata, final weights."""
    return store_artifacts(run.store, model_artifacts(run), run.emit)




def _resumable_state(store: ModelStore, symbol: str, run_info: dict[str, Any]):
    """The saved state of an interrupted run with this data and configuration, or None (a fresh start).

    A state that exists but is damaged is refused (StoreError) rather than resumed or silently replaced."""
    path = store.state_path(symbol)
    if not path.exists():
        return None
    try:
        tensors, info = store.load_tensors(path)
        if not isinstance(info.get("epoch"), int) or not isinstance(info.get("info"), dict):
            raise StoreError(f"{path} lacks the epoch or run description of a training state")
    except StoreError as exc:
        raise StoreError(f"{symbol}: cannot resume: {exc}; delete {path} (or train without --resume) to start "
                         "afresh") from None
    saved = info["info"]
    for key in ("data_hash", "model_config", "train_config", "n_features"):
        if saved.get(key) != run_info[key]:
            log.warning("%s: the interrupted run used a different %s; training from scratch", symbol, key)
            return None
    log.info("%s: resuming from epoch %d", symbol, info["epoch"] + 1)
    return tensors, info




async def train_single_symbol(symbol: str, epochs: int = 50, batch_size: int = 32,
                              config: MambaConfig | None = None, historical_days: int = 2000,
                              **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """The guide's async API: train one symbol off the event loop; returns `(symbol, result)`.

    Extra keyword arguments: `train_config` (a TrainConfig whose epochs/batch_size are overridden
    by the arguments above), `learning_rate`, `seed`, and everything `train_symbol` takes.
    """
    base = kwargs.pop("train_config", None) or TrainConfig()
    overrides = {k: kwargs.pop(k) for k in ("learning_rate", "seed") if k in kwargs}
    train_config = TrainConfig.from_dict({**base.to_dict(), "epochs": epochs, "batch_size": batch_size,
                                          **overrides})
    result = await asyncio.to_thread(train_symbol, symbol, model_config=config, train_config=train_config,
                                     days=historical_days, **kwargs)
    return symbol, result


# ---- many symbols ------------------------------------------------------------------------------
def _failure(symbol: str, exc: BaseException) -> dict[str, Any]:
    known = isinstance(exc, (DataError, NonFiniteLossError, StoreError, ValueError, OSError))
    if not known:
        log.error("%s failed unexpectedly:\n%s", symbol, "".join(traceback.format_exception(exc)))
    return {"symbol": symbol, "status": "failed", "error": str(exc) if known else f"{type(exc).__name__}: {exc}"}


_JOB_END = "job-end"  # the last event of a worker's job: everything it sent before has arrived
_events: Any = None   # a worker process's queue to the parent (multiprocessing.Queue, set by _worker_init)


def _worker_init(threads: int, events: Any) -> None:
    global _events
    torch.set_num_threads(threads)
    _events = events   # a queue reaches a worker by inheritance at its start, not as a task's argument


def _worker_train(job: int, symbols: list[str], stack: bool, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """One worker process's job: `symbols` one after another, or as one stack. Every progress event, each
    symbol's "done" included, goes back through the queue `_worker_init` was given, then the job's end marker."""
    def progress(event: str, sym: str, data: dict[str, Any]) -> None:
        if event != "batch" or data["batch"] % 10 == 0:  # batch events are many; thin them across processes
            _events.put((event, sym, data))

    try:
        if stack:
            return _train_stacked(symbols, progress, kwargs)
        results = []
        for symbol in symbols:
            try:
                results.append(train_symbol(symbol, progress=progress, **kwargs))
            except Exception as exc:  # reported per symbol; the other symbols and workers continue
                results.append(_failure(symbol, exc))
                progress("done", symbol, results[-1])
        return results
    finally:
        _events.put((_JOB_END, "", {"job": job}))


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the jobs not started and end the worker processes at once (their saved epochs stay resumable)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())   # no public API before Python 3.14;
    pool.shutdown(wait=False, cancel_futures=True)                           # shutdown forgets them
    for process in processes:
        process.terminate()


def split_evenly(items: Sequence[str], n: int) -> list[list[str]]:
    """`items` in min(n, len(items)) runs of consecutive items whose lengths differ by at most one."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    runs, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        runs.append(list(items[start:end]))
        start = end
    return runs


def train_symbols(symbols: Sequence[str], parallel: int = 1, progress: ProgressFn | None = None,
                  stack: bool = False, side_work: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    """Train each symbol; one failure is reported in its result and does not stop the others.

    `parallel > 1` runs that many worker processes, each with `cpu_count // parallel` torch threads
    so the cores are divided, not oversubscribed. `stack` trains the symbols' models together as
    one batched computation (each symbol's result equals training it alone), in this process on `device`, or
    with `parallel > 1` as that many stacks of consecutive symbols, one per worker process (on a 2-core CPU
    two one-thread stacks train faster than one two-thread stack: docs/benchmarks.md); with `side_work`, a
    stack on an accelerator sends each symbol's classical fits and training plot to worker
    processes (`train.side_work`; `mambacast train` does). Worker processes are started by spawn, which imports
    the calling script again: a script that uses `parallel` or `side_work` must keep its work under
    `if __name__ == "__main__":`. Results come back in the order of `symbols`.
    """
    if parallel < 1:
        raise ValueError(f"--parallel {parallel} is invalid: must be a positive integer")
    resolve_device(kwargs.get("device"))                        # a bad device or store fails before any work
    ModelStore(kwargs.get("save_dir", "models/mamba")).ensure_writable()
    if kwargs.get("device") not in (None, "auto", "cpu") and parallel > 1:
        raise ValueError("--parallel > 1 trains in CPU worker processes; use --parallel 1 with --device cuda")
    if stack and (parallel == 1 or len(symbols) <= 1):
        return _train_stacked(symbols, progress, kwargs, side_work=side_work)
    if parallel == 1 or len(symbols) <= 1:
        results = []
        for symbol in symbols:
            try:
                results.append(train_symbol(symbol, progress=progress, **kwargs))
            except Exception as exc:
                results.append(_failure(symbol, exc))
                if progress:
                    progress("done", symbol, results[-1])
        return results
    return _train_in_workers(split_evenly(symbols, parallel) if stack else [[s] for s in symbols], parallel,
                             stack, progress, kwargs)


def _train_in_workers(jobs: list[list[str]], parallel: int, stack: bool, progress: ProgressFn | None,
                      kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each job (a list of symbols) in a worker process, at most `parallel` at once, the CPU threads divided
    between them; results in the order of the jobs' symbols."""
    import multiprocessing as mp

    workers = min(parallel, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")  # fork after torch has started its thread pools can deadlock
    queue = ctx.Queue()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads, queue)) as pool:
        futures = {pool.submit(_worker_train, i, job, stack, kwargs): i for i, job in enumerate(jobs)}
        try:
            by_symbol = _collect(futures, jobs, queue, progress)
        except BaseException:   # Ctrl-C, or SIGTERM (mambacast's CLI raises cli.Terminated for it): stop the
            _stop_workers(pool)  # workers now instead of waiting out their jobs; `--resume` continues them
            raise
    queue.close()
    return [by_symbol[s] for job in jobs for s in job]


def _collect(futures: dict[Any, int], jobs: list[list[str]], queue: Any, progress: ProgressFn | None
             ) -> dict[str, dict[str, Any]]:
    """Wait for the workers' jobs (`futures`: future -> index into `jobs`), passing their progress events on;
    returns each symbol's result. A job whose worker died fails its symbols."""
    by_symbol: dict[str, dict[str, Any]] = {}
    ended: set[int] = set()
    pending = set(futures)
    # Until every job's end marker is read: a worker cannot exit while its events wait in a full pipe.
    while pending or len(ended) < len(jobs):
        ended |= _drain(queue, progress)
        done = {f for f in pending if f.done()}
        for f in done:
            i = futures[f]
            try:
                results = f.result()
            except BrokenProcessPool:   # a worker died (killed, out of memory): its job and those queued fail
                ended.add(i)
                results = [{"symbol": s, "status": "failed", "error": "a worker process ended abruptly (killed, or "
                            "out of memory?) before this symbol was done"} for s in jobs[i]]
            except Exception as exc:   # the job itself failed outside any one symbol's training
                ended.add(i)
                results = [_failure(s, exc) for s in jobs[i]]
            if f.exception() is not None and progress:
                for r in results:
                    progress("done", r["symbol"], r)
            by_symbol.update(zip(jobs[i], results, strict=True))
        pending -= done
        time.sleep(0.05)
    return by_symbol


def _train_stacked(symbols: Sequence[str], progress: ProgressFn | None, kwargs: dict[str, Any],
                   finish: Callable[[TrainingRun], dict[str, Any]] = _finish_run, side_work: bool = False
                   ) -> list[dict[str, Any]]:
    """Prepare every symbol, train the models of one feature count as one stack, `finish` each (default:
    store it); `side_work`: the fits and plots in worker processes where `side_workers` says so."""
    def fail(symbol: str, exc: BaseException) -> None:
        results[symbol] = _failure(symbol, exc)
        if progress:
            progress("done", symbol, results[symbol])

    results: dict[str, dict[str, Any]] = {}
    runs: list[TrainingRun] = []
    for symbol in symbols:
        try:
            run = _prepare_run(symbol, progress=progress, **kwargs)
        except Exception as exc:
            fail(symbol, exc)
            continue
        if isinstance(run, dict):
            results[symbol] = run
        else:
            runs.append(run)
    groups: dict[int, list[TrainingRun]] = {}
    for run in runs:   # one stack per model shape (symbols lacking volume data have fewer features)
        groups.setdefault(run.trainer.model.n_features, []).append(run)
    workers = side_workers(runs[0].trainer.device, len(runs)) if runs and side_work else 0
    side = SideWork(workers) if workers else None   # the fits and plots beside a GPU stack (train.side_work)
    try:
        if side:
            for run in runs:
                side.submit_blend(*blend_args(run))
        for group in groups.values():
            _train_group(group, side, finish, fail, results)
    finally:
        if side:
            side.close()
    return [results[s] for s in symbols]


def _train_group(group: list[TrainingRun], side: SideWork | None, finish: Callable[[TrainingRun], dict[str, Any]],
                 fail: Callable[[str, BaseException], None], results: dict[str, dict[str, Any]]) -> None:
    """Train one stack and `finish` each member, or `fail` it with its error."""
    log.info("training %d models stacked: %s", len(group), ", ".join(r.symbol for r in group))
    stacked = StackedTrainer([r.trainer for r in group])
    try:
        stacked.fit([r.fit_data for r in group], resume_from=[r.resume_from for r in group])
    except Exception as exc:   # e.g. a full disk in a checkpoint: every symbol of the stack stops there
        for run in group:
            fail(run.symbol, exc)
        return
    if side:
        for run, error in zip(group, stacked.errors, strict=True):
            if error is None:
                side.submit_plot(run.symbol, run.tracker.history)
    for run, error in zip(group, stacked.errors, strict=True):
        try:
            if error is not None:
                raise error
            if side:
                run.precomputed = side.take(run.symbol)
            results[run.symbol] = finish(run)
        except Exception as exc:
            fail(run.symbol, exc)


def _drain(queue: Any, progress: ProgressFn | None) -> set[int]:
    """Pass the queued events on to `progress`; returns the jobs whose end marker came."""
    ended = set()
    while not queue.empty():
        event, symbol, data = queue.get()
        if event == _JOB_END:
            ended.add(data["job"])
        elif progress:
            progress(event, symbol, data)
    return ended
