"""The Triton causal conv1d (+ SiLU) against PyTorch's conv1d (`causal_conv1d_ref`): outputs and gradients.

On a machine with CUDA the kernels run on the GPU; elsewhere under Triton's interpreter (TRITON_INTERPRET=1, set
before Triton is first imported), so the shapes stay small; the tests skip where Triton is not installed.

Tolerances. Measured under the interpreter, max abs error against the reference on the same values: float64
2e-15 (out) and 1.1e-14 (gradients), asserted 1e-10; float32 1.9e-6 and 7.6e-6 (gradients summed over 270
steps), asserted 1e-4 relative and absolute; bfloat16 activations with float32 weights (autocast's dtypes): the
output is rounded to bfloat16 (max relative error 2^-8 = 3.9e-3), asserted 1e-2 against the float32 reference.
"""


import pytest
import torch

from .triton_env import DEVICE, TOL, interpreter  # noqa: F401 - sets TRITON_INTERPRET before Triton loads

pytest.importorskip("triton", reason="Triton is not installed (optional; PyTorch's CUDA wheels bring it)")

from mambacast.nn import fused  # noqa: E402
from mambacast.nn.fused import causal_conv1d, causal_conv1d_ref  # noqa: E402
from mambacast.ops.triton.conv import triton_causal_conv1d  # noqa: E402


def inputs(dtype, stacked, prev, seq_len=45, d=70, K=4, rows=3, n_models=2, seed=0):
    """x as the block has it: the first half of in_proj's output (a strided view); weights of one model, or of
    n_models stacked (batch = n_models * rows)."""
    g = torch.Generator().manual_seed(seed)
    batch = n_models * rows if stacked else rows
    lead = (n_models,) if stacked else ()
    xz = torch.randn(batch, seq_len, 2 * d, dtype=dtype, generator=g).to(DEVICE)
    x = xz[..., :d].detach().requires_grad_()
    w = torch.randn(*lead, d, K, dtype=dtype, generator=g).to(DEVICE).requires_grad_()
    bias = torch.randn(*lead, d, dtype=dtype, generator=g).to(DEVICE).requires_grad_()
    x_prev = torch.randn(batch, K - 1, d, dtype=dtype, generator=g).to(DEVICE) if prev else None
    dout = torch.randn(batch, seq_len, d, dtype=dtype, generator=g).to(DEVICE)
    return x, w, bias, x_prev, dout


def outputs(fn, x, w, bias, x_prev, dout, silu):
    out = fn(x, w, bias, x_prev, silu)
    return (out, *torch.autograd.grad(out, (x, w, bias), dout))


@pytest.mark.parametrize("dtype, stacked, prev, silu", [
    (torch.float64, False, False, True), (torch.float64, True, True, True), (torch.float64, False, True, False),
    (torch.float32, True, False, True)])
def test_triton_conv_equals_reference(dtype, stacked, prev, silu):
    args = inputs(dtype, stacked, prev)
    got, ref = outputs(triton_causal_conv1d, *args, silu), outputs(causal_conv1d_ref, *args, silu)
    for name, a, b in zip(("out", "dx", "dweight", "dbias"), got, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=name)


def test_triton_conv_without_bias_and_shorter_than_a_block():
    x, w, _, _, dout = inputs(torch.float64, False, False, seq_len=5, d=9, K=3)
    got = triton_causal_conv1d(x, w, None)
    torch.testing.assert_close(got, causal_conv1d_ref(x, w, None), **TOL[torch.float64])
    dx, dw = torch.autograd.grad(got, (x, w), dout)
    dx_ref, dw_ref = torch.autograd.grad(causal_conv1d_ref(x, w, None), (x, w), dout)
    torch.testing.assert_close(dx, dx_ref, **TOL[torch.float64])
    torch.testing.assert_close(dw, dw_ref, **TOL[torch.float64])


def test_triton_conv_reads_bfloat16_activations():
    """Under autocast x comes in bfloat16 and the weights in float32: out and dx in bfloat16, dw in float32."""
    x, w, bias, _, dout = inputs(torch.float32, False, False)
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    out = triton_causal_conv1d(xb, w, bias)
    assert out.dtype == torch.bfloat16
    dx, dw = torch.autograd.grad(out, (xb, w), dout.to(torch.bfloat16))
    assert dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    x32 = xb.detach().float().requires_grad_()
    ref = causal_conv1d_ref(x32, w, bias)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x32, w), dout.to(torch.bfloat16).float())
    torch.testing.assert_close(dx.float(), dx_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-2, atol=1e-2 * float(dw_ref.abs().max()))


def test_causal_conv1d_takes_triton_where_the_scan_does(monkeypatch):
    """MAMBACAST_SCAN=triton (the default on CUDA): the Triton conv, unless a gradient must reach x_prev, which
    it does not compute; MAMBACAST_SCAN=chunked: PyTorch's conv1d."""
    x, w, bias, x_prev, dout = inputs(torch.float64, False, True)
    calls = []
    real = triton_causal_conv1d

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr("mambacast.ops.triton.conv.triton_causal_conv1d", spy)
    monkeypatch.setenv("MAMBACAST_SCAN", "triton")
    out = causal_conv1d(x, w, bias, x_prev)
    assert len(calls) == 1
    torch.testing.assert_close(out, causal_conv1d_ref(x, w, bias, x_prev), **TOL[torch.float64])
    assert not fused._triton_conv(x, w, x_prev.requires_grad_())
    monkeypatch.setenv("MAMBACAST_SCAN", "chunked")
    assert not fused._triton_conv(x, w, None)
