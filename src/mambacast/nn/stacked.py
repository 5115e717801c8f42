"""M independent `MambaModel`s of one configuration evaluated as one batched computation.

Training one small model per symbol issues the same few dozen small operations for every
symbol. Stacking the M models' parameters along a leading model dimension turns each of them
into one batched operation (`bmm` for the linear layers, one fused kernel call per block for
conv1d + x_proj + scan over all M models' rows: see `nn.fused`), so the per-operation overhead is
paid once per step for all symbols, not once per symbol.

The models stay independent: model m's output depends only on model m's parameters and inputs,
so the gradient of a sum of per-model losses gives each model exactly its own gradient.

Parameters are a plain dict `name -> (M, *shape)` keyed by `MambaModel.state_dict()` names, so
model m's weights are `{name: p[m] for name, p in params.items()}` (`unstack_parameters`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.amp import without_autocast
from .fused import mamba_inner
from .heads import baseline_log_sigma, student_t_params
from .mamba import MambaModel
from .norm import layer_norm

__all__ = ["stack_parameters", "stack_buffers", "unstack_parameters", "stacked_forward_distribution",
           "stacked_forward"]


def stack_parameters(models: Sequence[MambaModel]) -> dict[str, Tensor]:
    """Stack the parameters of models with one configuration: name -> (M, *shape) leaf tensors
    (copies, requiring grad)."""
    if not models:
        raise ValueError("stack_parameters needs at least one model")
    first = models[0]
    for m in models[1:]:
        if m.config != first.config or m.n_features != first.n_features:
            raise ValueError("stacked models must share one MambaConfig and n_features; got "
                             f"{m.config} / {m.n_features} vs {first.config} / {first.n_features}")
    names = [n for n, _ in first.named_parameters()]
    return {n: torch.stack([m.get_parameter(n).detach() for m in models]).requires_grad_() for n in names}


def stack_buffers(models: Sequence[MambaModel]) -> dict[str, Tensor]:
    """The baselines' buffers of the models, name -> (M, *shape) (constants: no grad)."""
    return {n: torch.stack([dict(m.baseline.named_buffers())[n] for m in models])
            for n, _ in models[0].baseline.named_buffers()}


def unstack_parameters(params: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """Model `index`'s state dict (views into the stacked tensors, detached)."""
    return {n: p.detach()[index] for n, p in params.items()}


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (M, n, in), weight (M, out, in), bias (M, out) -> (M, n, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _last_hidden(params: dict[str, Tensor], model: MambaModel, x: Tensor) -> Tensor:
    """x (M, batch, seq_len, n_features) -> final-normed last hidden state (M, batch, d_model)."""
    if x.dim() != 4 or x.shape[-1] != model.n_features:
        raise ValueError(f"expected input of shape (n_models, batch, seq_len, n_features={model.n_features}), "
                         f"got {tuple(x.shape)}")
    M, batch, seq_len, _ = x.shape
    cfg = model.config
    hidden = _linear(x.reshape(M, batch * seq_len, -1), params["embed.weight"], params["embed.bias"])
    d_inner = cfg.d_inner
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        last = i + 1 == cfg.num_layers
        normed = layer_norm(hidden, params[p + "norm.weight"], params[p + "norm.bias"], cfg.norm_eps)
        w_in = params[p + "in_proj.weight"]
        # The heads read the last step only: in the last block x alone at every step (M, b*l, d_inner), z and
        # the gate, out_proj and the residual at the last step (as MambaBlock's last_only).
        xz = _linear(normed, w_in[:, :d_inner] if last else w_in)               # (M, b*l, [2*]d_inner)
        A = -torch.exp(params[p + "A_log"])                                        # (M, d_inner, d_state)
        y, _ = mamba_inner(xz.view(M * batch, seq_len, -1), params[p + "conv1d.weight"].squeeze(2),
                           params[p + "conv1d.bias"], params[p + "x_proj.weight"], params[p + "dt_proj.weight"],
                           params[p + "dt_proj.bias"], A, params[p + "D"], last_only=last)
        if not last:
            hidden = hidden + _linear(y.view(M, batch * seq_len, -1), params[p + "out_proj.weight"])
        else:   # y: (M * b, 1, d_inner), the last step's
            z = _linear(normed.view(M, batch, seq_len, -1)[:, :, -1], w_in[:, d_inner:])   # (M, b, d_inner)
            hidden = hidden.view(M, batch, seq_len, -1)[:, :, -1] + _linear(
                y.view(M, batch, -1) * F.silu(z), params[p + "out_proj.weight"])
    # LayerNorm is per time step, so normalising only the last step equals MambaModel's encode()[:, -1].
    return layer_norm(hidden, params["norm_f.weight"], params["norm_f.bias"], cfg.norm_eps)


def stacked_forward_distribution(params: dict[str, Tensor], model: MambaModel, x: Tensor,
                                 buffers: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """`MambaModel.forward_distribution` of every stacked model: x (M, batch, seq_len, n_features) -> loc and
    scale (M, batch, n_horizons), df (M, 1, n_horizons). `buffers` from `stack_buffers`; `model` is any one of
    the stacked models (only its configuration is read)."""
    h = _last_hidden(params, model, x)
    with without_autocast(h.device):   # the heads in the parameters' dtype, as MambaModel's
        h = h.to(params["head.proj.weight"].dtype)
        delta = _linear(h, params["head.proj.weight"], params["head.proj.bias"])
        corr = _linear(h, params["dist_head.scale_proj.weight"], params["dist_head.scale_proj.bias"])
        base = baseline_log_sigma(x[:, :, -1], buffers)
        return student_t_params(delta, corr, params["dist_head.df_raw"].unsqueeze(1), base)


def stacked_forward(params: dict[str, Tensor], model: MambaModel, x: Tensor, buffers: dict[str, Tensor]) -> Tensor:
    """`MambaModel.forward` (the location) of every stacked model: (M, batch, n_horizons)."""
    return stacked_forward_distribution(params, model, x, buffers)[0]
