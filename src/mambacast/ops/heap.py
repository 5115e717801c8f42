"""Keep freed memory in the process while training (glibc's malloc), and hand it back afterwards.

Why: glibc serves a large allocation (above its mmap threshold: 128 KiB at start, rising to at most
32 MiB as large blocks are freed) with a fresh `mmap`, and gives the free top of its heap back to the OS
once more than the trim threshold (twice the mmap threshold) is free. A training step allocates and
frees the same large activations every step, so every step writes into pages the OS must map again:
measured about 700 minor page faults per step at the guide config (batch 32), and tens of thousands
per step for 20 stacked models, where the fused scan kernels, which first write those pages, ran
1.2-1.5x slower per model than with the memory kept, and a stacked run 9% slower (docs/benchmarks.md,
"Issue 17, 2026-11-28").

`kept_heap()` raises both thresholds for the process while any training runs (freed blocks stay in the
heap and are reused by the next step); when the outermost training ends it returns the free memory with
`malloc_trim(0)` and leaves the thresholds where glibc's own adaptive ones end up after large blocks are freed
(mmap 32 MiB, trim 64 MiB). Not glibc's start values (128 KiB): any `mallopt` turns the adaptive raising off for
good, and with 128 KiB every later activation above it was mapped afresh, so inference after training (the
validation report, the backtest's forecasts after each refit, a notebook's predictions) ran 1.3-2x slower
than in a process that never trained (docs/benchmarks.md, "Issue 17, 2026-11-28 (seventh session)").
Elsewhere than glibc (macOS, musl, Windows) this does nothing. MAMBACAST_KEEP_HEAP=0 turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Iterator

__all__ = ["kept_heap"]

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Allocations above 1 GiB still get their own mmap (returned to the OS when freed); older glibc caps the
# threshold at 32 MiB, which is tried next.
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
_TRIM_THRESHOLD = (1 << 31) - 1   # the largest value mallopt's int takes: never trim while training
# After training: the adaptive thresholds' ceiling on 64-bit glibc (DEFAULT_MMAP_THRESHOLD_MAX, trim twice it),
# else glibc's start value for both (a 32-bit build caps the mmap threshold lower).
_AFTER_THRESHOLDS = ((32 << 20, 64 << 20), (128 << 10, 128 << 10))

_lock = threading.Lock()
_depth = 0
_libc: ctypes.CDLL | None | bool = None   # None: not looked up yet; False: not glibc


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        _libc = False
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                _libc = libc
        except OSError:
            pass
    return _libc or None


def _enabled() -> bool:
    return os.environ.get("MAMBACAST_KEEP_HEAP", "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def kept_heap() -> Iterator[None]:
    """Freed memory stays in the heap inside this context (re-entrant, thread-safe); when the outermost
    context exits, the free memory goes back to the OS."""
    global _depth
    libc = _glibc() if _enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            kept = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
            mmap = next((t for t in _MMAP_THRESHOLDS if libc.mallopt(_M_MMAP_THRESHOLD, t) == 1), None)
            log.debug("heap kept while training: trim threshold %s, mmap threshold %s", kept, mmap)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for mmap, trim in _AFTER_THRESHOLDS:
                    if libc.mallopt(_M_MMAP_THRESHOLD, mmap) == 1:
                        libc.mallopt(_M_TRIM_THRESHOLD, trim)
                        break
                libc.malloc_trim(0)
