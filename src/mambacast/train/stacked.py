"""Train several per-symbol models as one batched computation (`nn.stacked`).

Each symbol keeps its own `Trainer` (model, callbacks, shuffling generator, learning rate,
resumable state); `StackedTrainer` only replaces the inner loop: at every step the active
symbols' next minibatches go through the stacked models together, each symbol's loss is the
one `Trainer` would compute, and gradient clipping and the Adam update are applied per model,
vectorised over the stack. So a symbol trained in a stack follows, step for step, the same
trajectory as the symbol trained alone with the same seed (equal to float rounding: the
batched matmuls sum in another order).

Validation runs stacked too (each symbol's windows through its own model, the same objective,
MAE and CRPS as `Trainer.evaluate`). Between epochs the stacked weights and Adam moments are copied into each
symbol's own `Trainer`, which then runs its callbacks exactly as when training alone (early
stopping, learning-rate schedule, checkpoints, resumable state in the same format, so an
interrupted stacked run resumes alone or stacked). A symbol that stops early, or has fewer
epochs left, leaves the stack; the others continue without it. A symbol with fewer training
windows has no batch in the last steps of an epoch and sits those steps out (no update).
A symbol whose loss becomes NaN/inf leaves the stack at once with a `NonFiniteLossError` in
`StackedTrainer.errors` (its last good checkpoint is kept, as alone); the others go on.

The stack lives on the members' device (CPU or CUDA, one for all), with the Trainer's autocast (bfloat16 on
CUDA) around the forward passes; on CUDA the blocks' scans run as one Triton kernel call for all models.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..nn.stacked import stack_buffers, stack_parameters, stacked_forward_distribution
from ..ops.heap import kept_heap
from ..tensorfile import host_copies
from .graphs import GraphedSteps
from .objective import crps_student_t_np, objective
from .trainer import _EVAL_BATCH, NonFiniteLossError, Trainer, _as_tensor

__all__ = ["StackedTrainer"]

log = logging.getLogger(__name__)

_Data = tuple[np.ndarray | Tensor, np.ndarray | Tensor, np.ndarray | Tensor, np.ndarray | Tensor]


class StackedTrainer:
    """Runs the `fit` of several `Trainer`s (same model configuration, one device) as one stacked computation."""

    def __init__(self, trainers: Sequence[Trainer]):
        if not trainers:
            raise ValueError("StackedTrainer needs at least one Trainer")
        first = trainers[0]
        for t in trainers:
            if not hasattr(t.model, "forward_distribution"):
                raise ValueError("stacked training needs MambaModel members")
            if t.model.config != first.model.config or t.model.n_features != first.model.n_features:
                raise ValueError("stacked trainers must share one model configuration and feature count")
            if t.device != first.device:
                raise ValueError(f"stacked trainers must share one device; got {t.device} and {first.device}")
            if t.config.batch_size != first.config.batch_size or t.config.loss != first.config.loss:
                raise ValueError("stacked trainers must share one batch size and loss")
        self.trainers = list(trainers)
        self.errors: list[Exception | None] = [None] * len(self.trainers)

    # ---- public -------------------------------------------------------------------------------
    @kept_heap()   # every step reuses the last step's freed activations (ops.heap: page faults)
    def fit(self, data: Sequence[_Data],
            resume_from: Sequence[tuple[dict[str, Tensor], dict] | None] | None = None) -> list[list[dict]]:
        """Train every member on its own (X_train, y_train, X_val, y_val); returns each member's
        per-epoch logs, as `Trainer.fit` does. Shapes as in `Trainer.fit`. A member that diverged
        has its error in `self.errors` (else None) and its logs up to the last complete epoch."""
        if len(data) != len(self.trainers):
            raise ValueError(f"{len(data)} datasets for {len(self.trainers)} trainers")
        resume_from = list(resume_from) if resume_from is not None else [None] * len(self.trainers)
        members = []
        for i, (trainer, (Xt, yt, Xv, yv), resume) in enumerate(zip(self.trainers, data, resume_from, strict=True)):
            if len(Xt) != len(yt) or len(Xv) != len(yv):
                raise ValueError(f"member {i}: X and y lengths differ")
            if len(Xt) == 0 or len(Xv) == 0:
                raise ValueError(f"member {i}: training and validation sets must both be non-empty")
            if resume is not None:
                trainer.load_training_state(*resume)
            trainer.stop_training = False
            members.append(_Member(trainer, _as_tensor(Xt, trainer.device), _as_tensor(yt, trainer.device),
                                   _as_tensor(Xv, trainer.device), _as_tensor(yv, trainer.device)))
        for m in members:
            for cb in m.trainer.callbacks:
                cb.on_train_begin(m.trainer)
        fresh = [m for m in members if m.epoch == 0]
        if fresh:   # the untrained models' validation, as Trainer.fit reports it before a fresh run
            baseline = _Stack(fresh)
            validation = baseline.evaluate()
            baseline.release()
            for m, (val_loss, val_mae, val_crps) in zip(fresh, validation, strict=True):
                for cb in m.trainer.callbacks:
                    cb.on_baseline(m.trainer, {"val_loss": val_loss, "val_mae": val_mae, "val_crps": val_crps})
        active = [m for m in members if m.epoch < m.trainer.config.epochs]
        for m in members:
            if m not in active:
                self._finish(m)
        stack: _Stack | None = None
        try:
            while active:
                # One stack while the members stay the same (its CUDA graphs are captured once); a new one when a
                # member leaves (stopped early, finished or diverged).
                if stack is not None and stack.members == active:
                    stack.sync_learning_rates()
                else:
                    if stack is not None:
                        stack.release()
                    stack = _Stack(active)
                active = self._epoch(stack, members)
        finally:
            if stack is not None:
                stack.release()
        return [m.history for m in members]

    def _epoch(self, stack: _Stack, members: list[_Member]) -> list[_Member]:
        """Train and validate the stack's members for one epoch, run their callbacks; the members still active."""
        active = stack.members
        t0 = time.perf_counter()
        stack.run_epoch()
        validation = stack.evaluate()
        stack.write_back()
        elapsed = time.perf_counter() - t0
        still = []
        for m, (val_loss, val_mae, val_crps) in zip(active, validation, strict=True):
            if m.error is None and not math.isfinite(val_loss):
                m.error = NonFiniteLossError(
                    f"validation loss is {val_loss} at epoch {m.epoch}; try a lower --learning-rate and "
                    "check the data for extreme values")
            if m.error is not None:   # diverged: leaves the stack, its last good checkpoint stays
                self.errors[members.index(m)] = m.error
                continue
            self._end_epoch(m, elapsed / len(active), val_loss, val_mae, val_crps)
            if m.trainer.stop_training or m.epoch >= m.trainer.config.epochs:
                self._finish(m)
            else:
                still.append(m)
        return still

    # ---- per member ---------------------------------------------------------------------------
    @staticmethod
    def _end_epoch(m: _Member, epoch_time: float, val_loss: float, val_mae: float, val_crps: float) -> None:
        t = m.trainer
        logs = {"train_loss": m.sum_loss / len(m.Xt), "val_loss": val_loss, "train_mae": m.sum_ae / len(m.Xt),
                "val_mae": val_mae, "val_crps": val_crps, "lr": t.lr, "epoch_time": epoch_time}
        m.history.append({"epoch": m.epoch, **logs})
        for cb in t.callbacks:
            cb.on_epoch_end(t, m.epoch, logs)
        m.epoch += 1

    @staticmethod
    def _finish(m: _Member) -> None:
        for cb in m.trainer.callbacks:
            cb.on_train_end(m.trainer)


