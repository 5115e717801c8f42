"""Selective scan: the recurrence at the heart of Mamba (Gu & Dao 2023, Algorithm 2).

Every implementation shares one signature and computes, for each batch row and channel,

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h_{-1} = initial_state or 0
    y_t = C_t . h_t + D * u_t

Shapes (names used across the package):
    u, delta: (batch, seq_len, d_inner)     delta already positive (softplus applied)
    A:        (d_inner, d_state)            negative real (S4D-real)
    B, C:     (batch, seq_len, d_state)     input-dependent ("selective")
    D:        (d_inner,) or None
    returns y: (batch, seq_len, d_inner)
Stacked models (`nn.stacked`): A (n_models, d_inner, d_state), D and delta_bias (n_models, d_inner), the
batch holding each model's rows in turn (row r belongs to model r // (batch / n_models)).

Keyword-only extras, shared by every implementation (mamba-ssm's `selective_scan_fn` names):
    z:                  (batch, seq_len, d_inner) or None; if given the output is `y * silu(z)`
    delta_bias:         (d_inner,) or None; added to delta before the (optional) softplus
    delta_softplus:     if True, delta = softplus(delta + delta_bias) inside the scan
    initial_state:      (batch, d_inner, d_state) or None (zeros): the state h_{-1}
    return_final_state: if True return (y, h_last) with h_last (batch, d_inner, d_state)
Gradients flow to every tensor input, `initial_state` included, and from `h_last`, so a long
sequence can be scanned piece by piece with the state carried between pieces.

Implementations:
`selective_scan_ref`     the readable sequential loop and the oracle for every fast path.
`selective_scan_chunked` pure PyTorch; a chunked scan with a hand-written backward that keeps
                         only one `(chunk, batch, d_inner, d_state)` block alive at a time plus the
                         state at each chunk boundary, recomputing the inside of a chunk during the
                         backward pass (the strategy of mamba-ssm's CUDA kernel, here in PyTorch).
`selective_scan_fused`   the compiled CPU kernel (`mambacast/ops/csrc/selective_scan.cpp`):
                         discretisation, recurrence, C-contraction, D skip, softplus and z gating
                         fused in one pass per (batch row, block of channels) with the state in
                         registers; no `(batch, seq_len, d_inner, d_state)` tensor is ever made.
                         The backward recomputes each chunk from its saved boundary state.
`selective_scan_triton`  the same fusion as a Triton GPU kernel (`mambacast/ops/triton/`), stacked
                         models native; long sequences split over time as well. Optional: needs Triton.
`selective_scan`         the entry point: on CUDA `triton` when Triton imports, else `chunked`; on the
                         CPU `fused` when the kernel builds, else `chunked`. `MAMBACAST_SCAN=ref|chunked|
                         fused|triton` forces one (`fused` / `triton` then raise where they cannot run
                         instead of falling back; `triton` runs CPU tensors under TRITON_INTERPRET=1).

Under autocast the scans compute in float32 (`mambacast.ops.amp`): the reference, chunked and fused scans
receive their inputs cast to float32, the Triton kernel reads bfloat16/float16 inputs and computes in float32.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.amp import autocast_backward, autocast_enabled, float32_forward
from ..ops.eager import eager_under_compile

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked", "selective_scan_fused",
           "selective_scan_triton", "scan_impl", "fused_enabled", "compute_dtype", "DEFAULT_CHUNK", "fused_chunk"]

log = logging.getLogger(__name__)

# Steps per chunk of the chunked scan. 64 keeps a (64, 32, 128, 16) fp32 block at 16 MiB for the
# guide's config while leaving the Python loop (one fused multiply-add per step) the only per-step cost.
DEFAULT_CHUNK = 64
IMPLS = ("ref", "chunked", "fused", "triton")
MAX_FUSED_STATE = 1024


def fused_chunk(d_state: int) -> int:
    """Steps per recompute chunk of the fused kernel: its per-task scratch, 2 * chunk * d_state
    vectors of 64 bytes, stays at 256 KiB (in L2) for any d_state; 128 steps at d_state 16."""
    return max(16, min(256, 2048 // max(1, d_state)))


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  z: Tensor | None = None, delta_bias: Tensor | None = None,
                  initial_state: Tensor | None = None) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, seq_len, d_inner); got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    batch, seq_len, d_inner = u.shape
    if A.dim() not in (2, 3) or A.shape[-2] != d_inner or (A.dim() == 3 and (A.shape[0] < 1 or batch % A.shape[0])):
        raise ValueError(f"A must be (d_inner={d_inner}, d_state), or (n_models, d_inner, d_state) with n_models "
                         f"dividing batch={batch}; got {tuple(A.shape)}")
    expected = (batch, seq_len, A.shape[-1])
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must be (batch, seq_len, d_state)={expected}; got {tuple(t.shape)}")
    per_channel = tuple(A.shape[:-1])        # (d_inner,) or (n_models, d_inner)
    if D is not None and tuple(D.shape) != per_channel:
        raise ValueError(f"D must be {per_channel}; got {tuple(D.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must be (batch, seq_len, d_inner)={tuple(u.shape)}; got {tuple(z.shape)}")
    if delta_bias is not None and tuple(delta_bias.shape) != per_channel:
        raise ValueError(f"delta_bias must be {per_channel}; got {tuple(delta_bias.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, d_inner, A.shape[-1]):
        raise ValueError(f"initial_state must be (batch, d_inner, d_state)={(batch, d_inner, A.shape[-1])}; "
                         f"got {tuple(initial_state.shape)}")


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype the float32-under-autocast Functions (`ops.amp.float32_forward`) compute `t` in: float32 under
    autocast for `t`'s device (float64 excepted), else `t`'s own."""
    if t.is_floating_point() and t.dtype != torch.float64 and autocast_enabled(t.device):
        return torch.float32
    return t.dtype


