"""What training minimises and what validation reports, shared by `Trainer` and `StackedTrainer`.

Targets are standardised h-day log-returns (batch, n_horizons); the model gives a Student-t per
horizon (loc, scale (batch, n_horizons), df (n_horizons,)).

* ``nll`` (the default): the Student-t negative log-likelihood, location, scale and tail fitted
  jointly: a proper scoring rule, so the whole predictive distribution is what is trained.
* ``mse``: the guide's objective, the squared error of the location, plus the likelihood of the
  scale and tail with the location detached (the location stays the MSE point forecast).

Validation reports the objective (``val_loss``), the location's absolute error (``val_mae``) and the
CRPS of the Student-t (``val_crps``, in target standard deviations, averaged over horizons), which is
what checkpoints, early stopping and learning-rate reduction watch by default.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from torch import Tensor

from ..nn.heads import student_t_nll

__all__ = ["LOSSES", "objective", "crps_student_t_np"]

LOSSES = ("nll", "mse")


def objective(kind: str, y: Tensor, loc: Tensor, scale: Tensor, df: Tensor,
              dim: int | tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
    """(loss, squared error), each the mean over `dim` (all elements when None)."""
    se = (loc - y).pow(2)
    se = se.mean() if dim is None else se.mean(dim)
    if kind == "nll":
        return student_t_nll(y, loc, scale, df, dim=dim), se
    if kind == "mse":
        return se + student_t_nll(y, loc.detach(), scale, df, dim=dim), se
    raise ValueError(f"loss={kind!r} is invalid: choose one of {', '.join(LOSSES)}")


def crps_student_t_np(y: np.ndarray, loc: np.ndarray, scale: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of loc + scale * T_df at y, elementwise over broadcast arrays (df > 1).

    CRPS = scale * [z (2F(z) - 1) + 2 f(z) (df + z^2) / (df - 1)
                    - 2 sqrt(df) B(1/2, df - 1/2) / ((df - 1) B(1/2, df/2)^2)],  z = (y - loc) / scale
    (Jordan, Krueger & Lerch 2019, scoringrules' crps_t).
    """
    y, loc, scale, df = (np.asarray(a, dtype=np.float64) for a in (y, loc, scale, df))
    z = (y - loc) / scale
    cdf = special.stdtr(df, z)
    log_pdf = (special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * np.log(df * np.pi)
               - (df + 1) / 2 * np.log1p(z * z / df))
    tail = np.exp(np.log(2 * np.sqrt(df)) + special.betaln(0.5, df - 0.5) - np.log(df - 1)
                  - 2 * special.betaln(0.5, df / 2))
    return scale * (z * (2 * cdf - 1) + 2 * np.exp(log_pdf) * (df + z * z) / (df - 1) - tail)
