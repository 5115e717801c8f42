"""Device bugs caught without a GPU (issue 13: calibration fed CPU tensors to a CUDA model).

A model on PyTorch's `meta` device computes shapes only and refuses to mix with CPU tensors, so a tensor that
the model's code creates on the CPU instead of on its input's device fails here as it would on CUDA. Code that
must bring numpy data to the model is checked with a spy that records the device its input arrives on.
The same paths on a real GPU: tests/test_cuda.py (marked `cuda`).
"""

import numpy as np
import pytest
import torch

from mambacast import MambaConfig, MambaModel, TrainConfig
from mambacast.nn.stacked import stack_buffers, stack_parameters, stacked_forward_distribution
from mambacast.train import Trainer
from mambacast.train.distribution import distribution_numpy, fit_baseline_tail
from mambacast.train.pipeline import train_symbols
from mambacast.train.stacked import StackedTrainer

META = torch.device("meta")
CFG = MambaConfig(d_model=16, d_state=4, num_layers=2)


def meta_model(n_features: int = 5) -> MambaModel:
    model = MambaModel(CFG, n_features).to(META)
    # a configured baseline: the buffers are filled from CPU values, and stay on the model's device
    model.baseline.configure([0, 1], [0.1, 0.2], [1.0, 2.0], [0.01] * 4, 0.98)
    return model


def test_meta_model_computes_on_its_own_device():
    model = meta_model()
    assert {b.device for b in model.buffers()} == {META}
    x = torch.empty(3, 20, 5, device=META)
    assert {t.device for t in model.forward_distribution(x)} == {META}
    out, state = model.encode_long(x, chunk_len=8, return_state=True)
    assert out.device == META and {t.device for s in state for t in s} == {META}
    h, state = model.step(x[:, 0], model.init_state(3))
    assert h.device == META and {t.device for s in state for t in s} == {META}


def test_meta_model_trains_with_autograd_on_its_own_device():
    model = meta_model()
    x = torch.empty(2, 10, 5, device=META)
    loc, scale, _ = model.forward_distribution(x)
    (loc.sum() + scale.sum()).backward()
    assert all(p.grad is None or p.grad.device == META for p in model.parameters())
    out = model.encode_long(x, chunk_len=4, checkpoint=True)
    out.sum().backward()


def test_stacked_models_compute_on_their_device():
    models = [meta_model() for _ in range(3)]
    params, buffers = stack_parameters(models), stack_buffers(models)
    assert {t.device for t in (*params.values(), *buffers.values())} == {META}
    loc, scale, df = stacked_forward_distribution(params, models[0], torch.empty(3, 2, 10, 5, device=META), buffers)
    assert {loc.device, scale.device, df.device} == {META}


def test_calibration_and_tail_fit_send_the_data_to_the_models_device(monkeypatch):
    model = meta_model()
    seen: list[torch.device] = []

    def spy_distribution(x):
        seen.append(x.device)
        n, H = x.shape[0], len(model.horizons)
        return torch.zeros(n, H), torch.ones(n, H), torch.full((H,), 5.0)

    def spy_baseline(x_last):
        seen.append(x_last.device)
        return torch.zeros(x_last.shape[0], len(model.horizons))

    monkeypatch.setattr(model, "forward_distribution", spy_distribution)
    monkeypatch.setattr(model.baseline, "forward", spy_baseline)
    X = np.zeros((700, 20, 5), dtype=np.float32)
    loc, scale, df = distribution_numpy(model, X)
    assert loc.shape == (700, 4) and df.shape == (4,) and len(seen) == 2   # two batches of at most 512
    fit_baseline_tail(model, X, np.zeros((700, 4)))
    assert seen == [META] * 3


def test_stacked_trainer_needs_one_device():
    cpu = Trainer(MambaModel(CFG, 5), TrainConfig(), device="cpu")
    meta = Trainer(MambaModel(CFG, 5), TrainConfig(), device=META)
    with pytest.raises(ValueError, match="one device"):
        StackedTrainer([cpu, meta])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_stack_on_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_symbols(["AAPL"], stack=True, device="cuda")


@pytest.mark.parametrize("capability, bf16", [((9, 0), True), ((8, 6), True), ((8, 0), True), ((7, 5), False),
                                              ((7, 0), False)])
def test_cuda_training_is_bf16_only_where_the_gpu_has_it(monkeypatch, caplog, capability, bf16):
    """An H100 or an RTX 3090 trains under bf16 autocast; a T4 (7.5) or V100 (7.0), which would emulate bfloat16,
    trains in float32 and says so once."""
    from mambacast.ops import amp

    amp._say_float32.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    with caplog.at_level("WARNING", logger="mambacast.ops.amp"):
        assert amp.cuda_bf16_autocast(torch.device("cuda")) is bf16
        assert amp.cuda_bf16_autocast(torch.device("cuda")) is bf16
    said = [r.getMessage() for r in caplog.records]
    assert said == ([] if bf16 else [f"Some GPU (compute capability {capability[0]}.{capability[1]}) has no "
                                     "bfloat16 in hardware: training runs in float32 on it"])
