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

The heads compute in their parameters' dtype (float32) even under autocast (`MambaModel` runs them with it
off): they are 0.03% of the model's FLOPs, and their outputs are the product. `student_t_head_loss` is both
heads, the law's parameters and the training objective as one autograd node with its gradient in closed form, on
the CPU one C++ call each way: in training it replaces about 60 small operations and their backward nodes (at the
guide's batch 0.41 ms forward and backward against 0.11 ms, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.eager import eager_under_compile
from .fused import fused_ops

__all__ = ["PointHead", "StudentTHead", "VolatilityBaseline", "student_t_loc", "student_t_params", "student_t_nll",
           "student_t_head_loss"]

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


def student_t_loc(delta: Tensor, base_log_sigma: Tensor) -> Tensor:
    """The location alone (`student_t_params`' first output): delta, base_log_sigma (..., n_horizons)."""
    return torch.exp(base_log_sigma) * delta


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


def _log_norm(df: Tensor) -> Tensor:
    """log of the Student-t density's constant: lgamma((df+1)/2) - lgamma(df/2) - log(df pi)/2."""
    return torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2) - 0.5 * torch.log(df * math.pi)


def student_t_nll(y: Tensor, loc: Tensor, scale: Tensor, df: Tensor,
                  dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean negative log-likelihood of y under Student-t(loc, scale, df), all broadcastable to y;
    the mean over `dim` only if given (e.g. one value per stacked model)."""
    z = (y - loc) / scale
    nll = -(_log_norm(df) - torch.log(scale) - (df + 1) / 2 * torch.log1p(z * z / df))
    return nll.mean() if dim is None else nll.mean(dim)


class _StudentTHeadLoss(torch.autograd.Function):
    """h (batch, d_model) -> the mean objective over batch x horizons, and loc (batch, n_horizons), no gradient.

    With c = log_scale_corr, nu = df, s = scale, z = (y - loc) / s and w = (nu + 1) / (nu + z^2), per element:
        d nll / d loc = -w z / s                 d nll / d c = 1 - w z^2
        d nll / d nu  = (psi(nu/2) - psi((nu+1)/2) + 1/nu + log1p(z^2/nu) - w z^2 / nu) / 2
                        + (d nll / d c) (1/(nu-2) - 1/nu) / 2          (the second line: nu inside s)
    and d nu / d theta = sigmoid(theta), d loc / d delta = sigma0. With `mse` the objective is
    mean((loc - y)^2) + mean(nll) with loc held fixed in the nll (`train.objective`'s "mse").
    """

    @staticmethod
    def forward(ctx, h: Tensor, loc_weight: Tensor, loc_bias: Tensor, scale_weight: Tensor,  # type: ignore[override]
                scale_bias: Tensor, df_raw: Tensor, base_log_sigma: Tensor, y: Tensor,
                mse: bool) -> tuple[Tensor, Tensor]:
        delta = torch.addmm(loc_bias, h, loc_weight.t())
        corr = torch.addmm(scale_bias, h, scale_weight.t())
        sigma0 = torch.exp(base_log_sigma)
        loc, scale, df = student_t_params(delta, corr, df_raw, base_log_sigma)
        err = loc - y
        z = -err / scale
        z2 = z * z
        nll = torch.log(scale) - _log_norm(df) + (df + 1) / 2 * torch.log1p(z2 / df)
        loss = nll.mean()
        if mse:
            loss = loss + err.pow(2).mean()
        ctx.save_for_backward(h, loc_weight, scale_weight, df_raw, sigma0, scale, df, err, z, z2)
        ctx.mse = mse
        ctx.mark_non_differentiable(loc)
        return loss, loc

    @staticmethod
    def backward(ctx, g: Tensor, _g_loc: Tensor | None):  # type: ignore[override]
        h, loc_weight, scale_weight, df_raw, sigma0, scale, df, err, z, z2 = ctx.saved_tensors
        g = g / err.numel()                                             # the mean
        w = (df + 1) / (df + z2)
        d_corr = 1 - w * z2                                             # (batch, n_horizons)
        d_loc = 2 * err if ctx.mse else -w * z / scale
        d_df = 0.5 * (torch.digamma(df / 2) - torch.digamma((df + 1) / 2) + 1 / df + torch.log1p(z2 / df)
                      - w * z2 / df + d_corr * (1 / (df - 2) - 1 / df))
        d_delta = g * sigma0 * d_loc
        d_corr = g * d_corr
        need = ctx.needs_input_grad
        d_h = d_delta @ loc_weight + d_corr @ scale_weight if need[0] else None
        return (d_h, d_delta.t() @ h if need[1] else None, d_delta.sum(0) if need[2] else None,
                d_corr.t() @ h if need[3] else None, d_corr.sum(0) if need[4] else None,
                g * d_df.sum(0) * torch.sigmoid(df_raw) if need[5] else None, None, None, None)


def student_t_head_loss(h: Tensor, head: PointHead, dist_head: StudentTHead, base_log_sigma: Tensor, y: Tensor,
                        mse: bool = False) -> tuple[Tensor, Tensor]:
    """Both heads on the last hidden state h (batch, d_model), the Student-t they give and the training objective,
    as one autograd node: (the objective's mean over batch x horizons, loc (batch, n_horizons) without gradient).
    The same values and gradients as `student_t_params` of the heads' outputs followed by `train.objective`
    ("nll", or "mse" with `mse`); y and base_log_sigma (batch, n_horizons) are constants. Computes in h's dtype:
    on the CPU (float32/float64, the kernel built) in C++ (ops/csrc/head_loss.h, one call forward and backward,
    in double inside), elsewhere as `_StudentTHeadLoss`'s PyTorch operations."""
    args = (h, head.proj.weight, head.proj.bias, dist_head.scale_proj.weight, dist_head.scale_proj.bias,
            dist_head.df_raw, base_log_sigma, y)
    ops = fused_ops(*args) if h.dim() == 2 and h.shape[0] > 0 else None
    if ops is not None and hasattr(ops, "head_loss"):   # (an older kernel, `benchmarks/`' --baseline-kernel, has none)
        loss, loc = _fused_head_loss(ops, *args, mse)   # (the op returns a list)
        return loss, loc
    return _StudentTHeadLoss.apply(*args, mse)


@eager_under_compile
def _fused_head_loss(ops: Any, *args: Any) -> list[Tensor]:
    """The kernel's autograd op: under torch.compile behind a graph break."""
    return ops.head_loss(*args)
