"""The block's causal depthwise conv1d + SiLU as Triton kernels, forward and backward, and its autograd Function.

`triton_causal_conv1d(x, weight, bias, x_prev, silu)` computes what `mambacast.nn.fused.causal_conv1d_ref`
computes, on the block's (batch, seq_len, d) layout as it comes (x is a strided view of in_proj's output):

    pre_t = bias + sum_k weight[:, k] * x_{t-(K-1)+k}        (x_{<0} from x_prev, or zeros)
    out_t = silu(pre_t)  (or pre_t)

PyTorch's path copies x into a zero-padded, transposed tensor, runs the depthwise conv2d kernels (forward,
input gradient and weight gradient: 1.2 ms of the 11-13 ms batch-1024 train step on an H100,
docs/benchmarks.md) and applies SiLU separately. Here one program reads a (BLOCK_T, BLOCK_D) tile and its
K - 1 earlier steps, in float32 whatever the input dtype, and writes the output in x's dtype. The backward
recomputes pre (no activation is saved beyond x) and, per program, writes dx and its partial sums of the
weight and bias gradients, which the launcher adds (per model for stacked weights). Everything is computed in
float32 (float64 when every input is float64, as the scan's `_compute_dtype`).

    x, out:   (batch, seq_len, d), any strides
    weight:   (d, K), or (n_models, d, K): stacked models, batch = n_models * rows, row r is model r // rows
    bias:     (d,) / (n_models, d) or None
    x_prev:   (batch, K - 1, d) or None; no gradient flows into it (the caller uses the reference when one must)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..amp import same_autocast_backward, same_autocast_forward
from ..eager import eager_under_compile
from .scan import _compute_dtype, _on_device, _strides

__all__ = ["triton_causal_conv1d"]

BLOCK_T = 32     # time steps per program
BLOCK_D = 64     # channels per program


@triton.jit
def _pre(x_ptr, prev_ptr, w_ptr, bias_ptr, b, model, offs_s, offs_d, mask_d, seqlen,
         s_xb, s_xl, s_xd, s_pb, s_pl, s_pd, s_wm, s_wd, s_wk, s_bm, s_bd,
         K: tl.constexpr, HAS_PREV: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr,
         BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    """pre at the steps offs_s (BLOCK_T,) and channels offs_d (BLOCK_D,), in COMPUTE; steps >= seqlen read zeros
    (the caller masks them)."""
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=COMPUTE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + model * s_bm + offs_d * s_bd, mask=mask_d, other=0.0).to(COMPUTE)[None, :]
    for k in tl.static_range(K):
        src = offs_s - (K - 1) + k
        w = tl.load(w_ptr + model * s_wm + offs_d * s_wd + k * s_wk, mask=mask_d, other=0.0).to(COMPUTE)
        xv = _input(x_ptr, prev_ptr, b, src, offs_d, mask_d, seqlen, s_xb, s_xl, s_xd, s_pb, s_pl, s_pd,
                    K, HAS_PREV, COMPUTE)
        acc += xv * w[None, :]
    return acc


@triton.jit
def _input(x_ptr, prev_ptr, b, src, offs_d, mask_d, seqlen, s_xb, s_xl, s_xd, s_pb, s_pl, s_pd,
           K: tl.constexpr, HAS_PREV: tl.constexpr, COMPUTE: tl.constexpr):
    """x at the steps src (BLOCK_T,), which may be negative (then x_prev's, or zeros) or past the end (zeros)."""
    inside = (src >= 0) & (src < seqlen)
    xv = tl.load(x_ptr + b * s_xb + src[:, None] * s_xl + offs_d[None, :] * s_xd,
                 mask=inside[:, None] & mask_d[None, :], other=0.0).to(COMPUTE)
    if HAS_PREV:
        before = (src < 0) & (src >= -(K - 1))
        xv += tl.load(prev_ptr + b * s_pb + (src + (K - 1))[:, None] * s_pl + offs_d[None, :] * s_pd,
                      mask=before[:, None] & mask_d[None, :], other=0.0).to(COMPUTE)
    return xv


@triton.jit
def _conv_fwd_kernel(x_ptr, prev_ptr, w_ptr, bias_ptr, out_ptr, seqlen, dim, rows_per_model,
                     s_xb, s_xl, s_xd, s_pb, s_pl, s_pd, s_wm, s_wd, s_wk, s_bm, s_bd, s_ob, s_ol, s_od,
                     K: tl.constexpr, HAS_PREV: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    model = b // rows_per_model
    # int64 steps: step x stride passes 2^31 on long sequences
    offs_t = tl.program_id(1).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    pre = _pre(x_ptr, prev_ptr, w_ptr, bias_ptr, b, model, offs_t, offs_d, mask_d, seqlen,
               s_xb, s_xl, s_xd, s_pb, s_pl, s_pd, s_wm, s_wd, s_wk, s_bm, s_bd,
               K, HAS_PREV, HAS_BIAS, BLOCK_T, BLOCK_D, COMPUTE)
    out = pre * tl.sigmoid(pre) if SILU else pre
    tl.store(out_ptr + b * s_ob + offs_t[:, None] * s_ol + offs_d[None, :] * s_od, out.to(out_ptr.dtype.element_ty),
             mask=(offs_t < seqlen)[:, None] & mask_d[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, prev_ptr, w_ptr, bias_ptr, dout_ptr, dx_ptr, dw_ptr, dbias_ptr,
                     seqlen, dim, rows_per_model,
                     s_xb, s_xl, s_xd, s_pb, s_pl, s_pd, s_wm, s_wd, s_wk, s_bm, s_bd, s_gb, s_gl, s_gd,
                     K: tl.constexpr, HAS_PREV: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    """dx_t = sum_k weight[:, k] dpre_{t+(K-1)-k}, dpre = dout silu'(pre); per program, the partial sums
    dw[:, k] = sum_t dpre_t x_{t-(K-1)+k} and dbias = sum_t dpre_t, at (b * n_tblocks + tblock, d, k).
    dout and dx share the strides s_g*."""
    b = tl.program_id(0).to(tl.int64)
    pt = tl.program_id(1)
    model = b // rows_per_model
    offs_t = pt.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)     # int64 as in the forward
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    dx = tl.zeros([BLOCK_T, BLOCK_D], dtype=COMPUTE)
    row = b * tl.num_programs(1) + pt      # this program's row of the dw / dbias partials
    for j in tl.static_range(K):      # dpre at the steps t + j, which read x_t through weight[:, K-1-j]
        offs_s = offs_t + j
        valid = offs_s < seqlen
        pre = _pre(x_ptr, prev_ptr, w_ptr, bias_ptr, b, model, offs_s, offs_d, mask_d, seqlen,
                   s_xb, s_xl, s_xd, s_pb, s_pl, s_pd, s_wm, s_wd, s_wk, s_bm, s_bd,
                   K, HAS_PREV, HAS_BIAS, BLOCK_T, BLOCK_D, COMPUTE)
        dpre = tl.load(dout_ptr + b * s_gb + offs_s[:, None] * s_gl + offs_d[None, :] * s_gd,
                       mask=valid[:, None] & mask_d[None, :], other=0.0).to(COMPUTE)
        if SILU:
            sig = tl.sigmoid(pre)
            dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
        w = tl.load(w_ptr + model * s_wm + offs_d * s_wd + (K - 1 - j) * s_wk, mask=mask_d, other=0.0)
        dx += dpre * w.to(COMPUTE)[None, :]
        if j == 0:   # the weight and bias gradients of this program's own steps
            if HAS_BIAS:
                tl.store(dbias_ptr + row * dim + offs_d, tl.sum(dpre, axis=0), mask=mask_d)
            for k in tl.static_range(K):
                xv = _input(x_ptr, prev_ptr, b, offs_t - (K - 1) + k, offs_d, mask_d, seqlen,
                            s_xb, s_xl, s_xd, s_pb, s_pl, s_pd, K, HAS_PREV, COMPUTE)
                tl.store(dw_ptr + row * dim * K + offs_d * K + k, tl.sum(dpre * xv, axis=0), mask=mask_d)
    tl.store(dx_ptr + b * s_gb + offs_t[:, None] * s_gl + offs_d[None, :] * s_gd, dx.to(dx_ptr.dtype.element_ty),
             mask=(offs_t < seqlen)[:, None] & mask_d[None, :])


def _args(x: Tensor, w3: Tensor, bias2: Tensor | None, x_prev: Tensor | None) -> tuple:
    return (*x.stride(), *_strides(x_prev, 3), *w3.stride(), *_strides(bias2, 2))


class _TritonConv(torch.autograd.Function):
    @staticmethod
    @same_autocast_forward
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, x_prev: Tensor | None,  # type: ignore[override]
                silu: bool) -> Tensor:
        stacked = weight.dim() == 3
        w3 = weight if stacked else weight.unsqueeze(0)
        bias2 = None if bias is None else (bias if stacked else bias.unsqueeze(0))
        batch, seq_len, dim = x.shape
        K = w3.shape[-1]
        ctype, tl_ctype = _compute_dtype(x, w3, bias2, x_prev)
        out = torch.empty(batch, seq_len, dim, dtype=x.dtype, device=x.device)
        grid = (batch, triton.cdiv(seq_len, BLOCK_T), triton.cdiv(dim, BLOCK_D))
        with _on_device(x):
            _conv_fwd_kernel[grid](x, x_prev if x_prev is not None else x, w3, bias2 if bias2 is not None else w3,
                                   out, seq_len, dim, batch // w3.shape[0], *_args(x, w3, bias2, x_prev),
                                   *out.stride(), K=K, HAS_PREV=x_prev is not None, HAS_BIAS=bias2 is not None,
                                   SILU=silu, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, COMPUTE=tl_ctype, num_warps=4)
        ctx.save_for_backward(x, w3, bias2, x_prev)
        ctx.silu, ctx.stacked, ctx.ctype = silu, stacked, (ctype, tl_ctype)
        return out

    @staticmethod
    @same_autocast_backward
    def backward(ctx, dout: Tensor):  # type: ignore[override]
        x, w3, bias2, x_prev = ctx.saved_tensors
        batch, seq_len, dim = x.shape
        n_models, _, K = w3.shape
        n_tblocks = triton.cdiv(seq_len, BLOCK_T)
        ctype, tl_ctype = ctx.ctype
        dout = dout.contiguous()
        dx = torch.empty(batch, seq_len, dim, dtype=x.dtype, device=x.device)
        dw_part = torch.empty(batch * n_tblocks, dim, K, dtype=ctype, device=x.device)
        db_part = torch.empty(batch * n_tblocks, dim, dtype=ctype, device=x.device) \
            if bias2 is not None else dw_part
        with _on_device(x):
            _conv_bwd_kernel[(batch, n_tblocks, triton.cdiv(dim, BLOCK_D))](
                x, x_prev if x_prev is not None else x, w3, bias2 if bias2 is not None else w3, dout, dx, dw_part,
                db_part, seq_len, dim, batch // n_models, *_args(x, w3, bias2, x_prev), *dout.stride(),
                K=K, HAS_PREV=x_prev is not None, HAS_BIAS=bias2 is not None, SILU=ctx.silu,
                BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, COMPUTE=tl_ctype, num_warps=4)
        dw = dw_part.view(n_models, -1, dim, K).sum(1).to(w3.dtype)
        db = db_part.view(n_models, -1, dim).sum(1).to(bias2.dtype) if bias2 is not None else None
        if not ctx.stacked:
            dw, db = dw[0], None if db is None else db[0]
        need = ctx.needs_input_grad
        return dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None, None


@eager_under_compile
def triton_causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, x_prev: Tensor | None = None,
                         silu: bool = True) -> Tensor:
    """The causal depthwise conv (+ SiLU) of the module docstring; under torch.compile it runs eagerly behind a
    graph break. No gradient reaches x_prev."""
    return _TritonConv.apply(x, weight, bias, x_prev, bool(silu))
