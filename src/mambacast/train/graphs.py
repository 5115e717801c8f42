"""The training step as a CUDA graph: capture once per batch size, replay every batch.

At the guide's size a step (forward, loss, backward, clipping, Adam) is a few hundred small kernels.
Launched one at a time from Python they cost ~15 ms at batch 32 on an H100, while the GPU itself is
busy for under 2 ms (benchmarks/bench_gpu.py, "CUDA graph" rows): the step is launch-bound. A CUDA
graph records the kernels once and replays them with one launch.

How it stays the same training as the eager loop:
* the first batch of each size runs eagerly (the real step: it compiles the Triton kernels and creates
  Adam's state), then the step is captured; capturing runs nothing, so no batch is trained twice;
* batches are copied into the graph's fixed input buffers; gradients are produced by the captured
  backward (grads are None at capture, so every replay writes, never accumulates);
* the learning rate is a constant inside the graph: when a callback changes it, the step is captured
  again (cheap: nothing to warm up);
* Adam runs with ``capturable=True`` (its step count lives on the GPU).

One difference: the eager loop checks the loss before Adam's step, a replay cannot, so a non-finite loss
is seen after the step it poisoned. The error is the same and the best checkpoint on disk is untouched.

``MAMBACAST_CUDA_GRAPHS=0`` turns graphs off (the eager loop, e.g. to profile single kernels).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["GraphedSteps", "graphs_enabled"]

log = logging.getLogger(__name__)

# step(x, y) -> a tuple of tensors (the Trainer's: loss and mean absolute error, 0-d; the stack's: per-model
# losses, errors and finiteness); it runs forward, backward, clipping and the optimizer step.
StepFn = Callable[[Tensor, Tensor], tuple[Tensor, ...]]


def graphs_enabled(device: torch.device) -> bool:
    """True on CUDA unless MAMBACAST_CUDA_GRAPHS=0."""
    return device.type == "cuda" and os.environ.get("MAMBACAST_CUDA_GRAPHS", "1") != "0"


class _Captured:
    """One input shape's graph with its static input buffers and outputs."""

    def __init__(self, step: StepFn, x: Tensor, y: Tensor, key: object):
        self.x, self.y, self.key = x.clone(), y.clone(), key
        self.graph = torch.cuda.CUDAGraph()
        # Each graph keeps its own memory pool: two graphs sharing one would have to replay in capture order.
        with torch.cuda.graph(self.graph):
            self.outputs = step(self.x, self.y)

    def replay(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.outputs


class GraphedSteps:
    """Runs `step` through CUDA graphs, one per input shape, captured again when `key()` changes.

    `zero_grad` sets the gradients to None; it is called before each eager step and each capture, so the
    backward writes fresh gradients, never accumulates. `key` returns what the graph bakes in as a constant
    (the Trainer's learning rate). Outputs of a replay are overwritten by the next one.
    """

    def __init__(self, step: StepFn, zero_grad: Callable[[], None], device: torch.device,
                 key: Callable[[], object] = lambda: None):
        self.step, self.zero_grad, self.key = step, zero_grad, key
        self._graphs: dict[tuple[int, ...], _Captured] = {}
        self._seen: set[tuple[int, ...]] = set()
        self._eager_only = False
        self._side = torch.cuda.Stream(device)

    def release(self) -> None:
        """Drop the captured graphs, and with them their memory pools, now (not when the garbage collector
        gets to the owner: a step function bound to its owner makes a reference cycle)."""
        self._graphs.clear()

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """x, y: the batch's inputs and targets on the GPU -> `step`'s outputs."""
        with torch.cuda.device(x.device):   # streams and graphs belong to the current device
            return self._run(x, y)

    def _run(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        n = (*x.shape, *y.shape)   # one graph per batch size (the last batch of an epoch is smaller)
        captured = self._graphs.get(n)
        key = self.key()
        if captured is not None and captured.key == key:
            return captured.replay(x, y)
        if n not in self._seen or self._eager_only:
            # The real first step of this shape, on a side stream as capture asks: it compiles the kernels and
            # creates the optimizer's state, so the capture after it needs no throw-away warm-up steps.
            self._seen.add(n)
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                self.zero_grad()
                outputs = self.step(x, y)
            torch.cuda.current_stream().wait_stream(self._side)
            return outputs
        self._graphs.pop(n, None)
        self.zero_grad()
        try:
            captured = _Captured(self.step, x, y, key)
        except RuntimeError as exc:   # an op that cannot be captured: train on, one kernel at a time
            log.warning("the training step could not be captured as a CUDA graph (%s); training goes on "
                        "without graphs", str(exc).splitlines()[0])
            self._eager_only = True
            self._graphs.clear()
            return self._run(x, y)
        self._graphs[n] = captured
        log.debug("captured the training step for inputs %s (key %s)", tuple(x.shape), key)
        return captured.replay(x, y)
