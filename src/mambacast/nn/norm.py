"""The blocks' LayerNorm on the CPU: one autograd node, written in C++, over a forward and a backward kernel
(ops/csrc/layer_norm.h); `F.layer_norm` elsewhere.

    out = (x - mean) / sqrt(var + eps) * weight + bias          over the last dimension (Ba et al. 2016, eq. 4)

PyTorch's CPU LayerNorm on the blocks' rows (d_model = 64 values) under bfloat16 autocast, where the residual stream
it reads is bfloat16, took 66 us forward and 191 us with its backward for a batch of 32 x 60 steps, against 14 us for
one bfloat16 add (a throw-away timing); leaving the four norms out altogether took 1.4-3.8% off the guide's train
step (four throw-away alternations).
The kernel reads x as it is (float32, float64 or bfloat16), computes in the weight's dtype, and writes the output
and x's gradient in x's dtype, as PyTorch's LayerNorm does under autocast; its weight gradients are summed in the
weight's dtype (PyTorch 2.13's, for a bfloat16 x, come back a few percent off: docs/benchmarks.md).

`layer_norm` also takes M stacked models' affine parameters, weight and bias (M, d), with x (M, n, d)
(`nn.stacked`): model m's rows are normalised with its own weight and bias, and their gradients come back per
model. `layer_norm_ref` is the same function in PyTorch ops: the fallback (CUDA, half-precision weights, no kernel,
`MAMBACAST_SCAN` other than auto or fused) and the tests' oracle.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.eager import eager_under_compile
from .fused import fused_ops

__all__ = ["layer_norm", "layer_norm_ref"]


def layer_norm_ref(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """x (..., d) normalised over d, with weight and bias (d); or x (M, n, d) with M models' weight and bias (M, d)."""
    if weight.dim() == 1:
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:], eps=eps), weight.unsqueeze(1))


@eager_under_compile
def _fused_layer_norm(ops: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """The kernel's autograd op (forward and backward in C++): under torch.compile behind a graph break."""
    return ops.layer_norm(x, weight, bias, eps)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """`layer_norm_ref`'s function: one autograd node over the fused kernels where they apply (CPU, float32/float64
    weight and bias, x of their dtype or bfloat16), else `layer_norm_ref`. The output has x's dtype."""
    if (weight.dim() == 2 and (x.dim() != 3 or x.shape[0] != weight.shape[0])) or weight.shape[-1] != x.shape[-1]:
        return layer_norm_ref(x, weight, bias, eps)   # shapes the kernel does not take: PyTorch's error message
    x_ok = x.dtype == weight.dtype or (x.dtype == torch.bfloat16 and weight.dtype == torch.float32)
    ops = fused_ops(weight, bias) if x_ok and x.is_cpu and weight.dtype == bias.dtype else None
    # (an older kernel, which `benchmarks/`' --baseline-kernel loads, has no LayerNorm: PyTorch's then, as it had)
    if ops is None or not hasattr(ops, "layer_norm"):
        return layer_norm_ref(x, weight, bias, eps)
    return _fused_layer_norm(ops, x, weight.contiguous(), bias.contiguous(), eps)
