"""What an options desk reads from a backtest: event probabilities at strikes, reliability, PIT, coverage by year,
and the spread of the model's comparisons over training seeds.

For each forecaster, horizon h and strike `K = S_0 (1 + m)` with moneyness m in `MONEYNESS`, the forecast
probability `P(S_{t+h} > K) = 1 - F_h(log(1 + m))` (a digital call's fair value under the forecast law) is
scored against the outcome `1{S_{t+h} > K}` with the Brier score. Tables (pandas frames, one row each):

  brier             symbol, forecaster, horizon, moneyness, brier, base_rate (observed frequency), n
  brier_dm          symbol, horizon, moneyness, reference, other, stat, p_value, p_better, p_worse, loss_ratio, n:
                    Diebold-Mariano (HLN) on the Brier loss of each reference (the model, per seed) vs garch_t
                    and har_t (`BRIER_DM_AGAINST`); pooled over symbols as the backtest's DM (per-date means)
  reliability       symbol, forecaster, horizon, moneyness ("all" = pooled over the strikes), bin, bin_lo,
                    bin_hi, mean_predicted, observed_frequency, count
  coverage_by_year  symbol, forecaster, horizon, year (of the origin), coverage_80, n
  pit               symbol, forecaster, horizon, bin, bin_lo, bin_hi, count, density (count / (n / n_bins))
  seed_spread       (several model seeds) symbol, horizon, other, loss, n_seeds, ratio_min, ratio_max,
                    p_better_max (the largest one-sided p of "model better" over the seeds), p_worse_max,
                    and ratio_<seed model> / p_better_<seed model> per seed

Symbol "ALL" pools the symbols (when there are several). docs/evaluation.md explains how to read each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from .baselines import Forecast
from .dm import dm_row
from .metrics import INTERVALS, brier_score, pit_histogram, reliability_table

if TYPE_CHECKING:
    from .results import SymbolBacktest

__all__ = ["MONEYNESS", "BRIER_DM_AGAINST", "PIT_BINS", "prob_above", "pit", "desk_tables", "seed_spread"]

#: Strikes as S_0 (1 + m).
MONEYNESS: tuple[float, ...] = (-0.10, -0.05, 0.0, 0.05, 0.10)
#: Baselines the model's Brier loss is DM-tested against.
BRIER_DM_AGAINST: tuple[str, ...] = ("garch_t", "har_t")
PIT_BINS = 10
RELIABILITY_BINS = 10


def prob_above(fc: Forecast, j: int, mask: np.ndarray, log_moneyness: float) -> np.ndarray:
    """P(r_h > log_moneyness) = P(S_{t+h} > S_t (1 + m)) at the masked origins of horizon index j: (n_masked,).

    Exact for a location-scale forecast (Student-t / Gaussian), else from the quantiles (`Forecast.cdf`).
    """
    if fc.scale is not None:
        df = fc.df[mask, j] if fc.df is not None else np.inf
        return stats.t.sf((log_moneyness - fc.mean[mask, j]) / fc.scale[mask, j], df)
    sub = Forecast(fc.horizons, fc.mean[mask], {q: v[mask] for q, v in (fc.quantiles or {}).items()})
    return 1.0 - np.asarray(sub.cdf(np.full(int(mask.sum()), log_moneyness), j), dtype=np.float64)


def pit(r: SymbolBacktest, name: str, j: int) -> np.ndarray:
    """PIT values F(y) of forecaster `name` at horizon index j over the symbol's realised targets: (n_valid,)."""
    fc, mask = r.forecasts[name], r.valid(j)
    y = r.realised[mask, j]
    if fc.scale is not None:
        df = fc.df[mask, j] if fc.df is not None else np.inf
        return stats.t.cdf((y - fc.mean[mask, j]) / fc.scale[mask, j], df)
    sub = Forecast(fc.horizons, fc.mean[mask], {q: v[mask] for q, v in (fc.quantiles or {}).items()})
    return np.asarray(sub.cdf(y, j), dtype=np.float64)


def _moneyness_label(m: float) -> str:
    return f"{m:+.0%}" if m else "0%"


