"""train.adam.Adam: torch.optim.Adam(fused=True)'s update and state_dict on the CPU, without importing dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mambacast.config import MambaConfig
from mambacast.nn.mamba import MambaModel
from mambacast.train.adam import Adam


def _model(seed: int = 0) -> MambaModel:
    torch.manual_seed(seed)
    return MambaModel(MambaConfig(d_model=16, d_state=4, num_layers=2, expand=2), 5)


def _step(model: MambaModel, opt, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loc, _, _ = model.forward_distribution(x)
    (loc - y).pow(2).mean().backward()   # the scale and df heads receive no gradient: skipped, as by torch's Adam
    opt.step()


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 12, 5, generator=g), torch.randn(8, 4, generator=g)) for _ in range(n)]


def _assert_same(mine: Adam, theirs: torch.optim.Adam, a: MambaModel, b: MambaModel) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    sd, sd_ref = mine.state_dict(), theirs.state_dict()
    assert sd["state"].keys() == sd_ref["state"].keys()
    for idx, s in sd_ref["state"].items():
        assert s.keys() == sd["state"][idx].keys()
        for key, value in s.items():
            assert torch.equal(sd["state"][idx][key], value), (idx, key)
    assert sd["param_groups"] == sd_ref["param_groups"]


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_is_torch_fused_adam_bit_for_bit(weight_decay):
    a, b = _model(), _model()
    mine = Adam(a.parameters(), lr=1e-2, weight_decay=weight_decay)
    theirs = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    for x, y in _batches(5):
        _step(a, mine, x, y)
        _step(b, theirs, x, y)
    skipped = [p for p in a.parameters() if p.grad is None]
    assert skipped and all(p not in mine.state for p in skipped), "the test should exercise parameters without grads"
    assert float(next(iter(mine.state.values()))["step"]) == 5.0
    _assert_same(mine, theirs, a, b)


def test_state_dict_moves_between_torch_adam_and_this_one():
    """A checkpoint written by either optimizer resumes in the other (and the learning rate a callback set comes
    with it), and the runs stay equal bit for bit."""
    a, b = _model(), _model()
    mine = Adam(a.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(b.parameters(), lr=1e-2, fused=True)
    batches = _batches(6)
    for x, y in batches[:2]:
        _step(a, mine, x, y)
        _step(b, theirs, x, y)
    mine.param_groups[0]["lr"] = theirs.param_groups[0]["lr"] = 3e-3
    a2, b2 = _model(1), _model(1)
    a2.load_state_dict(b.state_dict())
    b2.load_state_dict(a.state_dict())
    mine2 = Adam(a2.parameters(), lr=1.0)
    mine2.load_state_dict(theirs.state_dict())
    theirs2 = torch.optim.Adam(b2.parameters(), lr=1.0, fused=True)
    theirs2.load_state_dict(mine.state_dict())
    assert mine2.param_groups[0]["lr"] == theirs2.param_groups[0]["lr"] == 3e-3
    for x, y in batches[2:]:
        _step(a2, mine2, x, y)
        _step(b2, theirs2, x, y)
    _assert_same(mine2, theirs2, a2, b2)
    # loading copies: stepping the loaded optimizer leaves the one it came from alone
    assert float(next(iter(theirs.state.values()))["step"]) == 2.0


def test_adam_refuses_what_it_does_not_implement():
    model = _model()
    opt = Adam(model.parameters())
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(ValueError, match="does not match"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1], "lr": 1e-3}]})
    other = torch.optim.Adam(model.parameters(), amsgrad=True)
    with pytest.raises(ValueError, match="amsgrad"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="CPU parameters"):
        Adam([torch.zeros(3, dtype=torch.int64)])


def test_a_cpu_fit_leaves_dynamo_unimported():
    """torch.optim's optimizers import torch._dynamo (1.2-1.5 s per process); CPU training runs, alone and
    stacked, through `train_symbols` (data, fit, checkpoints, the stored artifacts), import it nowhere."""
    code = """
import sys, tempfile
from mambacast import MambaConfig, TrainConfig
from mambacast.train import train_symbols
with tempfile.TemporaryDirectory() as tmp:
    r = train_symbols(["AAPL", "MSFT"], model_config=MambaConfig(d_model=16, d_state=4, num_layers=1),
                      train_config=TrainConfig(epochs=2, batch_size=16), days=400, save_dir=tmp)
    r += train_symbols(["AAPL", "MSFT"], stack=True, model_config=MambaConfig(d_model=16, d_state=4, num_layers=1),
                       train_config=TrainConfig(epochs=2, batch_size=16), days=400, save_dir=tmp + "/stacked")
print(*(x["status"] for x in r), "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-5:] == ["ok", "ok", "ok", "ok", "False"]
