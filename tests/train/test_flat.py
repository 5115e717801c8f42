"""FlatAdam (train/flat.py): the same update as torch.optim.Adam + clip_grad_norm_, with the optimizer's state in
step, and every tensor back in its own storage after release."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mambacast.config import MambaConfig, TrainConfig
from mambacast.nn.mamba import MambaModel
from mambacast.train.callbacks import Callback
from mambacast.train.flat import FlatAdam
from mambacast.train.trainer import Trainer


def _model(seed: int = 0) -> MambaModel:
    torch.manual_seed(seed)
    return MambaModel(MambaConfig(d_model=16, d_state=4, num_layers=2, expand=2), 5)


def _loss(model: MambaModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).pow(2).mean()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_flat_adam_equals_torch_adam_with_clipping(weight_decay):
    ref, flat = _model(), _model()
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    opt_flat = torch.optim.Adam(flat.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    # a few steps of the per-parameter optimizer first: FlatAdam takes over existing moments and step counts
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 12, 5, generator=g) * 3, torch.randn(8, 4, generator=g)) for _ in range(8)]
    for model, opt in ((ref, opt_ref), (flat, opt_flat)):
        for x, y in batches[:3]:
            opt.zero_grad(set_to_none=True)
            _loss(model, x, y).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
    fa = FlatAdam(opt_flat, [p for p in flat.parameters() if p.grad is not None])
    norms = []
    for x, y in batches[3:]:
        opt_ref.zero_grad(set_to_none=True)
        _loss(ref, x, y).backward()
        norm_ref = nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt_ref.step()
        fa.zero_grad()
        _loss(flat, x, y).backward()
        norms.append((torch.linalg.vector_norm(fa.flat_grad), norm_ref))
        assert fa.clip_and_step(0.5)
        for p, q in zip(flat.parameters(), ref.parameters(), strict=True):   # clipped in place, as clip_grad_norm_
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8)
    assert any(n > 0.5 for _, n in norms), "the test should exercise the clipping"
    for n, n_ref in norms:
        torch.testing.assert_close(n, n_ref, rtol=1e-5, atol=0)
    for (name, p), q in zip(flat.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # the optimizer's state is the flat update's: what a training checkpoint reads
    sd, sd_ref = opt_flat.state_dict(), opt_ref.state_dict()
    for idx, s in sd_ref["state"].items():
        assert float(sd["state"][idx]["step"]) == float(s["step"]) == 8.0
        torch.testing.assert_close(sd["state"][idx]["exp_avg"], s["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sd["state"][idx]["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_release_gives_every_tensor_its_own_storage():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    fa = FlatAdam(opt, list(model.parameters()))
    fa.zero_grad()
    _loss(model, torch.randn(4, 10, 5), torch.randn(4, 4)).backward()
    assert fa.clip_and_step(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fa.release()
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters()]
    tensors += [t for s in opt.state.values() for t in s.values()]
    pointers = [t.untyped_storage().data_ptr() for t in tensors]
    assert len(set(pointers)) == len(pointers)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    opt.step()   # the per-parameter optimizer carries on from the released state
    assert all(float(s["step"]) == 2.0 for s in opt.state.values())


def test_replaced_gradient_is_refused_not_ignored():
    model = _model()
    fa = FlatAdam(torch.optim.Adam(model.parameters(), lr=1e-3, fused=True), list(model.parameters()))
    fa.zero_grad()
    _loss(model, torch.randn(4, 10, 5), torch.randn(4, 4)).backward()
    p = next(model.parameters())
    p.grad = p.grad.clone()
    with pytest.raises(RuntimeError, match="no longer a view"):
        fa.clip_and_step(1.0)


def test_unequal_step_counts_are_refused():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    first = next(model.parameters())
    first.grad = torch.ones_like(first)
    opt.step()   # only the first parameter has a gradient: its step count leads
    with pytest.raises(ValueError, match="equal Adam step counts"):
        FlatAdam(opt, list(model.parameters()))


class _Probe(Callback):
    def __init__(self):
        self.flat_seen = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.flat_seen.append(trainer._flat is not None)


def test_cpu_fit_uses_the_flat_update_and_releases_it():
    model = _model()
    probe = _Probe()
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=8), [probe], device="cpu")
    x, y = torch.randn(24, 10, 5), torch.randn(24, 4)
    trainer.fit(x[:16], y[:16], x[16:], y[16:])
    assert probe.flat_seen == [True, True]
    assert trainer._flat is None
    pointers = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(pointers)) == len(pointers)
    assert all(float(s["step"]) == 4.0 for s in trainer.optimizer.state.values())   # 2 epochs x 2 batches


def test_left_out_parameter_with_a_gradient_declines_the_update():
    model = _model()
    params = list(model.parameters())
    fa = FlatAdam(torch.optim.Adam(params, lr=1e-3, fused=True), params[1:])
    fa.zero_grad()
    _loss(model, torch.randn(4, 10, 5), torch.randn(4, 4)).backward()
    params[0].grad = torch.ones_like(params[0])
    before = [p.detach().clone() for p in params]
    assert not fa.clip_and_step(1.0)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


@pytest.mark.parametrize("loss", ["nll", "mse"])
def test_fit_equals_the_per_parameter_update(monkeypatch, loss):
    """Two epochs of Trainer.fit with the flat update (from the first backward) and with torch.optim.Adam throughout:
    the same weights, and a parameter the per-parameter run leaves as it started (no gradient) stays so."""
    x, y = torch.randn(40, 10, 5) * 2, torch.randn(40, 4)
    cfg = TrainConfig(epochs=2, batch_size=8, loss=loss, weight_decay=1e-3)
    flat = _model()
    Trainer(flat, cfg, device="cpu").fit(x[:32], y[:32], x[32:], y[32:])
    monkeypatch.setattr(Trainer, "_start_flat", lambda self: setattr(self, "_flat_pending", False))
    ref = _model()
    trainer = Trainer(ref, cfg, device="cpu")
    trainer.fit(x[:32], y[:32], x[32:], y[32:])
    assert trainer._flat is None
    start = dict(_model().named_parameters())
    for (name, p), q in zip(flat.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
        if torch.equal(q, start[name]):
            assert torch.equal(p, start[name]), name
