"""The backtest's tables for the terminal and the words around them (`mambacast.report` re-exports them).

`format_backtest_table` (the terminal table), `backtest_summary` (plain sentences on significant wins, losses and
coverage) and `format_desk_tables` (Brier scores at strikes, coverage by year, PIT, seed spread); the rows and
cells they are built from (`backtest_rows`, `desk_brier_rows`, the number and p-value formats) are also what the
HTML report (`report.page`) shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ..evaluate.results import BacktestResult

__all__ = ["TABLE_COLUMNS", "PRICE_COLUMNS", "format_backtest_table", "backtest_summary", "backtest_rows",
           "format_desk_tables", "desk_brier_rows"]


# ================================================================================ backtest: tables

#: (metric column, header, how "best" is judged: "min", "max", a nominal coverage, or None, scale for display)
TABLE_COLUMNS: list[tuple[str, str, Any, float]] = [
    ("ret_rmse", "RMSE%", "min", 100.0),
    ("ret_mae", "MAE%", "min", 100.0),
    ("ret_mase", "MASE", "min", 1.0),
    ("direction_accuracy", "dir.acc", "max", 1.0),
    ("ret_crps", "CRPS%", "min", 100.0),
    ("pinball_mean", "pinball%", "min", 100.0),
    ("coverage_50", "cov50", 0.5, 1.0),
    ("coverage_80", "cov80", 0.8, 1.0),
    ("coverage_90", "cov90", 0.9, 1.0),
    ("ret_width_80", "width80%", None, 100.0),
]
PRICE_COLUMNS: list[tuple[str, str, Any, float]] = [
    ("price_mae", "price MAE", "min", 1.0),
    ("price_rmse", "price RMSE", "min", 1.0),
    ("price_mase", "price MASE", "min", 1.0),
]


def _best_rows(frame: pd.DataFrame, column: str, rule: Any) -> set[int]:
    """Positions (0-based, in frame order) of the best value of `column` under `rule` (ties all marked)."""
    if rule is None or column not in frame:
        return set()
    v = frame[column].to_numpy(dtype=float)
    ok = np.isfinite(v)
    if not ok.any():
        return set()
    score = v if rule == "min" else -v if rule == "max" else np.abs(v - float(rule))
    best = np.nanmin(np.where(ok, score, np.nan))
    return {i for i in range(len(v)) if ok[i] and abs(score[i] - best) <= 1e-12 * max(1.0, abs(best))}


def _fmt(value: Any, scale: float = 1.0) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "-"
    if not np.isfinite(x):
        return "-"
    x *= scale
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "-"
    if p < 0.001:
        return "<0.001"
    # Never let rounding move a p across 0.05 (0.0497 must not read 0.050): add digits until it stays on its side.
    for digits in (3, 4, 5, 6):
        s = f"{p:.{digits}f}"
        if (float(s) < 0.05) == (p < 0.05):
            return s
    return "<0.05"


def _p_eq(p: float) -> str:
    s = _fmt_p(p)
    return s if s.startswith("<") else "=" + s


def _p_said(p: float, sided: str) -> str:
    """A p-value that says which test it is: 'one-sided p=0.030', 'two-sided p=0.061'."""
    return f"{sided} p{_p_eq(p)}"


def _ref_dm(dm: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The DM rows of one reference (with several model seeds the table holds one set per seed)."""
    if dm is None or dm.empty or "reference" not in dm:
        return dm
    return dm[dm["reference"] == reference]


def _dm_cell(dm: pd.DataFrame, symbol: str, horizon: int, other: str, loss: str) -> tuple[str, float, float]:
    """'stat (two-sided p)' of reference vs other, and the stat and two-sided p (nan when missing)."""
    if dm is None or dm.empty:
        return "-", float("nan"), float("nan")
    sel = dm[(dm["symbol"] == symbol) & (dm["horizon"] == horizon) & (dm["other"] == other) & (dm["loss"] == loss)]
    if sel.empty:
        return "-", float("nan"), float("nan")
    stat, p = float(sel["stat"].iloc[0]), float(sel["p_value"].iloc[0])
    return (f"{stat:+.2f} ({_fmt_p(p)})" if np.isfinite(stat) else "-"), stat, p


