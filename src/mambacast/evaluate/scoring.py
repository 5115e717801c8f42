"""Scoring of a walk-forward backtest (`evaluate.backtest`): per symbol, forecaster and horizon, pooled over the
symbols, and the Diebold-Mariano tests of the reference forecaster against every other.

Point and interval metrics come from `evaluate.metrics.evaluate_forecasts`; CRPS is closed-form for a
location-scale law and from the quantiles otherwise. The pooled DM test averages the loss differential across
the symbols present on each origin date. Formulas and caveats: docs/evaluation.md ("Backtest").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .baselines import Forecast
from .desk import desk_tables, seed_spread
from .dm import dm_row
from .metrics import (
    INTERVALS,
    crps_from_quantiles,
    crps_student_t,
    direction_accuracy,
    evaluate_forecasts,
    interval_coverage,
    pinball_loss,
)

if TYPE_CHECKING:
    from .backtest import BacktestConfig, SymbolBacktest

__all__ = ["score_symbols", "desk_score", "leakage_warnings", "crps_scores"]

logger = logging.getLogger(__name__)


class _NoDirectionCallFilter(logging.Filter):
    """Drop metrics' 'no pair with a non-zero prediction' warning: a zero-mean forecaster (random walk) makes no
    directional call by design, and the tables show its direction accuracy as '-'."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "no pair with a non-zero prediction" not in record.getMessage()


_METRICS_LOG = logging.getLogger("mambacast.evaluate.metrics")


def crps_scores(y: np.ndarray, fc: Forecast, j: int, mask: np.ndarray) -> np.ndarray | None:
    """CRPS per forecast: closed form for a location-scale law, else from the quantiles."""
    if fc.scale is not None:
        df = fc.df[mask, j] if fc.df is not None else np.inf
        return crps_student_t(y, df, fc.mean[mask, j], fc.scale[mask, j])
    if fc.quantiles:
        levels = list(fc.quantiles)
        return crps_from_quantiles(y, np.column_stack([fc.quantiles[q][mask, j] for q in levels]), levels)
    return None


def _symbol_metrics(r: SymbolBacktest, name: str, j: int) -> tuple[dict[str, float], np.ndarray, np.ndarray | None]:
    fc, h, mask = r.forecasts[name], r.horizons[j], r.valid(j)
    y, mean = r.realised[mask, j], fc.mean[mask, j]
    a, c = r.insample
    quantiles = {q: v[mask, j] for q, v in fc.quantiles.items()} if fc.quantiles else None
    row = evaluate_forecasts(y, mean, r.closes[r.origins[mask]], r.closes[a: c + 1], h, quantiles=quantiles,
                             scale=None if fc.scale is None else fc.scale[mask, j],
                             df=None if fc.df is None else fc.df[mask, j])
    se = (y - mean) ** 2
    crps = crps_scores(y, fc, j, mask)
    row["ret_mse"] = float(se.mean())
    row["oos_r2"] = float(1 - se.mean() / np.mean(y**2)) if np.any(y != 0) else float("nan")
    if crps is not None:
        row["ret_crps"] = float(crps.mean())
    return row, se, crps


def _pooled_metrics(ys: list[np.ndarray], fcs: list[Forecast], masks: list[np.ndarray], j: int,
                    per_symbol: list[dict[str, float]]) -> dict[str, float]:
    """Scale-free metrics on the concatenated symbols; MASE is the mean of the per-symbol MASE."""
    y = np.concatenate(ys)
    mean = np.concatenate([f.mean[m, j] for f, m in zip(fcs, masks, strict=True)])
    row: dict[str, float] = {"n": float(y.size), "ret_mae": float(np.mean(np.abs(y - mean))),
                             "ret_mse": float(np.mean((y - mean) ** 2))}
    row["ret_rmse"] = math.sqrt(row["ret_mse"])
    row["oos_r2"] = float(1 - row["ret_mse"] / np.mean(y**2))
    for key in ("ret_mase", "price_mase"):
        row[key] = float(np.mean([m[key] for m in per_symbol]))
    acc, p = direction_accuracy(y, mean) if np.any(mean != 0) else (float("nan"), float("nan"))
    row["direction_accuracy"], row["direction_p_value"] = acc, p
    crps = [crps_scores(yy, f, j, m) for yy, f, m in zip(ys, fcs, masks, strict=True)]
    if all(c is not None for c in crps):
        row["ret_crps"] = float(np.concatenate(crps).mean())  # type: ignore[arg-type]
    if all(f.quantiles for f in fcs):
        levels = list(fcs[0].quantiles)  # type: ignore[arg-type]
        qp = np.concatenate([np.column_stack([f.quantiles[q][m, j] for q in levels])  # type: ignore[index]
                             for f, m in zip(fcs, masks, strict=True)])
        pin = pinball_loss(y, qp, levels)
        row["pinball_mean"] = float(pin.mean())
        row.update({f"pinball_q{q:g}": float(v) for q, v in zip(levels, pin.mean(axis=0), strict=True)})
        row.update({f"calibration_q{q:g}": float(np.mean(y <= qp[:, i])) for i, q in enumerate(levels)})
        for c, (lo, hi) in INTERVALS.items():
            if lo in levels and hi in levels:
                row[f"coverage_{c}"], row[f"ret_width_{c}"] = interval_coverage(
                    y, qp[:, levels.index(lo)], qp[:, levels.index(hi)])
    return row