def _per_model(fn: Callable[..., Tensor | tuple[Tensor, Tensor]], u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
               C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, initial_state: Tensor | None,
               return_final_state: bool, **kwargs) -> Tensor | tuple[Tensor, Tensor]:
    """Stacked models (A with a leading n_models dimension) through an implementation for one model: model m's
    rows with its own A[m], D[m] and delta_bias[m], one model after another."""
    n_models = A.shape[0]
    rows = u.shape[0] // n_models
    ys, hs = [], []
    for m in range(n_models):
        r = slice(m * rows, (m + 1) * rows)
        y, h = fn(u[r], delta[r], A[m], B[r], C[r], None if D is None else D[m], z=None if z is None else z[r],
                  delta_bias=None if delta_bias is None else delta_bias[m],
                  initial_state=None if initial_state is None else initial_state[r], return_final_state=True,
                  **kwargs)
        ys.append(y)
        hs.append(h)
    y, h = torch.cat(ys), torch.cat(hs)
    return (y, h) if return_final_state else y


def _float32_under_autocast(*tensors: Tensor | None) -> list[Tensor | None]:
    """The activations as the scans compute them: float32 under autocast (`compute_dtype`), else unchanged. For
    the steps done in PyTorch ops around (ref: all of it) or outside (chunked: softplus and the z gate) a Function."""
    return [t if t is None else t.to(compute_dtype(t)) for t in tensors]


def _discretise_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias
    return F.softplus(delta) if delta_softplus else delta


