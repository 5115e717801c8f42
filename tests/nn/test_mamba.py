import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mambacast import MambaConfig, MambaModel
from mambacast.nn.mamba import MambaBlock

SMALL = MambaConfig(d_model=16, d_state=4, num_layers=2, prediction_horizons=[1, 5])


def small_model(dtype=torch.float64, seed=0, n_features=3, config=SMALL):
    torch.manual_seed(seed)
    return MambaModel(config, n_features=n_features).to(dtype).eval()


def test_output_shapes():
    model = small_model(torch.float32)
    x = torch.randn(5, 12, 3)
    assert model(x).shape == (5, 2)
    assert model.encode(x).shape == (5, 12, 16)
    assert model.horizons == [1, 5]


def test_bad_input_shape_is_explicit():
    model = small_model(torch.float32)
    with pytest.raises(ValueError, match=r"n_features=3, got \(5, 12, 4\)"):
        model(torch.randn(5, 12, 4))
    with pytest.raises(ValueError, match="n_features"):
        MambaModel(SMALL, n_features=0)


@settings(max_examples=25, deadline=None)
@given(seq_len=st.integers(2, 24), data=st.data(), seed=st.integers(0, 2**16))
def test_encode_is_causal(seq_len, data, seed):
    t = data.draw(st.integers(0, seq_len - 2))
    model = small_model(seed=seed % 7)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, seq_len, 3, dtype=torch.float64, generator=g)
    x_changed = x.clone()
    x_changed[:, t + 1:] = torch.randn(2, seq_len - t - 1, 3, dtype=torch.float64, generator=g) * 10
    with torch.no_grad():
        a, b = model.encode(x), model.encode(x_changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_step_equals_parallel_encode(dtype, tol):
    model = small_model(dtype, config=MambaConfig(num_layers=2))
    x = torch.randn(3, 200, 3, dtype=dtype)
    with torch.no_grad():
        parallel = model.encode(x)
        state = model.init_state(3)
        steps = []
        for t in range(200):
            h, state = model.step(x[:, t], state)
            steps.append(h)
    torch.testing.assert_close(torch.stack(steps, 1), parallel, rtol=tol, atol=tol)


def test_initialisation_matches_the_paper():
    cfg = MambaConfig()
    torch.manual_seed(0)
    block = MambaBlock(cfg)
    n = torch.arange(1, cfg.d_state + 1, dtype=torch.float32)
    torch.testing.assert_close(block.A, -n.repeat(cfg.d_inner, 1))
    dt = torch.nn.functional.softplus(block.dt_proj.bias)
    assert dt.min() >= cfg.dt_min * (1 - 1e-4) and dt.max() <= cfg.dt_max * (1 + 1e-4)
    # log-uniform: the log-spread covers most of [log dt_min, log dt_max]
    assert dt.log().max() - dt.log().min() > 0.8 * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
    torch.testing.assert_close(block.D.detach(), torch.ones(cfg.d_inner))
    assert block.dt_rank == 4 and block.conv1d.groups == cfg.d_inner


def test_parameter_count_at_the_guide_config():
    # Per block: norm 128 + in_proj 16384 + conv 640 + x_proj 4608 + dt_proj 640 + A 2048 + D 128
    # + out_proj 8192 = 32768; embedding n_features*64+64; final norm 128; point heads 4*(64+1);
    # Student-t heads: scale 4*(64+1) + df 4.
    model = MambaModel(MambaConfig(), n_features=10)
    assert model.count_parameters() == 4 * 32768 + (10 * 64 + 64) + 128 + 4 * 65 + 4 * 65 + 4


def test_model_learns_ar1_to_oracle_accuracy():
    """Small model, few seconds of Adam: 1-step MSE within 10% of the true conditional mean's."""
    phi, seq_len, n = 0.6, 16, 12000
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(n, generator=g)
    r = torch.zeros(n)
    for t in range(1, n):
        r[t] = phi * r[t - 1] + eps[t]
    windows = r.unfold(0, seq_len + 1, 1)                          # (n - seq_len, seq_len + 1)
    x, y = windows[:, :seq_len, None], windows[:, seq_len:]
    split = 8000
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=16, d_state=4, num_layers=1, prediction_horizons=[1]), 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, split, (64,), generator=g)
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(x[split:]), y[split:]).item()
    oracle = torch.nn.functional.mse_loss(phi * x[split:, -1], y[split:]).item()
    assert mse < 1.10 * oracle, (mse, oracle)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_heads_read_the_last_step_computed_alone(dtype):
    """forward_distribution computes the last block's out_proj, residual and final norm at the last step only:
    equal to encode(x)[:, -1] in value and in every parameter's gradient."""
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=16, num_layers=3, d_state=4), n_features=5).to(dtype)
    x = torch.randn(3, 21, 5, dtype=dtype)
    w = torch.randn(3, 16, dtype=dtype)
    fast, whole = model._last_hidden(x), model.encode(x)[:, -1]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, whole, **tol)
    params = [*model.embed.parameters(), *model.layers.parameters(), *model.norm_f.parameters()]
    for a, b in zip(torch.autograd.grad((fast * w).sum(), params), torch.autograd.grad((whole * w).sum(), params),
                    strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_torch_compile_runs_the_fused_kernels_behind_graph_breaks():
    """The fused CPU kernels have no fake implementations; `torch.compiler.disable` around them lets
    `torch.compile` (here its eager backend: dynamo's tracing without code generation) trace the rest of the
    model and call them eagerly. Outputs and every parameter's gradient equal the eager model's."""
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(), 26)
    with torch.no_grad():   # out_proj starts at zero; perturb it so that every layer receives a gradient
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(4, 60, 26)

    def run(fn):
        model.zero_grad(set_to_none=True)
        loc, scale, df = fn(x)
        (loc.sum() + scale.log().sum() + df.sum()).backward()
        return (loc, scale, df), {n: p.grad for n, p in model.named_parameters()}

    (out_e, grads_e), (out_c, grads_c) = run(model.forward_distribution), \
        run(torch.compile(model.forward_distribution, backend="eager"))
    for a, b in zip(out_c, out_e, strict=True):
        torch.testing.assert_close(a, b)
    assert all(g is not None and g.abs().sum() > 0 for g in grads_e.values())
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, msg=name)