def backtest_rows(result: BacktestResult, symbol: str, horizon: int, price_columns: bool = False
                  ) -> tuple[list[str], list[list[str]], list[set[int]]]:
    """Header, formatted rows (one per forecaster) and, per column, the rows holding the best value.

    Log-return metrics are shown in percent (x100). DM columns, headed with their sign convention: the statistic
    of the reference's loss minus the row's, 'stat (two-sided p)'; negative means the reference had the lower loss.
    """
    cols = TABLE_COLUMNS + (PRICE_COLUMNS if price_columns else [])
    m = result.metrics
    frame = m[(m["symbol"] == symbol) & (m["horizon"] == horizon)].reset_index(drop=True)
    ref = result.config.reference
    header = ["forecaster", "n"] + [c[1] for c in cols] + ["dir.p", f"DM SE {ref}-row (2-sided p)",
                                                           f"DM CRPS {ref}-row (2-sided p)"]
    best = [set(), set()] + [_best_rows(frame, c[0], c[2]) for c in cols] + [set(), set(), set()]
    rows = []
    for _, r in frame.iterrows():
        row = [str(r["forecaster"]), str(int(r["n"]))]
        row += [_fmt(r.get(c[0], float("nan")), c[3]) for c in cols]
        row.append(_fmt_p(float(r.get("direction_p_value", float("nan")))))
        if r["forecaster"] == ref:
            row += ["(reference)", "(reference)"]
        else:
            row += [_dm_cell(_ref_dm(result.dm, ref), symbol, horizon, r["forecaster"], loss)[0]
                    for loss in ("squared_error", "crps")]
        rows.append(row)
    return header, rows, best


def _text_table(header: list[str], rows: list[list[str]], best: list[set[int]]) -> str:
    cells = [header] + [[c + ("*" if i in best[k] else "") for k, c in enumerate(row)] for i, row in enumerate(rows)]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def format_backtest_table(result: BacktestResult, symbols: list[str] | None = None) -> str:
    """Text tables: per symbol (and pooled 'ALL'), per horizon, the forecasters side by side; best marked '*'."""
    m = result.metrics
    wanted = symbols or list(dict.fromkeys(m["symbol"]))
    out = []
    for sym in wanted:
        for h in sorted(set(m.loc[m["symbol"] == sym, "horizon"])):
            title = "pooled over " + ", ".join(result.symbols) if sym == "ALL" else sym
            out.append(f"{title}, {h}-day log-returns (x100 where %); * = best in column")
            out.append(_text_table(*backtest_rows(result, sym, int(h))))
            out.append("")
    ref = result.config.reference
    out.append(f"DM {ref}-row: Diebold-Mariano (HLN) statistic of {ref}'s loss minus the row's and its two-sided p; "
               f"negative = {ref} better, positive = {ref} worse. The summary below uses one-sided p-values and "
               "says so. cov = share of outcomes inside the central 50/80/90% interval (nominal 0.5/0.8/0.9).")
    return "\n".join(out)


# ======================================================================== backtest: honest summary


