"""Training under bfloat16 autocast (issue 13): every scan implementation's backward runs, the scans compute in
float32 whatever autocast's dtype, and the gradients stay close to float32 training.

Measured at the shapes below (CPU, bf16 autocast against float32, MambaConfig(d_model=32, num_layers=2,
d_state=8), batch 8 x 30 steps): relative error of the whole gradient 6.0e-3 (ref, chunked) and 6.1e-3 (fused
kernel), worst single parameter tensor 1.6e-2 to 2.0e-2; the tolerances are about three times that.
"""

from pathlib import Path

import pytest
import torch

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
    """With the default choice the fused CPU block runs under autocast too (its inputs cast to float32)."""
    _needs_kernel("fused")
    monkeypatch.delenv("MAMBACAST_SCAN", raising=False)
    model = MambaModel(MambaConfig(d_model=16, num_layers=1, d_state=4), n_features=3)
    block = model.layers[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xz = block.in_proj(block.norm(torch.randn(2, 10, 16)))
        y, _ = mamba_inner(xz, block.conv1d.weight.squeeze(1), block.conv1d.bias, block.x_proj.weight,
                           block.dt_proj.weight, block.dt_proj.bias, block.A, block.D)
    assert xz.dtype == torch.bfloat16 and y.dtype == torch.float32
    assert type(y.grad_fn).__name__ == "_MambaInnerBackward"


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
