"""The kernel's vector maths (`ops/csrc/simd.h`) and the scan shapes that exercise its tails.

The scan works on blocks of 16 float32 channels (8 float64) and groups of 8 states (4): channel counts
and state counts that are not multiples of those run the masked loads/stores and the partial state
groups, and stacked models move every per-channel parameter pointer per batch row. Each case is checked
against `selective_scan_ref` / `mamba_inner_ref` in outputs and gradients.
"""

from pathlib import Path

import pytest
import torch

from mambacast.nn.fused import mamba_inner, mamba_inner_ref
from mambacast.nn.scan import selective_scan_fused, selective_scan_ref

from .kernel import kernel_or_skip
from .test_scan_fused import TOL, assert_same, block_inputs, make_inputs


@pytest.fixture(scope="module")
def kernel():
    return kernel_or_skip()


def _avx512_build(kernel) -> bool:
    """Whether the loaded kernel is the -march=native build on a CPU with AVX512F and AVX512DQ."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return "-march=native" in kernel.flags and {"avx512f", "avx512dq"} <= set(flags.split())


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """float32 spacing at |x| (x float64), as float64."""
    x32 = x.float().abs()
    return (torch.nextafter(x32, torch.full_like(x32, float("inf"))) - x32).double()


def test_exp2_error_on_every_float_of_a_unit_interval(kernel):
    # 2^t = 2^floor(t) 2^f: the error depends on f alone (the scaling is exact above the denormals), so
    # every float32 f in [0, 1) (the float32 grid of [1, 2), minus 1) at a few exponents covers it.
    f = torch.arange(0x3F800000, 0x40000000, dtype=torch.int32).view(torch.float32) - 1.0
    worst_rel = worst_ulp = 0.0
    for n in (0.0, -1.0, -17.0, -100.0, 5.0):
        t = f + n
        exact = torch.exp2(t.double())
        err = (kernel.simd_exp2(t).double() - exact).abs()
        worst_rel = max(worst_rel, (err / exact).max().item())
        worst_ulp = max(worst_ulp, (err / _ulp(exact)).max().item())
    if _avx512_build(kernel):   # the AVX-512 polynomial (simd.h): measured 1.9 ulp, 1.8e-7 relative
        assert worst_ulp <= 2.0 and worst_rel <= 2e-7, (worst_ulp, worst_rel)
    else:                       # exp(t ln 2): the product's rounding grows with |t| (|t| <= 100 here)
        assert worst_rel <= 1e-5, worst_rel


def test_fast_exp2_error_on_every_float_of_a_unit_interval(kernel):
    """`vexp2_fast` (the scan's exponential under bf16 autocast, degree 4): within 3.1e-6 relative (fitted 2.9e-6;
    measured 3.0e-6), exact at integers (p(0) = 1); where AVX-512 builds it, a cheaper approximation than vexp2's,
    elsewhere the same function."""
    f = torch.arange(0x3F800000, 0x40000000, dtype=torch.int32).view(torch.float32) - 1.0
    worst = 0.0
    for n in (0.0, -1.0, -17.0, -100.0, 5.0):
        t = f + n
        exact = torch.exp2(t.double())
        worst = max(worst, ((kernel.simd_exp2(t, True).double() - exact).abs() / exact).max().item())
    if _avx512_build(kernel):
        assert 1e-6 < worst <= 3.1e-6, worst
    else:
        assert worst <= 1e-5, worst
    t = torch.tensor([0.0, 1.0, -1.0, -126.0, -300.0, float("-inf"), 128.0, float("nan")])
    out = kernel.simd_exp2(t, True)
    if _avx512_build(kernel):
        torch.testing.assert_close(out[:4], torch.tensor([1.0, 2.0, 0.5, 2.0 ** -126]), rtol=0, atol=0)
    assert (out[4:6] == 0).all() and torch.isinf(out[6]) and torch.isnan(out[7])


def test_exp2_special_values(kernel):
    t = torch.tensor([0.0, -0.0, 1.0, -1.0, -126.0, -300.0, -1e30, float("-inf"), 128.0, float("inf"), float("nan")])
    out = kernel.simd_exp2(t)
    exact = _avx512_build(kernel)   # the portable exp(t ln 2) rounds t ln 2, so 2^-126 is off by a few ulp
    torch.testing.assert_close(out[:5], torch.tensor([1.0, 1.0, 2.0, 0.5, 2.0 ** -126]), rtol=0 if exact else 1e-5,
                               atol=0)
    assert (out[5:8] == 0).all()                 # underflow, and the limit at -inf: 0, not NaN
    assert torch.isinf(out[8:10]).all() and torch.isnan(out[10])


def test_exp2_any_length(kernel):
    # lengths around the 16-float vector: the masked tail
    for n in (1, 15, 16, 17, 33):
        t = torch.linspace(-20, 3, n)
        torch.testing.assert_close(kernel.simd_exp2(t).double(), torch.exp2(t.double()), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, chunk", [
    ((4, 60, 128, 16), None),      # the guide's shape (fewer rows), as training runs it
    ((3, 61, 40, 13), 16),         # 16 + 16 + 8 channels; states 8 + 5; a partial last chunk
    ((2, 33, 7, 9), None),         # one partial channel block; states 8 + 1
    ((1, 300, 23, 16), 128),       # several chunks, the last partial
])
def test_fused_equals_reference_on_vector_tails(kernel, dtype, shape, chunk):
    u, delta, A, B, C, D, z, bias, h0 = make_inputs(*shape, dtype, raw_delta=True)
    inputs = [u, delta, A, B, C, D, z, bias, h0]
    kw = dict(z=z, delta_bias=bias, delta_softplus=True, initial_state=h0, return_final_state=True)
    assert_same(selective_scan_fused(u, delta, A, B, C, D, chunk=chunk, **kw),
                selective_scan_ref(u, delta, A, B, C, D, **kw), inputs, dtype)


def test_fused_max_error_against_reference_float32(kernel):
    """float32 against the float64 reference at the guide's shape: the kernel's own error, exp2 included."""
    ins = make_inputs(8, 60, 128, 16, torch.float64, raw_delta=True)
    kw = dict(delta_softplus=True, return_final_state=True)
    y64, h64 = selective_scan_ref(*ins[:6], z=ins[6], delta_bias=ins[7], initial_state=ins[8], **kw)
    f32 = [t.detach().float() for t in ins]
    y32, h32 = selective_scan_fused(*f32[:6], z=f32[6], delta_bias=f32[7], initial_state=f32[8], **kw)
    rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()  # noqa: E731
    assert rel(y32, y64.detach()) < 2e-6 and rel(h32, h64.detach()) < 2e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dims", [(2, 60, 32, 16, 4, 4), (3, 37, 20, 13, 3, 3)])
@pytest.mark.parametrize("states", [False, True])
def test_fused_block_stacked_weights_equal_each_model(kernel, dtype, dims, states):
    """Stacked models (per-model conv, x_proj, dt_proj, A, D along a leading dimension, model m's rows
    m*rows .. (m+1)*rows - 1) against each model's reference block, in outputs and every gradient."""
    M, (rows, L, d, N, R, K) = 3, dims
    per = [block_inputs(rows, L, d, N, R, K, dtype, states, seed=m) for m in range(M)]
    # the stacked call's inputs: batch-like tensors concatenated, parameters stacked
    stacked = [None if per[0][i] is None else
               (torch.cat if i in (0, 8, 9) else torch.stack)([p[i].detach() for p in per]).requires_grad_()
               for i in range(10)]
    outs = mamba_inner(*stacked)
    refs = [mamba_inner_ref(*p) for p in per]
    for o, r in zip(outs, zip(*refs, strict=True), strict=True):
        torch.testing.assert_close(o, torch.cat(r), **TOL[dtype])
    g = torch.Generator().manual_seed(7)
    ws = [torch.randn(o.shape, dtype=dtype, generator=g) for o in outs]
    inputs = [t for t in stacked if t is not None]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, ws, strict=True)), inputs)
    ref_inputs = [[t for t in p if t is not None] for p in per]
    ref_grads = [torch.autograd.grad(sum((o * w[m * rows:(m + 1) * rows]).sum()
                                         for o, w in zip(refs[m], ws, strict=True)), ref_inputs[m])
                 for m in range(M)]
    batch_like = [i for i in (0, 8, 9) if per[0][i] is not None]
    for k, grad in enumerate(grads):
        i = [j for j in range(10) if per[0][j] is not None][k]
        expected = (torch.cat if i in batch_like else torch.stack)([rg[k] for rg in ref_grads])
        torch.testing.assert_close(grad, expected, **TOL[dtype], msg=lambda m, i=i: f"grad of input {i}: {m}")


