"""Markdown tables for docs/results.md from a `mambacast backtest` report folder.

    python benchmarks/results_tables.py out/backtest-all [--subset AAPL,MSFT,GOOGL ...]

Reads metrics.csv, dm.csv, brier_dm.csv, brier.csv, coverage_by_year.csv and pit.csv; every model
forecaster (`mamba`, or `mamba_s42`, `mamba_s7`, ... with several seeds) is compared with the
baselines, and with several seeds each cell gives the range over the seeds: the verdict is stated
only when every seed agrees. Prints to stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

LEVEL = 0.05


def _models(frame: pd.DataFrame, column: str) -> list[str]:
    return sorted({m for m in frame[column].unique() if str(m).startswith("mamba")})


def _verdict(rows: pd.DataFrame) -> str:
    """Ratio range and the one-sided verdict over the seeds' rows (one row per seed)."""
    lo, hi = rows["loss_ratio"].min(), rows["loss_ratio"].max()
    ratio = f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f}-{hi:.3f}"
    better, worse = (rows["p_better"] < LEVEL).sum(), (rows["p_worse"] < LEVEL).sum()
    n = len(rows)
    if better == n:
        word = f"better (p {_p(rows['p_better'].max())})"
    elif worse == n:
        word = f"worse (p {_p(rows['p_worse'].max())})"
    elif better == worse == 0:
        side = "p_worse" if rows["loss_ratio"].mean() >= 1 else "p_better"
        word = f"n.s. ({side} >= {rows[side].min():.3f})"
    else:
        word = f"better in {better}/{n} seeds, worse in {worse}/{n}"
    return f"{ratio} {word}"


def _p(p: float) -> str:
    """A one-sided p-value (the largest over the seeds) as "<0.001" or "<=0.018"."""
    return "<0.001" if p < 0.001 else f"<={p:.3f}"


