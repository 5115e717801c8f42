"""The CPU side of a stack trained on a GPU, in worker processes: each symbol's GARCH-t / HAR-t fits and its
training plot.

A stored model carries its classical fits (`blend.Blend`, fitted on the symbol's closes) and a PNG of its
training curves. Training one symbol, they cost about 0.15 s and 0.2-0.35 s after the epochs; for a stack of 50
symbols trained on a GPU that was 29.7 s of one CPU core after the last epoch on an H100 machine (5.7 s with this
module, docs/benchmarks.md), while the machine's other cores idled. `SideWork` sends them to a pool of
processes: the fits as soon as the stack's data is prepared (they read only the closes, so they run while the
GPU trains), the plots when the stack has finished. Results are the same values computed elsewhere; a job that
fails in the pool is computed again in this process, so its error (if any) is reported as it would be without
the pool, and a pool that cannot start processes leaves all of it to this process.

Used only when asked for (`train_symbols(..., side_work=True)`: spawned workers import the caller's script
again) and where it pays: the stack trains on an accelerator (a CPU stack keeps every core busy itself) and the
machine has at least 4 cores.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from ..blend import Blend
from ..plots import render_curves

__all__ = ["SideWork", "blend_state", "side_workers"]

log = logging.getLogger(__name__)

MAX_WORKERS = 8


def blend_state(symbol: str, closes: np.ndarray, horizons: Sequence[int], garch_weight: float,
                har_weight: float) -> dict[str, Any]:
    """The symbol's stored classical fits (`Blend.to_dict`) on its forward-filled closes."""
    return Blend.fit({symbol: closes}, horizons, garch_weight, har_weight).to_dict()


def side_workers(device: torch.device, n_symbols: int) -> int:
    """Worker processes for a stack of `n_symbols` trained on `device`: 0 (all in this process) on the CPU,
    with fewer than 2 symbols or fewer than 4 cores; else half the cores, at most MAX_WORKERS."""
    cores = os.cpu_count() or 1
    if device.type == "cpu" or n_symbols < 2 or cores < 4:
        return 0
    return min(MAX_WORKERS, cores // 2, n_symbols)


def _init_worker() -> None:
    torch.set_num_threads(1)   # the fits and plots are single-threaded; the pool has one core per worker


class SideWork:
    """The pool, and each symbol's submitted jobs ("blend", "plot" -> Future)."""

    def __init__(self, workers: int):
        # spawn: a fork of a process that holds a CUDA context and torch's thread pools is unsafe
        self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
        self._jobs: dict[str, dict[str, Future]] = {}
        self._broken = False

    def submit_blend(self, symbol: str, closes: np.ndarray, horizons: Sequence[int], garch_weight: float,
                     har_weight: float) -> None:
        self._submit(symbol, "blend", blend_state, symbol, closes, list(horizons), garch_weight, har_weight)

    def submit_plot(self, symbol: str, history: list[dict[str, float]]) -> None:
        self._submit(symbol, "plot", render_curves, history, symbol)

    def _submit(self, symbol: str, name: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a job; where the pool cannot start or take it (no processes allowed here, a closed pool), the
        job is left to the caller, which computes it itself."""
        if self._broken:
            return
        try:
            self._jobs.setdefault(symbol, {})[name] = self._pool.submit(fn, *args)
        except Exception as exc:  # noqa: BLE001 - the work is done in this process instead
            self._broken = True
            log.warning("worker processes for the fits and plots are unavailable (%s: %s); computing them here",
                        type(exc).__name__, exc)

    def take(self, symbol: str) -> dict[str, Any]:
        """The symbol's finished results by name; a job that failed in the pool is left out (the caller computes
        it itself, so a real error surfaces there)."""
        done: dict[str, Any] = {}
        for name, future in self._jobs.pop(symbol, {}).items():
            try:
                done[name] = future.result()
            except Exception as exc:  # noqa: BLE001 - recomputed in this process by the caller
                log.warning("%s: the %s job failed in a worker process (%s: %s); computing it here",
                            symbol, name, type(exc).__name__, exc)
        return done

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
