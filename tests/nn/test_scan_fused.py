"""The fused CPU kernels (selective scan, causal conv1d, the fused block) against the references.

Fused-specific tests skip, with the build error as the reason, where the kernel cannot be built
(no compiler), and fail instead when MAMBACAST_REQUIRE_KERNEL=1 (CI, `tests/nn/kernel.py`); the fallback
tests run everywhere.
"""

import logging
from pathlib import Path

import pytest
import torch

from mambacast import ops
from mambacast.nn import scan as scan_module
from mambacast.nn.fused import causal_conv1d, causal_conv1d_ref, mamba_inner, mamba_inner_ref
from mambacast.nn.scan import (
    fused_chunk,
    scan_impl,
    selective_scan,
    selective_scan_fused,
    selective_scan_ref,
)
from mambacast.ops import _loader

from .kernel import REQUIRE_ENV, kernel_or_skip


@pytest.fixture(scope="module")
def kernel():
    return kernel_or_skip()


@pytest.fixture(autouse=True)
def _auto_impl(monkeypatch):
    monkeypatch.delenv("MAMBACAST_SCAN", raising=False)


TOL = {torch.float32: dict(rtol=2e-4, atol=2e-4), torch.float64: dict(rtol=1e-9, atol=1e-9)}


def make_inputs(batch, seq_len, d_inner, d_state, dtype, seed=0, raw_delta=False):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, seq_len, d_inner, dtype=dtype, generator=g)
    delta = torch.randn(batch, seq_len, d_inner, dtype=dtype, generator=g)
    if not raw_delta:
        delta = torch.nn.functional.softplus(delta)
    A = -torch.rand(d_inner, d_state, dtype=dtype, generator=g) * 4 - 0.1
    B = torch.randn(batch, seq_len, d_state, dtype=dtype, generator=g)
    C = torch.randn(batch, seq_len, d_state, dtype=dtype, generator=g)
    D = torch.randn(d_inner, dtype=dtype, generator=g)
    z = torch.randn(batch, seq_len, d_inner, dtype=dtype, generator=g)
    bias = torch.randn(d_inner, dtype=dtype, generator=g) * 0.5
    h0 = torch.randn(batch, d_inner, d_state, dtype=dtype, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias, h0)]


def assert_same(fast, ref, inputs, dtype, seed=1):
    """Outputs (y and h_last) and the gradients of every input agree."""
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o.shape, dtype=o.dtype, generator=g) for o in ref]
    for name, a, b in zip(("y", "h_last"), fast, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}")
    loss = sum((o * w).sum() for o, w in zip(ref, ws, strict=True))
    g_ref = torch.autograd.grad(loss, inputs)
    g_fast = torch.autograd.grad(sum((o * w).sum() for o, w in zip(fast, ws, strict=True)), inputs)
    for i, (a, b) in enumerate(zip(g_fast, g_ref, strict=True)):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, i=i: f"grad of input {i}: {m}")


