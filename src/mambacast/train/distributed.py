"""Training many symbols on a Ray cluster (`mambacast train --ray [ADDRESS]`).

Each symbol, or with `stack` each group of symbols trained as one stack, is a Ray task. A task trains and
writes only its own symbols' run-in-progress files (`checkpoints/<SYMBOL>/`: best weights, resumable state,
metrics); it returns the finished model's artifacts, and the driver, the store's one writer, switches each
model in atomically (`ModelStore.save_model`) and records its version as its task finishes. The store must
therefore be one folder every node sees at the same path (a shared filesystem): a retried task may land on
another node and continues from the checkpoint its dead predecessor left there.

A task whose worker dies (killed, out of memory, its node lost) is resubmitted by the driver, up to
`max_attempts` in all, and resumes its symbols from their last saved epoch; an exception inside training is
a per-symbol failure, reported as `train_symbols` reports it, and never retried.

Ray is imported lazily: mambacast works without it, and asking for it without it installed is one error
naming the extra (`pip install 'mambacast[ray]'`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import __version__
from ..store import ModelStore, StoreError
from .pipeline import (
    ProgressFn,
    _failure,
    _prepare_run,
    _train_stacked,
    model_artifacts,
    split_evenly,
    store_artifacts,
)
from .trainer import resolve_device

__all__ = ["train_symbols_ray", "ray_session", "import_ray", "RAY_EXTRA", "CRASH_ENV"]

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'mambacast[ray]'"
#: test hook: "SYMBOL:EPOCH:MARKER" makes the worker training SYMBOL exit at once (a real process death) after
#: saving epoch EPOCH (1-based) when the file MARKER does not exist yet; it creates MARKER first, so only the
#: first attempt dies. Read by the driver and handed to the tasks (worker processes keep the cluster's env).
CRASH_ENV = "MAMBACAST_RAY_CRASH"
_PROBE = ".ray-store-probe-"
_CONNECT_TIMEOUT_S = 5.0
_NICENESS = "RAY_worker_niceness"


def import_ray() -> Any:
    """The `ray` module, or ImportError with the one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"Ray is not installed: {RAY_EXTRA}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's two-minute wait, when nothing listens at a host:port address."""
    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--ray {address!r} is not a cluster address: use HOST:PORT (the head node's GCS port, "
                         "6379 by default), auto (the cluster this machine belongs to) or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one with "
                              "`ray start --head` on the head node, or check the address") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray connected to the cluster at `address`, or to a new local cluster sized to this machine (`num_cpus`
    CPUs if given) when `address` is None; a connection that already exists is used as it is and left open.
    A cluster started here is shut down on exit."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        _check_reachable(address)
    try:
        if address is None:
            # Ray starts its workers at niceness 15; on one machine they would then lose the CPU to anything else
            # running, which --parallel and --stack do not. A value the user set is kept. The cluster's
            # processes read it when they start; it is not left in this process's environment.
            set_here = _NICENESS not in os.environ
            os.environ.setdefault(_NICENESS, "0")
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR)
            finally:
                if set_here:
                    os.environ.pop(_NICENESS, None)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConnectionError(f"cannot join the Ray cluster at {address}: {exc}") from None
    except (ValueError, RuntimeError) as exc:   # e.g. ray:// without ray[client], a malformed address
        raise ValueError(f"cannot start or join Ray ({address or 'local'}): {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


# ---- in the worker ---------------------------------------------------------------------------------------
class _WorkerProgress:
    """Collects a task's progress events (the driver replays them when the task returns) and carries the
    crash hook. Batch events are dropped (many, and only a terminal's progress bar shows them); "done" is the
    driver's to emit, after it stores the model."""

    def __init__(self, crash: str | None):
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.crash = crash.split(":", 2) if crash else None

    def __call__(self, event: str, symbol: str, data: dict[str, Any]) -> None:
        if event in ("batch", "done"):
            return
        self.events.append((event, symbol, data))
        # "epoch" is emitted by the last callback, after the training state of that epoch is saved.
        if event == "epoch" and self.crash is not None:
            crash_symbol, crash_epoch, marker = self.crash
            if symbol == crash_symbol and data["epoch"] + 1 == int(crash_epoch):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.close(fd)
                log.warning("%s: %s asks this worker to die after epoch %s", symbol, CRASH_ENV, crash_epoch)
                os._exit(70)


def _train_group(symbols: Sequence[str], kwargs: dict[str, Any], stack: bool, threads: int, probe: str,
                 driver_version: str, crash: str | None) -> dict[str, Any]:
    """The body of one Ray task: train `symbols` (alone, or as one stack) and return, per symbol, its
    artifacts (status "trained") or its skipped/failed result, with the progress events to replay."""
    import torch

    torch.set_num_threads(threads)
    progress = _WorkerProgress(crash)
    node = socket.gethostname()
    if __version__ != driver_version:
        error = StoreError(f"the Ray worker on {node} runs mambacast {__version__}, the driver {driver_version}: "
                           "install the same version on every node")
        return {"results": [_failure(s, error) for s in symbols], "events": []}
    if not Path(probe).exists():
        error = StoreError(f"the Ray worker on {node} cannot see the model store "
                           f"{Path(probe).parent}: put --save-dir on a filesystem every node mounts at that path")
        return {"results": [_failure(s, error) for s in symbols], "events": []}

    def finish(run: Any) -> dict[str, Any]:
        return {"symbol": run.symbol, "status": "trained", "artifacts": model_artifacts(run)}

    results: list[dict[str, Any]] = []
    if stack:
        results = _train_stacked(symbols, progress, kwargs, finish=finish)
    else:
        for symbol in symbols:
            try:
                run = _prepare_run(symbol, progress=progress, **kwargs)
                if not isinstance(run, dict):
                    run.trainer.fit(*run.fit_data, resume_from=run.resume_from)
                    run = finish(run)
                results.append(run)
            except Exception as exc:   # reported per symbol, as train_symbols does
                results.append(_failure(symbol, exc))
    return {"results": results, "events": progress.events}


# ---- in the driver ---------------------------------------------------------------------------------------
def _groups(symbols: Sequence[str], stack: bool, slots: int) -> list[list[str]]:
    """One task per symbol; with `stack`, `slots` groups of consecutive symbols, as even as they go."""
    return split_evenly(symbols, slots) if stack else [[s] for s in symbols]


def train_symbols_ray(symbols: Sequence[str], address: str | None = None, *, stack: bool = False,
                      progress: ProgressFn | None = None, max_attempts: int = 3, cpus_per_task: int = 1,
                      num_cpus: int | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Train each symbol as a Ray task (with `stack`, one stacked group per free CPU slot of the cluster) and
    store the models from this process; results come back in the order of `symbols`, as `train_symbols`'s.

    address: a cluster to join (HOST:PORT, auto, ray://HOST:PORT); None starts a local cluster (`num_cpus`
    CPUs, default all). max_attempts: tries per task when its worker dies (a retry resumes from the symbols'
    checkpoints). cpus_per_task: CPUs (and torch threads) each task reserves. Other keyword arguments are
    `train_symbol`'s. Raises ImportError without Ray, ConnectionError/ValueError for a bad address.
    """
    if max_attempts < 1 or cpus_per_task < 1:
        raise ValueError("max_attempts and cpus_per_task must be positive")
    if kwargs.get("device") not in (None, "auto", "cpu"):
        raise ValueError("--ray trains on the workers' CPUs; drop --device or use --device cpu")
    resolve_device(kwargs.get("device"))
    # Workers resolve paths on their own nodes: hand them absolute ones.
    store = ModelStore(Path(kwargs.get("save_dir", "models/mamba")).resolve())
    store.ensure_writable()
    kwargs = {**kwargs, "save_dir": str(store.root)}
    if kwargs.get("data_path"):
        kwargs["data_path"] = str(Path(kwargs["data_path"]).resolve())
    emit = progress or (lambda event, symbol, data: None)
    crash = os.environ.get(CRASH_ENV) or None
    by_symbol: dict[str, dict[str, Any]] = {}
    probe = store.root / f"{_PROBE}{uuid.uuid4().hex}"
    with ray_session(address, num_cpus) as ray:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_task)
        groups = _groups(symbols, stack, slots)
        log.info("training %d symbols as %d Ray tasks on %d CPU slots", len(symbols), len(groups), slots)
        task = ray.remote(num_cpus=cpus_per_task, max_retries=0)(_train_group)
        probe.write_bytes(b"")
        pending: dict[Any, tuple[list[str], int, float]] = {}

        def submit(group: list[str], attempt: int) -> None:
            args = {**kwargs, "continue_run": True} if attempt > 1 else kwargs
            ref = task.remote(group, args, stack, cpus_per_task, str(probe), __version__, crash)
            pending[ref] = (group, attempt, time.perf_counter())

        try:
            for group in groups:
                submit(group, 1)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                group, attempt, t_submit = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:   # raised past the task's own handling
                    for symbol in group:
                        _record(by_symbol, _failure(symbol, exc.as_instanceof_cause()), emit)
                    continue
                except ray.exceptions.RayError as exc:      # the worker died: retry, resuming from checkpoints
                    reason = " ".join(str(exc).split())[:200]
                    if attempt < max_attempts:
                        log.warning("Ray task of %s died (%s); retrying, attempt %d of %d", ",".join(group),
                                    type(exc).__name__, attempt + 1, max_attempts)
                        for symbol in group:
                            emit("retry", symbol, {"attempt": attempt + 1, "max_attempts": max_attempts,
                                                   "error": type(exc).__name__})
                        submit(group, attempt + 1)
                    else:
                        error = OSError(f"its Ray worker died {attempt} times ({type(exc).__name__}: {reason})")
                        for symbol in group:
                            _record(by_symbol, _failure(symbol, error), emit)
                    continue
                for event in out["events"]:
                    emit(*event)
                for result in out["results"]:
                    if result["status"] == "trained":
                        try:
                            result = store_artifacts(store, result["artifacts"], emit)
                        except Exception as exc:
                            _record(by_symbol, _failure(result["symbol"], exc), emit)
                            continue
                        by_symbol[result["symbol"]] = result
                    elif result["status"] == "failed":
                        _record(by_symbol, result, emit)
                    else:
                        by_symbol[result["symbol"]] = result
        except BaseException:
            for ref in pending:   # an interrupted driver stops its tasks; their checkpoints allow --resume
                ray.cancel(ref, force=True)
            raise
        finally:
            probe.unlink(missing_ok=True)
    return [by_symbol[s] for s in symbols]


def _record(by_symbol: dict[str, dict[str, Any]], result: dict[str, Any], emit: ProgressFn) -> None:
    by_symbol[result["symbol"]] = result
    emit("done", result["symbol"], result)
