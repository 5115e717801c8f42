"""`eager_under_compile`: `torch.compiler.disable` for the kernels' entry points, applied at their first call.

The fused CPU and Triton kernels have no fake implementations, so under `torch.compile` they must run eagerly
behind a graph break, which `torch.compiler.disable` arranges. Applying it imports `torch._dynamo` (0.5-1 s on
the 2-core development machine), and applying it at import time made every `mambacast` command pay that,
`--help` and one-line argument errors included. Here it is applied the first time the function runs; a first call
inside a compiled region still runs eagerly (tests/nn/test_mamba.py).
"""

from __future__ import annotations

import functools
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
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call  # type: ignore[return-value]
