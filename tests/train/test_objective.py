"""The training objective, the validation CRPS, the baseline's tail fit and the untrained candidate epoch."""

import math

import numpy as np
import pytest
import torch

from mambacast import MambaConfig, MambaModel
from mambacast.evaluate.metrics import crps_student_t
from mambacast.train.callbacks import EarlyStopping, ModelCheckpoint
from mambacast.train.objective import crps_student_t_np, objective
from mambacast.train.pipeline import fit_baseline_tail


def test_closed_form_crps_equals_scoringrules():
    rng = np.random.default_rng(0)
    y, loc = rng.standard_t(4, 500), 0.1 * rng.standard_normal(500)
    scale, df = np.exp(0.3 * rng.standard_normal(500)), rng.uniform(2.2, 30.0, 500)
    np.testing.assert_allclose(crps_student_t_np(y, loc, scale, df), crps_student_t(y, df, loc, scale),
                               rtol=1e-10, atol=1e-12)


def test_nll_fits_the_location_and_mse_keeps_it_the_squared_error_minimiser():
    y = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    scale = torch.tensor([[1.5, 0.7], [0.9, 1.2]], requires_grad=True)
    df = torch.tensor([5.0, 8.0])
    for kind in ("nll", "mse"):
        loc = torch.zeros(2, 2, requires_grad=True)
        loss, se = objective(kind, y, loc, scale, df)
        assert se.item() == pytest.approx(y.pow(2).mean().item())
        (g,) = torch.autograd.grad(loss, loc)
        if kind == "mse":   # only the squared error moves the location: d/dloc mean((loc - y)^2)
            torch.testing.assert_close(g, 2 * (loc - y).detach() / y.numel())
        else:               # the Student-t score: -(nu + 1) z / (scale (nu + z^2)) / n
            z = (y - loc.detach()) / scale.detach()
            torch.testing.assert_close(g, -(df + 1) * z / (scale.detach() * (df + z * z)) / y.numel())
    with pytest.raises(ValueError, match="loss='crps'"):
        objective("crps", y, loc, scale, df)


def test_the_tail_is_fitted_by_maximum_likelihood_under_the_baseline():
    # An unconfigured baseline has sigma0 = 1: targets with unit variance and t(4) / t(12) tails per horizon.
    rng = np.random.default_rng(1)
    n = 40_000
    y = np.stack([rng.standard_t(4, n) / math.sqrt(4 / 2), rng.standard_t(12, n) / math.sqrt(12 / 10)], axis=1)
    model = MambaModel(MambaConfig(d_model=8, d_state=4, num_layers=1, prediction_horizons=[1, 5]), 3)
    nu = fit_baseline_tail(model, np.zeros((n, 2, 3), dtype=np.float32), y)
    assert nu[0] == pytest.approx(4.0, rel=0.1) and nu[1] == pytest.approx(12.0, rel=0.3)
    _, _, df = model.forward_distribution(torch.zeros(1, 2, 3))
    np.testing.assert_allclose(df.detach().numpy(), nu, rtol=1e-5)


class _Loop:
    """The part of a Trainer a callback reads."""

    def __init__(self, model):
        self.model, self.lr, self.stop_training = model, 1e-3, False


def test_the_untrained_model_is_kept_when_no_epoch_beats_it(tmp_path):
    model = torch.nn.Linear(2, 1)
    loop = _Loop(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    early = EarlyStopping(monitor="val_crps", patience=2, min_delta=0.0)
    checkpoint = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_crps")
    for cb in (early, checkpoint):
        cb.on_baseline(loop, {"val_loss": 1.0, "val_mae": 0.8, "val_crps": 0.50})
    for epoch, crps in enumerate((0.51, 0.52)):          # training only makes validation worse
        with torch.no_grad():
            model.weight.add_(1.0)
        for cb in (early, checkpoint):
            cb.on_epoch_end(loop, epoch, {"val_crps": crps})
    early.on_train_end(loop)
    assert loop.stop_training and early.best_epoch == -1 and checkpoint.best_epoch == -1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, start[k])
