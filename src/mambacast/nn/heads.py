"""Multi-horizon output heads reading the last hidden state.

`PointHead` is one linear head per horizon; the heads are stored as the rows of a single
`Linear(d_model, n_horizons)`, which is the same function and parameter count as separate
`Linear(d_model, 1)` layers but one matmul instead of several.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PointHead"]


class PointHead(nn.Module):
    """(batch, d_model) -> (batch, n_horizons): point forecast per horizon, in horizon order."""

    def __init__(self, d_model: int, horizons: list[int]):
        super().__init__()
        self.horizons = list(horizons)
        self.proj = nn.Linear(d_model, len(self.horizons))

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)
