"""Fused CPU pieces of the Mamba block, with pure-PyTorch equivalents used as fallback and oracle.

`causal_conv1d`: the block's causal depthwise conv1d (+ SiLU) on the `(batch, seq_len, d_inner)`
layout, with an optional prefix of the `d_conv - 1` inputs before the sequence (the carried
conv state). The fused kernel works on that layout directly; PyTorch's conv1d needs
`(batch, d_inner, seq_len)` and two transposed copies.

`fused_block`: a whole pre-norm residual block, LayerNorm, in_proj, `mamba_inner` and out_proj plus the residual, as
one autograd node written in C++ (ops/csrc/mamba_block.h), where it applies (a whole sequence from the zero state, one
model, the CPU kernels' dtypes): the same kernels and matmuls in the same order and dtypes, without the ~25 framework
ops, the autograd nodes and the Python between them each way.

`mamba_inner`: everything between `in_proj` and `out_proj` in one autograd node (as mamba-ssm's
`mamba_inner_fn`): conv1d + SiLU, `x_proj`, `dt_proj`, softplus, the selective scan, the D skip
and the `silu(z)` gate. Its backward is written by hand: it runs the kernels' backward passes
and five small matmuls, and writes dx and dz straight into the two halves of one
`(batch, seq_len, 2*d_inner)` gradient, so autograd keeps no intermediate of the block and
never concatenates. `mamba_inner_ref` is the same function in plain PyTorch ops.

Under bfloat16 autocast on the CPU, `x_proj`'s forward and weight gradient run in bfloat16 with float32
accumulation, as autocast runs every other Linear (and as `mamba_inner_ref`'s ops and mamba-ssm's
`mamba_inner_fn` run it); its input gradient, the conv, the scan and dt_proj stay float32, the scan's exp(delta A)
by a degree-4 polynomial (3e-6 relative instead of 2e-7: `vexp2_fast` in ops/csrc/simd.h). The kernels
read xz (in_proj's bfloat16 output) as it is, widening it exactly as they load it, and write its gradient
in bfloat16, rounded as torch rounds; the gated output y comes out in bfloat16 too (what out_proj's autocast
would cast it to) and its gradient is read as it is. These are the values of casting around float32 kernels,
without the casts' passes over the block's activations or a float32 copy of xz kept for the backward.

Both also run M stacked models at once (`nn.stacked`): every weight then has a leading
`n_models` dimension and the batch holds each model's rows in turn (rows `m * b .. (m+1) * b - 1`
belong to model m). The kernel reads each row's parameters from its model, and its per-row
gradient partials are summed per model; x_proj becomes one batched matmul.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.amp import autocast_backward, float32_forward
from ..ops.eager import eager_under_compile
from .scan import compute_dtype, fused_chunk, fused_enabled, scan_impl, selective_scan

__all__ = ["causal_conv1d", "causal_conv1d_ref", "mamba_inner", "mamba_inner_ref", "fused_ops", "fused_block"]


def fused_ops(*tensors: Tensor, d_state: int = 1):
    """The kernel's ops if the fused path applies to these tensors (CPU, one float32/float64
    dtype, kernel built, `MAMBACAST_SCAN` auto or fused), else None. Under autocast the fused Functions
    compute in float32 (`ops.amp`), so autocast's bfloat16 counts as float32 (`compute_dtype`)."""
    t = tensors[0]
    if not t.is_cpu:
        return None
    dtype = t.dtype
    # (dtype and is_cpu first: this runs before every fused call, and comparing torch.device objects costs more)
    if not all(x.dtype == dtype and x.is_cpu for x in tensors):
        dtype = compute_dtype(t)
        if any(compute_dtype(x) != dtype or not x.is_cpu for x in tensors):
            return None
    if not fused_enabled(t, d_state):
        return None
    from ..ops import load

    return load()


