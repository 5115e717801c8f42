"""The fit loop the guide describes, in PyTorch.

Adam (lr 1e-3), gradient clipping by global norm (clipnorm 1.0), training windows shuffled within
the training split every epoch by a seeded generator, validation after every epoch, Keras-style
callbacks. Targets are expected already standardised per horizon (see `TargetScaler`), so the loss
is comparable across horizons. The objective is `TrainConfig.loss` (`train.objective`): the
Student-t negative log-likelihood of the model's `forward_distribution` by default, or the guide's
MSE; validation reports the objective, the MAE of the location and the Student-t CRPS. A model
without `forward_distribution` is trained on the MSE.

Everything the loop needs to continue after a crash — weights, Adam moments, learning rate,
shuffle-generator state, callback counters — is exposed by `training_state()` and restored by
`fit(resume_from=...)`. A resumed run on CPU reproduces the uninterrupted one bit for bit in float32 (tested); under
bf16 autocast a resume in a fresh process was seen to differ in the last bits, which training then grows.

On CUDA GPUs and CPUs with bfloat16 in hardware the step runs under bf16 autocast (float32 elsewhere;
MAMBACAST_CPU_BF16=0|1 decides on the CPU); on CUDA it is replayed as a CUDA graph (`train.graphs`: the
guide-sized step is launch-bound there); MAMBACAST_CUDA_GRAPHS=0 runs it kernel by kernel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..ops.amp import cpu_bf16_autocast, cuda_bf16_autocast
from ..ops.heap import kept_heap
from .adam import Adam
from .callbacks import Callback
from .flat import FlatAdam
from .graphs import GraphedSteps, graphs_enabled
from .objective import crps_student_t_np, objective

__all__ = ["Trainer", "NonFiniteLossError", "resolve_device"]

log = logging.getLogger(__name__)

_EVAL_BATCH = 512


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


    @classmethod
    def at(cls, loss: float, epoch: int, batch: int) -> NonFiniteLossError:
        """The error for a non-finite training `loss` at `epoch`, `batch`, with what to try."""
        return cls(f"training loss became {loss} at epoch {epoch}, batch {batch}; the best checkpoint so far is "
                   "kept. Try a lower --learning-rate and check the data for extreme values")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/"auto" picks CUDA when available, else CPU; anything else is validated."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    return dev


def _as_tensor(a: np.ndarray | Tensor, device: torch.device) -> Tensor:
    if isinstance(a, Tensor):
        return a.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)


class Trainer:
    """Fits a model that maps `(batch, seq_len, n_features)` windows to `(batch, n_horizons)` targets."""

    def __init__(self, model: nn.Module, config: TrainConfig, callbacks: Sequence[Callback] = (),
                 device: str | torch.device | None = None):
        self.config = config
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.callbacks = list(callbacks)
        # On CUDA the step is replayed as a CUDA graph (train.graphs), so Adam keeps its step count there. On the
        # CPU Adam is one fused kernel over all parameters (torch.optim's default loops over them in Python), called
        # without torch.optim, which would import torch._dynamo (train.adam).
        self._graphs = graphs_enabled(self.device)
        self._cuda_bf16 = self.device.type == "cuda" and cuda_bf16_autocast(self.device)
        self.optimizer: Adam | torch.optim.Adam
        if self.device.type == "cpu":
            self.optimizer = Adam(self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate,
                                              weight_decay=config.weight_decay, capturable=self._graphs)
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._flat: FlatAdam | None = None   # during a CPU fit, from its first backward (`_flat_update`)
        self._flat_pending = False
        self._graphed: GraphedSteps | None = None
        self.generator = torch.Generator().manual_seed(config.seed)
        self._has_distribution = hasattr(model, "forward_distribution")
        self._head_loss = hasattr(model, "head_loss")
        self.stop_training = False
        self.start_epoch = 0
        self.baseline_logs: dict[str, float] = {}   # the untrained model's validation (set by a fresh fit)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = float(value)

    def _autocast(self, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA GPUs and CPUs with bfloat16 in hardware (`ops.amp.cuda_bf16_autocast`,
        `ops.amp.cpu_bf16_autocast`: MAMBACAST_CPU_BF16 overrides it on the CPU); `cache=False` inside a CUDA graph
        capture, where autocast's cache of cast weights would go stale."""
        if self._cuda_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
        if self.device.type == "cpu" and cpu_bf16_autocast():   # bf16 in hardware, or MAMBACAST_CPU_BF16 (ops.amp)
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def precision(self) -> str:
        """What the training step computes in, as the stored metadata records it: "bfloat16 autocast" (the Linear
        layers in bf16, float32 master weights) or "float32"."""
        on = self._cuda_bf16 or (self.device.type == "cpu" and cpu_bf16_autocast())
        return "bfloat16 autocast" if on else "float32"

    # ---- loop --------------------------------------------------------------------------------
    @kept_heap()   # every step reuses the last step's freed activations (ops.heap: page faults)
    def fit(self, X_train: np.ndarray | Tensor, y_train: np.ndarray | Tensor,
            X_val: np.ndarray | Tensor, y_val: np.ndarray | Tensor,
            resume_from: tuple[dict[str, Tensor], dict[str, Any]] | None = None) -> list[dict[str, float]]:
        """Train for `config.epochs` (or until a callback stops it); returns the per-epoch logs.

        X_*: (n_samples, seq_len, n_features); y_*: (n_samples, n_horizons), standardised.
        """
        if len(X_train) != len(y_train) or len(X_val) != len(y_val):
            raise ValueError(f"X and y lengths differ: train {len(X_train)} vs {len(y_train)}, "
                             f"val {len(X_val)} vs {len(y_val)}")
        if len(X_train) == 0 or len(X_val) == 0:
            raise ValueError("training and validation sets must both be non-empty")
        Xt, yt = _as_tensor(X_train, self.device), _as_tensor(y_train, self.device)
        Xv, yv = _as_tensor(X_val, self.device), _as_tensor(y_val, self.device)
        if resume_from is not None:
            self.load_training_state(*resume_from)
        with self._flat_update():
            return self._fit_epochs(Xt, yt, Xv, yv)

    @contextlib.contextmanager
    def _flat_update(self) -> Iterator[None]:
        """On the CPU, the parameters that receive gradients, their gradients and Adam's moments in flat buffers
        while the fit runs (`train.flat`: the clipping and the update as a few whole-buffer ops instead of
        per-parameter Python loops; the first backward finds which parameters take part)."""
        self._flat_pending = self.device.type == "cpu" and not self._graphs
        try:
            yield
        finally:
            self._flat_pending = False
            self._end_flat()

    def _start_flat(self) -> None:
        self._flat_pending = False
        try:
            self._flat = FlatAdam(self.optimizer, [p for p in self._params if p.grad is not None])
        except ValueError as e:   # e.g. parameters of two dtypes: the per-parameter update
            log.debug("per-parameter Adam: %s", e)

    def _end_flat(self) -> None:
        if self._flat is not None:
            self._flat.release()
            self._flat = None

    def _fit_epochs(self, Xt: Tensor, yt: Tensor, Xv: Tensor, yv: Tensor) -> list[dict[str, float]]:
        history: list[dict[str, float]] = []
        self.stop_training = False
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if self.start_epoch == 0 and self._has_distribution:
            self._report_baseline(Xv, yv)
        for epoch in range(self.start_epoch, self.config.epochs):
            t0 = time.perf_counter()
            train_loss, train_mae = self._train_epoch(Xt, yt, epoch)
            val_loss, val_mae, val_crps = self.evaluate(Xv, yv)
            if not math.isfinite(val_loss):
                raise NonFiniteLossError(f"validation loss is {val_loss} at epoch {epoch}; "
                                         "try a lower --learning-rate and check the data for extreme values")
            logs = {"train_loss": train_loss, "val_loss": val_loss, "train_mae": train_mae, "val_mae": val_mae,
                    "val_crps": val_crps, "lr": self.lr, "epoch_time": time.perf_counter() - t0}
            history.append({"epoch": epoch, **logs})
            log.debug("epoch %d: %s", epoch, logs)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, logs)
            if self.stop_training:
                break
        for cb in self.callbacks:
            cb.on_train_end(self)
        return history

    def _report_baseline(self, Xv: Tensor, yv: Tensor) -> None:
        val_loss, val_mae, val_crps = self.evaluate(Xv, yv)
        logs = {"val_loss": val_loss, "val_mae": val_mae, "val_crps": val_crps}
        self.baseline_logs = logs
        log.debug("untrained model (the baseline): %s", logs)
        for cb in self.callbacks:
            cb.on_baseline(self, logs)

    def _train_epoch(self, X: Tensor, y: Tensor, epoch: int) -> tuple[float, float]:
        self.model.train()
        n = len(X)
        order = torch.randperm(n, generator=self.generator).to(self.device)
        bs = self.config.batch_size
        n_batches = math.ceil(n / bs)
        sum_loss = sum_ae = 0.0
        if self._graphs and self._graphed is None:
            self._graphed = GraphedSteps(self._graph_step, lambda: self.optimizer.zero_grad(set_to_none=True),
                                        self.device, key=lambda: self.lr)
        for b in range(n_batches):
            idx = order[b * bs:(b + 1) * bs]
            xb, yb = X[idx], y[idx]
            if self._graphed is not None:
                # One sync per batch for the progress callbacks; the graph's outputs are reused by the next replay.
                loss, ae = torch.stack(self._graphed(xb, yb)).tolist()
                if not math.isfinite(loss):
                    raise NonFiniteLossError.at(loss, epoch, b)
            else:
                loss_t, ae_t = self._forward_loss(xb, yb)
                if not torch.isfinite(loss_t):   # checked before the step, so the weights stay finite
                    raise NonFiniteLossError.at(loss_t.item(), epoch, b)
                self._zero_grad()
                self._update(loss_t)
                loss, ae = loss_t.item(), ae_t.item()
            sum_loss += loss * len(idx)
            sum_ae += ae * len(idx)
            for cb in self.callbacks:
                cb.on_batch_end(self, b, n_batches, loss)
        return sum_loss / n, sum_ae / n

    def _forward_loss(self, xb: Tensor, yb: Tensor, cache: bool = True) -> tuple[Tensor, Tensor]:
        """The objective and the location's mean absolute error on one batch (two 0-d tensors)."""
        if self._head_loss:   # the heads and the objective as one autograd node (`MambaModel.head_loss`)
            with self._autocast(cache):
                loss, pred = self.model.head_loss(xb, yb, mse=self.config.loss == "mse")
            return loss.float(), (pred.float() - yb).abs().mean()
        with self._autocast(cache):
            if self._has_distribution:
                pred, scale, df = (t.float() for t in self.model.forward_distribution(xb))
            else:
                pred = self.model(xb).float()
        if self._has_distribution:
            loss, _ = objective(self.config.loss, yb, pred, scale, df)
        else:
            loss = (pred - yb).pow(2).mean()
        return loss, (pred.detach() - yb).abs().mean()

    def _zero_grad(self) -> None:
        if self._flat is not None:
            self._flat.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def _update(self, loss: Tensor) -> None:
        """Backward, clipping by global norm, Adam; the gradients must be None or zero beforehand."""
        loss.backward()
        if self._flat_pending:
            # A CPU fit's first step: the flat buffers take the parameters that have a gradient now, with it, so every
            # step updates through them (a resumed fit, which starts here again, repeats the uninterrupted one bit for
            # bit; torch's fused Adam rounds some elements differently on a tensor of its own than inside a flat one).
            self._start_flat()
        if self._flat is not None:
            if self._flat.clip_and_step(self.config.clipnorm):
                return
            log.debug("a parameter outside the flat Adam buffers received a gradient: per-parameter Adam from now on")
            self._end_flat()
        # the optimizer's own list: walking model.parameters() (the module tree) costs more than the clipping
        nn.utils.clip_grad_norm_(self._params, self.config.clipnorm)
        self.optimizer.step()

    def _graph_step(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """The whole step as `GraphedSteps` captures it."""
        loss, ae = self._forward_loss(xb, yb, cache=False)
        self._update(loss)
        return loss.detach(), ae

    @torch.no_grad()
    def predict(self, X: np.ndarray | Tensor) -> Tensor:
        """(n, seq_len, n_features) -> (n, n_horizons) point forecasts on CPU, in eval mode, batched."""
        return self._batched(X, lambda xb: (self.model(xb),))[0]

    @torch.no_grad()
    def predict_distribution(self, X: np.ndarray | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(n, seq_len, n_features) -> loc, scale (n, n_horizons), df (n_horizons,) on CPU, float32."""
        loc, scale, df = self._batched(X, self.model.forward_distribution)
        return loc, scale, df

    def _batched(self, X: np.ndarray | Tensor, fn: Any) -> list[Tensor]:
        self.model.eval()
        X = _as_tensor(X, self.device)
        outs: list[tuple[Tensor, ...]] = []
        for i in range(0, len(X), _EVAL_BATCH):
            with self._autocast():
                outs.append(tuple(t.float().cpu() for t in fn(X[i:i + _EVAL_BATCH])))
        if not outs:
            return [torch.empty(0)]
        return [torch.cat([o[k] for o in outs]) if outs[0][k].dim() > 1 else outs[0][k] for k in range(len(outs[0]))]

    def evaluate(self, X: np.ndarray | Tensor, y: np.ndarray | Tensor) -> tuple[float, float, float]:
        """(val_loss, val_mae, val_crps) over all samples and horizons: the objective, the location's mean
        absolute error and the Student-t CRPS (NaN for a model without a distribution)."""
        yt = _as_tensor(y, torch.device("cpu"))
        if not self._has_distribution:
            err = self.predict(X) - yt
            return err.pow(2).mean().item(), err.abs().mean().item(), math.nan
        loc, scale, df = self.predict_distribution(X)
        loss, _ = objective(self.config.loss, yt, loc, scale, df)
        crps = crps_student_t_np(yt.numpy(), loc.numpy(), scale.numpy(), df.numpy())
        return loss.item(), (loc - yt).abs().mean().item(), float(crps.mean())

    # ---- resumable state ---------------------------------------------------------------------
    def training_state(self, epoch: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON-able scalars describing the state after `epoch` completed."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        for idx, pstate in opt["state"].items():
            for key, value in pstate.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        tensors["rng.shuffle"] = self.generator.get_state()
        for i, cb in enumerate(self.callbacks):
            tensors.update({f"cb{i}.{k}": v for k, v in cb.state_tensors().items()})
        info = {
            "epoch": epoch,
            "param_groups": json.loads(json.dumps(opt["param_groups"], default=float)),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }
        return tensors, info

    def load_training_state(self, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        # The saved run may have used the other device: Adam's implementation is this device's.
        fused = self.optimizer.defaults["fused"]
        groups = [dict(g, capturable=self._graphs, fused=fused) for g in info["param_groups"]]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self._graphed = None   # captured graphs point at the optimizer's old state tensors
        self.generator.set_state(tensors["rng.shuffle"])
        if len(info["callbacks"]) != len(self.callbacks):
            raise ValueError(f"the saved training state has {len(info['callbacks'])} callbacks, this run has "
                             f"{len(self.callbacks)}; it cannot be resumed with different callbacks")
        for i, (cb, cb_state) in enumerate(zip(self.callbacks, info["callbacks"], strict=True)):
            cb.load_state_dict(cb_state)
            prefix = f"cb{i}."
            cb.load_state_tensors({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.start_epoch = int(info["epoch"]) + 1
