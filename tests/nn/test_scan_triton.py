"""The fused Triton selective scan against the sequential reference: outputs and every gradient.

On a machine with CUDA the kernels run on the GPU; elsewhere under Triton's interpreter (TRITON_INTERPRET=1, set
here before the kernels are first imported), which runs each program in NumPy: the shapes stay small. Tests skip
where Triton is not installed (it is optional: PyTorch's CUDA wheels bring it).

Tolerances. Measured under the interpreter, max abs error against the reference in float64 on the same values:
float64 inputs 7e-15 (y) and 2.5e-14 (gradients), asserted 1e-10; float32 inputs at (2, 60, 32, 16) 3.7e-6 (y)
and 5.8e-5 (gradients up to 349 in size), as the float32 reference itself (8.9e-6, 6.4e-5), asserted 1e-4
relative and absolute as for the CPU kernel; bfloat16 activations with float32 parameters: y comes back in
bfloat16, max abs error 0.24 for |y| up to 43 (5.6e-3 relative: bfloat16's rounding), asserted 2e-2.
"""

import os

import pytest
import torch

from .triton_env import DEVICE, TOL, interpreter  # noqa: F401 - sets TRITON_INTERPRET before Triton loads

pytest.importorskip("triton", reason="Triton is not installed (optional; PyTorch's CUDA wheels bring it)")

from mambacast import MambaConfig, MambaModel  # noqa: E402
from mambacast.nn.scan import scan_impl, selective_scan, selective_scan_ref, selective_scan_triton  # noqa: E402
from mambacast.nn.stacked import stack_buffers, stack_parameters, stacked_forward_distribution  # noqa: E402


def make_inputs(batch, seq_len, d_inner, d_state, dtype=torch.float64, n_models=None, seed=0):
    """Activations as the block makes them: z a view of in_proj's output, B and C views of x_proj's."""
    g = torch.Generator().manual_seed(seed)
    shape = (n_models,) if n_models else ()
    xz = torch.randn(batch, seq_len, 2 * d_inner, dtype=dtype, generator=g)
    x_dbl = torch.randn(batch, seq_len, 3 + 2 * d_state, dtype=dtype, generator=g)
    delta = torch.randn(batch, seq_len, d_inner, dtype=dtype, generator=g)
    A = -torch.rand(*shape, d_inner, d_state, dtype=dtype, generator=g) * 4 - 0.1
    D = torch.randn(*shape, d_inner, dtype=dtype, generator=g)
    bias = torch.randn(*shape, d_inner, dtype=dtype, generator=g) * 0.5
    h0 = torch.randn(batch, d_inner, d_state, dtype=dtype, generator=g)
    leaves = [t.to(DEVICE).requires_grad_() for t in (xz, x_dbl, delta, A, D, bias, h0)]
    xz, x_dbl, delta, A, D, bias, h0 = leaves
    u, z = xz[..., :d_inner], xz[..., d_inner:]
    B, C = x_dbl[..., 3:3 + d_state], x_dbl[..., 3 + d_state:]
    return leaves, dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, initial_state=h0)


def outputs_and_grads(fn, leaves, kwargs, seed=1, **extra):
    y, h = fn(**kwargs, return_final_state=True, **extra)
    g = torch.Generator().manual_seed(seed)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)
    wh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.device, h.dtype)
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), leaves, allow_unused=True,
                                retain_graph=True)
    return y, h, grads


def assert_matches_reference(leaves, kwargs, tol, chunk_len=None):
    y, h, grads = outputs_and_grads(selective_scan_triton, leaves, kwargs, delta_softplus=True, chunk_len=chunk_len)
    y_ref, h_ref, grads_ref = outputs_and_grads(selective_scan_ref, leaves, kwargs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(h, h_ref.to(h.dtype), **tol)
    for name, a, b in zip(("xz", "x_dbl", "delta", "A", "D", "bias", "h0"), grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, chunk_len", [
    ((2, 21, 20, 3), None),        # one forward program per row and channel block
    ((1, 37, 8, 4), 16),           # three chunks: local scans, chained starts, full pass
    ((3, 5, 16, 16), None),        # shorter than one saved segment
])
def test_triton_equals_reference_with_every_option(dtype, shape, chunk_len):
    leaves, kwargs = make_inputs(*shape, dtype=dtype)
    assert_matches_reference(leaves, kwargs, TOL[dtype], chunk_len=chunk_len)


