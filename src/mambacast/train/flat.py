"""Adam, gradient clipping and zeroing over all of a model's parameters at once, on the CPU.

`torch.optim.Adam(fused=True)` updates its parameters in one kernel call, but around it the optimizer, the clipping
(`clip_grad_norm_`: a norm per parameter) and `zero_grad` walk the parameter list in Python: for the guide's model
(54 tensors, 130k values) that was 1.3 ms of a 23 ms train step on the 2-core CPU, more than Adam's arithmetic.
`FlatAdam` puts the parameters, their gradients and Adam's two moments each in one flat buffer, the tensors the
model and the optimizer hold being views of them, so a step is one zeroing, one norm, one scaling and one fused
Adam call on four flat tensors (0.45 ms measured; docs/benchmarks.md).

The optimizer stays the source of truth: its `state` holds views of the flat moments and one shared step count, so
`optimizer.state_dict()` (the training checkpoints) reads what the flat update writes, and `release()` gives every
tensor its own storage back. The maths is Adam's and the clipping's (`clip_grad_norm_`: coefficient max_norm /
(||g|| + 1e-6), at most 1). Only the parameters that received a gradient (the caller names them, after the first
backward; the gradients they hold then are taken into the flat buffer) are flattened: the others keep a None
gradient and, as `torch.optim.Adam` skips them, are not updated (a distribution model trained on the MSE never uses
its scale head). One difference of semantics remains: a flattened parameter that takes no part in some later step
gets a zero gradient, not None, and is updated with it (its moments decay), as after `zero_grad(set_to_none=False)`;
`clip_and_step` declines (returns False) if a parameter left out receives a gradient, so the caller can go back to
the per-parameter update.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .adam import Adam, fused_adam_

__all__ = ["FlatAdam"]


class FlatAdam:
    """`params` of an Adam (`train.adam.Adam` or `torch.optim.Adam`; CPU, one dtype, equal step counts) in flat
    buffers, for the duration of a fit: `zero_grad()`, then backward, then `clip_and_step(max_norm)`; `release()`
    at the end. The gradients the parameters hold when it is built are its first (`clip_and_step` may follow)."""

    def __init__(self, optimizer: Adam | torch.optim.Adam, params: list[Tensor]):
        if len(optimizer.param_groups) != 1:
            raise ValueError("FlatAdam takes an optimizer with one parameter group")
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("FlatAdam implements Adam without amsgrad or maximize")
        mine = {id(p) for p in group["params"]}
        if any(id(p) not in mine or not p.requires_grad for p in params):
            raise ValueError("FlatAdam: every parameter must be a trainable one of the optimizer")
        self.params = list(params)
        if not self.params:
            raise ValueError("FlatAdam: no parameters to flatten")
        chosen = {id(p) for p in self.params}
        self._left_out = [p for p in group["params"] if p.requires_grad and id(p) not in chosen]
        dtype = self.params[0].dtype
        if any(p.device.type != "cpu" or p.dtype != dtype for p in self.params):
            raise ValueError("FlatAdam needs CPU parameters of one dtype")
        n = sum(p.numel() for p in self.params)
        state = optimizer.state
        steps = {float(state[p]["step"]) if p in state else 0.0 for p in self.params}
        if len(steps) != 1:
            raise ValueError("FlatAdam needs parameters with equal Adam step counts")
        self.flat_param = torch.empty(n, dtype=dtype)
        self.flat_grad = torch.zeros(n, dtype=dtype)
        self.exp_avg = torch.zeros(n, dtype=dtype)
        self.exp_avg_sq = torch.zeros(n, dtype=dtype)
        self.step_count = torch.tensor(steps.pop(), dtype=torch.float32)
        self._grads: list[Tensor] = []
        offset = 0
        with torch.no_grad():
            for p in self.params:
                span = slice(offset, offset + p.numel())
                offset = span.stop
                self.flat_param[span].copy_(p.reshape(-1))
                if p.grad is not None:
                    self.flat_grad[span].copy_(p.grad.reshape(-1))
                p.data = self.flat_param[span].view_as(p)
                m, v = self.exp_avg[span].view_as(p), self.exp_avg_sq[span].view_as(p)
                s = state.get(p)
                if s:
                    m.copy_(s["exp_avg"])
                    v.copy_(s["exp_avg_sq"])
                state[p] = {"step": self.step_count, "exp_avg": m, "exp_avg_sq": v}
                p.grad = self.flat_grad[span].view_as(p)
                self._grads.append(p.grad)

    def zero_grad(self) -> None:
        """Zero every gradient (the views autograd accumulates into)."""
        self.flat_grad.zero_()
        for p, g in zip(self.params, self._grads, strict=True):
            if p.grad is not g:   # set to None or replaced by someone: accumulate into the view again
                p.grad = g

    @torch.no_grad()
    def clip_and_step(self, max_norm: float) -> bool:
        """Clip the gradients to global norm `max_norm` (as `clip_grad_norm_`), then one Adam update. Returns False
        without changing anything if a parameter left out of the flat buffers received a gradient (the update must
        then include it: `release()` and the per-parameter update)."""
        if any(p.grad is not None for p in self._left_out):
            return False
        for p, g in zip(self.params, self._grads, strict=True):
            if p.grad is not g:   # autograd replaced a view (it accumulates in place unless asked for a graph)
                raise RuntimeError("FlatAdam: a gradient is no longer a view of the flat buffer; call zero_grad() "
                                   "before backward and do not replace .grad between them")
        norm = torch.linalg.vector_norm(self.flat_grad)
        # clip_grad_norm_'s factor min(1, max_norm / (norm + 1e-6)) as the Adam kernel's divisor: it scales each
        # gradient as it reads it and writes the clipped one back, one pass over the gradients fewer (14 us of the
        # 0.42 ms that clipping and Adam took in the guide's step, in a throw-away timing).
        scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        fused_adam_([self.flat_param], [self.flat_grad], [self.exp_avg], [self.exp_avg_sq], [self.step_count],
                    self.optimizer.param_groups[0], grad_scale=scale)
        return True

    def release(self) -> None:
        """Give every parameter, gradient and Adam state tensor its own storage again (a view of a shared buffer
        would carry the whole buffer into `torch.save` and be refused by safetensors)."""
        state = self.optimizer.state
        with torch.no_grad():
            for p in self.params:
                p.data = p.data.clone()
                if p.grad is not None:
                    p.grad = p.grad.clone()
                s = state[p]
                state[p] = {"step": s["step"].clone(), "exp_avg": s["exp_avg"].clone(),
                            "exp_avg_sq": s["exp_avg_sq"].clone()}
        self.params, self._grads, self._left_out = [], [], []