def desk_tables(results: Mapping[str, SymbolBacktest], references: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The brier, brier_dm, reliability, coverage_by_year and pit tables of a backtest (see the module docstring).

    results: {symbol: SymbolBacktest}; references: the model forecasters (one per seed) DM-tested against
    `BRIER_DM_AGAINST`.
    """
    if not results:
        return {}
    first = next(iter(results.values()))
    names, horizons = list(first.forecasts), first.horizons
    refs = [r for r in references if r in names]
    scopes = list(results) + (["ALL"] if len(results) > 1 else [])
    brier, brier_dm, reliability, coverage, pits = [], [], [], [], []
    lo80, hi80 = INTERVALS[80]
    for j, h in enumerate(horizons):
        # per symbol: probabilities, outcomes, Brier losses by origin date
        probs: dict[tuple[str, str, float], np.ndarray] = {}
        outcomes: dict[tuple[str, float], np.ndarray] = {}
        losses: dict[tuple[str, str, float], pd.Series] = {}
        for sym, r in results.items():
            mask = r.valid(j)
            y, index = r.realised[mask, j], r.origin_dates()[mask]
            for m in MONEYNESS:
                x = float(np.log1p(m))
                outcomes[sym, m] = (y > x).astype(np.float64)
                for name in names:
                    p = np.clip(prob_above(r.forecasts[name], j, mask, x), 0.0, 1.0)
                    probs[sym, name, m] = p
                    losses[sym, name, m] = pd.Series(brier_score(p, outcomes[sym, m]), index=index)
        for scope in scopes:
            syms = list(results) if scope == "ALL" else [scope]
            for name in names:
                all_p, all_o = [], []
                for m in MONEYNESS:
                    p = np.concatenate([probs[s, name, m] for s in syms])
                    o = np.concatenate([outcomes[s, m] for s in syms])
                    all_p.append(p)
                    all_o.append(o)
                    brier.append({"symbol": scope, "forecaster": name, "horizon": h, "moneyness": m,
                                  "brier": float(brier_score(p, o).mean()), "base_rate": float(o.mean()),
                                  "n": float(o.size)})
                    reliability += [{"symbol": scope, "forecaster": name, "horizon": h,
                                     "moneyness": _moneyness_label(m), **row} for row in reliability_table(p, o)]
                reliability += [{"symbol": scope, "forecaster": name, "horizon": h, "moneyness": "all", **row}
                                for row in reliability_table(np.concatenate(all_p), np.concatenate(all_o))]
                u = np.concatenate([pit(results[s], name, j) for s in syms])
                counts = pit_histogram(np.clip(u, 0.0, 1.0), PIT_BINS)
                pits += [{"symbol": scope, "forecaster": name, "horizon": h, "bin": float(b), "bin_lo": b / PIT_BINS,
                          "bin_hi": (b + 1) / PIT_BINS, "count": float(c), "density": float(c * PIT_BINS / u.size)}
                         for b, c in enumerate(counts)]
                coverage += _coverage_by_year(results, syms, scope, name, j, h, lo80, hi80)
            for ref in refs:
                for other in (o for o in BRIER_DM_AGAINST if o in names and o != ref):
                    for m in MONEYNESS:
                        if scope == "ALL":
                            a = pd.concat([losses[s, ref, m] for s in syms], axis=1).mean(axis=1).sort_index()
                            b = pd.concat([losses[s, other, m] for s in syms], axis=1).mean(axis=1).sort_index()
                        else:
                            a, b = losses[scope, ref, m], losses[scope, other, m]
                        brier_dm.append({"symbol": scope, "horizon": h, "moneyness": m, "reference": ref,
                                         "other": other, **dm_row(a.to_numpy(), b.to_numpy(), h)})
    return {"brier": pd.DataFrame(brier), "brier_dm": pd.DataFrame(brier_dm),
            "reliability": pd.DataFrame(reliability), "coverage_by_year": pd.DataFrame(coverage),
            "pit": pd.DataFrame(pits)}


def _coverage_by_year(results: Mapping[str, SymbolBacktest], syms: list[str], scope: str, name: str, j: int, h: int,
                      lo: float, hi: float) -> list[dict[str, Any]]:
    """Share of outcomes inside the central 80% interval per calendar year of the origin (dated results only)."""
    inside, years = [], []
    for s in syms:
        r = results[s]
        fc, mask = r.forecasts[name], r.valid(j)
        dates = r.origin_dates()[mask]
        if not fc.quantiles or lo not in fc.quantiles or hi not in fc.quantiles or \
                not isinstance(dates, pd.DatetimeIndex):
            return []
        y = r.realised[mask, j]
        inside.append((fc.quantiles[lo][mask, j] <= y) & (y <= fc.quantiles[hi][mask, j]))
        years.append(dates.year.to_numpy())
    frame = pd.DataFrame({"year": np.concatenate(years), "inside": np.concatenate(inside)})
    g = frame.groupby("year")["inside"].agg(["mean", "size"])
    return [{"symbol": scope, "forecaster": name, "horizon": h, "year": int(year), "coverage_80": float(row["mean"]),
             "n": float(row["size"])} for year, row in g.iterrows()]


def seed_spread(dm: pd.DataFrame, brier_dm: pd.DataFrame, references: Sequence[str]) -> pd.DataFrame:
    """Per (symbol, horizon, other, loss): the model's loss ratio and one-sided DM p for every seed, and the spread.

    dm: the backtest's DM table (loss squared_error / crps); brier_dm: the Brier DM table (loss "brier <m>").
    A comparison holds across seeds when p_better_max (the weakest seed's evidence) is below the level.
    """
    refs = list(references)
    frames = []
    if dm is not None and not dm.empty:
        frames.append(dm[["symbol", "horizon", "reference", "other", "loss", "loss_ratio", "p_better", "p_worse"]])
    if brier_dm is not None and not brier_dm.empty:
        b = brier_dm.assign(loss=["brier " + _moneyness_label(m) for m in brier_dm["moneyness"]])
        frames.append(b[["symbol", "horizon", "reference", "other", "loss", "loss_ratio", "p_better", "p_worse"]])
    if len(refs) < 2 or not frames:
        return pd.DataFrame()
    d = pd.concat(frames, ignore_index=True)
    d = d[d["reference"].isin(refs) & ~d["other"].isin(refs)]
    rows = []
    for (sym, h, other, loss), g in d.groupby(["symbol", "horizon", "other", "loss"], sort=False):
        g = g.set_index("reference")
        row: dict[str, Any] = {"symbol": sym, "horizon": int(h), "other": other, "loss": loss,
                               "n_seeds": int(len(g)), "ratio_min": float(g["loss_ratio"].min()),
                               "ratio_max": float(g["loss_ratio"].max()), "p_better_max": float(g["p_better"].max()),
                               "p_worse_max": float(g["p_worse"].max())}
        for ref in refs:
            row[f"ratio_{ref}"] = float(g["loss_ratio"].get(ref, np.nan))
            row[f"p_better_{ref}"] = float(g["p_better"].get(ref, np.nan))
        rows.append(row)
    return pd.DataFrame(rows)
