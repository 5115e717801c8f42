"""Training under bfloat16 autocast (issue 13): every scan implementation's backward runs, the scans compute in
float32 whatever autocast's dtype, and the gradients stay close to float32 training.

Measured at the shapes below (CPU, bf16 autocast against float32, MambaConfig(d_model=32, num_layers=2,
d_state=8), batch 8 x 30 steps): relative error of the whole gradient 6.0e-3 (ref, chunked) and 6.1e-3 (fused
kernel), worst single parameter tensor 1.6e-2 to 2.0e-2; the tolerances are about three times that.
"""

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mambacast import MambaConfig, MambaModel
from mambacast.nn.fused import mamba_inner
from mambacast.nn.heads import student_t_nll
from mambacast.nn.scan import selective_scan_chunked, selective_scan_fused, selective_scan_ref

IMPLS = ["ref", "chunked", "fused"]
GLOBAL_RTOL, TENSOR_RTOL = 2e-2, 6e-2


def _needs_kernel(impl: str) -> None:
    if impl == "fused":
        from mambacast import ops

        if not ops.available():
            pytest.skip("fused CPU kernel unavailable here (no C++ compiler)")


def _train_grads(amp: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=32, num_layers=2, d_state=8), n_features=6)
    with torch.no_grad():   # non-zero heads, so that every parameter has a gradient
        model.head.proj.weight.normal_(0, 0.1)
        model.dist_head.scale_proj.weight.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 30, 6, generator=g), torch.randn(8, 4, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loc, scale, df = model.forward_distribution(x)
    student_t_nll(y, loc.float(), scale.float(), df.float()).backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("impl", IMPLS)
def test_train_step_under_bf16_autocast_is_close_to_float32(impl, monkeypatch):
    _needs_kernel(impl)
    monkeypatch.setenv("MAMBACAST_SCAN", impl)
    g32, g16 = _train_grads(False), _train_grads(True)
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[n].flatten() for n in g32])
    assert torch.isfinite(flat16).all()
    assert (flat16 - flat32).norm() / flat32.norm() < GLOBAL_RTOL
    for name, g in g32.items():
        assert (g16[name] - g).norm() / g.norm().clamp_min(1e-12) < TENSOR_RTOL, name


def _scan_inputs(dtype):
    g = torch.Generator().manual_seed(0)
    b, L, d, n = 3, 40, 8, 4
    u, delta = torch.randn(b, L, d, generator=g), torch.randn(b, L, d, generator=g)
    B, C, z = torch.randn(b, L, n, generator=g), torch.randn(b, L, n, generator=g), torch.randn(b, L, d, generator=g)
    acts = [t.to(dtype).requires_grad_() for t in (u, delta, B, C, z)]
    A = (-torch.rand(d, n, generator=g) * 4 - 0.1).requires_grad_()
    D, bias = torch.randn(d, generator=g).requires_grad_(), torch.randn(d, generator=g).requires_grad_()
    return acts, A, D, bias


@pytest.mark.parametrize("impl", IMPLS)
def test_scans_compute_in_float32_under_autocast(impl):
    """Under autocast a scan given bfloat16 activations and float32 parameters computes what the float32
    reference computes on the same (bfloat16-valued) inputs, forward and backward, to float32 rounding."""
    _needs_kernel(impl)
    fn = {"ref": selective_scan_ref, "chunked": lambda *a, **k: selective_scan_chunked(*a, chunk=16, **k),
          "fused": selective_scan_fused}[impl]
    (u, delta, B, C, z), A, D, bias = _scan_inputs(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    ref_in = [t.detach().float().requires_grad_() for t in (u, delta, B, C, z)]
    y_ref = selective_scan_ref(ref_in[0], ref_in[1], A, ref_in[2], ref_in[3], D, z=ref_in[4], delta_bias=bias,
                               delta_softplus=True)
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-4, atol=1e-4)
    w = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((y.float() * w).sum(), [u, delta, B, C, z, A, D, bias])
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [*ref_in, A, D, bias])
    for i, (a, b) in enumerate(zip(grads, grads_ref, strict=True)):
        # the activations' gradients arrive in bfloat16 (their dtype): compare at bfloat16's resolution
        tol = dict(rtol=2e-2, atol=2e-2) if a.dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.float(), b, **tol, msg=lambda m, i=i: f"grad {i}: {m}")


