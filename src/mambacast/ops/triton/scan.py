"""The fused Triton selective scan: launch of `_kernels` and its autograd Function.

`triton_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_len)`
computes what `mambacast.nn.scan.selective_scan_ref` computes (see there for the equations), fused:
softplus(delta + bias), exp(delta A), delta B u, the recurrence, C . h, the D skip and the silu(z) gate run
in one pass per (row, block of channels) with the state in registers. Shapes:

    u, delta, z:   (batch, seq_len, d_inner), any strides (z may be a view of in_proj's output)
    A:             (d_inner, d_state), or (n_models, d_inner, d_state): stacked models, batch = n_models * rows,
                   row r belongs to model r // rows (as `nn.stacked` lays out its batch)
    B, C:          (batch, seq_len, d_state), any strides (views of x_proj's output)
    D, delta_bias: (d_inner,) / (n_models, d_inner) or None
    initial_state: (batch, d_inner, d_state) or None
    returns y (batch, seq_len, d_inner) in the dtype of u, delta, B, C and z promoted (bfloat16 under autocast,
    as mamba-ssm's scan), and the final state (batch, d_inner, d_state) in the compute dtype.

Everything is computed in float32 (float64 when every input is float64), whatever the input dtypes, so the
Function takes autocast's bfloat16 activations and float32 A as they come (no casts). The forward keeps, for
the backward, the state entering every `SEG`-th step (batch * seq_len / 16 states); the backward recomputes
the states in between. Memory: no (batch, seq_len, d_inner, d_state) tensor, forward or backward; the
backward's scratch holds SEG states per (row, block of channels).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..amp import same_autocast_backward, same_autocast_forward
from ..eager import eager_under_compile
from ._kernels import MODE_FULL, MODE_LOCAL, _bwd_kernel, _combine_kernel, _fwd_kernel

__all__ = ["triton_selective_scan", "SEG", "BLOCK_D", "forward_chunks"]

SEG = 16             # steps between states saved for the backward (and its recompute segment)
BLOCK_D = 16         # channels per program
MIN_CHUNK = 256      # time steps per forward program when a long sequence is split over time
TARGET_PROGRAMS = 1024   # split a long sequence over time until about this many programs run


def forward_chunks(batch: int, seq_len: int, d_inner: int) -> int:
    """Time steps per forward program: the whole sequence when rows x channel blocks give enough programs,
    else chunks of at least MIN_CHUNK steps (a multiple of SEG) until about TARGET_PROGRAMS run."""
    programs = batch * triton.cdiv(d_inner, BLOCK_D)
    n_chunks = min(triton.cdiv(seq_len, MIN_CHUNK), max(1, triton.cdiv(TARGET_PROGRAMS, programs)))
    return max(SEG, triton.cdiv(triton.cdiv(seq_len, max(1, n_chunks)), SEG) * SEG)


def _strides(t: Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


MANY_PROGRAMS = 4096   # from this many programs on, one warp each (about what an H100 keeps resident at once)


def _launch_config(d_state: int, programs: int) -> tuple[int, int]:
    """(BLOCK_N, num_warps): the state block padded to a power of two; 256 state elements per warp (8 per thread)
    when there are MANY_PROGRAMS or more (training batches: the GPU is full and fewer threads per program cost
    less), 128 (4 per thread) when there are fewer (small batches, long sequences: each program's sequential steps
    are the critical path and more threads shorten them). Measured on one H100 (docs/benchmarks.md, "GPU,
    2026-11-28"): at batch 1024 (8192 programs) one warp per (16, 16) block took 1.55 ms forward + backward, two
    2.08 ms; the 1,000,000-step forward (1024 programs) took 0.115 s with two and 0.130 s with one (runs 2 and 4,
    which also changed the conv)."""
    block_n = max(2, triton.next_power_of_2(d_state))
    per_warp = 256 if programs >= MANY_PROGRAMS else 128
    return block_n, max(1, min(8, BLOCK_D * block_n // per_warp))


def _compute_dtype(*tensors: Tensor | None) -> tuple[torch.dtype, tl.dtype]:
    """float64 only when every input is float64 (then every output is float64 too: no float64 value is ever
    stored into a 16-bit tensor, a conversion Triton's interpreter gets wrong), else float32."""
    if all(t.dtype == torch.float64 for t in tensors if t is not None):
        return torch.float64, tl.float64
    return torch.float32, tl.float32


def _forward(u: Tensor, delta: Tensor, A3: Tensor, B: Tensor, C: Tensor, D2: Tensor | None, z: Tensor | None,
             bias2: Tensor | None, h0: Tensor | None, softplus: bool, chunk_len: int | None, save: bool
             ) -> tuple[Tensor, Tensor, Tensor | None]:
    batch, seq_len, dim = u.shape
    n_models, _, dstate = A3.shape
    rows = batch // n_models
    ctype, tl_ctype = _compute_dtype(u, delta, A3, B, C, D2, z, bias2, h0)
    out_dtype = functools.reduce(torch.promote_types, [t.dtype for t in (u, delta, B, C, z) if t is not None])
    n_dblocks = triton.cdiv(dim, BLOCK_D)
    chunk = forward_chunks(batch, seq_len, dim) if chunk_len is None else triton.cdiv(chunk_len, SEG) * SEG
    n_chunks = max(1, triton.cdiv(seq_len, chunk))
    block_n, warps = _launch_config(dstate, batch * n_dblocks * n_chunks)
    y = torch.empty(batch, seq_len, dim, dtype=out_dtype, device=u.device)
    h_last = torch.empty(batch, dim, dstate, dtype=ctype, device=u.device)
    saved = torch.empty(batch, triton.cdiv(seq_len, SEG), dim, dstate, dtype=ctype, device=u.device) if save else None
    dummy = y   # for the pointers of absent optional inputs (never read: their HAS_ flag is off)
    D_, z_, bias_ = (t if t is not None else dummy for t in (D2, z, bias2))
    common = (*u.stride(), *delta.stride(), *A3.stride(), *B.stride(), *C.stride(), *_strides(D2, 2),
              *_strides(z, 3), *_strides(bias2, 2))
    flags = dict(HAS_D=D2 is not None, HAS_Z=z is not None, HAS_BIAS=bias2 is not None, SOFTPLUS=softplus,
                 SEG=SEG, BLOCK_D=BLOCK_D, BLOCK_N=block_n, COMPUTE=tl_ctype, num_warps=warps)
    if n_chunks == 1:
        start, start_strides = h0, (*_strides(h0, 3)[:1], 0, *_strides(h0, 3)[1:])
    else:
        # Each chunk's end state from a zero start and its sum of delta, then the chained true start states.
        local = torch.empty(batch, n_chunks, dim, dstate, dtype=ctype, device=u.device)
        dsum = torch.empty(batch, n_chunks, dim, dtype=ctype, device=u.device)
        _fwd_kernel[(batch, n_dblocks, n_chunks)](
            u, delta, A3, B, C, D_, z_, bias_, dummy, dummy, dummy, local, dsum,
            seq_len, dim, dstate, rows, chunk, n_chunks, *common, *(0,) * 4, *(0,) * 3, *(0,) * 4,
            *local.stride(), *dsum.stride(), MODE=MODE_LOCAL, HAS_START=False, SAVE=False, **flags)
        start = torch.empty_like(local)
        _combine_kernel[(batch, n_dblocks)](
            A3, h0 if h0 is not None else dummy, local, dsum, start, rows, dim, dstate, n_chunks,
            *A3.stride(), *_strides(h0, 3), *local.stride(), *dsum.stride(),
            HAS_H0=h0 is not None, BLOCK_D=BLOCK_D, BLOCK_N=block_n, COMPUTE=tl_ctype, num_warps=warps)
        start_strides = start.stride()
    _fwd_kernel[(batch, n_dblocks, n_chunks)](
        u, delta, A3, B, C, D_, z_, bias_, start if start is not None else dummy, y,
        saved if saved is not None else dummy, h_last, dummy,
        seq_len, dim, dstate, rows, chunk, n_chunks, *common, *start_strides, *y.stride(),
        *_strides(saved, 4), *h_last.stride()[:1], 0, *h_last.stride()[1:], *(0,) * 3,
        MODE=MODE_FULL, HAS_START=start is not None, SAVE=save, **flags)
    return y, h_last, saved


def _backward(u: Tensor, delta: Tensor, A3: Tensor, B: Tensor, C: Tensor, D2: Tensor | None, z: Tensor | None,
              bias2: Tensor | None, saved: Tensor, dy: Tensor, dh_last: Tensor | None, softplus: bool
              ) -> tuple[Tensor, ...]:
    batch, seq_len, dim = u.shape
    n_models, _, dstate = A3.shape
    ctype, tl_ctype = saved.dtype, (tl.float64 if saved.dtype == torch.float64 else tl.float32)
    n_dblocks = triton.cdiv(dim, BLOCK_D)
    block_n, warps = _launch_config(dstate, batch * n_dblocks)
    dev = u.device
    du, ddelta = torch.empty(u.shape, dtype=u.dtype, device=dev), torch.empty(u.shape, dtype=delta.dtype, device=dev)
    dz = torch.empty(u.shape, dtype=z.dtype, device=dev) if z is not None else du
    dB_part = torch.empty(n_dblocks, batch, seq_len, dstate, dtype=ctype, device=dev)
    dC_part = torch.empty_like(dB_part)
    dA_rows = torch.empty(batch, dim, dstate, dtype=ctype, device=dev)
    dh0 = torch.empty_like(dA_rows)
    dD_rows = torch.empty(batch, dim, dtype=ctype, device=dev) if D2 is not None else dA_rows
    dbias_rows = torch.empty(batch, dim, dtype=ctype, device=dev) if bias2 is not None else dA_rows
    scratch = torch.empty(batch * n_dblocks * SEG * BLOCK_D * block_n, dtype=ctype, device=dev)
    dy = dy.contiguous()
    dhl = dh_last.contiguous() if dh_last is not None else dA_rows
    _bwd_kernel[(batch, n_dblocks)](
        u, delta, A3, B, C, D2 if D2 is not None else du, z if z is not None else du,
        bias2 if bias2 is not None else du, saved, dy, dhl, scratch,
        du, ddelta, dz, dB_part, dC_part, dA_rows, dD_rows, dbias_rows, dh0,
        seq_len, dim, dstate, batch // n_models, saved.shape[1],
        *u.stride(), *delta.stride(), *A3.stride(), *B.stride(), *C.stride(), *_strides(D2, 2),
        *_strides(z, 3), *_strides(bias2, 2), *saved.stride(), *dy.stride(), *dA_rows.stride(),
        HAS_D=D2 is not None, HAS_Z=z is not None, HAS_BIAS=bias2 is not None, SOFTPLUS=softplus,
        HAS_DHL=dh_last is not None, SEG=SEG, BLOCK_D=BLOCK_D, BLOCK_N=block_n, COMPUTE=tl_ctype, num_warps=warps)

    def per_model(rows: Tensor) -> Tensor:   # (batch, ...) partials -> (n_models, ...)
        return rows.view(n_models, -1, *rows.shape[1:]).sum(1)

    return (du, ddelta, per_model(dA_rows), dB_part.sum(0), dC_part.sum(0),
            per_model(dD_rows) if D2 is not None else None, dz if z is not None else None,
            per_model(dbias_rows) if bias2 is not None else None, dh0)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    @same_autocast_forward
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,  # type: ignore[override]
                D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, h0: Tensor | None,
                softplus: bool, chunk_len: int | None) -> tuple[Tensor, Tensor]:
        stacked = A.dim() == 3
        A3 = A if stacked else A.unsqueeze(0)
        D2 = None if D is None else (D if stacked else D.unsqueeze(0))
        bias2 = None if delta_bias is None else (delta_bias if stacked else delta_bias.unsqueeze(0))
        save = any(ctx.needs_input_grad[:9])
        with _on_device(u):
            y, h_last, saved = _forward(u, delta, A3, B, C, D2, z, bias2, h0, softplus, chunk_len, save)
        if save:
            ctx.save_for_backward(u, delta, A3, B, C, D2, z, bias2, saved)
        ctx.softplus, ctx.stacked = softplus, stacked
        ctx.set_materialize_grads(False)
        return y, h_last

    @staticmethod
    @same_autocast_backward
    def backward(ctx, dy: Tensor | None, dh_last: Tensor | None):  # type: ignore[override]
        u, delta, A3, B, C, D2, z, bias2, saved = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros(u.shape, dtype=u.dtype, device=u.device)
        with _on_device(u):
            du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _backward(u, delta, A3, B, C, D2, z, bias2, saved, dy,
                                                                   dh_last, ctx.softplus)
        if not ctx.stacked:
            dA, dD, dbias = dA[0], None if dD is None else dD[0], None if dbias is None else dbias[0]
        need = ctx.needs_input_grad
        cast = [(g.to(t.dtype) if g is not None and n else None)
                for g, t, n in zip((dA, dB, dC, dD, dbias), (A3, B, C, D2, bias2), (need[2], need[3], need[4],
                                                                                   need[5], need[7]), strict=True)]
        return (du if need[0] else None, ddelta if need[1] else None, *cast[:4], dz if need[6] else None, cast[4],
                dh0 if need[8] else None, None, None)


def _on_device(t: Tensor):
    """Launch on `t`'s GPU (Triton launches on the current device); a no-op on the CPU (the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@eager_under_compile
def triton_selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None,
                          initial_state: Tensor | None = None, delta_softplus: bool = False,
                          chunk_len: int | None = None) -> tuple[Tensor, Tensor]:
    """(y, final state); shapes in the module docstring. `chunk_len`: time steps per forward program (rounded up
    to a multiple of SEG; default `forward_chunks`). Under torch.compile it runs eagerly behind a graph break."""
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), chunk_len)
