"""Multi-horizon output heads reading the last hidden state, and the baseline they correct.

The forecast of horizon h is a Student-t law of the standardised h-day log-return
``z_h = (r_h - m_h) / s_h`` (``m_h, s_h``: the training targets' mean and std, `TargetScaler`):

    loc_h   = sigma0_h * delta_h(x)                      location: the training mean + a learned shift
    scale_h = sigma0_h * exp(c_h(x)) * sqrt((nu_h - 2) / nu_h)
    nu_h    = 2 + softplus(theta_h)                      learned tail, > 2 so the variance exists

``sigma0_h`` is the baseline: the h-day standard deviation forecast by a classical causal
volatility model, in target units (`VolatilityBaseline`). ``delta_h`` and ``c_h`` are linear in the
last hidden state and start at exactly zero, so an untrained model forecasts the training-mean
drift with the baseline's standard deviation (the sqrt((nu-2)/nu) factor makes the t's standard
deviation equal sigma0); training moves away from it only as far as the likelihood and validation
support. A Student-t rather than quantile heads: a whole CDF (P(price > strike) at any strike),
quantiles that cannot cross, and heavy tails through nu.

`PointHead` is the row-stacked linear layer that gives ``delta`` (one row per horizon); the
guide's point forecast is ``loc``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PointHead", "StudentTHead", "VolatilityBaseline", "student_t_params", "student_t_nll"]

_INIT_DF = 5.0


class PointHead(nn.Module):
    """(batch, d_model) -> (batch, n_horizons): the location shift per horizon, zero at initialisation."""

    def __init__(self, d_model: int, horizons: list[int]):
        super().__init__()
        self.horizons = list(horizons)
        self.proj = nn.Linear(d_model, len(self.horizons))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)


class StudentTHead(nn.Module):
    """(batch, d_model) -> log-scale correction c (batch, n_horizons), zero at initialisation, and the
    raw tail parameter theta (n_horizons,)."""

    def __init__(self, d_model: int, horizons: list[int], init_df: float = _INIT_DF):
        super().__init__()
        self.scale_proj = nn.Linear(d_model, len(horizons))
        nn.init.zeros_(self.scale_proj.weight)
        nn.init.zeros_(self.scale_proj.bias)
        self.df_raw = nn.Parameter(torch.full((len(horizons),), math.log(math.expm1(init_df - 2.0))))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.scale_proj(h), self.df_raw


def student_t_params(delta: Tensor, log_scale_corr: Tensor, df_raw: Tensor, base_log_sigma: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """The head's equations: delta, log_scale_corr, base_log_sigma (..., n_horizons), df_raw (n_horizons,)
    -> loc, scale (..., n_horizons), df (n_horizons,)."""
    df = 2.0 + F.softplus(df_raw)
    sigma0 = torch.exp(base_log_sigma)
    scale = sigma0 * torch.exp(log_scale_corr) * torch.sqrt((df - 2.0) / df)
    return sigma0 * delta, scale, df


class VolatilityBaseline(nn.Module):
    """log sigma0_h (batch, n_horizons) from the last window row of two raw feature columns.

    The columns are a GARCH(1,1) one-step log variance ``log s2`` and a long-run log variance
    ``log vbar`` (daily, `data.features`); they reach the model standardised by the feature scaler,
    which is undone here. The h-day variance of a GARCH(1,1) with persistence phi (Bollerslev 1986):

        V_h = h vbar + (s2 - vbar) (1 - phi^h) / (1 - phi)  =  vbar (h - a_h) + s2 a_h,   a_h = sum_{k<h} phi^k

    and ``log sigma0_h = 0.5 log V_h - log std_h`` in target units. Until `configure` is called (a bare
    `MambaModel`), sigma0 = 1: the head is a plain Student-t on the standardised targets.
    Everything is a buffer, so it travels in the weights file.
    """

    def __init__(self, horizons: Sequence[int]):
        super().__init__()
        n_h = len(horizons)
        self.register_buffer("horizons", torch.tensor([float(h) for h in horizons]))
        self.register_buffer("ready", torch.zeros(()))
        self.register_buffer("columns", torch.zeros(2, dtype=torch.long))
        self.register_buffer("feature_mean", torch.zeros(2))
        self.register_buffer("feature_scale", torch.ones(2))
        self.register_buffer("log_target_std", torch.zeros(n_h))
        self.register_buffer("persistence", torch.zeros(()))

    @torch.no_grad()
    def configure(self, columns: Sequence[int], feature_mean: Sequence[float], feature_scale: Sequence[float],
                  target_std: Sequence[float], persistence: float) -> None:
        """columns: indices of (garch_logvar, longrun_logvar) in the model's features; their scaler mean and
        scale; the targets' std per horizon; the GARCH persistence alpha + beta of the feature's filter."""
        self.columns.copy_(torch.as_tensor(list(columns), dtype=torch.long))
        self.feature_mean.copy_(torch.as_tensor(list(feature_mean)))
        self.feature_scale.copy_(torch.as_tensor(list(feature_scale)))
        self.log_target_std.copy_(torch.log(torch.as_tensor(list(target_std), dtype=torch.float64)).float())
        self.persistence.fill_(float(persistence))
        self.ready.fill_(1.0)

    def forward(self, x_last: Tensor) -> Tensor:
        """x_last (..., n_features), standardised -> log sigma0 (..., n_horizons)."""
        return baseline_log_sigma(x_last, dict(self.named_buffers()))


def baseline_log_sigma(x_last: Tensor, b: dict[str, Tensor]) -> Tensor:
    """`VolatilityBaseline.forward` on its buffers `b` (also stacked ones: every buffer with a leading
    model dimension M and x_last (M, batch, n_features))."""
    stacked = b["ready"].dim() == 1
    cols = b["columns"][0] if stacked else b["columns"]       # the same feature layout in every stacked model
    mean, scale = b["feature_mean"], b["feature_scale"]
    if stacked:
        mean, scale = mean.unsqueeze(1), scale.unsqueeze(1)   # (M, 1, 2)
    raw = x_last[..., cols] * scale + mean                   # (..., 2): log s2, log vbar
    log_s2, log_vbar = raw[..., :1], raw[..., 1:]
    h, phi = b["horizons"], b["persistence"]
    if stacked:
        h, phi = h.unsqueeze(1), phi.view(-1, 1, 1)
    a = (1.0 - phi ** h) / (1.0 - phi)                         # sum_{k<h} phi^k (phi < 1)
    log_v = torch.logaddexp(log_vbar + torch.log(h - a), log_s2 + torch.log(a))
    log_std = b["log_target_std"].unsqueeze(1) if stacked else b["log_target_std"]
    ready = b["ready"].view(-1, 1, 1) if stacked else b["ready"]
    return ready * (0.5 * log_v - log_std)


def student_t_nll(y: Tensor, loc: Tensor, scale: Tensor, df: Tensor,
                  dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean negative log-likelihood of y under Student-t(loc, scale, df), all broadcastable to y;
    the mean over `dim` only if given (e.g. one value per stacked model)."""
    z = (y - loc) / scale
    log_norm = (torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi))
    nll = -(log_norm - torch.log(scale) - (df + 1) / 2 * torch.log1p(z * z / df))
    return nll.mean() if dim is None else nll.mean(dim)