@eager_under_compile
def _apply(fn: type[torch.autograd.Function], *args):
    """Run a fused autograd Function eagerly: under torch.compile the kernels (which have no fake
    implementations) sit behind a graph break instead of failing the trace."""
    return fn.apply(*args)


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None, x_prev: Tensor | None = None,
                      silu: bool = True) -> Tensor:
    """x (batch, seq_len, d), weight (d, K), bias (d,), x_prev (batch, K-1, d) -> (batch, seq_len, d).

    Stacked models: weight (n_models, d, K), bias (n_models, d); model m's rows are folded into channels
    m*d .. (m+1)*d - 1 of one depthwise conv (its channels are independent), so all models run as one.
    """
    if weight.dim() == 3:
        M, d, K = weight.shape
        rows, seq_len = x.shape[0] // M, x.shape[1]

        def fold(t: Tensor) -> Tensor:   # (M * rows, T, d) -> (rows, T, M * d)
            return t.reshape(M, rows, t.shape[1], d).permute(1, 2, 0, 3).reshape(rows, t.shape[1], M * d)

        out = causal_conv1d_ref(fold(x), weight.reshape(M * d, K), None if bias is None else bias.reshape(M * d),
                                None if x_prev is None else fold(x_prev), silu)
        return out.view(rows, seq_len, M, d).permute(2, 0, 1, 3).reshape(M * rows, seq_len, d)
    d, K = weight.shape
    if x_prev is None:
        x_prev = x.new_zeros(x.shape[0], K - 1, d)
    xp = torch.cat([x_prev, x], dim=1).transpose(1, 2)                  # (b, d, K-1+l)
    out = F.conv1d(xp, weight.unsqueeze(1), bias, groups=d).transpose(1, 2)
    return F.silu(out) if silu else out


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    @float32_forward
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, x_prev: Tensor | None,  # type: ignore[override]
                silu: bool) -> Tensor:
        ops = fused_ops(x)
        wt = weight.t().contiguous()
        out = ops.conv_fwd(x, wt, bias, x_prev, silu)
        ctx.save_for_backward(x, wt, bias, x_prev)
        ctx.silu = silu
        return out

    @staticmethod
    @autocast_backward
    def backward(ctx, dout: Tensor):  # type: ignore[override]
        from ..ops import load

        x, wt, bias, x_prev = ctx.saved_tensors
        dx, dw, db, dxp = load().conv_bwd(x, wt, bias, x_prev, _unit_last(dout), ctx.silu, None)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dw.sum(0).t() if need[1] else None,
                db.sum(0) if bias is not None and need[2] else None,
                dxp if x_prev is not None and need[3] else None, None)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, x_prev: Tensor | None = None,
                  silu: bool = True) -> Tensor:
    """Causal depthwise conv over time: out_t = bias + sum_k weight[:, k] * x_{t-(K-1)+k}, then SiLU.

    x (batch, seq_len, d); weight (d, K), or (n_models, d, K) stacked; bias (d,) / (n_models, d) or None;
    x_prev (batch, K-1, d): the inputs before x (zeros if None). Uses the fused CPU kernel when it applies, the
    Triton kernel where the scan runs as Triton (CUDA; unless a gradient must reach x_prev), else PyTorch's conv1d.
    """
    K = weight.shape[-1]
    tensors = [t for t in (x, weight, bias, x_prev) if t is not None]
    if weight.dim() == 2 and K <= 16 and fused_ops(*tensors) is not None:
        return _apply(_CausalConv1d, _unit_last(x), weight, bias, None if x_prev is None else x_prev.contiguous(),
                      silu)
    if _triton_conv(x, weight, x_prev):
        from ..ops.triton.conv import triton_causal_conv1d

        return triton_causal_conv1d(x, weight, bias, x_prev, silu)
    return causal_conv1d_ref(x, weight, bias, x_prev, silu)


