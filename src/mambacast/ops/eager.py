"""`eager_under_compile`: `torch.compiler.disable` for the kernels' entry points, applied only where it matters.

The fused CPU and Triton kernels have no fake implementations, so under `torch.compile` they must run eagerly
behind a graph break, which `torch.compiler.disable` arranges. Building that wrapper imports `torch._dynamo` (with
sympy and, where installed, triton: 1.0 s on the 2-core development machine), which every process that runs the
model would pay: every training run, `predict`, each backtest. torch.compile imports `torch._dynamo` before it
traces anything, so until that module is loaded no caller can be compiled and the function runs as it is; once it
is loaded the disabled wrapper is built (once) and used. A first call inside a compiled region still runs eagerly
(tests/nn/test_mamba.py).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["eager_under_compile"]


def eager_under_compile(fn: F) -> F:
    """`fn` that `torch.compile` calls eagerly behind a graph break (as `torch.compiler.disable(fn)`)."""
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:   # nothing can be compiling: no wrapper, no dynamo import
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call  # type: ignore[return-value]
