"""A whole Mamba block as one C++ autograd node (`nn.fused.fused_block`, ops/csrc/mamba_block.h) against the same
block composed of its pieces (`nn.norm.layer_norm`, in_proj, `nn.fused.mamba_inner`, out_proj, the residual): the
node runs the same kernels and matmuls in the same order and dtypes, so outputs and gradients agree bit for bit."""

import contextlib

import pytest
import torch

from mambacast import MambaConfig, MambaModel
from mambacast.nn import fused
from mambacast.nn.mamba import MambaBlock

from .kernel import kernel_or_skip

CASES = [(torch.float64, False), (torch.float32, False), (torch.float32, True)]   # (parameters, bf16 autocast)


@pytest.fixture(autouse=True)
def _kernel():
    kernel_or_skip()


def _block(cfg: MambaConfig, dtype: torch.dtype, seed: int = 0) -> MambaBlock:
    torch.manual_seed(seed)
    block = MambaBlock(cfg).to(dtype)
    with torch.no_grad():   # off the initial values (D = 1, norm weight 1, bias 0), so that each gradient is checked
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return block


def _autocast(on: bool) -> contextlib.AbstractContextManager[object]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _run(block: MambaBlock, hidden: torch.Tensor, bf16: bool, last_only: bool, composed: bool,
         monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(output, hidden's gradient, every parameter's gradient) of the block on `hidden`, through the node or, with
    `composed`, through the pieces; counts that the node ran exactly when it should."""
    calls: list[int] = []
    real = fused._block_node
    with monkeypatch.context() as m:
        m.setattr(fused, "_block_node", lambda *a: calls.append(1) or real(*a))
        if composed:
            m.setattr(MambaBlock, "_fused", lambda self, hidden, last_only=False: None)
        h = hidden.detach().clone().requires_grad_()
        with _autocast(bf16):
            out = block(h, last_only=last_only)
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
        params = dict(block.named_parameters())
        grads = torch.autograd.grad(out, [h, *params.values()], dout)
    assert len(calls) == (0 if composed else 1)
    return out, grads[0], dict(zip(params, grads[1:], strict=True))


def _assert_same(a, b) -> None:
    (out, dh, g), (out_ref, dh_ref, g_ref) = a, b
    assert out.dtype == out_ref.dtype and out.shape == out_ref.shape and torch.equal(out, out_ref)
    assert dh.dtype == dh_ref.dtype and torch.equal(dh, dh_ref)
    for name, grad in g_ref.items():
        assert g[name].shape == grad.shape and g[name].dtype == grad.dtype, name
        assert torch.equal(g[name], grad), name


@pytest.mark.parametrize("dtype,bf16", CASES)
@pytest.mark.parametrize("last_only", [False, True])
def test_the_node_equals_the_composed_block(dtype, bf16, last_only, monkeypatch):
    cfg = MambaConfig()   # the guide's block
    block = _block(cfg, dtype)
    hidden = torch.randn(5, 37, cfg.d_model, dtype=dtype)
    if bf16:              # the residual stream under autocast (the embedding's output)
        hidden = hidden.bfloat16()
    got = _run(block, hidden, bf16, last_only, False, monkeypatch)
    assert got[0].shape == ((5, cfg.d_model) if last_only else hidden.shape)
    _assert_same(got, _run(block, hidden, bf16, last_only, True, monkeypatch))


@pytest.mark.parametrize("last_only", [False, True])
def test_odd_shapes_and_layouts(last_only, monkeypatch):
    """One row, one step, a float32 hidden state under autocast, a non-contiguous hidden state, d_conv 2."""
    cfg = MambaConfig(d_model=24, d_state=5, expand=3, d_conv=2)
    block = _block(cfg, torch.float32, seed=3)
    for hidden, bf16 in [(torch.randn(1, 9, 24), False), (torch.randn(3, 1, 24), False), (torch.randn(2, 11, 24), True),
                         (torch.randn(24, 7, 4).permute(2, 1, 0), False)]:
        _assert_same(_run(block, hidden, bf16, last_only, False, monkeypatch),
                     _run(block, hidden, bf16, last_only, True, monkeypatch))


@pytest.mark.parametrize("last_only", [False, True])
def test_gradcheck(last_only):
    """The node's hand-written backward against finite differences, in float64 (independently of the pieces)."""
    block = _block(MambaConfig(d_model=6, d_state=3, expand=2, d_conv=3), torch.float64, seed=1)
    hidden = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    eps = block.norm.eps
    params = (block.norm.weight, block.norm.bias, block.in_proj.weight, block.conv1d.weight, block.conv1d.bias,
              block.x_proj.weight, block.dt_proj.weight, block.dt_proj.bias, block.A_log, block.D,
              block.out_proj.weight)

    def fn(h, norm_w, norm_b, *rest):
        out = fused.fused_block(h, norm_w, norm_b, eps, *rest, last_only=last_only)
        assert out is not None
        return out

    assert torch.autograd.gradcheck(fn, (hidden, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_strided_parameters(monkeypatch):
    """Weights that are views with other strides (e.g. loaded into transposed storage) compute the same values."""
    cfg = MambaConfig(d_model=16, d_state=4)
    block = _block(cfg, torch.float32)
    hidden = torch.randn(3, 10, 16)
    ref = _run(block, hidden, False, False, True, monkeypatch)
    with torch.no_grad():
        for name in ("norm.weight", "D", "dt_proj.bias", "in_proj.weight", "x_proj.weight", "A_log"):
            p = block.get_parameter(name)
            strided = torch.empty(*p.shape, 2)[..., 0] if p.dim() == 1 else torch.empty(p.shape[::-1]).t()
            p.data = strided.copy_(p)
    assert not block.D.is_contiguous() and not block.in_proj.weight.is_contiguous()
    got = _run(block, hidden, False, False, False, monkeypatch)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)
    for name, grad in ref[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_without_grad_and_with_frozen_parameters(monkeypatch):
    cfg = MambaConfig(d_model=16, d_state=4)
    block = _block(cfg, torch.float32)
    hidden = torch.randn(3, 12, 16)
    with torch.no_grad():
        out = block(hidden)
    assert not out.requires_grad
    assert torch.equal(out, _run(block, hidden, False, False, True, monkeypatch)[0])
    block.in_proj.weight.requires_grad_(False)
    block.A_log.requires_grad_(False)
    out = block(hidden)
    out.sum().backward()
    assert block.in_proj.weight.grad is None and block.A_log.grad is None
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


def test_falls_back_where_the_node_does_not_apply(monkeypatch):
    cfg = MambaConfig(d_model=16, d_state=4)
    block = _block(cfg, torch.float64)
    hidden = torch.randn(2, 8, 16, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # float64 weights under autocast: the pieces, as autocast runs
        assert block._fused(hidden) is None
    assert block._fused(hidden.float()) is None           # a hidden state of another dtype than the weights
    assert block._fused(hidden[:, :0]) is None            # no steps
    monkeypatch.setenv("MAMBACAST_SCAN", "ref")            # the pure-PyTorch path everywhere
    assert block._fused(hidden) is None
    monkeypatch.delenv("MAMBACAST_SCAN")
    assert block._fused(hidden) is not None


def test_the_model_trains_through_the_node(monkeypatch):
    """Every block of a training step runs the node (the last with last_only), and the step's loss and gradients are
    those of the composed blocks."""
    torch.manual_seed(0)
    model = MambaModel(MambaConfig(d_model=32, d_state=8, num_layers=3), 7)
    x, y = torch.randn(6, 20, 7), torch.randn(6, len(model.horizons))

    def step(composed: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        calls: list[int] = []
        real = fused._block_node
        with monkeypatch.context() as m:
            m.setattr(fused, "_block_node", lambda *a: calls.append(a[-2]) or real(*a))
            if composed:
                m.setattr(MambaBlock, "_fused", lambda self, hidden, last_only=False: None)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = model.head_loss(x, y)
            grads = torch.autograd.grad(loss, list(model.parameters()))
        assert calls == ([] if composed else [False, False, True])   # last_only for the last block only
        return loss, grads

    loss, grads = step(False)
    loss_ref, grads_ref = step(True)
    assert torch.equal(loss, loss_ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref, strict=True))