def dm_table(dm: pd.DataFrame, pairs: list[tuple[str, str]], symbol: str = "ALL") -> str:
    """Rows: horizon; columns: (loss, other) pairs; cells: the model's loss ratio and verdict over seeds."""
    refs = _models(dm, "reference")
    d = dm[(dm.symbol == symbol) & dm.reference.isin(refs)]
    head = "| horizon | " + " | ".join(f"{loss} vs {other}" for loss, other in pairs) + " |"
    lines = [head, "|" + "---|" * (len(pairs) + 1)]
    for h in sorted(d.horizon.unique()):
        cells = []
        for loss, other in pairs:
            rows = d[(d.horizon == h) & (d.loss == loss) & (d.other == other)]
            cells.append(_verdict(rows) if len(rows) else "-")
        lines.append(f"| {h}d | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(metrics: pd.DataFrame, cover_year: pd.DataFrame) -> str:
    """Pooled CRPS, RMSE, 80% coverage (all years and 2020) per forecaster and horizon."""
    m = metrics[metrics.symbol == "ALL"]
    models = _models(m, "forecaster")
    names = models + [f for f in dict.fromkeys(m.forecaster) if f not in models]
    lines = ["| horizon | forecaster | CRPS % | RMSE % | 80% coverage | 80% coverage 2020 | 80% width % |",
             "|---|---|---|---|---|---|---|"]
    cy = cover_year[cover_year.symbol == "ALL"] if "symbol" in cover_year else cover_year
    for h in sorted(m.horizon.unique()):
        for f in names:
            r = m[(m.horizon == h) & (m.forecaster == f)]
            if r.empty:
                continue
            r = r.iloc[0]
            c20 = cy[(cy.forecaster == f) & (cy.horizon == h) & (cy.year == 2020)]
            c20s = f"{c20.coverage_80.iloc[0]:.3f}" if len(c20) else "-"
            lines.append(f"| {h}d | {f} | {100 * r.ret_crps:.3f} | {100 * r.ret_rmse:.3f} | {r.coverage_80:.3f} | "
                         f"{c20s} | {100 * r.ret_width_80:.3f} |")
    return "\n".join(lines)


def brier_table(brier_dm: pd.DataFrame, other: str) -> str:
    refs = _models(brier_dm, "reference")
    d = brier_dm[(brier_dm.symbol == "ALL") & brier_dm.reference.isin(refs) & (brier_dm.other == other)]
    ks = sorted(d.moneyness.unique())
    lines = ["| horizon | " + " | ".join(f"K = {100 * k:+.0f}%" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
    for h in sorted(d.horizon.unique()):
        lines.append(f"| {h}d | " + " | ".join(_verdict(d[(d.horizon == h) & (d.moneyness == k)]) for k in ks) + " |")
    return "\n".join(lines)


def per_symbol_table(dm: pd.DataFrame, other: str, loss: str = "crps") -> str:
    refs = _models(dm, "reference")
    d = dm[(dm.symbol != "ALL") & dm.reference.isin(refs) & (dm.other == other) & (dm.loss == loss)]
    hs = sorted(d.horizon.unique())
    lines = ["| symbol | " + " | ".join(f"{h}d" for h in hs) + " |", "|" + "---|" * (len(hs) + 1)]
    for s in sorted(d.symbol.unique()):
        lines.append(f"| {s} | " + " | ".join(_verdict(d[(d.symbol == s) & (d.horizon == h)]) for h in hs) + " |")
    return "\n".join(lines)


def coverage_year_table(cover_year: pd.DataFrame, forecasters: list[str], horizons: list[int]) -> str:
    cy = cover_year[cover_year.symbol == "ALL"]
    cols = [(f, h) for h in horizons for f in forecasters]
    lines = ["| year | " + " | ".join(f"{f} {h}d" for f, h in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for y in sorted(cy.year.unique()):
        cells = []
        for f, h in cols:
            r = cy[(cy.forecaster == f) & (cy.horizon == h) & (cy.year == y)]
            cells.append(f"{r.coverage_80.iloc[0]:.3f}" if len(r) else "-")
        lines.append(f"| {y} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pit_table(pit: pd.DataFrame, forecasters: list[str]) -> str:
    p = pit[pit.symbol == "ALL"]
    lines = ["| forecaster | horizon | PIT density per decile (1.0 = calibrated) |", "|---|---|---|"]
    for h in sorted(p.horizon.unique()):
        for f in forecasters:
            r = p[(p.forecaster == f) & (p.horizon == h)].sort_values("bin")
            if len(r):
                lines.append(f"| {f} | {h}d | " + " ".join(f"{v:.2f}" for v in r.density) + " |")
    return "\n".join(lines)


def subset_table(metrics: pd.DataFrame, symbols: list[str]) -> str:
    """Ratios pooled over a subset of symbols from the per-symbol rows (n-weighted means; no DM test), to set
    beside an earlier run on the same symbols."""
    m = metrics[metrics.symbol.isin(symbols)].copy()
    m["crps_n"], m["se_n"], m["cov_n"] = m.ret_crps * m.n, m.ret_rmse ** 2 * m.n, m.coverage_80 * m.n
    g = m.groupby(["forecaster", "horizon"])[["crps_n", "se_n", "cov_n", "n"]].sum()
    models = _models(m, "forecaster")
    lines = ["| horizon | CRPS / garch_t | SE / random_walk | 80% coverage |", "|---|---|---|---|"]
    for h in sorted(m.horizon.unique()):
        crps = [g.loc[(f, h), "crps_n"] / g.loc[("garch_t", h), "crps_n"] for f in models]
        se = [g.loc[(f, h), "se_n"] / g.loc[("random_walk", h), "se_n"] for f in models]
        cov = [g.loc[(f, h), "cov_n"] / g.loc[(f, h), "n"] for f in models]
        lines.append(f"| {h}d | {min(crps):.3f}-{max(crps):.3f} | {min(se):.3f}-{max(se):.3f} | "
                     f"{min(cov):.3f}-{max(cov):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--subset", action="append", default=[],
                    help="comma list of symbols: also print ratios pooled over them (repeatable)")
    args = ap.parse_args()
    r = args.report
    metrics, dm = pd.read_csv(r / "metrics.csv"), pd.read_csv(r / "dm.csv")
    cover, pit, brier_dm = (pd.read_csv(r / f) for f in ("coverage_by_year.csv", "pit.csv", "brier_dm.csv"))
    models = _models(metrics, "forecaster")
    print("## Pooled scores\n")
    print(summary_table(metrics, cover))
    print("\n## Diebold-Mariano, pooled: the model's mean loss / the other's, verdict over the seeds\n")
    print(dm_table(dm, [("crps", "garch_t"), ("crps", "har_t"), ("crps", "hist_vol"),
                        ("squared_error", "random_walk"), ("squared_error", "drift")]))
    for other in ("garch_t", "har_t"):
        print(f"\n## Brier score of P(S_T > K) vs {other}, pooled\n")
        print(brier_table(brier_dm, other))
    print("\n## CRPS vs garch_t per symbol\n")
    print(per_symbol_table(dm, "garch_t"))
    print("\n## Squared error vs random_walk per symbol\n")
    print(per_symbol_table(dm, "random_walk", "squared_error"))
    print("\n## 80% coverage by year, pooled\n")
    print(coverage_year_table(cover, [models[0], "garch_t", "har_t"], [1, 30]))
    print("\n## PIT, pooled\n")
    print(pit_table(pit, [models[0], "garch_t", "har_t"]))
    for subset in args.subset:
        print(f"\n## Pooled over {subset} (range over the seeds)\n")
        print(subset_table(metrics, subset.split(",")))


if __name__ == "__main__":
    main()