def _finish(y: Tensor, z: Tensor | None, h_last: Tensor, return_final_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    if z is not None:
        y = y * F.silu(z)
    return (y, h_last) if return_final_state else y


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None, *, z: Tensor | None = None, delta_bias: Tensor | None = None,
                       delta_softplus: bool = False, initial_state: Tensor | None = None,
                       return_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential reference: one step of the recurrence per time step, autograd throughout.

    Holds `(batch, seq_len, d_inner, d_state)` for the discretised `exp(delta*A)` and
    `delta*B*u`; it is meant to be read and to check the fast paths, not to be fast.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if A.dim() == 3:
        return _per_model(selective_scan_ref, u, delta, A, B, C, D, z, delta_bias, initial_state, return_final_state,
                          delta_softplus=delta_softplus)
    u, delta, B, C, z = _float32_under_autocast(u, delta, B, C, z)
    batch, seq_len, d_inner = u.shape
    delta = _discretise_delta(delta, delta_bias, delta_softplus)
    deltaA = torch.exp(delta.unsqueeze(-1) * A)                         # (b, l, d, n)
    deltaBu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)                # (b, l, d, n)
    h = initial_state if initial_state is not None else u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(seq_len):
        h = deltaA[:, t] * h + deltaBu[:, t]
        ys.append((h * C[:, t].unsqueeze(1)).sum(-1))                   # (b, d)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D
    return _finish(y, z, h, return_final_state)


