"""Build and load the fused CPU kernels (``csrc/selective_scan.cpp`` and the headers it includes, ``csrc/simd.h``,
``csrc/layer_norm.h``, ``csrc/head_loss.h`` and ``csrc/mamba_block.h``) on first use.

The kernel is compiled once per (sources, flags, torch, Python, CPU) combination with
``torch.utils.cpp_extension.load`` into ``$MAMBACAST_CACHE_DIR`` (default
``$XDG_CACHE_HOME/mambacast`` or ``~/.cache/mambacast``), under ``ext/mambacast_scan_<key>``, from a
copy of the sources placed there (so every install or checkout with the same sources shares one build).
It is compiled with ``-march=native``, so the key includes the CPU's model name and flag list:
a cache shared between different machines never hands one machine another's binary. If the
native build fails, a portable ``-O3`` build is tried. Loading is lazy and thread-safe; a
failure (no compiler, no ninja, build or import error) is logged once as a warning and
remembered, and callers fall back to the pure-PyTorch scan.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

__all__ = ["ExtensionUnavailable", "load", "available", "cache_dir", "SOURCE"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan.cpp"
# Every file the translation unit includes from csrc/: part of the cache key, so an edit to a header
# builds afresh.
HEADERS = (SOURCE.parent / "simd.h", SOURCE.parent / "layer_norm.h", SOURCE.parent / "head_loss.h",
           SOURCE.parent / "mamba_block.h")
_COMMON_FLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp"]
_FLAG_SETS = (["-march=native"], [])

_OPS = ("scan_fwd", "scan_bwd", "conv_fwd", "conv_bwd", "mamba_step", "simd_exp2", "layer_norm",
        "layer_norm_fwd", "layer_norm_bwd", "head_loss", "mamba_block")

_lock = threading.Lock()
_ops: Any = None
_error: BaseException | None = None


class ExtensionUnavailable(RuntimeError):
    """The fused kernel could not be built or loaded on this machine."""


def cache_dir() -> Path:
    env = os.environ.get("MAMBACAST_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mambacast"


def _cpu_signature() -> str:
    try:
        model = flags = ""
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "Processor", "CPU part") and not model:
                    model = line
                elif key in ("flags", "Features") and not flags:
                    flags = line
                if model and flags:
                    break
        if model or flags:
            return model + flags
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {platform.platform()}"


def _stage_sources(build_dir: Path) -> Path:
    """Copy the sources into their build directory (named by their content) and return the copy to compile.

    Compiling the package's own file would put its path into the build's ninja file: two installs or checkouts
    of the same sources (same cache key, other paths) would then rebuild the kernel in turn, each waiting up to
    a minute on the other's build lock."""
    for path in (SOURCE, *HEADERS):
        staged = build_dir / path.name
        data = path.read_bytes()
        if not staged.exists() or staged.read_bytes() != data:
            tmp = staged.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, staged)   # atomic: a concurrent build never reads half a file
    return build_dir / SOURCE.name


def _build() -> Any:
    from torch.utils import cpp_extension

    source = b"\0".join(path.read_bytes() for path in (SOURCE, *HEADERS))
    errors = []
    for extra in _FLAG_SETS:
        flags = _COMMON_FLAGS + extra
        key = hashlib.sha256(b"\0".join([
            source, " ".join(flags).encode(), torch.__version__.encode(), sys.version.encode(),
            _cpu_signature().encode(),
        ])).hexdigest()[:16]
        name = f"mambacast_scan_{key}"
        build_dir = cache_dir() / "ext" / name
        try:
            build_dir.mkdir(parents=True, exist_ok=True)
            cpp_extension.load(name=name, sources=[str(_stage_sources(build_dir))], extra_cflags=flags,
                               extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False,
                               verbose=False)
            lib = torch.ops.mambacast
            # getattr raises if the library did not register
            return SimpleNamespace(**{op: getattr(lib, op) for op in _OPS}, name=name, flags=flags)
        except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
            errors.append(f"{' '.join(flags)}: {type(exc).__name__}: {str(exc).strip()[-2000:]}")
    raise ExtensionUnavailable("could not build the fused selective-scan kernel:\n" + "\n".join(errors))


def load() -> Any:
    """Return the kernel's ops (``scan_fwd``, ``scan_bwd``, ``conv_fwd``, ``conv_bwd``), building them on first call.

    Raises ExtensionUnavailable (every call, after one logged warning) if it cannot be built.
    """
    global _ops, _error
    if _ops is not None:
        return _ops
    with _lock:
        if _ops is not None:
            return _ops
        if _error is None:
            try:
                _ops = _build()
                logger.debug("loaded fused selective-scan kernel %s", _ops.name)
                return _ops
            except Exception as exc:  # noqa: BLE001
                _error = exc if isinstance(exc, ExtensionUnavailable) else ExtensionUnavailable(
                    f"could not build the fused selective-scan kernel: {type(exc).__name__}: {exc}")
                logger.warning("%s\nFalling back to the pure-PyTorch chunked scan (slower). "
                               "Set MAMBACAST_SCAN=chunked to silence this.", _error)
        raise _error


def available() -> bool:
    """True if the fused kernel is (or can be) loaded; builds it on first call."""
    try:
        load()
        return True
    except ExtensionUnavailable:
        return False


def _reset() -> None:
    """Forget a load failure (tests); a loaded kernel stays loaded (its ops cannot be unregistered)."""
    global _error
    with _lock:
        _error = None