SHAPES = [  # (batch, seq_len, d_inner, d_state), chunk
    ((2, 1, 3, 4), None), ((3, 60, 8, 16), None), ((2, 37, 5, 4), 8), ((1, 129, 20, 3), 64),
    ((2, 100, 33, 1), 7), ((4, 17, 16, 2), 1), ((1, 70, 9, 64), None), ((2, 45, 17, 24), 16),
    ((1, 130, 128, 16), None),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, chunk", SHAPES)
def test_fused_equals_reference_plain(kernel, dtype, shape, chunk):
    u, delta, A, B, C, D, *_ = make_inputs(*shape, dtype)
    inputs = [u, delta, A, B, C, D]
    ref = selective_scan_ref(*inputs, return_final_state=True)
    fast = selective_scan_fused(*inputs, chunk=chunk, return_final_state=True)
    assert_same(fast, ref, inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, chunk", SHAPES[:6])
@pytest.mark.parametrize("options", ["z", "bias+softplus", "initial_state", "all", "no_d"])
def test_fused_equals_reference_with_options(kernel, dtype, shape, chunk, options):
    u, delta, A, B, C, D, z, bias, h0 = make_inputs(*shape, dtype, raw_delta="softplus" in options or
                                                    options == "all")
    kw = dict(z=z if options in ("z", "all") else None,
              delta_bias=bias if options in ("bias+softplus", "all") else None,
              delta_softplus=options in ("bias+softplus", "all"),
              initial_state=h0 if options in ("initial_state", "all") else None)
    D = None if options == "no_d" else D
    inputs = [t for t in (u, delta, A, B, C, D, kw["z"], kw["delta_bias"], kw["initial_state"]) if t is not None]
    ref = selective_scan_ref(u, delta, A, B, C, D, **kw, return_final_state=True)
    fast = selective_scan_fused(u, delta, A, B, C, D, chunk=chunk, **kw, return_final_state=True)
    assert_same(fast, ref, inputs, dtype)


def test_fused_gradcheck_float64(kernel):
    u, delta, A, B, C, D, z, bias, h0 = make_inputs(2, 6, 3, 2, torch.float64, raw_delta=True)

    def f(u, delta, A, B, C, D, z, bias, h0):
        y, h = selective_scan_fused(u, delta, A, B, C, D, chunk=4, z=z, delta_bias=bias, delta_softplus=True,
                                    initial_state=h0, return_final_state=True)
        return y, h

    assert torch.autograd.gradcheck(f, (u, delta, A, B, C, D, z, bias, h0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_final_state_carries_a_sequence_across_pieces(kernel, dtype):
    u, delta, A, B, C, D, *_ = make_inputs(2, 150, 12, 8, dtype)
    y_full, h_full = selective_scan_fused(u, delta, A, B, C, D, return_final_state=True)
    h, ys = None, []
    for t0 in range(0, 150, 41):
        sl = slice(t0, t0 + 41)
        y, h = selective_scan_fused(u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl], D, initial_state=h,
                                    return_final_state=True)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_full, **TOL[dtype])
    torch.testing.assert_close(h, h_full, **TOL[dtype])


def test_fused_saves_only_boundary_states(kernel):
    # Beyond its inputs, autograd keeps one (batch, d_state, d_inner) state per chunk: no
    # (batch, seq_len, d_inner, d_state) tensor.
    batch, seq_len, d_inner, d_state, chunk = 2, 4096, 8, 16, 128
    inputs = make_inputs(batch, seq_len, d_inner, d_state, torch.float32)[:6]
    y = selective_scan_fused(*inputs, chunk=chunk)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]   # A is saved transposed
    extra = sum(t.numel() for t in saved) - sum(t.numel() for t in inputs)
    assert extra == (seq_len // chunk) * batch * d_inner * d_state
    assert max(t.numel() for t in saved) < batch * seq_len * d_inner * d_state // 4


def test_inference_saves_nothing(kernel):
    inputs = [t.detach() for t in make_inputs(2, 64, 8, 16, torch.float32)[:6]]
    assert selective_scan_fused(*inputs).grad_fn is None


def test_fused_chunk_bounds_scratch():
    assert fused_chunk(16) == 128 and fused_chunk(1) == 256 and fused_chunk(1024) == 16


def test_mixed_dtypes_are_promoted(kernel):
    u, delta, A, B, C, D, *_ = make_inputs(2, 20, 6, 4, torch.float64)
    y = selective_scan_fused(u, delta, A.float(), B, C, D)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A.float().double(), B, C, D))


# ------------------------------------------------------------------ choosing the implementation
def test_auto_picks_fused_on_cpu(kernel):
    u, delta, A, *_ = make_inputs(1, 4, 2, 2, torch.float32)
    assert scan_impl(u, A) == "fused"
    assert scan_impl(u.half(), A) == "chunked"


@pytest.mark.parametrize("choice", ["ref", "chunked", "fused"])
def test_env_var_forces_the_implementation(monkeypatch, choice):
    if choice == "fused":
        kernel_or_skip()
    u, delta, A, B, C, D, *_ = make_inputs(2, 10, 4, 3, torch.float64)
    monkeypatch.setenv("MAMBACAST_SCAN", choice.upper())
    assert scan_impl(u, A) == choice
    called = []
    impl = scan_module._IMPL_FNS[choice]
    monkeypatch.setitem(scan_module._IMPL_FNS, choice, lambda *a, **k: called.append(choice) or impl(*a, **k))
    y = selective_scan(u, delta, A, B, C, D)
    assert called == [choice]
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C, D))


def test_env_var_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("MAMBACAST_SCAN", "fastest")
    u, delta, A, B, C, D, *_ = make_inputs(1, 3, 2, 2, torch.float32)
    with pytest.raises(ValueError, match="MAMBACAST_SCAN='fastest' is invalid"):
        selective_scan(u, delta, A, B, C, D)


@pytest.fixture
def broken_build(monkeypatch):
    """The loader as on a machine without a compiler: building raises."""
    def fail():
        raise RuntimeError("c++: command not found")

    monkeypatch.setattr(_loader, "_ops", None)
    monkeypatch.setattr(_loader, "_error", None)
    monkeypatch.setattr(_loader, "_build", fail)


