"""Selective scan: the recurrence at the heart of Mamba (Gu & Dao 2023, Algorithm 2).

Every implementation shares one signature and computes, for each batch row and channel,

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h_{-1} = 0
    y_t = C_t . h_t + D * u_t

Shapes (names used across the package):
    u, delta: (batch, seq_len, d_inner)     delta already positive (softplus applied)
    A:        (d_inner, d_state)            negative real (S4D-real)
    B, C:     (batch, seq_len, d_state)     input-dependent ("selective")
    D:        (d_inner,) or None
    returns y: (batch, seq_len, d_inner)

`selective_scan_ref` is the readable sequential loop and the oracle for every fast path.
`selective_scan` is the default: a chunked scan with a hand-written backward that keeps
only one `(chunk, batch, d_inner, d_state)` block alive at a time plus the state at each
chunk boundary, recomputing the inside of a chunk during the backward pass (the strategy
of mamba-ssm's CUDA kernel, here in plain PyTorch).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked", "DEFAULT_CHUNK"]

# Steps per chunk. 64 keeps a (64, 32, 128, 16) fp32 block at 16 MiB for the guide's config
# while leaving the Python loop (one fused multiply-add per step) the only per-step cost.
DEFAULT_CHUNK = 64


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, seq_len, d_inner); got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    batch, seq_len, d_inner = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be (d_inner={d_inner}, d_state); got {tuple(A.shape)}")
    expected = (batch, seq_len, A.shape[1])
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must be (batch, seq_len, d_state)={expected}; got {tuple(t.shape)}")
    if D is not None and tuple(D.shape) != (d_inner,):
        raise ValueError(f"D must be (d_inner,)=({d_inner},); got {tuple(D.shape)}")


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None) -> Tensor:
    """Sequential reference: one step of the recurrence per time step, autograd throughout.

    Holds `(batch, seq_len, d_inner, d_state)` for the discretised `exp(delta*A)` and
    `delta*B*u`; it is meant to be read and to check the fast paths, not to be fast.
    """
    _check_shapes(u, delta, A, B, C, D)
    batch, seq_len, d_inner = u.shape
    deltaA = torch.exp(delta.unsqueeze(-1) * A)                         # (b, l, d, n)
    deltaBu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)                # (b, l, d, n)
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(seq_len):
        h = deltaA[:, t] * h + deltaBu[:, t]
        ys.append((h * C[:, t].unsqueeze(1)).sum(-1))                   # (b, d)
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D
    return y


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
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,  # type: ignore[override]
                D: Tensor | None, chunk: int) -> Tensor:
        batch, seq_len, d_inner = u.shape
        h = u.new_zeros(batch, d_inner, A.shape[1])
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
                              torch.stack(h0s), *saved_hs)
        ctx.has_d = D is not None
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        u, delta, A, B, C, D, h0s, *saved = ctx.saved_tensors
        batch, seq_len, d_inner = u.shape
        chunk = ctx.chunk
        dy = dy.contiguous()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dB = torch.empty_like(B)
        dC = torch.empty_like(C)
        dAmat = torch.zeros_like(A)
        carry = None  # exp(delta_{t1} A) * g_{t1}, flowing back from the next chunk
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
        return du, ddelta, dAmat, dB, dC, dD, None


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Chunked scan with a recomputing backward; same maths as `selective_scan_ref`.

    Memory: one `(chunk, batch, d_inner, d_state)` block plus `ceil(seq_len/chunk)` boundary
    states, instead of the reference's `(batch, seq_len, d_inner, d_state)` tensors.
    """
    _check_shapes(u, delta, A, B, C, D)
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive integer")
    return _ChunkedScan.apply(u, delta, A, B, C, D, chunk)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None) -> Tensor:
    """Default selective scan (see module docstring for the equations and shapes)."""
    return selective_scan_chunked(u, delta, A, B, C, D)
