"""Optional Triton GPU kernels: the fused selective scan (`scan.selective_scan_triton`).

Triton ships with PyTorch's CUDA builds; it is never a dependency of mambacast. `available()` says
whether it imports here; the kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter
(`TRITON_INTERPRET=1`, set before the kernels are first imported), which is how the tests check them
on machines without a GPU. Importing this package does not import Triton; `scan` does.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

__all__ = ["available", "interpreting", "runs_on"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True if Triton imports here (checked once per process; a broken install is logged and treated as absent)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means: use the PyTorch scan
        logger.warning("triton is installed but does not import (%s: %s); using the PyTorch scan",
                       type(exc).__name__, exc)
        return False
    return True


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (`TRITON_INTERPRET=1`): on CPU tensors, slowly, for tests."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of `device`: CUDA, or any device under the interpreter."""
    return available() and (device.type == "cuda" or interpreting())