def test_eager_under_compile_first_called_inside_a_compiled_region():
    """`ops.eager.eager_under_compile` builds `torch.compiler.disable(fn)` at the first call; when that first call
    happens while torch.compile traces the caller, fn still runs eagerly (outside the trace)."""
    from mambacast.ops.eager import eager_under_compile

    seen = []

    @eager_under_compile
    def opaque(x):
        seen.append(torch.compiler.is_compiling())
        return x * 2

    out = torch.compile(lambda x: opaque(x + 1) - 1, backend="eager")(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 3.0))
    assert seen == [False]


def test_running_the_fused_model_leaves_dynamo_unimported():
    """The fused block, its backward and the recurrent step run without importing torch._dynamo (1 s with sympy and
    triton: every `predict` paid it) while nothing has imported it: no torch.compile can be active then
    (`ops.eager`). The same calls after torch._dynamo is imported go through `torch.compiler.disable` and agree."""
    import subprocess
    import sys

    from .kernel import kernel_or_skip

    kernel_or_skip()
    code = """
import sys, torch
from mambacast import MambaConfig, MambaModel
from mambacast.nn import fused
calls = []
apply, block = fused._MambaInner.apply, fused._block_node
fused._MambaInner.apply = lambda *a: calls.append(1) or apply(*a)
fused._block_node = lambda *a: calls.append(1) or block(*a)
torch.manual_seed(0)
model = MambaModel(MambaConfig(), 26)
x = torch.randn(2, 60, 26)
out = model.forward_distribution(x)[0]
out.sum().backward()
state = model.init_state(2)
with torch.no_grad():
    h, _ = model.step(x[:, 0], state)
print(len(calls), 'torch._dynamo' in sys.modules)
import torch._dynamo
out2 = model.forward_distribution(x)[0]
with torch.no_grad():
    h2, _ = model.step(x[:, 0], state)
print(len(calls), torch.equal(out, out2) and torch.equal(h, h2))
"""
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    n = MambaConfig().num_layers   # one fused call per block and forward: the block's node, the last one's inner part
    assert lines[-4:] == [str(n), "False", str(2 * n), "True"]


def test_importing_the_cli_leaves_dynamo_unimported():
    """`import mambacast.cli` (every command, --help and argument errors included) does not import torch._dynamo
    (0.5-1 s): the kernels' `torch.compiler.disable` is applied only once dynamo is loaded (`ops.eager`)."""
    import subprocess
    import sys

    code = "import sys, mambacast.cli; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