def backtest_summary(result: BacktestResult, alpha: float = 0.05) -> list[str]:
    """Plain sentences on what the backtest shows: significant wins and losses of the reference, coverage.

    Uses the pooled rows when there are several symbols, else the one symbol; one-sided DM p-values at `alpha`.
    """
    ref = result.config.reference
    dm, m = _ref_dm(result.dm, ref), result.metrics
    scope = "ALL" if "ALL" in set(m["symbol"]) else next(iter(result.symbols))
    where = "pooled over " + ", ".join(result.symbols) if scope == "ALL" else scope
    lines = []
    if dm is None or dm.empty:
        lines.append(f"No Diebold-Mariano tests: the reference forecaster {ref!r} was not in the backtest.")
    else:
        d = dm[dm["symbol"] == scope]
        n_tests = len(d)
        for loss, label in (("squared_error", "Squared error of the log-return"), ("crps", "CRPS")):
            sel = d[d["loss"] == loss]
            better = [f"{r.other} at {r.horizon}d ({_p_said(r.p_better, 'one-sided')})" for r in sel.itertuples()
                      if r.p_better < alpha]
            worse = [f"{r.other} at {r.horizon}d ({_p_said(r.p_worse, 'one-sided')})" for r in sel.itertuples()
                     if r.p_worse < alpha]
            lines.append(f"{label} ({where}): {ref} significantly better (one-sided DM, {alpha:g}) "
                         "than " + (", ".join(better) if better else "no baseline at any horizon")
                         + "; significantly worse than " + (", ".join(worse) if worse else "none") + ".")
        lines.append(f"{n_tests} tests were run at level {alpha:g} on this scope: about {alpha * n_tests:.1f} "
                     "'significant' results are expected by chance alone when there is no difference.")
    cov = m[(m["symbol"] == scope) & (m["forecaster"] == ref)]
    if not cov.empty and "coverage_80" in cov:
        parts = [f"{int(r.horizon)}d {r.coverage_50:.2f}/{r.coverage_80:.2f}/{r.coverage_90:.2f}"
                 for r in cov.itertuples()]
        lines.append(f"Coverage of {ref}'s central 50/80/90% intervals ({where}): " + "; ".join(parts) + ".")
    for w in result.warnings:
        lines.append("WARNING: " + w)
    return lines


# ===================================================================== backtest: the options desk


def _desk_scope(result: BacktestResult) -> tuple[str, str]:
    scope = "ALL" if len(result.symbols) > 1 else next(iter(result.symbols))
    return scope, ("pooled over " + ", ".join(result.symbols) if scope == "ALL" else scope)


def _m_label(m: float) -> str:
    return f"{m:+.0%}" if m else "0%"


def desk_brier_rows(result: BacktestResult, symbol: str, horizon: int
                    ) -> tuple[list[str], list[list[str]], list[set[int]]]:
    """Brier table of one scope and horizon: header, rows (forecaster, then one column per strike), best marks.

    Cells are Brier scores x100 (lower is better); the last row is the observed frequency of S_T > K.
    """
    b = result.tables.get("brier")
    if b is None or b.empty:
        return [], [], []
    sel = b[(b["symbol"] == symbol) & (b["horizon"] == horizon)]
    ms = sorted(set(sel["moneyness"]))
    header = ["forecaster"] + [f"K={_m_label(m)}" for m in ms]
    names = list(dict.fromkeys(sel["forecaster"]))
    table = sel.pivot(index="forecaster", columns="moneyness", values="brier").loc[names, ms]
    rows = [[n] + [_fmt(v, 100.0) for v in table.loc[n]] for n in names]
    best = [set()] + [_best_rows(table.reset_index(drop=True), m, "min") for m in ms]
    base = sel.drop_duplicates("moneyness").set_index("moneyness")["base_rate"]
    rows.append(["(observed P(S_T>K))"] + [_fmt(base[m]) for m in ms])
    return header, rows, best


def _brier_verdicts(result: BacktestResult, symbol: str, reference: str, alpha: float = 0.05) -> list[str]:
    d = result.tables.get("brier_dm")
    if d is None or d.empty:
        return []
    d = d[(d["symbol"] == symbol) & (d["reference"] == reference)]
    out = []
    for other in dict.fromkeys(d["other"]):
        sel = d[d["other"] == other]
        better = [f"{int(r.horizon)}d K={_m_label(r.moneyness)}" for r in sel.itertuples() if r.p_better < alpha]
        worse = [f"{int(r.horizon)}d K={_m_label(r.moneyness)}" for r in sel.itertuples() if r.p_worse < alpha]
        out.append(f"Brier of P(S_T > K), {reference} vs {other} ({len(sel)} tests): significantly better at "
                   + (", ".join(better) if better else "none") + "; significantly worse at "
                   + (", ".join(worse) if worse else "none") + ".")
    return out


