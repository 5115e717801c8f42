"""Every fast selective-scan path against the sequential reference."""

import pytest
import torch

from mambacast.nn.scan import selective_scan, selective_scan_chunked, selective_scan_ref


def make_inputs(batch, seq_len, d_inner, d_state, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, seq_len, d_inner, dtype=dtype, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(batch, seq_len, d_inner, dtype=dtype, generator=g))
    A = -torch.rand(d_inner, d_state, dtype=dtype, generator=g) * 4 - 0.1
    B = torch.randn(batch, seq_len, d_state, dtype=dtype, generator=g)
    C = torch.randn(batch, seq_len, d_state, dtype=dtype, generator=g)
    D = torch.randn(d_inner, dtype=dtype, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, chunk", [
    ((2, 1, 3, 4), 64), ((3, 60, 8, 16), 64), ((2, 37, 5, 4), 8), ((1, 129, 4, 3), 64),
    ((2, 100, 6, 5), 7), ((4, 17, 2, 1), 1),
])
@pytest.mark.parametrize("with_d", [True, False])
def test_chunked_equals_reference(dtype, shape, chunk, with_d):
    u, delta, A, B, C, D = make_inputs(*shape, dtype)
    D = D if with_d else None
    inputs = [t for t in (u, delta, A, B, C, D) if t is not None]
    y_ref = selective_scan_ref(u, delta, A, B, C, D)
    y = selective_scan_chunked(u, delta, A, B, C, D, chunk=chunk)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    w = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad((y_ref * w).sum(), inputs)
    g = torch.autograd.grad((y * w).sum(), inputs)
    for name, a, b in zip("u delta A B C D".split(), g, g_ref, strict=False):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, n=name: f"grad {n}: {m}")


def test_default_entry_point_matches_reference():
    u, delta, A, B, C, D = make_inputs(2, 45, 6, 4, torch.float64)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D), selective_scan_ref(u, delta, A, B, C, D))


def test_gradcheck_reference_and_chunked():
    u, delta, A, B, C, D = make_inputs(2, 6, 3, 2, torch.float64)
    assert torch.autograd.gradcheck(selective_scan_ref, (u, delta, A, B, C, D))
    assert torch.autograd.gradcheck(lambda *a: selective_scan_chunked(*a, chunk=4), (u, delta, A, B, C, D))


def test_reference_matches_closed_form_for_one_state():
    # d_state = 1, constant inputs: h_t = a h_{t-1} + b, a geometric series.
    L = 5
    u = torch.ones(1, L, 1, dtype=torch.float64)
    delta = torch.full((1, L, 1), 0.5, dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.ones(1, L, 1, dtype=torch.float64)
    C = torch.ones(1, L, 1, dtype=torch.float64)
    a, b = torch.exp(torch.tensor(-1.0, dtype=torch.float64)), 0.5
    expected = torch.tensor([b * (1 - a ** (t + 1)) / (1 - a) for t in range(L)], dtype=torch.float64)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C)[0, :, 0], expected)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C)[0, :, 0], expected)


def test_chunked_does_not_hold_the_full_state_tensor():
    # Long sequence, several chunks: beyond its inputs, autograd keeps one state per chunk boundary.
    batch, seq_len, d_inner, d_state, chunk = 1, 4096, 8, 16, 64
    inputs = make_inputs(batch, seq_len, d_inner, d_state, torch.float32)
    y = selective_scan_chunked(*inputs, chunk=chunk)
    extra = sum(t.numel() for t in y.grad_fn.saved_tensors) - sum(t.numel() for t in inputs)
    assert extra == (seq_len // chunk) * batch * d_inner * d_state


@pytest.mark.parametrize("bad, match", [
    (dict(u=torch.zeros(2, 5)), "u and delta"),
    (dict(A=torch.zeros(4, 2)), "A must be"),
    (dict(B=torch.zeros(2, 5, 3)), "B must be"),
    (dict(D=torch.zeros(2)), "D must be"),
])
def test_shape_errors_are_explicit(bad, match):
    args = dict(u=torch.zeros(2, 5, 3), delta=torch.zeros(2, 5, 3), A=torch.zeros(3, 2),
                B=torch.zeros(2, 5, 2), C=torch.zeros(2, 5, 2), D=torch.zeros(3)) | bad
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


@pytest.mark.parametrize("impl", ["ref", "chunked"])
def test_stacked_models_equal_each_model_alone(impl, monkeypatch):
    """A (n_models, d_inner, d_state), D and delta_bias (n_models, d_inner): row r belongs to model r // rows."""
    monkeypatch.setenv("MAMBACAST_SCAN", impl)
    g = torch.Generator().manual_seed(3)
    M, rows, L, d, n = 3, 2, 9, 4, 3
    u, delta, z = (torch.randn(M * rows, L, d, dtype=torch.float64, generator=g) for _ in range(3))
    B, C = (torch.randn(M * rows, L, n, dtype=torch.float64, generator=g) for _ in range(2))
    A = -torch.rand(M, d, n, dtype=torch.float64, generator=g) - 0.1
    D, bias = (torch.randn(M, d, dtype=torch.float64, generator=g) for _ in range(2))
    y, h = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, return_final_state=True)
    for m in range(M):
        r = slice(m * rows, (m + 1) * rows)
        y_m, h_m = selective_scan_ref(u[r], delta[r], A[m], B[r], C[r], D[m], z=z[r], delta_bias=bias[m],
                                      delta_softplus=True, return_final_state=True)
        torch.testing.assert_close(y[r], y_m)
        torch.testing.assert_close(h[r], h_m)