def _chunk_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, t0: int, t1: int
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Time-major discretisation of one chunk: dA, dBu (T, b, d, n), and delta, B (T, b, ...)."""
    dl = delta[:, t0:t1].transpose(0, 1).contiguous()                   # (T, b, d)
    Bt = B[:, t0:t1].transpose(0, 1).contiguous()                       # (T, b, n)
    ut = u[:, t0:t1].transpose(0, 1)                                    # (T, b, d)
    dA = (dl.unsqueeze(-1) * A).exp_()                                  # (T, b, d, n)
    dBu = (dl * ut).unsqueeze(-1) * Bt.unsqueeze(2)                     # (T, b, d, n)
    return dA, dBu, dl, Bt


def _scan_chunk(dA: Tensor, dBu: Tensor, h0: Tensor) -> Tensor:
    """Run the recurrence over one chunk; returns every state hs: (T, b, d, n)."""
    hs = torch.empty_like(dBu)
    h = h0
    for t in range(dA.shape[0]):
        h = torch.addcmul(dBu[t], dA[t], h, out=hs[t])
    return hs


def _contract_c(hs: Tensor, Ct: Tensor) -> Tensor:
    """y_t = C_t . h_t for a chunk: hs (T, b, d, n), Ct (T, b, n) -> (T, b, d)."""
    T, b, d, n = hs.shape
    return torch.bmm(hs.reshape(T * b, d, n), Ct.reshape(T * b, n, 1)).view(T, b, d)


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    @float32_forward
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,  # type: ignore[override]
                D: Tensor | None, chunk: int, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, seq_len, d_inner = u.shape
        h = u.new_zeros(batch, d_inner, A.shape[1]) if h0 is None else h0.detach()
        y = torch.empty_like(u)
        starts = list(range(0, seq_len, chunk))
        h0s = []
        hs = dA = dBu = None
        for t0 in starts:
            t1 = min(t0 + chunk, seq_len)
            dA, dBu, _, _ = _chunk_inputs(u, delta, A, B, t0, t1)
            h0s.append(h)
            hs = _scan_chunk(dA, dBu, h)
            h = hs[-1]
            Ct = C[:, t0:t1].transpose(0, 1).contiguous()
            y[:, t0:t1] = _contract_c(hs, Ct).transpose(0, 1)
        if D is not None:
            y.add_(u * D)
        # A single chunk keeps its states for the backward pass instead of recomputing them.
        ctx.single = len(starts) == 1
        empty = u.new_empty(0)
        saved_hs = (hs, dA, dBu) if ctx.single else (empty, empty, empty)
        ctx.save_for_backward(u, delta, A, B, C, D if D is not None else u.new_empty(0),
                              torch.stack(h0s) if h0s else u.new_empty(0), *saved_hs)
        ctx.has_d = D is not None
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)
        return y, h.clone()

    @staticmethod
    @autocast_backward
    def backward(ctx, dy: Tensor | None, dh_last: Tensor | None):  # type: ignore[override]
        u, delta, A, B, C, D, h0s, *saved = ctx.saved_tensors
        batch, seq_len, d_inner = u.shape
        chunk = ctx.chunk
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dB = torch.empty_like(B)
        dC = torch.empty_like(C)
        dAmat = torch.zeros_like(A)
        # carry = dL/dh at the end of the chunk being processed, from outside it: from the final
        # state at first, then exp(delta_{t1} A) * g_{t1} flowing back from the next chunk.
        carry = dh_last
        starts = list(range(0, seq_len, chunk))
        for i in reversed(range(len(starts))):
            t0 = starts[i]
            t1 = min(t0 + chunk, seq_len)
            T = t1 - t0
            dl = delta[:, t0:t1].transpose(0, 1).contiguous()            # (T, b, d)
            Bt = B[:, t0:t1].transpose(0, 1).contiguous()                # (T, b, n)
            if ctx.single:
                hs, dA, dBu = saved
            else:
                dA, dBu, _, _ = _chunk_inputs(u, delta, A, B, t0, t1)
                hs = _scan_chunk(dA, dBu, h0s[i])
            Ct = C[:, t0:t1].transpose(0, 1).contiguous()                # (T, b, n)
            dyt = dy[:, t0:t1].transpose(0, 1).contiguous()              # (T, b, d)
            ut = u[:, t0:t1].transpose(0, 1)
            # g_t = dL/dh_t = dy_t C_t + exp(delta_{t+1} A) g_{t+1}, run backwards in time.
            g = dyt.unsqueeze(-1) * Ct.unsqueeze(2)                      # (T, b, d, n)
            if carry is not None:
                g[T - 1].add_(carry)
            for t in range(T - 2, -1, -1):
                g[t].addcmul_(dA[t + 1], g[t + 1])
            carry = dA[0] * g[0]
            # d/d(delta*A) of exp(delta*A) h_prev is g * exp(delta*A) h_prev = g * (h_t - delta B u).
            gz = dBu.neg_().add_(hs).mul_(g)                             # (T, b, d, n), reuses dBu
            g_flat = g.view(T * batch, d_inner, -1)
            gB = torch.bmm(g_flat, Bt.view(T * batch, -1, 1)).view(T, batch, d_inner)
            dlu = dl * ut
            dB[:, t0:t1] = torch.bmm(g_flat.transpose(1, 2), dlu.reshape(T * batch, d_inner, 1)
                                     ).view(T, batch, -1).transpose(0, 1)
            dC[:, t0:t1] = torch.bmm(hs.view(T * batch, d_inner, -1).transpose(1, 2),
                                     dyt.view(T * batch, d_inner, 1)).view(T, batch, -1).transpose(0, 1)
            ddelta[:, t0:t1] = ((gz * A).sum(-1) + gB * ut).transpose(0, 1)
            dAmat += gz.mul_(dl.unsqueeze(-1)).sum(dim=(0, 1))
            du[:, t0:t1] = (gB * dl).transpose(0, 1)
        dD = None
        if ctx.has_d:
            du.add_(dy * D)
            dD = (dy * u).sum(dim=(0, 1))
        return du, ddelta, dAmat, dB, dC, dD, None, carry if ctx.needs_input_grad[7] else None


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, chunk: int = DEFAULT_CHUNK, *, z: Tensor | None = None,
                           delta_bias: Tensor | None = None, delta_softplus: bool = False,
                           initial_state: Tensor | None = None,
                           return_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked scan with a recomputing backward; same maths as `selective_scan_ref`.

    Memory: one `(chunk, batch, d_inner, d_state)` block plus `ceil(seq_len/chunk)` boundary
    states, instead of the reference's `(batch, seq_len, d_inner, d_state)` tensors.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive integer")
    if A.dim() == 3:
        return _per_model(selective_scan_chunked, u, delta, A, B, C, D, z, delta_bias, initial_state,
                          return_final_state, delta_softplus=delta_softplus, chunk=chunk)
    u, delta, B, C, z = _float32_under_autocast(u, delta, B, C, z)
    delta = _discretise_delta(delta, delta_bias, delta_softplus)
    y, h_last = _ChunkedScan.apply(u, delta, A, B, C, D, chunk, initial_state)
    return _finish(y, z, h_last, return_final_state)


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


class _FusedScan(torch.autograd.Function):
    @staticmethod
    @float32_forward
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,  # type: ignore[override]
                D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, h0: Tensor | None,
                softplus: bool, chunk: int) -> tuple[Tensor, Tensor]:
        from ..ops import load

        ops = load()
        At = A.t().contiguous()                                          # (n, d)
        h0t = None if h0 is None else h0.transpose(1, 2).contiguous()    # (b, n, d)
        save = any(ctx.needs_input_grad[:9])
        y, h_last, hsave, ypre = ops.scan_fwd(u, delta, At, B, C, D, z, delta_bias, None, h0t, softplus, chunk, save)
        if save:
            ctx.save_for_backward(u, delta, At, B, C, D, z, delta_bias, hsave, ypre)
        ctx.softplus, ctx.chunk = softplus, chunk
        ctx.set_materialize_grads(False)
        return y, h_last.transpose(1, 2)

    @staticmethod
    @autocast_backward
    def backward(ctx, dy: Tensor | None, dh_last: Tensor | None):  # type: ignore[override]
        from ..ops import load

        u, delta, At, B, C, D, z, delta_bias, hsave, ypre = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else _unit_last(dy)
        dhl = None if dh_last is None else dh_last.transpose(1, 2).contiguous()
        need = ctx.needs_input_grad
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0, *_ = load().scan_bwd(
            u, delta, At, B, C, D, z, delta_bias, None, hsave, ypre, dy, dhl, ctx.softplus, ctx.chunk, None, need[1])

        def total(partial: Tensor) -> Tensor:   # partial sums over a leading dimension
            return partial[0] if partial.shape[0] == 1 else partial.sum(0)

        return (du if need[0] else None, ddelta if need[1] else None,
                dA.sum(0).t() if need[2] else None, total(dB) if need[3] else None,
                total(dC) if need[4] else None, total(dD) if D is not None and need[5] else None,
                dz if z is not None and need[6] else None,
                total(dbias) if delta_bias is not None and need[7] else None,
                dh0.transpose(1, 2) if need[8] else None, None, None)


@eager_under_compile
def _fused_apply(*args):
    # The kernel has no fake implementation: under torch.compile it runs eagerly behind a graph break.
    return _FusedScan.apply(*args)


def selective_scan_fused(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Tensor | None = None, chunk: int | None = None, *, z: Tensor | None = None,
                         delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         initial_state: Tensor | None = None,
                         return_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The compiled CPU kernel (float32/float64, d_state <= 1024); same maths as `selective_scan_ref`.

    Memory: the inputs, y, and one `(batch, d_inner, d_state)` state per `chunk` steps saved for
    the backward (none without autograd). Raises `mambacast.ops.ExtensionUnavailable` if the
    kernel cannot be built. Inputs of mixed floating dtypes are computed in their promoted dtype
    (float32 under autocast).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan_fused runs on the CPU only; got tensors on {u.device}")
    if A.shape[-1] > MAX_FUSED_STATE:
        raise ValueError(f"selective_scan_fused supports d_state <= {MAX_FUSED_STATE}; got {A.shape[-1]}")
    chunk = fused_chunk(A.shape[-1]) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive integer")
    if A.dim() == 3:
        return _per_model(selective_scan_fused, u, delta, A, B, C, D, z, delta_bias, initial_state,
                          return_final_state, delta_softplus=delta_softplus, chunk=chunk)
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    dtype = functools.reduce(torch.promote_types, (compute_dtype(t) for t in tensors))
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"selective_scan_fused supports float32 and float64; got {dtype}")

    def prep(t: Tensor | None, vector: bool = False) -> Tensor | None:
        if t is None:
            return None
        t = t.to(dtype)
        return t.contiguous() if vector else _unit_last(t)

    y, h_last = _fused_apply(prep(u), prep(delta), prep(A), prep(B), prep(C), prep(D, True), prep(z),
                             prep(delta_bias, True), prep(initial_state), bool(delta_softplus), chunk)
    return (y, h_last) if return_final_state else y


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Tensor | None = None, chunk_len: int | None = None, *, z: Tensor | None = None,
                          delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          initial_state: Tensor | None = None,
                          return_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The fused Triton kernel (`mambacast.ops.triton.scan`); same maths as `selective_scan_ref`, stacked models
    included. Runs CUDA tensors, or CPU tensors under `TRITON_INTERPRET=1`; raises ValueError elsewhere.

    Memory: the inputs, y, and one `(batch, d_inner, d_state)` state per 16 steps saved for the backward (none
    without autograd). `chunk_len`: time steps per forward program (default: chosen from the shape).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    from ..ops import triton as triton_ops

    if not triton_ops.runs_on(u.device):
        why = "Triton is not installed" if not triton_ops.available() else f"the tensors are on {u.device}"
        raise ValueError(f"selective_scan_triton cannot run here: {why} (it needs CUDA tensors, or "
                         "TRITON_INTERPRET=1 for CPU tensors); use MAMBACAST_SCAN=auto")
    from ..ops.triton.scan import triton_selective_scan

    y, h_last = triton_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_len)
    return (y, h_last) if return_final_state else y


def _choice() -> str:
    choice = os.environ.get("MAMBACAST_SCAN", "auto").strip().lower() or "auto"
    if choice != "auto" and choice not in IMPLS:
        raise ValueError(f"MAMBACAST_SCAN={choice!r} is invalid: use one of auto, {', '.join(IMPLS)}")
    return choice


def fused_enabled(t: Tensor, d_state: int = 1) -> bool:
    """Whether the fused CPU kernels serve tensors like `t` now: CPU, float32/float64 (autocast's dtypes count as
    float32: `compute_dtype`), d_state within range, `MAMBACAST_SCAN` auto or fused, and the kernel built (built
    on first call)."""
    if t.device.type != "cpu" or compute_dtype(t) not in (torch.float32, torch.float64) or d_state > MAX_FUSED_STATE:
        return False
    if _choice() not in ("auto", "fused"):
        return False
    from ..ops import available

    return available()


@functools.lru_cache(maxsize=1)
def _warn_no_triton() -> None:
    log.warning("Triton is not installed: the selective scan on CUDA runs as the pure-PyTorch chunked scan (much "
                "slower). Triton ships with PyTorch's CUDA wheels; set MAMBACAST_SCAN=chunked to silence this.")


def scan_impl(u: Tensor, A: Tensor) -> str:
    """The implementation `selective_scan` uses for these inputs: 'ref', 'chunked', 'fused' or 'triton'.

    `MAMBACAST_SCAN` (ref|chunked|fused|triton|auto, default auto) forces one; auto picks `triton` on CUDA
    when Triton imports, `fused` on CPU for float32/float64 when the kernel builds (a build failure is logged
    once), else `chunked`.
    """
    choice = _choice()
    if choice != "auto":
        return choice
    if u.device.type == "cuda":
        from ..ops import triton as triton_ops

        if triton_ops.available():
            return "triton"
        _warn_no_triton()
        return "chunked"
    return "fused" if fused_enabled(u, A.shape[-1]) else "chunked"


_IMPL_FNS = {"ref": selective_scan_ref, "chunked": selective_scan_chunked, "fused": selective_scan_fused,
             "triton": selective_scan_triton}


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, *, z: Tensor | None = None, delta_bias: Tensor | None = None,
                   delta_softplus: bool = False, initial_state: Tensor | None = None,
                   return_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Default selective scan (see module docstring for the equations, shapes and the choice of kernel)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _IMPL_FNS[scan_impl(u, A)](u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                      delta_softplus=delta_softplus, initial_state=initial_state,
                                      return_final_state=return_final_state)
