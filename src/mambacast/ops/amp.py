"""How the package's custom autograd Functions behave under autocast (CPU and CUDA).

A custom Function's forward runs inside whatever autocast region its caller opened, while its backward
runs later with autocast as the autograd engine leaves it (off, normally): a forward that mixes an
autocast-cast bfloat16 input with a float32 parameter then meets dtypes in the backward it never saw in
the forward (issue 13: `expected scalar type BFloat16 but found Float` in the chunked scan's backward).
`torch.amp.custom_fwd` / `custom_bwd` fix this, one device type per decorator; the scans and the fused
block run on the CPU and on CUDA, so the decorators here do what they do for both device types at once (and
return at once where autocast is off: the two stacked torch decorators cost 15-20 us per call, forward and
backward, more than some of the kernels they wrap).

`float32_forward` / `autocast_backward`: under autocast the Function's floating inputs (except float64)
    arrive as float32 and forward and backward run with autocast off. The recurrence accumulates over
    the whole sequence: it stays in float32, as mamba-ssm's scan does, whatever the autocast dtype.
`same_autocast_forward` / `same_autocast_backward`: no cast; the backward runs under the autocast state
    (per device type) the forward ran under, for Functions whose backward recomputes the forward
    (activation checkpointing) and must recompute it exactly, and for kernels that read any input
    dtype and compute in float32 themselves (the Triton scan).

`cpu_bf16_autocast`: whether training on the CPU runs under `torch.autocast("cpu", dtype=torch.bfloat16)`: by
    default where the CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX: `cpu_has_bf16`), float32
    elsewhere (oneDNN would emulate bf16 there, slower than float32); `MAMBACAST_CPU_BF16=0|1` forces either.
    The Linear layers (in_proj, out_proj, the embedding; the heads stay float32, `nn.heads`) run as oneDNN bf16
    matmuls with float32 accumulation on float32 master weights; the fused block reads in_proj's bf16 output as it
    is and runs x_proj in bf16 too (`nn.fused`), its conv, scan and dt_proj in float32 (the scan's exp by a degree-4
    polynomial, 3e-6 relative); the residual stream between the blocks is bf16 as autocast leaves it, its norms
    compute in float32 (`nn.norm`), and the loss stays float32. On this project's AVX512_BF16 machine that takes
    10-17% off a train step, and the validation loss of 50-epoch runs stays within float32's seed noise (6 stocks x
    4 seeds: docs/benchmarks.md, `benchmarks/bf16_quality.py`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["float32_forward", "autocast_backward", "same_autocast_forward", "same_autocast_backward",
           "autocast_enabled", "without_autocast", "cpu_bf16_autocast", "cpu_has_bf16", "cuda_bf16_autocast",
           "CPU_BF16_ENV"]

log = logging.getLogger(__name__)

_DEVICE_TYPES = ("cpu", "cuda")
CPU_BF16_ENV = "MAMBACAST_CPU_BF16"


def cuda_bf16_autocast(device: torch.device) -> bool:
    """Whether training on the CUDA `device` runs under bfloat16 autocast: on GPUs with bfloat16 in hardware
    (compute capability 8.0 and up: A100, RTX 30xx and later, H100). Older ones (V100, T4, RTX 20xx) would emulate
    it, slowly, and float16 would need loss scaling, so they train in float32; said once per device."""
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return True
    _say_float32(torch.cuda.get_device_name(device), f"{major}.{minor}")
    return False


@functools.cache
def _say_float32(name: str, capability: str) -> None:
    log.warning("%s (compute capability %s) has no bfloat16 in hardware: training runs in float32 on it",
                name, capability)


def cpu_bf16_autocast() -> bool:
    """Whether CPU training runs under bfloat16 autocast: `MAMBACAST_CPU_BF16` 1 (on) or 0 (off), read at each
    call; unset or `auto`: on where the CPU has bfloat16 in hardware (`cpu_has_bf16`)."""
    value = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if value in ("", "auto"):
        return cpu_has_bf16()
    if value not in ("0", "1"):
        raise ValueError(f"{CPU_BF16_ENV}={value!r}: use 1 (bfloat16 autocast on the CPU), 0 (float32) or auto "
                         "(bfloat16 where the CPU has it in hardware, the default)")
    return value == "1"


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX tiles), so oneDNN's bf16 matmuls beat
    float32 ones. False where torch cannot tell (its probes are private; a torch without them trains in float32)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and probe() for probe in probes)


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for `device`'s type (False for device types autocast does not know, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


def without_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """A context with autocast off for `device`'s type, where it is on (a no-op elsewhere)."""
    return torch.autocast(device.type, enabled=False) if autocast_enabled(device) else contextlib.nullcontext()


def float32_forward(forward: Callable[..., Any] | None = None, *,
                    keep_bf16: tuple[int, ...] = ()) -> Callable[..., Any]:
    """`torch.amp.custom_fwd(cast_inputs=torch.float32)` for the CPU and for CUDA (pair with `autocast_backward`):
    where autocast is on, the floating tensor arguments on that device type (float64 excepted) arrive as float32
    and the forward runs with it off. One wrapper for both device types, which returns at once when autocast is
    off everywhere (the common case: the two stacked decorators cost more than a small kernel call).

    `@float32_forward(keep_bf16=(i, ...))`: the arguments at these positions (after ctx) arrive as they are when
    they are bfloat16, for kernels that read bfloat16 activations themselves (saving the cast's pass and a
    float32 copy); other dtypes are cast as usual."""
    if forward is None:
        return functools.partial(float32_forward, keep_bf16=keep_bf16)

    def cast(i: int, a: Any, on: list[str]) -> Any:
        if (isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64 and a.device.type in on
                and not (a.dtype == torch.bfloat16 and i in keep_bf16)):
            return a.float()
        return a

    @functools.wraps(forward)
    def wrapper(ctx: Any, *args: Any) -> Any:
        on = [d for d in _DEVICE_TYPES if torch.is_autocast_enabled(d)]
        if not on:
            return forward(ctx, *args)
        args = tuple(cast(i, a, on) for i, a in enumerate(args))
        with contextlib.ExitStack() as stack:
            for d in on:
                stack.enter_context(torch.autocast(d, enabled=False))
            return forward(ctx, *args)

    return wrapper


def autocast_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """The backward of a `float32_forward` runs with autocast off on the CPU and CUDA (as `torch.amp.custom_bwd` does
    for a `custom_fwd` with `cast_inputs`), switching it off only where it is on."""
    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        on = [d for d in _DEVICE_TYPES if torch.is_autocast_enabled(d)]
        if not on:
            return backward(ctx, *grads)
        with contextlib.ExitStack() as stack:
            for d in on:
                stack.enter_context(torch.autocast(d, enabled=False))
            return backward(ctx, *grads)

    return wrapper


def same_autocast_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Record the autocast state of every device type on `ctx` (`torch.amp.custom_fwd` without a cast keeps
    one device type's state only)."""
    @functools.wraps(forward)
    def wrapper(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        ctx.autocast_state = [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in _DEVICE_TYPES]
        return forward(ctx, *args, **kwargs)

    return wrapper


def same_autocast_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Run the backward of a `same_autocast_forward` under the autocast state its forward ran under."""
    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device_type, enabled, dtype in ctx.autocast_state:
                stack.enter_context(torch.autocast(device_type, enabled=enabled, dtype=dtype))
            return backward(ctx, *grads)

    return wrapper
