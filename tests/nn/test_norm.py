"""The fused LayerNorm (`nn.norm`, ops/csrc/layer_norm.h) against PyTorch's: outputs and gradients, in float64, in
float32, on the bfloat16 residual stream of autocast, for stacked models' weights, and its fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambacast import MambaConfig, MambaModel
from mambacast.nn.heads import student_t_nll
from mambacast.nn.norm import layer_norm, layer_norm_ref

from .kernel import kernel_or_skip

# d_model values for every form of the kernel: 1, 2, 4 and 8 vectors unrolled, the general one (3, 9 vectors, and a
# partial last vector)
WIDTHS = [64, 16, 32, 128, 37, 5, 130, 48]
ROWS = [1, 15, 17, 100]


@pytest.fixture(autouse=True)
def _kernel():
    kernel_or_skip()


def _is_kernel(out: torch.Tensor) -> bool:
    return "LayerNormFunction" in out.grad_fn.name()


def _grads(fn, x, w, b, g):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    out = fn(x, w, b, 1e-5)
    out.backward(g)
    return out.detach(), x.grad, w.grad, b.grad


def _inputs(rows, d, dtype, offset=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=gen, dtype=torch.float64) * 3 + offset
    w, b = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    g = torch.randn(rows, d, generator=gen, dtype=torch.float64)
    return x.to(dtype), w.to(dtype), b.to(dtype), g.to(dtype)


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("rows", ROWS)
def test_float64_equals_pytorch(d, rows):
    x, w, b, g = _inputs(rows, d, torch.float64, offset=5.0)
    assert _is_kernel(layer_norm(x, w.requires_grad_(), b, 1e-5))
    for ours, ref in zip(_grads(layer_norm, x, w, b, g), _grads(layer_norm_ref, x, w, b, g), strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_float32_equals_pytorch_for_rows_far_from_zero():
    # The variance is summed from centred values: E[x^2] - mean^2 would lose every digit at an offset of 1e4.
    x, w, b, g = _inputs(200, 64, torch.float32, offset=1e4)
    ours, ref = _grads(layer_norm, x, w, b, g), _grads(layer_norm_ref, x.double(), w.double(), b.double(), g.double())
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o.double(), r, rtol=1e-3, atol=1e-3 * r.abs().max().item())


def test_batch_dimensions_and_strided_rows():
    x, w, b, g = _inputs(4 * 6, 64, torch.float32)
    wide = torch.randn(4, 6, 128)
    wide[..., :64] = x.view(4, 6, 64)
    x3 = wide[..., :64]                      # rows 128 apart: the kernel reads them where they are
    ours = _grads(layer_norm, x3, w, b, g.view(4, 6, 64))
    ref = _grads(layer_norm_ref, x3, w, b, g.view(4, 6, 64))
    assert ours[0].shape == (4, 6, 64) and ours[1].shape == (4, 6, 64)
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_bfloat16_stream_under_autocast():
    """Under CPU autocast the blocks' residual stream is bfloat16 and LayerNorm keeps it so: output and input gradient
    in bfloat16 (as PyTorch's), rounded from float32 values; the weight gradients in float32, summed in float32."""
    x, w, b, g = _inputs(1920, 64, torch.float32)
    xb, gb = x.bfloat16(), g.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, dx, dw, db = _grads(layer_norm, xb, w, b, gb)
    assert out.dtype == dx.dtype == torch.bfloat16 and dw.dtype == db.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _is_kernel(layer_norm(xb, w.requires_grad_(), b, 1e-5))
    # the truth: float64 LayerNorm on the same (bfloat16) values
    t_out, t_dx, t_dw, t_db = _grads(layer_norm_ref, xb.double(), w.double(), b.double(), gb.double())
    # within one bfloat16 rounding (2^-8 relative) of the exact values
    assert ((out.double() - t_out).abs() <= t_out.abs() * 2 ** -8 + 1e-6).all()
    assert ((dx.double() - t_dx).abs() <= t_dx.abs() * 2 ** -8 + 1e-6).all()
    # float32 sums over 1920 rows: 1e-5 of the largest gradient (PyTorch 2.13's own backward is about 4% off here)
    torch.testing.assert_close(dw.double(), t_dw, rtol=0, atol=1e-5 * t_dw.abs().max().item())
    torch.testing.assert_close(db.double(), t_db, rtol=0, atol=1e-5 * t_db.abs().max().item())


def test_stacked_models_have_their_own_weights_and_gradients():
    M, n, d = 3, 50, 64
    gen = torch.Generator().manual_seed(3)
    x, g = torch.randn(M, n, d, generator=gen), torch.randn(M, n, d, generator=gen)
    w, b = torch.randn(M, d, generator=gen), torch.randn(M, d, generator=gen)
    out, dx, dw, db = _grads(layer_norm, x, w, b, g)
    for m in range(M):
        r_out, r_dx, r_dw, r_db = _grads(layer_norm_ref, x[m], w[m], b[m], g[m])
        for o, r in ((out[m], r_out), (dx[m], r_dx), (dw[m], r_dw), (db[m], r_db)):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_weight_gradients_do_not_depend_on_the_thread_count():
    x, w, b, g = _inputs(1920, 64, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grads(layer_norm, x, w, b, g)
        torch.set_num_threads(2)
        two = _grads(layer_norm, x, w, b, g)
    finally:
        torch.set_num_threads(threads)
    for a, c in zip(one, two, strict=True):
        assert torch.equal(a, c)


@pytest.mark.parametrize("stacked", [False, True])
def test_no_rows(stacked):
    """An empty batch gives empty outputs and zero weight gradients (it divided by zero rows per model once)."""
    w, b = (torch.randn(2, 64), torch.randn(2, 64)) if stacked else (torch.randn(64), torch.randn(64))
    x = torch.randn(2, 0, 64) if stacked else torch.randn(0, 64)
    out, dx, dw, db = _grads(layer_norm, x, w, b, torch.randn(x.shape))
    assert out.shape == dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


def test_without_grad_and_for_weights_only():
    x, w, b, _ = _inputs(33, 64, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(layer_norm(x, w, b, 1e-5), F.layer_norm(x, (64,), w, b, 1e-5))
    w.requires_grad_()
    layer_norm(x, w, b, 1e-5).sum().backward()     # an expanded (stride 0) output gradient
    w_ref = w.detach().clone().requires_grad_()
    F.layer_norm(x, (64,), w_ref, b, 1e-5).sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad)


def test_falls_back_to_pytorch_where_the_kernel_does_not_apply(monkeypatch):
    x, w, b, _ = _inputs(10, 64, torch.float32)
    # half-precision weights, and MAMBACAST_SCAN=ref (the pure-PyTorch path everywhere): PyTorch's LayerNorm itself
    assert torch.equal(layer_norm(x.bfloat16(), w.bfloat16(), b.bfloat16(), 1e-5),
                       F.layer_norm(x.bfloat16(), (64,), w.bfloat16(), b.bfloat16(), 1e-5))
    monkeypatch.setenv("MAMBACAST_SCAN", "ref")
    w.requires_grad_()
    assert not _is_kernel(layer_norm(x, w, b, 1e-5))
    assert torch.equal(layer_norm(x, w, b, 1e-5), F.layer_norm(x, (64,), w, b, 1e-5))
    with pytest.raises(RuntimeError):      # a wrong shape gets PyTorch's own error
        layer_norm(x, w[:10], b[:10], 1e-5)


def test_the_model_with_the_kernel_equals_the_model_with_pytorchs_layer_norm(monkeypatch):
    from mambacast.nn import mamba

    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=32, num_layers=2, d_state=8), n_features=6)
    with torch.no_grad():   # non-zero heads, so that every parameter has a gradient
        model.head.proj.weight.normal_(0, 0.1)
        model.dist_head.scale_proj.weight.normal_(0, 0.1)
    x, y = torch.randn(8, 30, 6), torch.randn(8, 4)

    def grads():
        model.zero_grad()
        loc, scale, df = model.forward_distribution(x)
        student_t_nll(y, loc, scale, df).backward()
        return loc.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    used = []

    def spy(*args):
        out = layer_norm(*args)
        used.append(_is_kernel(out))
        return out

    # the blocks as composed pieces (the whole-block node runs the norm kernel inside: tests/nn/test_block.py)
    monkeypatch.setattr(mamba.MambaBlock, "_fused", lambda self, hidden, last_only=False: None)
    monkeypatch.setattr(mamba, "layer_norm", spy)
    out, g = grads()
    assert used == [True, True, True]    # both blocks' norms and the final one ran the kernel
    monkeypatch.setattr(mamba, "layer_norm", layer_norm_ref)
    out_ref, g_ref = grads()
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=name)