def test_fused_block_serves_autocast(monkeypatch):
    """With the default choice the fused CPU block runs under autocast too (computing in float32): given in_proj's
    bfloat16 output it returns the gated y in bfloat16, what out_proj's autocast casts it to."""
    _needs_kernel("fused")
    monkeypatch.delenv("MAMBACAST_SCAN", raising=False)
    model = MambaModel(MambaConfig(d_model=16, num_layers=1, d_state=4), n_features=3)
    block = model.layers[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xz = block.in_proj(block.norm(torch.randn(2, 10, 16)))
        y, _ = mamba_inner(xz, block.conv1d.weight.squeeze(1), block.conv1d.bias, block.x_proj.weight,
                           block.dt_proj.weight, block.dt_proj.bias, block.A, block.D)
    assert xz.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert type(y.grad_fn).__name__ == "_MambaInnerBackward"


class _MatmulDtypes(TorchDispatchMode):
    """(op name, first operand's dtype, second operand's shape) of every matmul run under it."""
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in ("mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_"):
            a, b = args[-2:]
            self.seen.append((name, a.dtype, tuple(b.shape)))
        return func(*args, **(kwargs or {}))


def _fused_block_grads(dtype, amp: bool, stacked: bool):
    """Outputs and gradients of one fused block (two stacked copies with `stacked`) on fixed inputs, and the
    matmuls it ran: xz (2 rows per model, 12 steps, 2 * d_inner = 32), d_state 4, dt_rank 2."""
    g = torch.Generator().manual_seed(0)
    lead = (2,) if stacked else ()
    d, K, N, R = 16, 4, 4, 2
    params = [torch.randn(*lead, d, K, generator=g) * 0.3, torch.randn(*lead, d, generator=g) * 0.1,
              torch.randn(*lead, R + 2 * N, d, generator=g) * 0.3, torch.randn(*lead, d, R, generator=g) * 0.3,
              torch.randn(*lead, d, generator=g) * 0.1 - 2, -torch.rand(*lead, d, N, generator=g) - 0.5,
              torch.randn(*lead, d, generator=g)]
    params = [p.to(dtype).requires_grad_() for p in params]
    xz = (torch.randn(4 if stacked else 2, 12, 2 * d, generator=g)).to(dtype).requires_grad_()
    with _MatmulDtypes() as mm, torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y, h = mamba_inner(xz, *params)
        assert type(y.grad_fn).__name__ == "_MambaInnerBackward"
        w = torch.randn(y.shape, generator=g).to(dtype)
        grads = torch.autograd.grad((y * w).sum() + h.sum(), [xz, *params])
    return [y.detach(), *grads], mm.seen


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "stacked"])
def test_fused_block_runs_x_proj_in_bf16_under_autocast(stacked):
    """Under the CPU's bf16 autocast the fused block's x_proj (forward and weight gradient) multiplies in bfloat16,
    as autocast runs every Linear and as the block's unfused ops run it; its input gradient stays float32. The
    results stay within bfloat16's rounding of float32's (measured: 5.7e-3 relative at most) and are not float32's."""
    _needs_kernel("fused")
    out32, seen32 = _fused_block_grads(torch.float32, False, stacked)
    out16, seen16 = _fused_block_grads(torch.float32, True, stacked)
    x_proj = (2, 10, 16) if stacked else (10, 16)      # x_proj's weight (R + 2N, d_inner), per model
    assert {dt for _, dt, _ in seen32} == {torch.float32}
    # forward: xc @ W^T (W's shape transposed), weight gradient: dx_dbl^T @ xc, input gradient: dx_dbl @ W (+=)
    fwd = [(dt, name) for name, dt, shape in seen16 if shape == (*x_proj[:-2], x_proj[-1], x_proj[-2])]
    grad_w = [(dt, name) for name, dt, shape in seen16 if shape[-1] == x_proj[-1] and shape[-2] != x_proj[-2]]
    grad_x = [(dt, name) for name, dt, shape in seen16 if shape == x_proj]
    assert [dt for dt, _ in fwd] == [torch.bfloat16], seen16
    assert [dt for dt, _ in grad_w] == [torch.bfloat16], seen16
    assert [dt for dt, _ in grad_x] == [torch.float32], seen16
    assert all(o.dtype == torch.float32 for o in out16)
    for i, (a, b) in enumerate(zip(out16, out32, strict=True)):
        assert (a - b).norm() / b.norm() < 1e-2, i
    assert any(not torch.equal(a, b) for a, b in zip(out16, out32, strict=True))


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "stacked"])
@pytest.mark.parametrize("gated", [True, False], ids=["xz", "x alone"])
def test_fused_block_reads_a_bf16_xz_as_its_float32_cast(stacked, gated):
    """Under autocast the fused block takes in_proj's bfloat16 output as it is (the kernels widen it as they read,
    and write its gradient in bfloat16) and returns the gated y in bfloat16 (reading its bfloat16 gradient as it
    is): bit for bit the same block given xz.float() with its y and gradients cast by torch (as out_proj's
    autocast would), and the block keeps xz in bfloat16 for its backward instead of a float32 copy."""
    _needs_kernel("fused")
    g = torch.Generator().manual_seed(3)
    M = 2 if stacked else 1
    lead = (M,) if stacked else ()
    d, K, N, R = 20, 4, 5, 2    # 20 channels: a full vector and a masked tail
    params = [torch.randn(*lead, d, K, generator=g) * 0.3, torch.randn(*lead, d, generator=g) * 0.1,
              torch.randn(*lead, R + 2 * N, d, generator=g) * 0.3, torch.randn(*lead, d, R, generator=g) * 0.3,
              torch.randn(*lead, d, generator=g) * 0.1 - 2, -torch.rand(*lead, d, N, generator=g) - 0.5,
              torch.randn(*lead, d, generator=g)]
    params = [p.requires_grad_() for p in params]
    xz16 = torch.randn(3 * M, 13, 2 * d if gated else d, generator=g).bfloat16().requires_grad_()
    xz32 = xz16.detach().float().requires_grad_()
    w = torch.randn(3 * M, 13, d, generator=g)
    results = []
    for xz in (xz16, xz32):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, h = mamba_inner(xz, *params)
        assert type(y.grad_fn).__name__ == "_MambaInnerBackward"
        assert y.grad_fn.saved_tensors[0].dtype == xz.dtype
        # y reaches the loss through a bfloat16 cast (out_proj's under autocast): its gradient arrives in bfloat16
        loss = (y.bfloat16().float() * w).sum() + h.sum()
        results.append([y, h, *torch.autograd.grad(loss, [xz, *params])])
    (y16, h16, dxz16, *dp16), (y32, h32, dxz32, *dp32) = results
    assert y16.dtype == (torch.bfloat16 if gated else torch.float32) and h16.dtype == torch.float32
    assert dxz16.dtype == torch.bfloat16

    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    assert torch.equal(bits(y16), bits(y32.to(y16.dtype)))
    for a, b in zip([h16, *dp16], [h32, *dp32], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(bits(dxz16), bits(dxz32.bfloat16()))


def _scan_calls(monkeypatch, force_exact: bool = False) -> list[tuple[str, bool]]:
    """Record (op, fast_exp) of every fused scan call (optionally running it with the exact exp instead)."""
    from mambacast import ops

    kernel, calls = ops.load(), []

    def spy(name: str):
        op = getattr(kernel, name)

        def call(*args):   # the fused block passes (..., fast_exp, y_from)
            calls.append((name, args[-2]))
            return op(*args[:-2], False if force_exact else args[-2], args[-1])
        return call

    for name in ("scan_fwd", "scan_bwd"):
        monkeypatch.setattr(kernel, name, spy(name))
    return calls


def test_fused_block_uses_the_fast_exp_under_bf16_autocast_only(monkeypatch):
    """The scan's exp(delta A) is `vexp2_fast` (degree 4) under the CPU's bf16 autocast and the exact one otherwise,
    float64 under autocast included. Under autocast it moves the block's outputs and gradients by at most 1e-4
    relative (measured 0 to 1.8e-5 at these shapes), against the 5.7e-3 bfloat16 moves them by."""
    _needs_kernel("fused")
    calls = _scan_calls(monkeypatch)
    _fused_block_grads(torch.float32, False, False)
    _fused_block_grads(torch.float64, True, False)
    assert calls == [("scan_fwd", False), ("scan_bwd", False)] * 2
    calls.clear()
    fast, _ = _fused_block_grads(torch.float32, True, False)
    assert calls == [("scan_fwd", True), ("scan_bwd", True)]
    monkeypatch.undo()
    _scan_calls(monkeypatch, force_exact=True)
    exact, _ = _fused_block_grads(torch.float32, True, False)
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(fast, exact, strict=True)]
    assert max(rel) < 1e-4, rel
    from mambacast import ops

    from .test_simd import _avx512_build

    if _avx512_build(ops.load()):   # elsewhere vexp2_fast is vexp2
        assert any(not torch.equal(a, b) for a, b in zip(fast, exact, strict=True))



