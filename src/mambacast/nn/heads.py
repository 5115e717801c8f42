"""Multi-horizon output heads reading the last hidden state.

`PointHead` is one linear head per horizon; the heads are stored as the rows of a single
`Linear(d_model, n_horizons)`, which is the same function and parameter count as separate
`Linear(d_model, 1)` layers but one matmul instead of several.

`StudentTHead` turns the point forecast into a distribution: a Student-t per horizon with the
point forecast as location, an input-dependent scale `softplus(w_h . h + b_h) + eps` and a learned
per-horizon degrees of freedom `nu_h = 2 + softplus(theta_h)` (> 2, so the variance exists). Why a
Student-t rather than quantile heads: it gives a whole CDF (so P(price > strike) for any strike, not
only at trained quantile levels), its quantiles cannot cross, and daily returns are heavy-tailed,
which the learned `nu` captures; the scale is calibrated after training on the validation split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PointHead", "StudentTHead", "student_t_nll"]

_MIN_SCALE = 1e-3


class PointHead(nn.Module):
    """(batch, d_model) -> (batch, n_horizons): point forecast per horizon, in horizon order."""

    def __init__(self, d_model: int, horizons: list[int]):
        super().__init__()
        self.horizons = list(horizons)
        self.proj = nn.Linear(d_model, len(self.horizons))

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)


class StudentTHead(nn.Module):
    """(batch, d_model) -> scale (batch, n_horizons) > 0 and df (n_horizons,) > 2."""

    def __init__(self, d_model: int, horizons: list[int], init_df: float = 5.0):
        super().__init__()
        self.scale_proj = nn.Linear(d_model, len(horizons))
        nn.init.zeros_(self.scale_proj.weight)
        # Targets are standardised, so start every scale at 1: softplus^-1(1 - eps).
        nn.init.constant_(self.scale_proj.bias, math.log(math.expm1(1.0 - _MIN_SCALE)))
        self.df_raw = nn.Parameter(torch.full((len(horizons),), math.log(math.expm1(init_df - 2.0))))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return F.softplus(self.scale_proj(h)) + _MIN_SCALE, 2.0 + F.softplus(self.df_raw)


def student_t_nll(y: Tensor, loc: Tensor, scale: Tensor, df: Tensor,
                  dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean negative log-likelihood of y under Student-t(loc, scale, df), all broadcastable to y;
    the mean over `dim` only if given (e.g. one value per stacked model)."""
    z = (y - loc) / scale
    log_norm = (torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi))
    nll = -(log_norm - torch.log(scale) - (df + 1) / 2 * torch.log1p(z * z / df))
    return nll.mean() if dim is None else nll.mean(dim)