def test_fallback_when_the_kernel_cannot_be_built(broken_build, caplog):
    u, delta, A, B, C, D, z, bias, h0 = make_inputs(2, 30, 6, 4, torch.float64, raw_delta=True)
    kw = dict(z=z, delta_bias=bias, delta_softplus=True, initial_state=h0, return_final_state=True)
    with caplog.at_level(logging.WARNING, logger="mambacast.ops._loader"):
        assert scan_impl(u, A) == "chunked"
        out = selective_scan(u, delta, A, B, C, D, **kw)
        out_again = selective_scan(u, delta, A, B, C, D, **kw)
    ref = selective_scan_ref(u, delta, A, B, C, D, **kw)
    for a, b in zip((*out, *out_again), (*ref, *ref), strict=True):
        torch.testing.assert_close(a, b)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "c++: command not found" in warnings[0].getMessage()
    assert "chunked" in warnings[0].getMessage()


def test_fallback_model_trains_without_the_kernel(broken_build):
    from mambacast import MambaConfig, MambaModel

    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=16, d_state=4, num_layers=2, prediction_horizons=[1]), 3)
    loss = model(torch.randn(4, 12, 3)).square().mean()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "dist_head" not in n)
    with torch.no_grad():
        state = model.init_state(4)
        h, state = model.step(torch.randn(4, 3), state)
    assert h.shape == (4, 16)


@pytest.mark.parametrize("required", [False, True])
def test_a_kernel_that_cannot_build_skips_or_fails_the_run(broken_build, monkeypatch, required):
    """On a user's machine without a compiler the fused tests skip; in CI (MAMBACAST_REQUIRE_KERNEL=1) they fail."""
    if required:
        monkeypatch.setenv(REQUIRE_ENV, "1")
    else:
        monkeypatch.delenv(REQUIRE_ENV, raising=False)
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome, match="c\\+\\+: command not found"):
        kernel_or_skip()


def test_forcing_fused_without_the_kernel_raises(broken_build, monkeypatch, caplog):
    monkeypatch.setenv("MAMBACAST_SCAN", "fused")
    u, delta, A, B, C, D, *_ = make_inputs(1, 5, 2, 2, torch.float32)
    with pytest.raises(ops.ExtensionUnavailable, match="c\\+\\+: command not found"):
        selective_scan(u, delta, A, B, C, D)


def test_cache_key_includes_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("MAMBACAST_CACHE_DIR", str(tmp_path))
    assert _loader.cache_dir() == tmp_path
    assert _loader._cpu_signature()


def test_checkouts_of_the_same_sources_share_one_build(kernel, monkeypatch, tmp_path):
    """The compiled file is a copy inside the (content-keyed) build directory, so a second install or checkout of
    the same sources finds the same ninja file instead of rebuilding under its own path."""
    from torch.utils import cpp_extension

    compiled = []
    monkeypatch.setenv("MAMBACAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: compiled.append((kw["sources"], kw["build_directory"])))
    for checkout in ("a", "b"):
        root = tmp_path / checkout
        root.mkdir()
        for path in (_loader.SOURCE, *_loader.HEADERS):
            (root / path.name).write_bytes(path.read_bytes())
        monkeypatch.setattr(_loader, "SOURCE", root / _loader.SOURCE.name)
        monkeypatch.setattr(_loader, "HEADERS", tuple(root / h.name for h in _loader.HEADERS))
        _loader._build()   # the stub builds nothing: the ops found are the real kernel's (the fixture loaded it)
    (src_a, dir_a), *_, (src_b, dir_b) = compiled
    assert src_a == src_b and dir_a == dir_b
    assert Path(src_a[0]).parent == Path(dir_a)
    for path in (_loader.SOURCE, *_loader.HEADERS):
        assert (Path(dir_a) / path.name).read_bytes() == path.read_bytes()


# ------------------------------------------------------------------ conv1d and the fused block
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 3, 4])
@pytest.mark.parametrize("with_prev", [False, True])
def test_causal_conv1d_equals_reference(kernel, dtype, K, with_prev):
    g = torch.Generator().manual_seed(K)
    x = torch.randn(2, 23, 20, dtype=dtype, generator=g).requires_grad_()
    w = torch.randn(20, K, dtype=dtype, generator=g).requires_grad_()
    b = torch.randn(20, dtype=dtype, generator=g).requires_grad_()
    prev = torch.randn(2, K - 1, 20, dtype=dtype, generator=g).requires_grad_() if with_prev else None
    inputs = [t for t in (x, w, b, prev) if t is not None]
    for silu in (True, False):
        ref, out = causal_conv1d_ref(x, w, b, prev, silu), causal_conv1d(x, w, b, prev, silu)
        torch.testing.assert_close(out, ref, **TOL[dtype])
        for a, r in zip(torch.autograd.grad(out.square().sum(), inputs),
                        torch.autograd.grad(ref.square().sum(), inputs), strict=True):
            torch.testing.assert_close(a, r, **TOL[dtype])


