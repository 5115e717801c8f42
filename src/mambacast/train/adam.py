"""Adam for the CPU without `torch.optim`: the update, the state and the `state_dict` of
`torch.optim.Adam(fused=True)`, through the same `torch._fused_adam_` kernel.

Why not `torch.optim.Adam` itself: every `torch.optim.Optimizer` imports `torch._dynamo` (with sympy, and triton
where installed) when it is built, since its methods are wrapped in `torch._disable_dynamo`, which imports dynamo
at their first call: 1.2-1.5 s per process on the 2-core CPU, 4-5% of a one-symbol, 50-epoch training run.
Nothing else in a CPU fit needs dynamo. The CUDA path keeps `torch.optim.Adam` (its capturable update is replayed
in CUDA graphs, `train.graphs`).

The update (Kingma & Ba 2015, Algorithm 1, with L2 weight decay added to the gradient as `torch.optim.Adam`
does): g += wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr * (m / (1 - b1^t)) /
(sqrt(v / (1 - b2^t)) + eps). Parameters without a gradient are skipped, as by `torch.optim.Adam`; their state
is created at their first gradient. `state_dict()` / `load_state_dict()` read and write `torch.optim.Adam`'s
format, so training checkpoints move between the two (and between CPU and CUDA runs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Adam", "fused_adam_"]

# What torch.optim.Adam(fused=True) writes in each parameter group besides "params"; the checkpoint's groups keep it.
_FIXED = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
          "fused": True, "decoupled_weight_decay": False}


def fused_adam_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                steps: list[Tensor], group: dict[str, Any], grad_scale: Tensor | None = None) -> None:
    """One Adam update in place, one `torch._fused_adam_` call per dtype: the step counts (0-d float32 tensors)
    first go up by one. `group` holds lr, betas, eps and weight_decay. CPU tensors; no amsgrad, no maximize.
    `grad_scale` (a 0-d float32 tensor): the update uses grad / grad_scale, and the kernel writes that quotient
    back into the gradients."""
    beta1, beta2 = group["betas"]
    by_dtype: dict[torch.dtype, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        by_dtype[p.dtype].append(i)
    for idx in by_dtype.values():
        pick = [params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx], \
            [exp_avg_sqs[i] for i in idx]
        own_steps = [steps[i] for i in idx]
        torch._foreach_add_(own_steps, 1)
        torch._fused_adam_(*pick, [], own_steps, lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                           weight_decay=float(group["weight_decay"]), eps=float(group["eps"]), amsgrad=False,
                           maximize=False, grad_scale=grad_scale)


class Adam:
    """`torch.optim.Adam(params, lr, betas, eps, weight_decay, fused=True)` on CPU parameters, one parameter group.

    Exposes what the trainers and callbacks use of an optimizer: `param_groups` (a callback sets "lr" there),
    `defaults`, `state` (per parameter: "step", a 0-d float32 tensor; "exp_avg", "exp_avg_sq"), `zero_grad`,
    `step`, `state_dict`, `load_state_dict`.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if any(p.device.type != "cpu" or not p.is_floating_point() for p in params):
            raise ValueError("mambacast.train.adam.Adam takes floating-point CPU parameters (torch.optim.Adam on CUDA)")
        self.defaults: dict[str, Any] = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                         **_FIXED}
        self.param_groups: list[dict[str, Any]] = [{"params": params, **self.defaults}]
        self.state: defaultdict[Tensor, dict[str, Tensor]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("Adam does not support sparse gradients")
        for p in params:
            if not self.state[p]:
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32), "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
        states = [self.state[p] for p in params]
        fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states], [s["step"] for s in states], group)

    def state_dict(self) -> dict[str, Any]:
        """`torch.optim.Adam.state_dict()`'s format: state keyed by the parameter's index in the group."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        packed = {k: v for k, v in group.items() if k != "params"}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items() if s},
                "param_groups": [{**packed, "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict()` of this class or of `torch.optim.Adam` (one group, as many parameters): the
        hyper-parameters from its group, the moments cast to each parameter's dtype, the step counts as float32."""
        groups = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError("the loaded optimizer state does not match this model's parameters "
                             f"({[len(g['params']) for g in groups]} vs {len(params)})")
        saved = groups[0]
        if saved.get("amsgrad") or saved.get("maximize") or saved.get("decoupled_weight_decay"):
            raise ValueError("the loaded optimizer state is not plain Adam (amsgrad, maximize or AdamW)")
        order = saved["params"]
        self.state = defaultdict(dict)
        for key, s in state_dict["state"].items():
            p = params[order.index(int(key))]
            self.state[p] = {"step": torch.as_tensor(s["step"], dtype=torch.float32).clone(),
                             "exp_avg": s["exp_avg"].to(p.dtype).clone(),
                             "exp_avg_sq": s["exp_avg_sq"].to(p.dtype).clone()}
        self.param_groups[0].update({k: saved[k] for k in ("lr", "eps", "weight_decay")},
                                    betas=tuple(saved["betas"]))
