"""Plots for people: forecast fan charts (and, with the backtest, its report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .predict import PredictionResult

__all__ = ["plot_fan_chart"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'mambacast[plots]'") from None
    return plt


def plot_fan_chart(results: list[PredictionResult], histories: dict[str, Any], path: str | Path,
                   history_days: int = 120) -> Path:
    """History and forecast quantile bands (5-95%, 10-90%, 25-75%) per symbol, x in trading days from now."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.4 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        closes = np.asarray(histories[r.symbol]["close"], dtype=float)[-history_days:]
        ax.plot(np.arange(-len(closes) + 1, 1), closes, color="black", lw=1.2, label="history")
        x = np.array([0, *r.horizons])
        for lo, hi, alpha in ((0.05, 0.95, 0.15), (0.1, 0.9, 0.25), (0.25, 0.75, 0.35)):
            if lo in r.quantiles[f"{r.horizons[0]}d"] and hi in r.quantiles[f"{r.horizons[0]}d"]:
                low = [r.current_price, *(r.quantiles[f"{h}d"][lo] for h in r.horizons)]
                high = [r.current_price, *(r.quantiles[f"{h}d"][hi] for h in r.horizons)]
                ax.fill_between(x, low, high, color="tab:blue", alpha=alpha, lw=0,
                                label=f"{int(lo * 100)}-{int(hi * 100)}%")
        ax.plot(x, [r.current_price, *(r.prices[f"{h}d"] for h in r.horizons)], color="tab:blue", marker="o",
                ms=3, label="median forecast")
        ax.set_title(f"{r.symbol} as of {r.as_of or 'last bar'} ({r.source})")
        ax.set_xlabel("trading days from the last close")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