def block_inputs(batch, seq_len, d, N, R, K, dtype, states, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, dtype=dtype, generator=g) * scale + shift).requires_grad_()

    return [r(batch, seq_len, 2 * d), r(d, K, scale=0.5), r(d, scale=0.1), r(R + 2 * N, d, scale=0.3),
            r(d, R, scale=0.5), r(d, scale=0.5, shift=-2), (-torch.rand(d, N, dtype=dtype, generator=g) * 3 - 0.2
                                                            ).requires_grad_(), r(d),
            r(batch, K - 1, d) if states else None, r(batch, d, N) if states else None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dims", [(2, 1, 16, 4, 2, 4), (3, 60, 32, 16, 4, 4), (2, 37, 20, 5, 3, 3),
                                  (2, 50, 8, 3, 1, 1), (2, 45, 24, 8, 9, 5)])
@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("gated", [True, False])
def test_fused_block_equals_reference(kernel, dtype, dims, states, gated):
    """With xz, and with x alone (no gate: the last block gates only its last step)."""
    ins = block_inputs(*dims, dtype, states)
    if not gated:
        ins[0] = ins[0][..., :dims[2]].detach().clone().requires_grad_()
    inputs = [t for t in ins if t is not None]
    assert_same(mamba_inner(*ins), mamba_inner_ref(*ins), inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dims", [(2, 1, 16, 4, 2, 4), (3, 60, 32, 16, 4, 4), (2, 37, 20, 5, 3, 3),
                                  (2, 45, 24, 8, 9, 5)])
@pytest.mark.parametrize("states", [False, True])
def test_fused_block_last_step_only_equals_reference(kernel, dtype, dims, states):
    """`last_only` (the last block): y at the last step alone, (batch, 1, d_inner), and the same gradients as the
    whole y with a gradient at its last step only."""
    ins = block_inputs(*dims, dtype, states)
    ins[0] = ins[0][..., :dims[2]].detach().clone().requires_grad_()
    inputs = [t for t in ins if t is not None]
    fast = mamba_inner(*ins, last_only=True)
    assert fast[0].shape == (dims[0], 1, dims[2])
    assert_same(fast, mamba_inner_ref(*ins, last_only=True), inputs, dtype)
    with pytest.raises(ValueError, match="last_only takes x alone"):
        mamba_inner(*block_inputs(*dims, dtype, states), last_only=True)


@pytest.mark.parametrize("y_from", [1, 7, 8, 20, 36])
def test_scan_kernel_output_from_a_step_equals_the_whole_output_cut(kernel, y_from):
    """The kernel's y_from (forward: y from that step on; backward: dy from there, zero before) against the whole y,
    across chunk boundaries (chunk 8) and within a chunk."""
    g = torch.Generator().manual_seed(y_from)
    batch, L, d, N, R = 2, 37, 20, 5, 3
    u, dt_low = torch.randn(batch, L, d, generator=g), torch.randn(batch, L, R, generator=g)
    At = -torch.rand(N, d, generator=g) - 0.1
    B, C = torch.randn(batch, L, N, generator=g), torch.randn(batch, L, N, generator=g)
    D, bias, Wt = torch.randn(d, generator=g), torch.randn(d, generator=g), torch.randn(R, d, generator=g) * 0.5
    args = (u, dt_low, At, B, C, D, None, bias, Wt)
    y, h, hsave, _ = kernel.scan_fwd(*args, None, True, 8, True, False, 0)
    y_cut, h_cut, hsave_cut, _ = kernel.scan_fwd(*args, None, True, 8, True, False, y_from)
    assert y_cut.shape == (batch, L - y_from, d)
    assert torch.equal(y_cut, y[:, y_from:]) and torch.equal(h_cut, h) and torch.equal(hsave_cut, hsave)
    dy = torch.randn(batch, L - y_from, d, generator=g)
    full = torch.cat([torch.zeros(batch, y_from, d), dy], 1)
    whole = kernel.scan_bwd(*args, hsave, None, full, None, True, 8, None, True, False, 0)
    cut = kernel.scan_bwd(*args, hsave, None, dy, None, True, 8, None, True, False, y_from)
    for i, (a, b) in enumerate(zip(cut, whole, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"output {i}: {m}")


def test_block_input_of_the_wrong_width_is_refused(kernel):
    ins = block_inputs(2, 5, 8, 4, 1, 4, torch.float32, False)
    ins[0] = ins[0][..., :12]
    for fn in (mamba_inner, mamba_inner_ref):
        with pytest.raises(ValueError, match="expected 2 \\* d_inner = 16"):
            fn(*ins)