def test_triton_without_optional_inputs():
    leaves, kwargs = make_inputs(2, 19, 6, 2)
    kwargs.update(D=None, z=None, delta_bias=None, initial_state=None)
    kwargs["delta"] = torch.nn.functional.softplus(kwargs["delta"])
    y, h, grads = outputs_and_grads(selective_scan_triton, leaves, kwargs)
    y_ref, h_ref, grads_ref = outputs_and_grads(selective_scan_ref, leaves, kwargs)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(h, h_ref, **TOL[torch.float64])
    for a, b in zip(grads, grads_ref, strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_triton_stacked_models_equal_each_model_alone():
    """A (n_models, d_inner, d_state), D and the dt bias per model: row r reads model r // rows."""
    leaves, kwargs = make_inputs(6, 13, 5, 3, n_models=3)
    assert_matches_reference(leaves, kwargs, TOL[torch.float64], chunk_len=16)


def test_triton_reads_bfloat16_activations():
    """bfloat16 activations and float32 parameters, as under CUDA autocast: y comes back in bfloat16, computed
    in float32 (equal to the float32 reference on the same bfloat16 values, to bfloat16 rounding)."""
    leaves, kwargs = make_inputs(2, 17, 8, 4, dtype=torch.float32)
    acts = {k: kwargs[k].detach().to(torch.bfloat16).requires_grad_() for k in ("u", "delta", "B", "C", "z")}
    params = [kwargs[k] for k in ("A", "D", "delta_bias", "initial_state")]
    y, h = selective_scan_triton(**{**kwargs, **acts}, delta_softplus=True, return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    ref_acts = {k: v.detach().float().requires_grad_() for k, v in acts.items()}
    y_ref, h_ref = selective_scan_ref(**{**kwargs, **ref_acts}, delta_softplus=True, return_final_state=True)
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    grads = torch.autograd.grad((y.float() * w).sum(), [*acts.values(), *params])
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [*ref_acts.values(), *params])
    for i, (a, b) in enumerate(zip(grads, grads_ref, strict=True)):
        assert a.dtype == (torch.bfloat16 if i < len(acts) else torch.float32)
        # reference gradients of the bf16-rounded output: compare at bfloat16 resolution, relative to the scale
        torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2 * b.abs().max().item(),
                                   msg=lambda m, i=i: f"grad {i}: {m}")


def test_gradient_from_the_final_state_alone():
    leaves, kwargs = make_inputs(2, 20, 4, 2)
    for fn in (selective_scan_triton, selective_scan_ref):
        _, h = fn(**kwargs, delta_softplus=True, return_final_state=True)
        grads = torch.autograd.grad(h.square().sum(), leaves[2:], allow_unused=True)
        if fn is selective_scan_triton:
            fast = grads
    for a, b, leaf in zip(fast, grads, leaves[2:], strict=True):   # None: no influence on h (D, the gate)
        torch.testing.assert_close(a, b if b is not None else torch.zeros_like(leaf), **TOL[torch.float64])


def test_selective_scan_dispatches_to_triton(monkeypatch):
    monkeypatch.setenv("MAMBACAST_SCAN", "triton")
    leaves, kwargs = make_inputs(2, 9, 4, 2)
    assert scan_impl(kwargs["u"], kwargs["A"]) == "triton"
    y = selective_scan(**kwargs, delta_softplus=True)
    torch.testing.assert_close(y, selective_scan_ref(**kwargs, delta_softplus=True), **TOL[torch.float64])


def test_model_trains_through_triton_as_through_the_reference(monkeypatch):
    """A whole MambaModel (the block in PyTorch ops around the Triton scan), float64: loss gradients equal."""
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=8, num_layers=2, d_state=4), n_features=3).double().to(DEVICE)
    x = torch.randn(2, 11, 3, dtype=torch.float64, device=DEVICE)
    grads = {}
    for impl in ("triton", "ref"):
        monkeypatch.setenv("MAMBACAST_SCAN", impl)
        model.zero_grad()
        model.encode(x).square().mean().backward()
        grads[impl] = [p.grad.clone() for p in (*model.embed.parameters(), *model.layers.parameters())]
    for a, b in zip(grads["triton"], grads["ref"], strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_stacked_forward_through_triton_equals_each_model_alone(monkeypatch):
    """`--stack` off the CPU kernel: all models' blocks as one computation, the Triton scan reading each row's
    model's A, D and dt bias; outputs and gradients equal each model run alone (float64)."""
    monkeypatch.setenv("MAMBACAST_SCAN", "triton")
    torch.manual_seed(0)
    models = [MambaModel(MambaConfig(d_model=8, num_layers=1, d_state=4), n_features=3).double().to(DEVICE)
              for _ in range(3)]
    for m in models:
        with torch.no_grad():
            m.head.proj.weight.normal_()
    x = torch.randn(3, 2, 7, 3, dtype=torch.float64, device=DEVICE)
    params, buffers = stack_parameters(models), stack_buffers(models)
    loc, scale, _ = stacked_forward_distribution(params, models[0], x, buffers)
    (loc.sum() + scale.sum()).backward()
    monkeypatch.setenv("MAMBACAST_SCAN", "ref")
    for k, m in enumerate(models):
        loc_k, scale_k, _ = m.forward_distribution(x[k])
        torch.testing.assert_close(loc[k], loc_k, **TOL[torch.float64])
        (loc_k.sum() + scale_k.sum()).backward()
        for name, p in m.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(params[name].grad[k], p.grad, **TOL[torch.float64], msg=name)


def test_triton_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if DEVICE == "cuda":
        pytest.skip("CUDA machine: CPU tensors are refused only off the interpreter, checked on CPU machines")
    _, kwargs = make_inputs(1, 3, 2, 2)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        selective_scan_triton(**kwargs)
    assert os.environ["TRITON_INTERPRET"] == "0"


def test_warps_per_program_follow_the_number_of_programs():
    """One warp per (16, 16) state block when the GPU is full (training batches), two when few programs run
    (small batches, long sequences), as measured on an H100 (ops/triton/scan.py, `_launch_config`)."""
    from mambacast.ops.triton.scan import MANY_PROGRAMS, _launch_config

    assert _launch_config(16, 1024 * 8) == (16, 1)
    assert _launch_config(16, MANY_PROGRAMS) == (16, 1)
    assert _launch_config(16, MANY_PROGRAMS - 1) == (16, 2)
    assert _launch_config(16, 1 * 8 * 128) == (16, 2)           # the 1,000,000-step forward
    assert _launch_config(5, 10**5) == (8, 1) and _launch_config(64, 10**5) == (64, 4)