def test_fused_block_keeps_float64_under_autocast():
    """float64 is not autocast's to round: the block under autocast computes exactly what it computes without."""
    _needs_kernel("fused")
    out_amp, seen = _fused_block_grads(torch.float64, True, False)
    out, _ = _fused_block_grads(torch.float64, False, False)
    assert {dt for _, dt, _ in seen} == {torch.float64}
    for a, b in zip(out_amp, out, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_checkpointed_encode_long_recomputes_under_the_forwards_autocast(impl, monkeypatch):
    """encode_long's per-piece checkpointing recomputes each piece in its backward under the autocast state of
    the forward: the gradients equal those of the same pieces kept by autograd."""
    _needs_kernel(impl)
    monkeypatch.setenv("MAMBACAST_SCAN", impl)
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=16, num_layers=2, d_state=4), n_features=3)
    x = torch.randn(2, 50, 3)
    grads = []
    for checkpoint in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.encode_long(x, chunk_len=16, checkpoint=checkpoint)
        out.float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in (*model.embed.parameters(), *model.layers.parameters())]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_cpu_bf16_switch_turns_the_trainers_autocast_on(monkeypatch):
    """MAMBACAST_CPU_BF16=1: the Trainer's forward passes on the CPU run under bfloat16 autocast; 0: float32; unset
    or auto: bf16 where the CPU has it in hardware (`cpu_has_bf16`); anything else is refused rather than read as
    either."""
    from mambacast import TrainConfig
    from mambacast.ops.amp import CPU_BF16_ENV, cpu_bf16_autocast, cpu_has_bf16
    from mambacast.train.trainer import Trainer

    trainer = Trainer(MambaModel(MambaConfig(d_model=16, num_layers=1, d_state=4), n_features=3), TrainConfig(),
                      device="cpu")
    for value, on in (("1", True), ("0", False), (None, cpu_has_bf16()), ("auto", cpu_has_bf16())):
        if value is None:
            monkeypatch.delenv(CPU_BF16_ENV, raising=False)
        else:
            monkeypatch.setenv(CPU_BF16_ENV, value)
        assert cpu_bf16_autocast() is on
        assert trainer.precision == ("bfloat16 autocast" if on else "float32")
        with trainer._autocast():
            assert torch.is_autocast_enabled("cpu") is on
            assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == (
                torch.bfloat16 if on else torch.float32)
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match=CPU_BF16_ENV):
        cpu_bf16_autocast()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_cpu_has_bf16_matches_the_cpus_flags():
    """The default precision follows the hardware: bf16 exactly where the CPU lists AVX512_BF16 or AMX-BF16."""
    from mambacast.ops.amp import cpu_has_bf16

    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert cpu_has_bf16() is bool(flags & {"avx512_bf16", "amx_bf16"})