class _Member:
    """One symbol: its Trainer, its data, and its running epoch statistics."""

    def __init__(self, trainer: Trainer, Xt: Tensor, yt: Tensor, Xv: Tensor, yv: Tensor):
        self.trainer, self.Xt, self.yt, self.Xv, self.yv = trainer, Xt, yt, Xv, yv
        self.epoch = trainer.start_epoch
        self.history: list[dict[str, float]] = []
        self.error: NonFiniteLossError | None = None
        self.sum_loss = self.sum_ae = 0.0


class _Stack:
    """The active members' weights and Adam state stacked along dim 0, for as long as the members stay the same
    (`write_back` gives each member's Trainer its part after every epoch)."""

    def __init__(self, members: list[_Member]):
        self.members = members
        trainers = [m.trainer for m in members]
        first = trainers[0]
        self.model = first.model
        self.device = first.device
        self.autocast = first._autocast
        # On CUDA the batches that every member fills are replayed as a CUDA graph (train.graphs), captured once
        # for this stack: it reads this stack's tensors, updated in place (the learning rates too).
        self._graphed = GraphedSteps(self._full_step, self._zero_grad, self.device) if first._graphs else None
        self.params = stack_parameters([t.model for t in trainers])
        self.buffers = stack_buffers([t.model for t in trainers])
        self.loss = first.config.loss
        self.names = list(self.params)
        group = first.optimizer.param_groups[0]
        self.beta1, self.beta2 = group["betas"]
        self.eps, self.weight_decay = group["eps"], group["weight_decay"]
        self.clipnorm = first.config.clipnorm
        self.lr = torch.tensor([t.lr for t in trainers], dtype=torch.float64, device=self.device)
        # Adam moments and step counts as each member's Adam (train.adam on the CPU, torch.optim's on CUDA) holds
        # them (zeros if fresh).
        self.exp_avg, self.exp_avg_sq = {}, {}
        # (stacked on the device: a GPU-held step count read one by one would wait for the GPU once per member)
        steps = []
        for t in trainers:
            st = t.optimizer.state
            p0 = next(t.model.parameters())
            step = st[p0]["step"] if p0 in st else 0.0
            steps.append(torch.as_tensor(step, dtype=torch.float64).to(self.device))
        self.step = torch.stack(steps)
        for name in self.names:
            moments = []
            for t in trainers:
                p = t.model.get_parameter(name)
                s = t.optimizer.state.get(p)
                moments.append((s["exp_avg"], s["exp_avg_sq"]) if s else (torch.zeros_like(p), torch.zeros_like(p)))
            self.exp_avg[name] = torch.stack([a for a, _ in moments])
            self.exp_avg_sq[name] = torch.stack([b for _, b in moments])

    def run_epoch(self) -> None:
        members = self.members
        bs = members[0].trainer.config.batch_size
        orders = []
        for m in members:
            m.trainer.model.train()
            orders.append(torch.randperm(len(m.Xt), generator=m.trainer.generator).to(self.device))
            m.sum_loss = m.sum_ae = 0.0
        n_batches = [math.ceil(len(m.Xt) / bs) for m in members]
        for b in range(max(n_batches)):
            rows = [k for k, nb in enumerate(n_batches) if b < nb and members[k].error is None]
            if rows:
                self._train_step(rows, [orders[k][b * bs:(b + 1) * bs] for k in rows], b, n_batches)

    def _train_step(self, rows: list[int], idx: list[Tensor], b: int, n_batches: list[int]) -> None:
        members = [self.members[k] for k in rows]
        sizes = [len(i) for i in idx]
        width = max(sizes)
        everyone = len(rows) == len(self.members)
        # One (M, width, seq_len, n_features) batch; a short last batch is padded and its padding
        # rows left out of the loss (models see each row independently, so padding changes nothing).
        xb = torch.stack([_pad(m.Xt[i], width) for m, i in zip(members, idx, strict=True)])
        yb = torch.stack([_pad(m.yt[i], width) for m, i in zip(members, idx, strict=True)])
        if self._graphed is not None and everyone and all(s == width for s in sizes):
            losses, maes, finite = self._graphed(xb, yb)
        else:
            losses, maes, finite = self._eager_step(rows, sizes, xb, yb, everyone)
        # one transfer for all models' figures: a sync per model and figure costs more than the step on a GPU
        loss_list, mae_list, finite_list = torch.stack([losses, maes, finite.to(losses.dtype)]).tolist()
        for k, (m, s) in enumerate(zip(members, sizes, strict=True)):
            if not finite_list[k]:
                m.error = NonFiniteLossError.at(loss_list[k], m.epoch, b)
            m.sum_loss += loss_list[k] * s
            m.sum_ae += mae_list[k] * s
            for cb in m.trainer.callbacks:
                cb.on_batch_end(m.trainer, b, n_batches[rows[k]], loss_list[k])

    def _eager_step(self, rows: list[int], sizes: list[int], xb: Tensor, yb: Tensor, everyone: bool
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Forward, backward and Adam of the selected models on one (padded) batch -> per-model losses, mean
        absolute errors and finiteness, (len(rows),) each."""
        sel = None if everyone else torch.tensor(rows, device=self.device)
        params = self.params if everyone else {n: p.index_select(0, sel) for n, p in self.params.items()}
        buffers = self.buffers if everyone else {n: b.index_select(0, sel) for n, b in self.buffers.items()}
        with self.autocast():
            pred, scale, df = (t.float() for t in stacked_forward_distribution(params, self.model, xb, buffers))
        width = xb.shape[1]
        # Trainer's objective per model; their sum gives every model its own gradient.
        if all(s == width for s in sizes):
            losses, _ = objective(self.loss, yb, pred, scale, df, dim=(1, 2))          # (M,)
        else:
            losses = torch.stack([objective(self.loss, yb[k, :s], pred[k, :s], scale[k, :s], df[k])[0]
                                  for k, s in enumerate(sizes)])
        finite = torch.isfinite(losses.detach())
        self._zero_grad()
        # A diverged model's loss is left out: it leaves the stack after this epoch.
        losses[finite].sum().backward()
        self._adam(sel)
        abs_err = (pred - yb).detach().abs()
        maes = torch.stack([abs_err[k, :s].mean() for k, s in enumerate(sizes)])
        return losses.detach(), maes, finite

    def _full_step(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`_eager_step` for a batch every member fills, in the ops a CUDA graph can capture: no boolean
        indexing (a diverged model's loss is masked by `where`), the step counts advanced in place."""
        with self.autocast(cache=False):
            pred, scale, df = (t.float() for t in stacked_forward_distribution(self.params, self.model, xb,
                                                                               self.buffers))
        losses, _ = objective(self.loss, yb, pred, scale, df, dim=(1, 2))
        finite = torch.isfinite(losses.detach())
        torch.where(finite, losses, torch.zeros_like(losses)).sum().backward()
        self._adam(None)
        return losses.detach(), (pred - yb).detach().abs().mean(dim=(1, 2)), finite

    def _zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def _adam(self, sel: Tensor | None) -> None:
        """Per-model global-norm clipping, then torch.optim.Adam's update, for the selected models."""
        def pick(t: Tensor) -> Tensor:
            return t if sel is None else t.index_select(0, sel)

        grads = {n: pick(p.grad) for n, p in self.params.items()}
        M = next(iter(grads.values())).shape[0]
        sq = torch.zeros(M, dtype=torch.float32, device=self.device)
        for g in grads.values():
            sq += g.reshape(M, -1).pow(2).sum(1)
        coef = (self.clipnorm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        if sel is None:
            step = self.step.add_(1)     # in place: a captured graph reads and advances the same tensor
        else:
            step = pick(self.step) + 1
            self.step.index_copy_(0, sel, step)
        bc1 = 1 - self.beta1 ** step
        bc2_sqrt = (1 - self.beta2 ** step).sqrt()
        step_size = (pick(self.lr) / bc1).float()
        for n, p in self.params.items():
            shape = (M,) + (1,) * (p.dim() - 1)
            g = grads[n] * coef.view(shape)
            w = pick(p.data)
            if self.weight_decay:
                g = g.add(w, alpha=self.weight_decay)
            m1, m2 = pick(self.exp_avg[n]), pick(self.exp_avg_sq[n])
            m1.lerp_(g, 1 - self.beta1)
            m2.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (m2.sqrt() / bc2_sqrt.float().view(shape)).add_(self.eps)
            w.sub_(m1 / denom * step_size.view(shape))
            if sel is not None:
                p.data.index_copy_(0, sel, w)
                self.exp_avg[n].index_copy_(0, sel, m1)
                self.exp_avg_sq[n].index_copy_(0, sel, m2)

    @torch.no_grad()
    def evaluate(self) -> list[tuple[float, float, float]]:
        """(val_loss, val_mae, val_crps) per member, as `Trainer.evaluate`, with the stacked models
        (validation sets padded to one length)."""
        members = self.members
        longest = max(len(m.Xv) for m in members)
        outs: list[list[tuple[Tensor, Tensor]]] = [[] for _ in members]
        df = None
        for m in members:
            m.trainer.model.eval()
        # Rows per model per chunk: about _EVAL_BATCH * 4 windows in all, so memory does not grow with M.
        rows = max(32, 4 * _EVAL_BATCH // len(members))
        for i in range(0, longest, rows):
            width = min(rows, longest - i)
            xb = torch.stack([_pad(m.Xv[i:i + rows], width) for m in members])
            with self.autocast():
                loc, scale, df = (t.float() for t in stacked_forward_distribution(self.params, self.model, xb,
                                                                                   self.buffers))
            for k, m in enumerate(members):
                real = max(0, min(len(m.Xv) - i, loc.shape[1]))   # rows of member k in this chunk
                outs[k].append((loc[k, :real], scale[k, :real]))
        tensors: dict[str, Tensor] = {}
        for k, m in enumerate(members):
            loc, scale = (torch.cat([o[c] for o in outs[k]]) for c in (0, 1))
            loss, _ = objective(self.loss, m.yv, loc, scale, df[k])
            tensors.update({f"{k}.loss": loss.float(), f"{k}.mae": (loc - m.yv).abs().mean().float(),
                            f"{k}.y": m.yv.float(), f"{k}.loc": loc, f"{k}.scale": scale, f"{k}.df": df[k]})
        host = host_copies(tensors)   # one transfer for every member, not six per member
        result = []
        for k in range(len(members)):
            crps = crps_student_t_np(*(host[f"{k}.{c}"].numpy() for c in ("y", "loc", "scale", "df")))
            result.append((host[f"{k}.loss"].item(), host[f"{k}.mae"].item(), float(crps.mean())))
        return result

    def sync_learning_rates(self) -> None:
        """Read each member's learning rate again (a callback may have lowered it), in place: a captured graph
        reads this tensor."""
        lrs = torch.tensor([m.trainer.lr for m in self.members], dtype=torch.float64)
        self.lr.copy_(lrs)

    def release(self) -> None:
        """Free this stack's CUDA graphs (their memory pools) now, and break the reference cycle through the
        graphed step (bound to this stack) that kept the stack, its graphs, stacked weights and Adam moments
        alive until the garbage collector ran (once per epoch before stacks lasted for more than one)."""
        if isinstance(self._graphed, GraphedSteps):
            self._graphed.release()
        self._graphed = None

    def write_back(self) -> None:
        """Copy each member's weights and Adam state into its own Trainer (for validation, callbacks,
        checkpoints, and a later stack of fewer members)."""
        steps = self.step.tolist()   # one transfer, not one per model and parameter
        with torch.no_grad():
            for k, m in enumerate(self.members):
                t = m.trainer
                # a capturable Adam (CUDA graphs, train.graphs) keeps its step count on the GPU
                step_device = self.device if t.optimizer.defaults.get("capturable") else None
                for n in self.names:
                    p = t.model.get_parameter(n)
                    p.copy_(self.params[n][k])
                    # filled on the device (torch.full), not copied from the host: no wait per member and parameter
                    t.optimizer.state[p] = {"step": torch.full((), steps[k], dtype=torch.float32, device=step_device),
                                            "exp_avg": self.exp_avg[n][k].clone(),
                                            "exp_avg_sq": self.exp_avg_sq[n][k].clone()}


def _pad(t: Tensor, rows: int) -> Tensor:
    if len(t) == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - len(t), *t.shape[1:])])
