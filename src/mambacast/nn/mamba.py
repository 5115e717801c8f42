"""The Mamba block and the multi-horizon forecaster built from it.

Block (Gu & Dao 2023, `mamba_simple` formulation), pre-norm residual:

    x -> LayerNorm -> in_proj (d_model -> 2*d_inner) -> split (x, z)
    x -> causal depthwise conv1d (kernel d_conv) -> SiLU
    x_proj(x) -> (dt_low, B, C);  delta = softplus(dt_proj(dt_low))
    y = selective_scan(x, delta, A=-exp(A_log), B, C, D)
    out = out_proj(y * SiLU(z));  return input + out

Model: Linear(n_features -> d_model), `num_layers` blocks, final LayerNorm, one linear head
per horizon on the last time step (plus a Student-t scale head for the forecast distribution).
`step()` is the recurrent form (O(1) per new bar) and equals the parallel `encode()` step for
step; `encode_long()` runs `encode()` over arbitrarily long sequences in bounded memory.

On CPU (float32/float64) everything between in_proj and out_proj runs as one fused autograd node
(`nn.fused.mamba_inner`: compiled conv1d + SiLU, x_proj, and a selective-scan kernel that also does
dt_proj, softplus, the D skip and the z gate); elsewhere, or if the kernel cannot be built, the
same function runs as PyTorch ops (`mamba_inner_ref`). Over a whole sequence from the zero state the CPU runs
the whole block, norm and projections included, as one C++ node with the same values (`nn.fused.fused_block`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MambaConfig
from ..ops.amp import autocast_enabled, same_autocast_backward, same_autocast_forward, without_autocast
from ..ops.eager import eager_under_compile
from .fused import fused_block, fused_ops, mamba_inner
from .heads import PointHead, StudentTHead, VolatilityBaseline, student_t_head_loss, student_t_loc, student_t_params
from .norm import layer_norm

__all__ = ["MambaBlock", "MambaModel", "LayerState"]


class LayerState(NamedTuple):
    """Recurrent state of one block: last `d_conv` conv inputs and the SSM state."""

    conv: Tensor  # (batch, d_inner, d_conv)
    ssm: Tensor   # (batch, d_inner, d_state)


def _norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """`norm(x)`: on the CPU the fused kernel (`nn.norm`); on CUDA with its affine part as a separate multiply-add
    (as `nn.stacked` does), so autograd sums the weight and bias gradients with ordinary reductions instead of
    PyTorch's LayerNorm weight-gradient kernel, which is slow for rows as narrow as d_model = 64 (docs/benchmarks.md,
    GPU profile)."""
    if norm.weight is None or norm.bias is None:
        return norm(x)
    if x.device.type == "cuda":
        return torch.addcmul(norm.bias, F.layer_norm(x, norm.normalized_shape, eps=norm.eps), norm.weight)
    return layer_norm(x, norm.weight, norm.bias, norm.eps)


class MambaBlock(nn.Module):
    """One pre-norm residual Mamba block: `(batch, seq_len, d_model) -> same`."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        d_model, d_inner, d_state = config.d_model, config.d_inner, config.d_state
        dt_rank = config.dt_rank_value
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, config.d_conv, dt_rank

        self.norm = nn.LayerNorm(d_model, eps=config.norm_eps)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner,
                                padding=config.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        # S4D-real: A[:, n] = -(n + 1), stored as log for positivity under optimisation.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt(config)

    def _init_dt(self, config: MambaConfig) -> None:
        # dt_proj weight ~ U(-r^-1/2, r^-1/2); bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max].
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(config.dt_max) - math.log(config.dt_min))
                       + math.log(config.dt_min)).clamp(min=config.dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)

    @property
    def A(self) -> Tensor:
        # Half-precision parameters compute A in float32 (as mamba_simple); float32/float64 keep their dtype.
        A_log = self.A_log.float() if self.A_log.dtype in (torch.float16, torch.bfloat16) else self.A_log
        return -torch.exp(A_log)

    def _ssm_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., d_inner) -> delta (..., d_inner), B and C (..., d_state)."""
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), B, C

    def forward(self, hidden: Tensor, last_only: bool = False) -> Tensor:
        """hidden (batch, seq_len, d_model) -> same; the sequence starts from the zero state. `last_only`: only the
        last step's output (batch, d_model), `forward(hidden)[:, -1]` without `out_proj` and the residual add
        at the other steps (the heads read only the last step of the last block)."""
        return self.forward_with_state(hidden, None, need_state=False, last_only=last_only)[0]

    def forward_with_state(self, hidden: Tensor, state: LayerState | None,
                           need_state: bool = True, last_only: bool = False) -> tuple[Tensor, LayerState | None]:
        """Continue a sequence from `state` (None: zeros); returns (output, state after the last step).

        The state is the one `step()` carries: the last d_conv conv inputs and the SSM state, so
        chunks of a long sequence, and `step()` after them, compute exactly what one `forward`
        over the whole sequence computes. `last_only`: the output is the last step's, (batch, d_model).
        """
        if state is None and not need_state:
            out = self._fused(hidden, last_only)
            if out is not None:
                return out, None
        normed = _norm(self.norm, hidden)
        if last_only:
            # Only the last step's gate is read: z = in_proj's second half at that step alone (about 40% of this
            # block's matmul FLOPs saved); the scan returns y ungated and the gate is applied here.
            w = self.in_proj.weight
            xz = F.linear(normed, w[:self.d_inner])                        # (b, l, d_inner): x alone
            z_last = F.linear(normed[:, -1], w[self.d_inner:])             # (b, d_inner)
        else:
            xz = self.in_proj(normed)                                      # (b, l, 2 * d_inner)
        conv_prev = None if state is None else state.conv[:, :, 1:].transpose(1, 2)   # (b, d_conv-1, d_inner)
        if autocast_enabled(xz.device):
            # xz is in autocast's dtype; A and D stay in the parameters' (the scan runs in float32: ops.amp).
            A, D = self.A, self.D
        else:
            A, D = self.A.to(xz.dtype), self.D.to(xz.dtype)
        y, ssm = mamba_inner(xz, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.x_proj.weight,
                             self.dt_proj.weight, self.dt_proj.bias, A, D, conv_prev,
                             None if state is None else state.ssm, last_only=last_only)
        if last_only:   # y: (b, 1, d_inner), the last step's
            out = hidden[:, -1] + self.out_proj(y[:, -1] * F.silu(z_last))
        else:
            out = hidden + self.out_proj(y)
        if not need_state:
            return out, None
        # New conv state: the last d_conv inputs of (previous inputs, this chunk's x).
        x = xz[..., :self.d_inner]
        if state is None:
            prev = x.new_zeros(x.shape[0], self.d_conv, self.d_inner)
        else:
            prev = state.conv.transpose(1, 2)
        conv = torch.cat([prev, x[:, -self.d_conv:]], dim=1)[:, -self.d_conv:].transpose(1, 2)  # (b, d_inner, d_conv)
        return out, LayerState(conv, ssm)

    def _fused(self, hidden: Tensor, last_only: bool = False) -> Tensor | None:
        """The whole block as one C++ autograd node where it applies (`nn.fused.fused_block`), else None."""
        norm, conv = self.norm, self.conv1d
        if norm.weight is None or norm.bias is None or conv.bias is None or self.dt_proj.bias is None:
            return None
        return fused_block(hidden, norm.weight, norm.bias, norm.eps, self.in_proj.weight, conv.weight, conv.bias,
                           self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D,
                           self.out_proj.weight, last_only)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        return LayerState(torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
                          torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype))

    def step(self, hidden: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One time step: hidden (batch, d_model) -> (batch, d_model), new state.

        Without autograd on CPU the whole block is one fused kernel call (`mamba_step`), else
        `step_ref`, the same maths in PyTorch ops.
        """
        ops = self._step_ops(hidden)
        return self._step_fused(ops, hidden, state) if ops is not None else self.step_ref(hidden, state)

    def _step_ops(self, hidden: Tensor):
        """The kernel's ops if the fused step applies to `hidden` (no autograd, CPU, the parameters' dtype)."""
        p = self.in_proj.weight
        if (torch.is_grad_enabled() and (hidden.requires_grad or p.requires_grad)) or hidden.dtype != p.dtype \
                or self.norm.weight is None:
            return None
        return fused_ops(hidden, p, d_state=self.d_state)

    def _A_for_step(self, dtype: torch.dtype) -> Tensor:
        # -exp(A_log), recomputed only when A_log changes (an optimizer step bumps its version).
        key = (self.A_log._version, self.A_log.data_ptr(), dtype)
        cached = getattr(self, "_A_step_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.A.detach().to(dtype).contiguous())
            self._A_step_cache = cached
        return cached[1]

    @eager_under_compile
    def _step_fused(self, ops, hidden: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        out, conv, ssm = ops.mamba_step(
            hidden.contiguous(), self.norm.weight, self.norm.bias, self.norm.eps, self.in_proj.weight,
            self.conv1d.weight.view(self.d_inner, self.d_conv), self.conv1d.bias, self.x_proj.weight,
            self.dt_proj.weight, self.dt_proj.bias, self._A_for_step(hidden.dtype), self.D, self.out_proj.weight,
            state.conv.to(hidden.dtype).contiguous(), state.ssm.to(hidden.dtype).contiguous())
        return out, LayerState(conv, ssm)

    def step_ref(self, hidden: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """`step` in PyTorch ops (autograd, any device)."""
        x, z = self.in_proj(self.norm(hidden)).chunk(2, dim=-1)            # (b, d_inner)
        conv = torch.cat([state.conv[:, :, 1:], x.unsqueeze(-1)], dim=-1)  # (b, d_inner, d_conv)
        x = (conv * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias
        x = F.silu(x)
        delta, B, C = self._ssm_params(x)
        dA = torch.exp(delta.unsqueeze(-1) * self.A)                       # (b, d_inner, d_state)
        ssm = dA * state.ssm + (delta * x).unsqueeze(-1) * B.unsqueeze(1)
        y = (ssm * C.unsqueeze(1)).sum(-1) + self.D * x
        return hidden + self.out_proj(y * F.silu(z)), LayerState(conv, ssm)


class _PieceCheckpoint(torch.autograd.Function):
    """Activation checkpointing of one piece of `encode_long`: the forward runs without building a
    graph and keeps only the piece's input and incoming state; the backward runs the piece again
    with autograd and returns the gradients of the input, the state and the parameters (passed
    in as inputs, so `torch.autograd.grad` works, unlike reentrant `torch.utils.checkpoint`).

    Unlike non-reentrant `torch.utils.checkpoint`, no per-op autograd nodes are created in the
    forward; on a million steps those thousands of small long-lived allocations fragment glibc's
    heap (measured: resident memory 4x the live memory). The model has no randomness (no
    dropout), so the recomputation is exact.
    """

    @staticmethod
    @same_autocast_forward
    def forward(ctx, model: MambaModel, n_params: int, store: list[Tensor], x: Tensor,  # type: ignore[override]
                *rest: Tensor):
        flat = rest[n_params:]
        ctx.model, ctx.n_params = model, n_params
        ctx.save_for_backward(x, *flat)
        hidden, *new = model._encode_chunk_flat(x, *flat)
        # The outgoing state lives until the backward: keep it in one block allocated up front
        # (small long-lived allocations between each piece's large temporaries fragment the heap).
        block, views, offset = store[0], [], 0
        for t in new:
            # A tensor of its own (own version counter) on a slice of the block's storage.
            v = t.new_empty(0).set_(block.untyped_storage(), block.storage_offset() + offset, t.shape)
            v.copy_(t)
            views.append(v)
            offset += t.numel()
        return (hidden, *views)

    @staticmethod
    @same_autocast_backward
    def backward(ctx, *grads: Tensor | None):  # type: ignore[override]
        x, *flat = ctx.saved_tensors
        model, n_params = ctx.model, ctx.n_params
        params = [p for p in model.parameters() if p.requires_grad]
        assert len(params) == n_params, "the model's trainable parameters changed between forward and backward"
        need = ctx.needs_input_grad
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(need[3])
            flat_in = [f.detach().requires_grad_(need[4 + n_params + i]) for i, f in enumerate(flat)]
            outs = model._encode_chunk_flat(x_in, *flat_in)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None and o.requires_grad]
        inputs = [x_in, *params, *flat_in]
        wanted = [t for t in inputs if t.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) \
            if pairs else [None] * len(wanted)
        result = iter(got)
        return (None, None, None, *(next(result) if t.requires_grad else None for t in inputs))


#: Without autograd, `MambaModel.encode` hands longer inputs to `encode_long`. Measured on the 2-core CPU at the
#: guide config, batch 1 (encode_long's time / encode's): 0.96-0.99 up to 2,048 steps, 0.86 at 4,096, 0.91 at
#: 16,384, 0.72 at 65,536; and encode's memory grows with the length (3.46 GB at 1,000,000 steps).
LONG_INPUT_STEPS = 4096


class MambaModel(nn.Module):
    """Multi-horizon Mamba forecaster.

    `forward(x)`: x (batch, seq_len, n_features) -> (batch, len(prediction_horizons)), the
    point forecast per horizon (in horizon order) read from the last time step.
    """

    def __init__(self, config: MambaConfig, n_features: int):
        super().__init__()
        if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
            raise ValueError(f"n_features={n_features!r} is invalid: must be a positive integer")
        self.config = config
        self.n_features = n_features
        self.embed = nn.Linear(n_features, config.d_model)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.num_layers))
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.head = PointHead(config.d_model, config.prediction_horizons)
        self.dist_head = StudentTHead(config.d_model, config.prediction_horizons)
        self.baseline = VolatilityBaseline(config.prediction_horizons)
        # GPT-2 / mamba_simple: scale residual-branch outputs by 1/sqrt(num_layers) at init.
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.out_proj.weight /= math.sqrt(config.num_layers)

    @property
    def horizons(self) -> list[int]:
        return list(self.config.prediction_horizons)

    def _check_input(self, x: Tensor, dims: int) -> None:
        shape = "(batch, seq_len, n_features)" if dims == 3 else "(batch, n_features)"
        if x.dim() != dims or x.shape[-1] != self.n_features:
            raise ValueError(f"expected input of shape {shape} with n_features={self.n_features}, "
                             f"got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        """x (batch, seq_len, n_features) -> final-normed hidden sequence (batch, seq_len, d_model).

        Without autograd, sequences longer than `LONG_INPUT_STEPS` go through `encode_long` (equal to rounding,
        memory bounded by one piece's activations instead of growing with seq_len); the ordinary call then
        scales to any length. With autograd the whole sequence is one graph, as training wants.
        """
        self._check_input(x, 3)
        if x.shape[1] > LONG_INPUT_STEPS and not self._records_grad(x):
            return self.encode_long(x, checkpoint=False)  # type: ignore[return-value]
        return self._encode_whole(x)

    def _records_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _encode_whole(self, x: Tensor) -> Tensor:
        hidden = self.embed(x)
        for layer in self.layers:
            hidden = layer(hidden)
        return self._norm_f(hidden)

    def _last_hidden(self, x: Tensor) -> Tensor:
        """`encode(x)[:, -1]` (batch, d_model): the last block's `out_proj`, residual and the final norm at the last
        step only (LayerNorm is per step), which is all the heads read; the other blocks as in `encode`.
        Long inputs without autograd go through `encode`'s route to `encode_long`."""
        self._check_input(x, 3)
        if x.shape[1] > LONG_INPUT_STEPS and not self._records_grad(x):
            return self.encode(x)[:, -1]
        hidden = self.embed(x)
        for layer in self.layers[:-1]:
            hidden = layer(hidden)
        return self._norm_f(self.layers[-1](hidden, last_only=True))

    def _norm_f(self, hidden: Tensor) -> Tensor:
        """The final LayerNorm: on the CPU the blocks' kernel (`nn.norm`, as `nn.stacked` runs it), whose weight
        gradients are float32 sums also for a bf16 hidden state; elsewhere `F.layer_norm`, as `nn.LayerNorm`."""
        return layer_norm(hidden, self.norm_f.weight, self.norm_f.bias, self.norm_f.eps)

    def _encode_chunk(self, x: Tensor, state: list[LayerState]) -> tuple[Tensor, list[LayerState]]:
        hidden = self.embed(x)
        new_state = []
        for layer, s in zip(self.layers, state, strict=True):
            hidden, s = layer.forward_with_state(hidden, s)
            new_state.append(s)
        return self._norm_f(hidden), new_state

    def _encode_chunk_flat(self, x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        state = [LayerState(flat[2 * i], flat[2 * i + 1]) for i in range(len(self.layers))]
        hidden, new_state = self._encode_chunk(x, state)
        return (hidden, *(t for s in new_state for t in s))

    def encode_long(self, x: Tensor, chunk_len: int | None = None, *, state: list[LayerState] | None = None,
                    return_state: bool = False, checkpoint: bool | None = None
                    ) -> Tensor | tuple[Tensor, list[LayerState]]:
        """`encode` for long sequences in bounded memory: equal to `encode(x)` (to rounding).

        The sequence is cut along time into pieces of `chunk_len` steps; each layer's recurrent
        state (its last `d_conv` conv inputs and its SSM state, the same `LayerState` that
        `step()` carries) flows from one piece to the next, so only one piece's activations exist
        at a time. x (batch, seq_len, n_features) -> (batch, seq_len, d_model). Default `chunk_len`: 2048 steps
        on the CPU (pieces stay in cache), 65536 elsewhere (on a GPU each piece costs a few dozen kernel launches
        whatever its length, and the Triton scan splits a long piece over time by itself).

        state: the state to start from (default zeros, i.e. the start of the sequence); with
            `return_state=True` the state after the last step is returned too, ready for
            `step()` or another `encode_long` call on the sequence's continuation.
        checkpoint: backpropagate through the whole sequence with per-piece activation
            checkpointing (`_PieceCheckpoint`, in the manner of `torch.utils.checkpoint`): the
            forward keeps only each piece's input and boundary state, the backward recomputes one
            piece at a time. Default: on when autograd is recording and the model has trainable
            parameters. Gradients equal those of `encode(x)` and flow into `state` and `x` as well;
            `torch.autograd.grad` works.

        Memory without autograd: the output plus one piece's activations (about 40 bytes per step
        per `d_inner` channel per layer). Forward at the guide config: see docs/benchmarks.md.
        """
        self._check_input(x, 3)
        if chunk_len is None:
            chunk_len = 2048 if x.device.type == "cpu" else 65536
        if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1:
            raise ValueError(f"chunk_len={chunk_len!r} is invalid: must be a positive integer")
        batch, seq_len, _ = x.shape
        if state is None:
            state = self.init_state(batch)
            p = self.embed.weight
            state = [LayerState(s.conv.to(x.dtype) if p.dtype != x.dtype else s.conv,
                                s.ssm.to(x.dtype) if p.dtype != x.dtype else s.ssm) for s in state]
        elif len(state) != len(self.layers):
            raise ValueError(f"state has {len(state)} layers, the model has {len(self.layers)}")
        state = list(state)
        grad = self._records_grad(x) or (torch.is_grad_enabled() and any(t.requires_grad for s in state for t in s))
        if checkpoint is None:
            checkpoint = grad
        # Without autograd the pieces are written into one output tensor; with it they are joined
        # by one cat at the end (slice assignments would copy the whole gradient once per piece).
        out: Tensor | None = None if grad else x.new_empty(batch, seq_len, self.config.d_model)
        pieces: list[Tensor] = []
        params = [p for p in self.parameters() if p.requires_grad] if checkpoint and grad else []
        if checkpoint and grad:
            per_piece = sum(t.numel() for s in state for t in s)
            n_pieces = -(-seq_len // chunk_len)
            store = x.new_empty(n_pieces, per_piece)
        for i_piece, t0 in enumerate(range(0, seq_len, chunk_len)):
            xc = x[:, t0:t0 + chunk_len]
            if checkpoint and grad:
                flat = [t for s in state for t in s]
                hidden, *flat = _PieceCheckpoint.apply(self, len(params), [store[i_piece]], xc, *params, *flat)
                state = [LayerState(flat[2 * i], flat[2 * i + 1]) for i in range(len(self.layers))]
            else:
                hidden, state = self._encode_chunk(xc, state)
            if out is not None:
                out[:, t0:t0 + hidden.shape[1]] = hidden
            else:
                pieces.append(hidden)
        if out is None:
            out = torch.cat(pieces, dim=1) if pieces else x.new_empty(batch, 0, self.config.d_model)
        return (out, state) if return_state else out

    def forward(self, x: Tensor) -> Tensor:
        """The point forecast: the Student-t location (batch, n_horizons), without the scale head."""
        h = self._last_hidden(x)
        with without_autocast(h.device):
            return student_t_loc(self.head(self._head_input(h)), self.baseline(x[:, -1]))

    def forward_distribution(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Student-t per horizon of the standardised log-return (`nn.heads`): loc, scale (batch, n_horizons),
        df (n_horizons,). The heads compute in the parameters' dtype, with autocast off (`nn.heads`)."""
        h = self._last_hidden(x)
        with without_autocast(h.device):
            h = self._head_input(h)
            log_scale_corr, df_raw = self.dist_head(h)
            return student_t_params(self.head(h), log_scale_corr, df_raw, self.baseline(x[:, -1]))

    def head_loss(self, x: Tensor, y: Tensor, mse: bool = False) -> tuple[Tensor, Tensor]:
        """The training objective on a batch, x (batch, seq_len, n_features) and standardised targets y (batch,
        n_horizons): (the Student-t NLL's mean, or with `mse` the MSE of the location plus the NLL with the location
        held fixed, as `train.objective`; loc (batch, n_horizons) without gradient). The heads, the law and the
        objective are one autograd node (`nn.heads.student_t_head_loss`); the values and gradients are those of
        `forward_distribution` followed by `train.objective`."""
        h = self._last_hidden(x)
        with without_autocast(h.device):
            h = self._head_input(h)
            return student_t_head_loss(h, self.head, self.dist_head, self.baseline(x[:, -1]), y.to(h.dtype), mse)

    def _head_input(self, h: Tensor) -> Tensor:
        return h.to(self.head.proj.weight.dtype)

    def init_state(self, batch_size: int) -> list[LayerState]:
        p = self.embed.weight
        return [layer.init_state(batch_size, p.device, p.dtype) for layer in self.layers]

    def step(self, x_t: Tensor, state: list[LayerState]) -> tuple[Tensor, list[LayerState]]:
        """Recurrent form: x_t (batch, n_features) -> h_t (batch, d_model) == encode(x)[:, t].

        One new bar costs O(1): without autograd on CPU each block is one fused kernel call.
        """
        self._check_input(x_t, 2)
        hidden = self.embed(x_t)
        ops = self.layers[0]._step_ops(hidden) if len(self.layers) else None
        new_state = []
        for layer, s in zip(self.layers, state, strict=True):
            hidden, s = layer._step_fused(ops, hidden, s) if ops is not None else layer.step_ref(hidden, s)
            new_state.append(s)
        return self._norm_f(hidden), new_state

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