# bfloat16 activations: the kernels read a bfloat16 xz (an autocast in_proj output) and write its gradient in
# bfloat16 (`vload_bf16` / `vstore_bf16`), giving what casting around a float32 kernel gives.
_BF16_EDGES = [
    0x3F808000,  # 1 + 2^-8: halfway between bfloat16 1 and 1 + 2^-7, ties to the even 1
    0x3F818000,  # halfway above an odd bfloat16: ties up
    0x3F808001, 0x3F807FFF,             # just above / below a tie
    0x7F7FFFFF, 0xFF7FFFFF,             # float32's largest: rounds to inf
    0x7F7F7FFF,                         # the largest finite bfloat16's neighbourhood
    0x00000001, 0x80400000, 0x00018000,  # subnormals (not flushed)
    0x00000000,
    0x7F800000, 0xFF800000,             # inf, -inf
]


def _floats(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize("d", [16, 37])   # 37: two full vectors and a masked tail of 5
def test_bf16_gradient_rounds_as_torch_does(kernel, d):
    """conv_bwd with one tap of weight 1 and no SiLU computes dx = dout: written into a strided bfloat16 dx_out it
    has exactly the bits of the float32 kernel's dx cast by torch (ties to even, overflow to inf, subnormals
    kept), NaN stays NaN."""
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-2**31, 2**31 - 1, (3, 11, d), generator=g, dtype=torch.int64).to(torch.int32)
    dout = random_bits.view(torch.float32).clone()
    dout.view(-1)[:len(_BF16_EDGES)] = _floats(_BF16_EDGES)
    dout.view(-1)[len(_BF16_EDGES)] = float("nan")
    x = torch.randn(3, 11, d, generator=g).bfloat16()
    dxz = torch.zeros(3, 11, 2 * d, dtype=torch.bfloat16)
    kernel.conv_bwd(x, torch.ones(1, d), None, None, dout, False, dxz[..., :d])
    dx32 = kernel.conv_bwd(x.float(), torch.ones(1, d), None, None, dout, False, None)[0]
    assert torch.equal(dx32[~dout.isnan()], dout[~dout.isnan()])
    dx, expected = dxz[..., :d], dx32.bfloat16()
    nan = dout.isnan()
    assert dx[nan].isnan().all()
    assert torch.equal(dx[~nan].view(torch.int16), expected[~nan].view(torch.int16))
    assert (dxz[..., d:] == 0).all()    # the other half untouched
    assert dx.reshape(-1)[:4].float().tolist() == [1.0, 1.0 + 2 ** -6, 1.0 + 2 ** -7, 1.0]