def _coverage_year_rows(result: BacktestResult, symbol: str) -> tuple[list[str], list[list[str]]]:
    """Rows = years, columns = '<forecaster> <h>d' for the references, garch_t and har_t: 80% coverage."""
    c = result.tables.get("coverage_by_year")
    if c is None or c.empty:
        return [], []
    c = c[c["symbol"] == symbol]
    wanted = [n for n in (*result.config.reference_names, "garch_t", "har_t") if n in set(c["forecaster"])]
    horizons = sorted(set(c["horizon"]))
    cols = [(n, h) for h in horizons for n in wanted]
    table = c.set_index(["year", "forecaster", "horizon"])["coverage_80"]
    n = c.groupby("year")["n"].max()
    rows = [[str(y), str(int(n[y]))] + [_fmt(table.get((y, nm, h), float("nan"))) for nm, h in cols]
            for y in sorted(set(c["year"]))]
    return ["year", "n"] + [f"{nm} {h}d" for nm, h in cols], rows


def _seed_spread_rows(result: BacktestResult, symbol: str) -> tuple[list[str], list[list[str]]]:
    t = result.tables.get("seed_spread")
    if t is None or t.empty:
        return [], []
    t = t[t["symbol"] == symbol]
    refs = list(result.config.reference_names)
    header = ["horizon", "vs", "loss", "ratio min..max", "max one-sided p (model better)",
              "max one-sided p (model worse)"] + \
        [f"ratio {r}" for r in refs]
    rows = [[f"{int(r['horizon'])}d", r["other"], r["loss"], f"{_fmt(r['ratio_min'])}..{_fmt(r['ratio_max'])}",
             _fmt_p(r["p_better_max"]), _fmt_p(r["p_worse_max"])] + [_fmt(r.get(f"ratio_{x}")) for x in refs]
            for _, r in t.iterrows()]
    return header, rows


def format_desk_tables(result: BacktestResult) -> str:
    """Console text: Brier scores at the strikes (x100), their DM verdicts, 80% coverage per year, the PIT of the
    reference and, with several model seeds, the seed-spread table. Pooled scope when there are several symbols."""
    if not result.tables:
        return ""
    scope, where = _desk_scope(result)
    out = []
    b = result.tables.get("brier")
    for h in sorted(set(b["horizon"])) if b is not None and not b.empty else []:
        out.append(f"Brier score x100 of P(S_T > K), K = S_0(1+m), {where}, {h}-day; * = best (lower is better)")
        header, rows, best = desk_brier_rows(result, scope, int(h))
        out.append(_text_table(header, rows, best))
        out.append("")
    for ref in result.config.reference_names:
        out += _brier_verdicts(result, scope, ref)
    header, rows = _coverage_year_rows(result, scope)
    if rows:
        out += ["", f"Coverage of the central 80% interval by calendar year of the origin ({where}; nominal 0.80)",
                _text_table(header, rows, [set()] * len(header))]
    p = result.tables.get("pit")
    if p is not None and not p.empty:
        out += ["", f"PIT histogram, density per decile ({where}; 1.0 everywhere = calibrated, high ends = too "
                "narrow, high middle = too wide)"]
        for (name, h), g in p[p["symbol"] == scope].groupby(["forecaster", "horizon"], sort=False):
            out.append(f"  {name:>12} {int(h):>3}d  " + " ".join(f"{v:.2f}" for v in g["density"]))
    header, rows = _seed_spread_rows(result, scope)
    if rows:
        out += ["", f"Seed spread ({where}): loss ratio model/baseline over seeds and the largest one-sided DM p",
                _text_table(header, rows, [set()] * len(header))]
    return "\n".join(out)