def _triton_conv(x: Tensor, weight: Tensor, x_prev: Tensor | None) -> bool:
    """Whether `causal_conv1d` runs the Triton kernel: the scan does (`scan_impl`), Triton can run on x's device,
    and no gradient must reach x_prev (the kernel computes none)."""
    from ..ops import triton as triton_ops

    if scan_impl(x, weight) != "triton" or not triton_ops.runs_on(x.device):
        return False
    return x_prev is None or not (x_prev.requires_grad and torch.is_grad_enabled())


def _split_sizes(x_proj_weight: Tensor, dt_proj_weight: Tensor, A: Tensor) -> tuple[int, int]:
    return dt_proj_weight.shape[-1], A.shape[-1]


def _lowp(t: Tensor) -> bool:
    """Whether the fused block runs at bfloat16's precision (x_proj in bfloat16, the scan's cheaper exp): under the
    CPU's bfloat16 autocast, for the activations autocast would cast (not float64). Read here, outside the
    Function, whose forward runs with autocast off."""
    return (t.is_cpu and t.dtype != torch.float64 and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _linear(x: Tensor, weight: Tensor) -> Tensor:
    """x (batch, seq_len, in) @ weight.T; weight (out, in), or (n_models, out, in) with batch = n_models * rows."""
    if weight.dim() == 2:
        return F.linear(x, weight)
    M, batch, seq_len = weight.shape[0], x.shape[0], x.shape[1]
    return torch.bmm(x.reshape(M, -1, x.shape[-1]), weight.transpose(1, 2)).view(batch, seq_len, -1)


def _per_model(partial: Tensor, n_models: int | None) -> Tensor:
    """Gradient partials along the leading dimension -> their sum, or with n_models the sum per model:
    (n_models * rows, ...) -> (n_models, ...)."""
    if n_models is None:
        return partial[0] if partial.shape[0] == 1 else partial.sum(0)
    return partial.view(n_models, -1, *partial.shape[1:]).sum(1)


def mamba_inner_ref(xz: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, x_proj_weight: Tensor,
                    dt_proj_weight: Tensor, dt_proj_bias: Tensor | None, A: Tensor, D: Tensor | None,
                    conv_state: Tensor | None = None, ssm_state: Tensor | None = None,
                    last_only: bool = False) -> tuple[Tensor, Tensor]:
    """The block between in_proj and out_proj in PyTorch ops: xz (batch, seq_len, 2*d_inner) ->
    (y * silu(z) (batch, seq_len, d_inner), final SSM state (batch, d_inner, d_state)). With x alone
    (batch, seq_len, d_inner) in place of xz there is no gate: y is returned before it (the caller gates the
    steps it reads, as the last block does at the last step). `last_only` (x alone): y at the last step only,
    (batch, 1, d_inner), which is all the last block reads.

    conv_weight (d_inner, d_conv); conv_state (batch, d_conv-1, d_inner): the inputs before xz;
    ssm_state (batch, d_inner, d_state): the state before xz. The scan is `selective_scan`
    (whose implementation MAMBACAST_SCAN picks). Stacked weights (leading n_models dimension): every
    step runs all models at once (conv with the models folded into channels, batched matmuls, the scan
    with per-model A, D and dt bias).
    """
    return _mamba_inner_ops(causal_conv1d_ref, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                            dt_proj_bias, A, D, conv_state, ssm_state, last_only)


def _mamba_inner_ops(conv: Callable[..., Tensor], xz: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
                     x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor | None, A: Tensor,
                     D: Tensor | None, conv_state: Tensor | None, ssm_state: Tensor | None,
                     last_only: bool) -> tuple[Tensor, Tensor]:
    """`mamba_inner_ref` with `conv` for the causal conv (the reference, or `causal_conv1d`'s choice)."""
    R, N = _split_sizes(x_proj_weight, dt_proj_weight, A)
    x, z = _split_gate(xz, conv_weight, last_only)
    x = conv(x, conv_weight, conv_bias, conv_state)
    dt, B, C = torch.split(_linear(x, x_proj_weight), [R, N, N], dim=-1)
    y, h = selective_scan(x, _linear(dt, dt_proj_weight), A, B, C, D, z=z, delta_bias=dt_proj_bias,
                          delta_softplus=True, initial_state=ssm_state, return_final_state=True)
    return (y[:, -1:], h) if last_only else (y, h)


def _split_gate(xz: Tensor, conv_weight: Tensor, last_only: bool = False) -> tuple[Tensor, Tensor | None]:
    """xz (batch, seq_len, 2*d_inner) -> x, z views; x alone (batch, seq_len, d_inner) -> x, None (no gate)."""
    d_inner = conv_weight.shape[-2]
    if xz.shape[-1] == d_inner:
        return xz, None
    if last_only:
        raise ValueError("mamba_inner: last_only takes x alone (d_inner channels), not x and z: the caller gates the "
                         "last step")
    if xz.shape[-1] != 2 * d_inner:
        raise ValueError(f"mamba_inner: xz has {xz.shape[-1]} channels; expected 2 * d_inner = {2 * d_inner} "
                         f"(x and z) or d_inner = {d_inner} (x alone)")
    return xz[..., :d_inner], xz[..., d_inner:]


class _MambaInner(torch.autograd.Function):
    @staticmethod
    @float32_forward(keep_bf16=(0,))   # xz: the kernels read an autocast bfloat16 in_proj output as it is
    def forward(ctx, xz: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,  # type: ignore[override]
                x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor | None, A: Tensor,
                D: Tensor | None, conv_state: Tensor | None, ssm_state: Tensor | None,
                lowp: bool, last_only: bool) -> tuple[Tensor, Tensor]:
        from ..ops import load

        ops = load()
        R, N = _split_sizes(x_proj_weight, dt_proj_weight, A)
        x, z = _split_gate(xz, conv_weight, last_only)
        wt = conv_weight.transpose(-1, -2).contiguous()                  # ([M,] K, d)
        xc = ops.conv_fwd(x, wt, conv_bias, conv_state, True)            # (b, l, d), after SiLU
        # x_proj (b, l, d) -> (b, l, R + 2N); with lowp in bfloat16 (xc_mm: its input as it multiplies, kept for
        # the weight's gradient), the scan reading its output as float32.
        xc_mm = xc.bfloat16() if lowp else xc
        x_dbl = _linear(xc_mm, x_proj_weight.to(xc_mm.dtype)).to(xc.dtype)
        dt_low, B, C = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
        # dt_proj (rank R -> d_inner), its bias and the softplus run inside the scan kernel.
        dt_wt = dt_proj_weight.transpose(-1, -2).contiguous()            # ([M,] R, d)
        At = A.transpose(-1, -2).contiguous()                            # ([M,] N, d)
        h0 = None if ssm_state is None else ssm_state.transpose(1, 2).contiguous()
        chunk = fused_chunk(N)
        save = any(ctx.needs_input_grad)
        # With lowp the scan's exp(delta A) is the degree-4 one (`vexp2_fast`: 3e-6 relative, against bfloat16's
        # 3.9e-3 on every other input here): one multiply-add fewer per state and step. With last_only the scan
        # forms y at the last step alone, and its backward skips dy's terms at the others.
        y_from = xc.shape[1] - 1 if last_only else 0
        y, h_last, hsave, ypre = ops.scan_fwd(xc, dt_low, At, B, C, D, z, dt_proj_bias, dt_wt, h0, True, chunk,
                                              save, lowp, y_from)
        if save:
            ctx.save_for_backward(xz, wt, conv_bias, x_proj_weight, dt_wt, dt_proj_bias, At, D,
                                  conv_state, xc, xc_mm, x_dbl, hsave, ypre)
        ctx.chunk, ctx.R, ctx.N, ctx.has_h0, ctx.gated = chunk, R, N, ssm_state is not None, z is not None
        ctx.lowp, ctx.y_from = lowp, y_from
        ctx.n_models = A.shape[0] if A.dim() == 3 else None
        ctx.set_materialize_grads(False)
        return y, h_last.transpose(1, 2)

    @staticmethod
    @autocast_backward
    def backward(ctx, dy: Tensor | None, dh_last: Tensor | None):  # type: ignore[override]
        from ..ops import load

        ops = load()
        (xz, wt, conv_bias, x_proj_weight, dt_wt, dt_proj_bias, At, D, conv_state, xc, xc_mm, x_dbl,
         hsave, ypre) = ctx.saved_tensors
        R, N = ctx.R, ctx.N
        batch, seq_len, d = xc.shape
        x, z = (xz[..., :d], xz[..., d:]) if ctx.gated else (xz, None)
        dy = xc.new_zeros(batch, seq_len - ctx.y_from, d) if dy is None else _unit_last(dy)
        dhl = None if dh_last is None else dh_last.transpose(1, 2).contiguous()
        dxz = torch.empty_like(xz)      # xz's dtype: the kernels write bfloat16 for a bfloat16 xz
        dt_low, B, C = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
        out = ops.scan_bwd(xc, dt_low, At, B, C, D, z, dt_proj_bias, dt_wt, hsave, ypre, dy, dhl, True, ctx.chunk,
                           dxz[..., d:] if ctx.gated else None, False, ctx.lowp, ctx.y_from)
        dxc, dh0 = out[0], out[8]
        # The gradient of x_proj's output (dt_low, B, C side by side), partial over channel groups, and the per-row
        # partials of dA, dD, dt_proj's bias and weight in one tensor: one reduction each.
        dx_dbl = _per_model(out[11], None).view(-1, R + 2 * N)                             # (b*l, R+2N)
        M = ctx.n_models
        parts = _per_model(out[12], M)                                                  # ([M,] (N+2+R) d)
        dA, dD, ddt_bias, d_dt_wt = torch.split(parts, [N * d, d, d, R * d], dim=-1)
        # x_proj's weight gradient in xc_mm's dtype; its input gradient in float32, added in place (in bfloat16
        # it would cost as much, with its output cast and added).
        dx_mm = dx_dbl.to(xc_mm.dtype)
        if M is None:
            d_x_proj_weight = (dx_mm.t() @ xc_mm.view(-1, d)).to(xc.dtype)
            dxc.view(-1, d).addmm_(dx_dbl, x_proj_weight)
        else:   # per model: (M, b/M*l, R+2N)
            d_x_proj_weight = torch.bmm(dx_mm.view(M, -1, R + 2 * N).transpose(1, 2), xc_mm.view(M, -1, d))
            d_x_proj_weight = d_x_proj_weight.to(xc.dtype)
            dxc.view(M, -1, d).baddbmm_(dx_dbl.view(M, -1, R + 2 * N), x_proj_weight)
        _, dw, db, dxp = ops.conv_bwd(x, wt, conv_bias, conv_state, dxc, True, dxz[..., :d])
        need = ctx.needs_input_grad
        lead = At.shape[:-2]     # () or (M,)
        return (dxz, _per_model(dw, M).transpose(-1, -2) if need[1] else None,
                _per_model(db, M) if conv_bias is not None and need[2] else None,
                d_x_proj_weight if need[3] else None,
                d_dt_wt.view(*lead, R, d).transpose(-1, -2) if need[4] else None,
                ddt_bias if dt_proj_bias is not None and need[5] else None,
                dA.view(*lead, N, d).transpose(-1, -2) if need[6] else None,
                dD if D is not None and need[7] else None,
                dxp if conv_state is not None and need[8] else None,
                dh0.transpose(1, 2) if ctx.has_h0 and need[9] else None, None, None)


def mamba_inner(xz: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, x_proj_weight: Tensor,
                dt_proj_weight: Tensor, dt_proj_bias: Tensor | None, A: Tensor, D: Tensor | None,
                conv_state: Tensor | None = None, ssm_state: Tensor | None = None,
                last_only: bool = False) -> tuple[Tensor, Tensor]:
    """Same signature and function as `mamba_inner_ref` (xz, or x alone); one fused autograd node when the CPU
    kernel applies (all tensors on CPU, one float32/float64 dtype, d_conv <= 16), else `mamba_inner_ref`'s ops
    with `causal_conv1d` (the Triton conv where the scan is Triton). Under the CPU's bfloat16 autocast x_proj's
    forward runs in bfloat16 either way (the fused node by hand, the ops by autocast), and the fused node returns
    the gated y in xz's dtype (bfloat16), the ungated y and the state in float32."""
    tensors = [t for t in (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D,
                           conv_state, ssm_state) if t is not None]
    if conv_weight.shape[-1] <= 16 and fused_ops(*tensors, d_state=A.shape[-1]) is not None:
        return _apply(_MambaInner, _unit_last(xz), conv_weight, conv_bias, x_proj_weight.contiguous(),
                      dt_proj_weight.contiguous(), dt_proj_bias, A, D,
                      None if conv_state is None else conv_state.contiguous(), ssm_state, _lowp(xz), last_only)
    return _mamba_inner_ops(causal_conv1d, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                            dt_proj_bias, A, D, conv_state, ssm_state, last_only)


@eager_under_compile
def _block_node(ops, *args) -> Tensor:
    """The block's autograd op (forward and backward in C++): under torch.compile behind a graph break."""
    return ops.mamba_block(*args)


def fused_block(hidden: Tensor, norm_weight: Tensor, norm_bias: Tensor, eps: float, in_proj_weight: Tensor,
                conv_weight: Tensor, conv_bias: Tensor, x_proj_weight: Tensor, dt_proj_weight: Tensor,
                dt_proj_bias: Tensor, A_log: Tensor, D: Tensor, out_proj_weight: Tensor,
                last_only: bool = False) -> Tensor | None:
    """One Mamba block over a whole sequence from the zero state as one C++ autograd node, or None where that node
    does not apply (the caller then composes `layer_norm`, in_proj, `mamba_inner` and out_proj itself):

        hidden + out_proj(mamba_inner(in_proj(LayerNorm(hidden)), A = -exp(A_log)))

    hidden (batch, seq_len, d_model) -> same shape; `last_only`: the last step's output (batch, d_model), with the
    gate, out_proj and the residual at that step alone (as `MambaBlock.forward(last_only=True)`). It applies on the
    CPU with the kernel built (`fused_ops`), one model's float32 or float64 parameters (conv_weight (d_inner, 1,
    d_conv), d_conv <= 16), hidden of their dtype, and autocast off or the CPU's bfloat16 autocast over float32
    parameters (hidden float32 or bfloat16), which the node runs as the composed path runs under it (`nn.fused`
    module doc)."""
    params = (norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
              dt_proj_bias, A_log, D, out_proj_weight)
    dtype = in_proj_weight.dtype
    if (hidden.dim() != 3 or hidden.shape[1] == 0 or in_proj_weight.dim() != 2 or A_log.dim() != 2
            or conv_weight.shape[-1] > 16 or any(p.dtype != dtype for p in params)):
        return None     # (stacked weights, 3-d, run nn.stacked's ops)
    lowp = torch.is_autocast_enabled("cpu")
    if lowp and (torch.get_autocast_dtype("cpu") != torch.bfloat16 or dtype != torch.float32):
        return None     # autocast to float16, or over float64 weights: the composed path runs what autocast does
    if hidden.dtype != dtype and not (lowp and hidden.dtype == torch.bfloat16):
        return None
    ops = fused_ops(hidden, *params, d_state=A_log.shape[-1])
    if ops is None or not hasattr(ops, "mamba_block"):   # (an older kernel, e.g. benchmarks' --baseline-kernel)
        return None
    return _block_node(ops, hidden, norm_weight, norm_bias, eps, in_proj_weight, conv_weight, conv_bias,
                       x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, lowp, last_only,
                       fused_chunk(A_log.shape[-1]))
