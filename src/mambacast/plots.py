"""Plots for people: the forecast fan chart (`mambacast predict --plot`) and the backtest's figures.

`plot_fan_chart` (median and quantile bands per symbol), and for a backtest `plot_backtest_forecasts`,
`plot_cumulative_loss`, `plot_calibration`, `plot_reliability`, `plot_pit_histograms` (PNG files, written by
`report.write_backtest_report`); `pit_of` gives the PIT values the calibration plots draw. matplotlib is imported
only when a plot is drawn (the `plots` extra).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:

    from .evaluate.results import BacktestResult
    from .predict import PredictionResult

__all__ = ["plot_fan_chart", "plot_backtest_forecasts", "plot_cumulative_loss", "plot_calibration", "pit_of",
           "plot_reliability", "plot_pit_histograms", "render_curves"]

log = logging.getLogger(__name__)


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


def plot_reliability(result: BacktestResult, symbol: str, path: str | Path) -> Path:
    """Reliability diagram of P(S_T > K) (pooled over the strikes), one panel per horizon, a line per forecaster:
    observed frequency vs mean predicted probability per bin (on the diagonal = calibrated)."""
    plt = _pyplot()
    t = result.tables["reliability"]
    t = t[(t["symbol"] == symbol) & (t["moneyness"] == "all") & (t["count"] > 0)]
    horizons = sorted(set(t["horizon"]))
    fig, axes = plt.subplots(1, len(horizons), figsize=(3.4 * len(horizons), 3.4), squeeze=False)
    refs = set(result.config.reference_names)
    for ax, h in zip(axes[0], horizons, strict=True):
        _diagonal_panel(ax, f"{h}d: observed vs predicted P(S_T>K)")
        for name, g in t[t["horizon"] == h].groupby("forecaster", sort=False):
            ax.plot(g["mean_predicted"], g["observed_frequency"], marker="o", ms=3,
                    lw=1.6 if name in refs else 0.9, label=name)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{symbol}: reliability of the strike probabilities (K = S0 x 0.90 .. 1.10)", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_pit_histograms(result: BacktestResult, symbol: str, path: str | Path) -> Path:
    """PIT histograms (10 bins, density) of every forecaster (rows) at every horizon (columns)."""
    plt = _pyplot()
    t = result.tables["pit"]
    t = t[t["symbol"] == symbol]
    names, horizons = list(dict.fromkeys(t["forecaster"])), sorted(set(t["horizon"]))
    fig, axes = plt.subplots(len(names), len(horizons), figsize=(2.6 * len(horizons), 1.6 * len(names)),
                             squeeze=False, sharex=True)
    for i, name in enumerate(names):
        for k, h in enumerate(horizons):
            g = t[(t["forecaster"] == name) & (t["horizon"] == h)]
            ax = axes[i, k]
            ax.bar(g["bin_lo"], g["density"], width=0.1, align="edge", color="tab:blue", alpha=0.7)
            ax.axhline(1.0, color="black", lw=0.7)
            ax.set_title(f"{name} {h}d", fontsize=8)
            ax.tick_params(labelsize=6)
    fig.suptitle(f"{symbol}: PIT histograms (flat at 1 = calibrated)", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def _subset_rows(result: BacktestResult, symbol: str, name: str, j: int, last_n: int | None = None):
    r = result.symbols[symbol]
    mask = r.valid(j)
    idx = np.flatnonzero(mask)
    if last_n is not None:
        idx = idx[-last_n:]
    return r, r.forecasts[name], idx


def plot_backtest_forecasts(result: BacktestResult, symbol: str, path: str | Path, forecaster: str | None = None,
                            last_n: int = 500) -> Path:
    """Realised price vs the forecaster's median price with its 50/80/90% intervals, one panel per horizon.

    Each point is plotted at its target date t+h; the last `last_n` origins whose outcome is known.
    """
    plt = _pyplot()
    name = forecaster or result.config.reference
    r0 = result.symbols[symbol]
    if name not in r0.forecasts:
        name = next(iter(r0.forecasts))
    H = len(r0.horizons)
    fig, axes = plt.subplots(H, 1, figsize=(10, 2.6 * H), squeeze=False)
    for j, (ax, h) in enumerate(zip(axes[:, 0], r0.horizons, strict=True)):
        r, fc, idx = _subset_rows(result, symbol, name, j, last_n)
        o = r.origins[idx]
        x = r.dates[o + h]
        p0 = r.closes[o]
        if fc.quantiles:
            for lo, hi, alpha in ((0.05, 0.95, 0.15), (0.1, 0.9, 0.22), (0.25, 0.75, 0.32)):
                if lo in fc.quantiles and hi in fc.quantiles:
                    ax.fill_between(x, p0 * np.exp(fc.quantiles[lo][idx, j]), p0 * np.exp(fc.quantiles[hi][idx, j]),
                                    color="tab:blue", alpha=alpha, lw=0, label=f"{int(lo * 100)}-{int(hi * 100)}%")
        ax.plot(x, p0 * np.exp(fc.mean[idx, j]), color="tab:blue", lw=0.9, label=f"{name} median")
        ax.plot(x, r.closes[o + h], color="black", lw=0.9, label="realised")
        ax.set_title(f"{symbol}: {h}-day-ahead forecasts of {name} (plotted at the target date)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=5)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_cumulative_loss(result: BacktestResult, symbol: str, path: str | Path, benchmark: str = "random_walk") -> Path:
    """Cumulative (loss - benchmark's loss) over origin dates, squared error and CRPS, one column per horizon.

    Below zero = the forecaster has accumulated less loss than the random walk so far; a line that drifts down
    steadily is consistent skill, a few jumps are a few days.
    """
    plt = _pyplot()
    r = result.symbols[symbol]
    H = len(r.horizons)
    fig, axes = plt.subplots(2, H, figsize=(3.4 * H, 6), squeeze=False)
    from .evaluate.scoring import crps_scores

    for j, h in enumerate(r.horizons):
        mask = r.valid(j)
        y = r.realised[mask, j]
        x = r.origin_dates()[mask]
        base = r.forecasts.get(benchmark)
        if base is None:
            continue
        b_se = (y - base.mean[mask, j]) ** 2
        b_crps = crps_scores(y, base, j, mask)
        for name, fc in r.forecasts.items():
            if name == benchmark:
                continue
            lw = 1.6 if name == result.config.reference else 0.9
            axes[0, j].plot(x, np.cumsum((y - fc.mean[mask, j]) ** 2 - b_se), lw=lw, label=name)
            c = crps_scores(y, fc, j, mask)
            if c is not None and b_crps is not None:
                axes[1, j].plot(x, np.cumsum(c - b_crps), lw=lw, label=name)
        for i, what in enumerate(("squared error", "CRPS")):
            axes[i, j].axhline(0, color="black", lw=0.7)
            axes[i, j].set_title(f"{h}d: cum. {what} - {benchmark}", fontsize=9)
            axes[i, j].grid(alpha=0.3)
            axes[i, j].tick_params(axis="x", labelrotation=30, labelsize=7)
            axes[i, j].tick_params(axis="y", labelsize=7)
    if axes[0, 0].get_legend_handles_labels()[0]:  # no lines when the benchmark is not in the backtest
        axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{symbol}: cumulative loss difference vs {benchmark} (below 0 = better)", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def pit_of(result: BacktestResult, symbol: str, name: str, j: int) -> np.ndarray:
    """PIT values F(y) of a forecaster's horizon-j forecasts at the realised log-returns (symbol "ALL": pooled)."""
    from scipy import stats

    from .evaluate.baselines import Forecast
    from .evaluate.metrics import pit_values

    syms = list(result.symbols) if symbol == "ALL" else [symbol]
    out = []
    for s in syms:
        r = result.symbols[s]
        fc, mask = r.forecasts[name], r.valid(j)
        y = r.realised[mask, j]
        if fc.scale is not None:
            df = fc.df[mask, j] if fc.df is not None else np.inf
            u = stats.t.cdf((y - fc.mean[mask, j]) / fc.scale[mask, j], df)
        else:
            sub = Forecast(fc.horizons, fc.mean[mask], {q: v[mask] for q, v in (fc.quantiles or {}).items()})
            u = np.asarray(sub.cdf(y, j))
        out.append(pit_values(y, lambda _v, u=u: u))
    return np.concatenate(out)


def plot_calibration(result: BacktestResult, symbol: str, path: str | Path, forecaster: str | None = None) -> Path:
    """Top: PIT histograms of the forecaster per horizon (flat = calibrated; U = too narrow; hump = too wide).
    Bottom: calibration curves, observed frequency of y <= q_tau vs tau, for every forecaster."""
    plt = _pyplot()
    name = forecaster or result.config.reference
    m = result.metrics
    horizons = sorted(set(m.loc[m["symbol"] == symbol, "horizon"]))
    names = list(dict.fromkeys(m.loc[m["symbol"] == symbol, "forecaster"]))
    if name not in names:
        name = names[0]
    H = len(horizons)
    fig, axes = plt.subplots(2, H, figsize=(3.4 * H, 6), squeeze=False)
    for j, h in enumerate(horizons):
        u = pit_of(result, symbol, name, j)
        ax = axes[0, j]
        ax.hist(u, bins=20, range=(0, 1), density=True, color="tab:blue", alpha=0.7)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(f"{h}d: PIT of {name} (n={u.size})", fontsize=9)
        ax.set_xlim(0, 1)
        ax = axes[1, j]
        _diagonal_panel(ax, f"{h}d: observed P(y <= q_tau) vs tau")
        for n in names:
            row = m[(m["symbol"] == symbol) & (m["forecaster"] == n) & (m["horizon"] == h)]
            keys = sorted((float(c[len("calibration_q"):]), c) for c in row.columns
                          if c.startswith("calibration_q") and np.isfinite(row[c].iloc[0]))
            if keys:
                ax.plot([k for k, _ in keys], [row[c].iloc[0] for _, c in keys], marker="o", ms=3,
                        lw=1.6 if n == result.config.reference else 0.9, label=n)
    axes[1, 0].legend(fontsize=7)
    fig.suptitle(f"{symbol}: calibration", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def _diagonal_panel(ax: Any, title: str) -> None:
    """A unit-square panel with the diagonal (where a calibrated forecaster lies) and a grid."""
    ax.plot([0, 1], [0, 1], color="black", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def render_curves(history: list[dict[str, float]], symbol: str) -> bytes | None:
    """PNG of a training run's loss, MAE and learning-rate curves (None without matplotlib); stored with the model."""
    try:
        plt = _pyplot()
    except ValueError:
        log.info("matplotlib is not installed (pip install 'mambacast[plots]'); no training plot for %s", symbol)
        return None
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    # "loss" is the training objective: the Student-t NLL by default, the MSE with --loss mse.
    for ax, (key, title) in zip(axes, [("loss", "loss (standardised)"), ("mae", "MAE (standardised)"),
                                       ("lr", "learning rate")], strict=True):
        if key == "lr":
            ax.plot(epochs, [h["lr"] for h in history], color="tab:green")
            ax.set_yscale("log")
        else:
            ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label="validation")
            ax.legend()
        ax.set_title(f"{symbol}: {title}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    # Fixed margins: tight_layout measured every text box and took longer than drawing the figure.
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.22)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