def score_symbols(results: Mapping[str, SymbolBacktest], config: BacktestConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The metric table (per symbol + pooled "ALL") and the DM table of the reference vs every other forecaster."""
    if not results:
        return pd.DataFrame(), pd.DataFrame()
    quiet = _NoDirectionCallFilter()
    _METRICS_LOG.addFilter(quiet)
    try:
        return _score(results, config)
    finally:
        _METRICS_LOG.removeFilter(quiet)


def _score(results: Mapping[str, SymbolBacktest], config: BacktestConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows: list[dict[str, Any]] = []
    dm_rows: list[dict[str, Any]] = []
    first = next(iter(results.values()))
    names, horizons = list(first.forecasts), first.horizons
    refs = [r for r in config.reference_names if r in names]
    if not refs:
        logger.info("reference forecaster %r is not in the backtest; no Diebold-Mariano tests", config.reference)
    for j, h in enumerate(horizons):
        losses: dict[str, dict[str, dict[str, pd.Series]]] = {}  # name -> loss -> symbol -> Series by origin date
        per_symbol: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for sym, r in results.items():
            mask = r.valid(j)
            index = r.origin_dates()[mask]
            for name in names:
                row, se, crps = _symbol_metrics(r, name, j)
                per_symbol[name].append(row)
                rows.append({"symbol": sym, "forecaster": name, "horizon": h, **row})
                losses.setdefault(name, {}).setdefault("squared_error", {})[sym] = pd.Series(se, index=index)
                if crps is not None:
                    losses[name].setdefault("crps", {})[sym] = pd.Series(crps, index=index)
        if len(results) > 1:
            for name in names:
                ys = [r.realised[r.valid(j), j] for r in results.values()]
                fcs = [r.forecasts[name] for r in results.values()]
                masks = [r.valid(j) for r in results.values()]
                rows.append({"symbol": "ALL", "forecaster": name, "horizon": h,
                             **_pooled_metrics(ys, fcs, masks, j, per_symbol[name])})
        for ref in refs:
            for other in names:
                if other in refs:
                    continue
                dm_rows += _dm_rows(losses, list(results), ref, other, h)
    metrics = pd.DataFrame(rows)
    order = {"ALL": len(results)} | {s: i for i, s in enumerate(results)}
    metrics = metrics.sort_values(["symbol", "horizon"], key=lambda c: c.map(order) if c.name == "symbol" else c,
                                  kind="stable").reset_index(drop=True)
    return metrics, pd.DataFrame(dm_rows)


def _dm_rows(losses: dict[str, dict[str, dict[str, pd.Series]]], symbols: list[str], ref: str, other: str,
             h: int) -> list[dict[str, Any]]:
    """DM rows of `ref` vs `other` at horizon h per symbol and pooled, for each loss both have.

    losses: name -> loss -> symbol -> Series of per-origin losses indexed by origin date.
    """
    out: list[dict[str, Any]] = []
    for loss in ("squared_error", "crps"):
        if loss not in losses[ref] or loss not in losses[other]:
            continue
        for sym in symbols:
            a, b = losses[ref][loss][sym].to_numpy(), losses[other][loss][sym].to_numpy()
            out.append({"symbol": sym, "horizon": h, "reference": ref, "other": other, "loss": loss,
                        **dm_row(a, b, h)})
        if len(symbols) < 2:
            continue
        # Pooled: each forecaster's loss averaged over the symbols present on each origin date (both have the
        # same symbols on every date), then one DM test on that time series of differences.
        ref_mean = pd.concat([losses[ref][loss][s] for s in symbols], axis=1).mean(axis=1).sort_index()
        other_mean = pd.concat([losses[other][loss][s] for s in symbols], axis=1).mean(axis=1).sort_index()
        row = dm_row(ref_mean.to_numpy(), other_mean.to_numpy(), h)
        row["n_pairs"] = float(sum(losses[ref][loss][s].size for s in symbols))
        out.append({"symbol": "ALL", "horizon": h, "reference": ref, "other": other, "loss": loss, **row})
    return out


def desk_score(results: Mapping[str, SymbolBacktest], config: BacktestConfig,
               dm: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """`evaluate.desk` tables of the results (Brier, Brier DM, reliability, coverage by year, PIT), plus the
    seed spread when `config.references` names several models (it needs the DM table `dm`)."""
    if not results:
        return {}
    tables = desk_tables(results, config.reference_names)
    spread = seed_spread(dm if dm is not None else pd.DataFrame(), tables.get("brier_dm"), config.reference_names)
    if not spread.empty:
        tables["seed_spread"] = spread
    return tables


def leakage_warnings(metrics: pd.DataFrame, max_r2: float = 0.5, max_direction: float = 0.75,
                     min_n: int = 100) -> list[str]:
    """Flag results too good to be true for daily prices, the mark of a forecaster that saw the future.

    Out-of-sample R^2 against the zero (random-walk) forecast above `max_r2`, or direction accuracy above
    `max_direction` over at least `min_n` forecasts, at any horizon. No stock forecaster we know of comes near
    either; a leaked one (fed p[t+h]) sits near R^2 = 1.
    """
    out = []
    for row in metrics.itertuples(index=False):
        if row.symbol == "ALL" or row.n < min_n:
            continue
        r2, acc = getattr(row, "oos_r2", float("nan")), getattr(row, "direction_accuracy", float("nan"))
        if (np.isfinite(r2) and r2 > max_r2) or (np.isfinite(acc) and acc > max_direction):
            out.append(f"{row.symbol} {row.forecaster} {row.horizon}d: implausibly good out of sample "
                       f"(R^2 vs random walk {r2:.2f}, direction accuracy {acc:.2f}); check it for look-ahead")
    return out