@pytest.mark.parametrize("d", [16, 37])
def test_bf16_activations_read_as_their_float32_values(kernel, d):
    """conv_fwd and the scan's gate read a bfloat16 input as its exact float32 value: bit for bit what they
    compute from x.float() / z.float(), the scan's gated y written in z's dtype (rounded as torch rounds); the
    scan's backward reads a bfloat16 gradient of y as its float32 value."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 11, d, generator=g).bfloat16()
    wt, bias = torch.randn(4, d, generator=g), torch.randn(d, generator=g)
    assert torch.equal(kernel.conv_fwd(x, wt, bias, None, True), kernel.conv_fwd(x.float(), wt, bias, None, True))
    u, delta, B, C, z = (torch.randn(3, 11, k, generator=g) for k in (d, d, 4, 4, d))
    At, D = -torch.rand(4, d, generator=g) - 0.1, torch.randn(d, generator=g)
    zb = z.bfloat16()
    fwd = [kernel.scan_fwd(u, delta, At, B, C, D, zz, None, None, None, True, 8, True) for zz in (zb, zb.float())]
    (y16, *rest16), (y32, *rest32) = fwd
    assert y16.dtype == torch.bfloat16 and torch.equal(y16.view(torch.int16), y32.bfloat16().view(torch.int16))
    for a, b in zip(rest16, rest32, strict=True):
        assert torch.equal(a, b)
    dy = torch.randn(3, 11, d, generator=g).bfloat16()
    hsave, ypre = rest32[1], rest32[2]
    bwd = [kernel.scan_bwd(u, delta, At, B, C, D, zb, None, None, hsave, ypre, g_, None, True, 8, None, True)
           for g_ in (dy, dy.float())]
    for a, b in zip(*bwd, strict=True):
        assert torch.equal(a, b)
