"""The heads and the training objective as one autograd node (`nn.heads.student_t_head_loss`, `MambaModel.head_loss`)
against `forward_distribution` followed by `train.objective`, and the heads' precision under autocast."""

import pytest
import torch

from mambacast import MambaConfig, MambaModel, TrainConfig
from mambacast.nn import heads
from mambacast.train.objective import objective
from mambacast.train.trainer import Trainer

from .kernel import kernel_or_skip


def _model(dtype: torch.dtype, seed: int = 0) -> MambaModel:
    """A small model with non-zero heads, tails and baseline (the heads start at zero)."""
    torch.manual_seed(seed)
    model = MambaModel(MambaConfig(d_model=16, d_state=4, num_layers=2, prediction_horizons=[1, 5, 10]), 5)
    with torch.no_grad():
        for p in (model.head.proj.weight, model.dist_head.scale_proj.weight):
            p.normal_(0, 0.3)
        for p in (model.head.proj.bias, model.dist_head.scale_proj.bias, model.dist_head.df_raw):
            p.normal_(0, 0.5)
    model.baseline.configure([0, 1], [-0.5, -0.2], [1.3, 0.7], [0.02, 0.05, 0.07], 0.95)
    return model.to(dtype)


def _grads(model: MambaModel, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, params = zip(*[(n, p) for n, p in model.named_parameters()], strict=True)
    return dict(zip(names, torch.autograd.grad(loss, params), strict=True))


@pytest.fixture(params=["kernel", "ops"])
def impl(request, monkeypatch):
    """The CPU's C++ node (ops/csrc/head_loss.h) or the PyTorch-ops Function (its fallback elsewhere)."""
    if request.param == "kernel":
        kernel_or_skip()
        calls = []
        real = heads._fused_head_loss
        monkeypatch.setattr(heads, "_fused_head_loss", lambda *a: calls.append(1) or real(*a))
        yield request.param
        assert calls, "the C++ node did not run"
    else:
        monkeypatch.setattr(heads, "fused_ops", lambda *a, **k: None)
        yield request.param


@pytest.mark.parametrize("kind", ["nll", "mse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_head_loss_equals_the_objective_of_forward_distribution(kind, dtype, impl):
    """Loss, location and every parameter's gradient (the closed-form backward against autograd's)."""
    model = _model(dtype)
    x = torch.randn(9, 12, 5, dtype=dtype)
    y = 2 * torch.randn(9, 3, dtype=dtype)
    loss, loc = model.head_loss(x, y, mse=kind == "mse")
    ref_loc, scale, df = model.forward_distribution(x)
    ref, _ = objective(kind, y, ref_loc, scale, df)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(loc, ref_loc.detach(), **tol)
    assert not loc.requires_grad
    got, want = _grads(model, loss), _grads(model, ref)
    assert all(g.abs().sum() > 0 for g in want.values())   # every parameter is reached
    for name in want:   # float32: the two backward passes round differently, through every block
        gtol = tol if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5 * want[name].abs().max().item())
        torch.testing.assert_close(got[name], want[name], **gtol, msg=lambda m, n=name: f"{n}: {m}")


def test_head_loss_of_one_row(impl):
    model = _model(torch.float64, seed=1)
    x, y = torch.randn(1, 8, 5, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    ref, _ = objective("nll", y, *model.forward_distribution(x))
    torch.testing.assert_close(model.head_loss(x, y)[0], ref, rtol=1e-12, atol=1e-13)
    for a, b in zip(_grads(model, model.head_loss(x, y)[0]).values(), _grads(model, ref).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_heads_compute_in_float32_under_bf16_autocast():
    """Under autocast the blocks run their matmuls in bf16, the heads in float32: forward and forward_distribution
    agree exactly, head_loss to float32's rounding, and all with the heads applied to the last hidden state widened."""
    model = _model(torch.float32)
    x, y = torch.randn(6, 10, 5), torch.randn(6, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loc, scale, df = model.forward_distribution(x)
        point = model(x)
        loss, loss_loc = model.head_loss(x, y)
        h = model._last_hidden(x)
    assert loc.dtype == scale.dtype == df.dtype == point.dtype == loss.dtype == torch.float32
    assert h.dtype == torch.bfloat16   # the residual stream and nn.LayerNorm under CPU autocast
    torch.testing.assert_close(point, loc, rtol=0, atol=0)
    torch.testing.assert_close(loss_loc, loc, rtol=1e-5, atol=1e-5)   # the CPU's C++ node sums in double
    torch.testing.assert_close(loss, objective("nll", y, loc, scale, df)[0], rtol=1e-6, atol=1e-7)
    delta = torch.nn.functional.linear(h.float(), model.head.proj.weight, model.head.proj.bias)   # no autocast
    torch.testing.assert_close(loc, torch.exp(model.baseline(x[:, -1])) * delta, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["nll", "mse"])
def test_trainer_step_uses_the_fused_objective(kind, monkeypatch):
    """The Trainer's training loss is `head_loss` (one call per batch), with the value of the objective."""
    model = _model(torch.float32)
    trainer = Trainer(model, TrainConfig(loss=kind), device="cpu")
    calls = []
    fused = model.head_loss
    monkeypatch.setattr(model, "head_loss", lambda *a, **k: calls.append(k) or fused(*a, **k))
    x, y = torch.randn(4, 10, 5), torch.randn(4, 3)
    loss, mae = trainer._forward_loss(x, y)
    assert calls == [{"mse": kind == "mse"}]
    with trainer._autocast():
        loc, scale, df = model.forward_distribution(x)
    torch.testing.assert_close(loss, objective(kind, y, loc, scale, df)[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mae, (loc - y).abs().mean(), rtol=1e-6, atol=1e-7)


def test_head_loss_leaves_frozen_parameters_without_gradient(impl):
    model = _model(torch.float64)
    model.head.proj.weight.requires_grad_(False)
    model.dist_head.df_raw.requires_grad_(False)
    x, y = torch.randn(5, 8, 5, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    model.head_loss(x, y)[0].backward()
    assert model.head.proj.weight.grad is None and model.dist_head.df_raw.grad is None
    assert model.dist_head.scale_proj.weight.grad is not None and model.embed.weight.grad is not None
