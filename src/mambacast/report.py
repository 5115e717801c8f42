"""Reports for people: the backtest's terminal tables, summary sentences and self-contained HTML report.

Backtest: `format_backtest_table` (the terminal table), `backtest_summary` (plain sentences on significant wins,
losses and coverage), `format_desk_tables` (Brier scores at strikes, coverage by year, PIT, seed spread), and
`write_backtest_report`, which writes the metric files, the plots (`mambacast.plots`, whose functions are
re-exported here) and one self-contained `report.html`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .plots import (  # the figures live in plots; re-exported here, where they were first
    pit_of,
    plot_backtest_forecasts,
    plot_calibration,
    plot_cumulative_loss,
    plot_fan_chart,
    plot_pit_histograms,
    plot_reliability,
)

if TYPE_CHECKING:
    import pandas as pd

    from .evaluate.backtest import BacktestResult

__all__ = ["plot_fan_chart", "format_backtest_table", "backtest_summary", "backtest_rows", "plot_backtest_forecasts",
           "plot_cumulative_loss", "plot_calibration", "pit_of", "write_backtest_report", "format_desk_tables",
           "desk_sections", "desk_brier_rows", "plot_reliability", "plot_pit_histograms"]


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


def desk_sections(result: BacktestResult, plots: list[tuple[str, Path]]) -> str:
    """HTML of the options-desk section: Brier tables and DM verdicts, reliability and PIT plots, coverage per
    year and the seed spread (verdict scope: pooled, or the one symbol)."""
    import html

    if not result.tables:
        return ""
    scope, where = _desk_scope(result)
    parts = [f"<h2>What an options desk reads ({html.escape(where)})</h2>"
             "<p class='note'>For strikes K = S<sub>0</sub>·(1+m), m = −10%, −5%, 0, +5%, +10%, each forecaster's "
             "P(S<sub>T</sub> &gt; K) (a digital call's fair value under its law) is scored with the Brier score "
             "(×100, lower is better; the last row is how often the event happened). DM: Diebold-Mariano (HLN) on "
             "the Brier loss of the model vs garch_t and har_t per strike and horizon.</p>"]
    b = result.tables.get("brier")
    for h in sorted(set(b["horizon"])) if b is not None and not b.empty else []:
        header, rows, best = desk_brier_rows(result, scope, int(h))
        parts.append(f"<h3>Brier, {int(h)}-day</h3>" + _html_table(header, rows, best))
    verdicts = [v for ref in result.config.reference_names for v in _brier_verdicts(result, scope, ref)]
    if verdicts:
        parts.append("<ul class='summary'>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts) + "</ul>")
    d = result.tables.get("brier_dm")
    if d is not None and not d.empty:
        d = d[d["symbol"] == scope]
        parts.append("<h3>Brier DM tests</h3>" + _html_table(
            ["model", "vs", "horizon", "K", "Brier ratio (model/other)", "DM stat (model − other)", "p two-sided",
             "p model better (one-sided)", "p model worse (one-sided)", "n"],
            [[r.reference, r.other, f"{int(r.horizon)}d", _m_label(r.moneyness), _fmt(r.loss_ratio), _fmt(r.stat),
              _fmt_p(r.p_value), _fmt_p(r.p_better), _fmt_p(r.p_worse), str(int(r.n))] for r in d.itertuples()]))
    for label, p in plots:
        parts.append(f"<h3>{html.escape(label.capitalize())}</h3>" + _img(p, f"{scope} {label}"))
    header, rows = _coverage_year_rows(result, scope)
    if rows:
        parts.append("<h3>Coverage of the central 80% interval by year</h3><p class='note'>Share of outcomes inside "
                     "each forecaster's 10–90% interval, by calendar year of the origin (nominal 0.80): a calm year "
                     "reads high, a crash year (2020) low when the intervals react too slowly.</p>"
                     + _html_table(header, rows))
    header, rows = _seed_spread_rows(result, scope)
    if rows:
        parts.append("<h3>Seed spread</h3><p class='note'>The model trained with each seed against each baseline: "
                     "the range of its loss ratio (model/baseline; below 1 = model better) and the largest one-sided "
                     "DM p over the seeds (below 0.05 in the 'better' column = better whatever the seed).</p>"
                     + _html_table(header, rows))
    return "\n".join(parts)


# ============================================================================= backtest: plots


# ============================================================================== backtest: HTML


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;
line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.8em}
h3{margin-bottom:.3em}table{border-collapse:collapse;font-size:12.5px;margin:6px 0 14px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}td.best{font-weight:bold;background:#eef7ee}
tr.ref td{background:#f5f8ff}tr.ref td.best{background:#e3f0e3}
.note{color:#555;font-size:13px}.warn{color:#a00;font-weight:bold}img{max-width:100%;border:1px solid #eee}
ul.summary li{margin-bottom:4px}code{background:#f4f4f4;padding:1px 4px}
"""


def _html_table(header: list[str], rows: list[list[str]], best: list[set[int]] | None = None,
                ref_rows: set[int] | None = None) -> str:
    import html

    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="ref"' if ref_rows and i in ref_rows else ""
        tds = []
        for k, c in enumerate(row):
            is_best = best is not None and i in best[k]
            tds.append(f'<td class="best">{html.escape(c)}*</td>' if is_best else f"<td>{html.escape(c)}</td>")
        out.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    import base64
    import html

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _dm_table(result: BacktestResult, symbol: str) -> str:
    dm = _ref_dm(result.dm, result.config.reference)
    if dm is None or dm.empty:
        return "<p class='note'>No DM tests (no reference forecaster).</p>"
    d = dm[dm["symbol"] == symbol]
    header = ["vs", "horizon", "loss", "loss ratio (ref/other)", "DM stat (ref − other)", "p two-sided",
              "p ref better (one-sided)", "p ref worse (one-sided)", "n"]
    rows = [[r.other, f"{int(r.horizon)}d", r.loss, _fmt(r.loss_ratio), _fmt(r.stat), _fmt_p(r.p_value),
             _fmt_p(r.p_better), _fmt_p(r.p_worse), str(int(r.n))] for r in d.itertuples()]
    return _html_table(header, rows)


def _verdict_table(result: BacktestResult, symbol: str, alpha: float = 0.05) -> str:
    """Reference vs each other forecaster, per horizon and loss: better / worse (one-sided DM at alpha) or n.s."""
    import html

    dm = _ref_dm(result.dm, result.config.reference)
    if dm is None or dm.empty:
        return ""
    d = dm[dm["symbol"] == symbol]
    horizons = sorted(set(d["horizon"]))
    others = list(dict.fromkeys(d["other"]))
    losses = [("squared_error", "SE"), ("crps", "CRPS")]
    head = "<tr><th rowspan='2'>vs</th>" + "".join(f"<th colspan='2'>{int(h)}d</th>" for h in horizons) + "</tr>"
    head += "<tr>" + "".join(f"<th>{lab}</th>" for _ in horizons for _, lab in losses) + "</tr>"
    body = []
    for o in others:
        cells = []
        for h in horizons:
            for loss, _ in losses:
                sel = d[(d["other"] == o) & (d["horizon"] == h) & (d["loss"] == loss)]
                if sel.empty or not np.isfinite(sel["stat"].iloc[0]):
                    cells.append("<td>-</td>")
                    continue
                r = sel.iloc[0]
                if r["p_better"] < alpha:
                    cells.append(f"<td style='background:#dff0d8'>better ({_p_said(r['p_better'], 'one-sided')})"
                                 "</td>")
                elif r["p_worse"] < alpha:
                    cells.append(f"<td style='background:#f2dede'>worse ({_p_said(r['p_worse'], 'one-sided')})</td>")
                else:
                    cells.append(f"<td style='color:#777'>n.s. ({_p_said(r['p_value'], 'two-sided')})</td>")
        body.append(f"<tr><td>{html.escape(str(o))}</td>" + "".join(cells) + "</tr>")
    ref = html.escape(result.config.reference)
    return (f"<p class='note'>{ref} against each forecaster: <b>better</b> / <b>worse</b> = one-sided Diebold-Mariano "
            f"(HLN) test significant at {alpha:g} on squared log-return error (SE) or CRPS; n.s. = no significant "
            "difference (its two-sided p shown).</p><table>" + head + "".join(body) + "</table>")


def _blocks_table(result: BacktestResult, symbol: str) -> str:
    r = result.symbols[symbol]
    ref = result.config.reference
    header = ["block", "train from", "train to", "first origin", "last origin", "origins", "fit s (all)",
              f"{ref} epochs", f"{ref} best epoch", f"{ref} best val loss"]
    rows = []
    for b in r.blocks:
        info = b.get("fit_info", {}).get(ref, {})
        rows.append([str(b["block"] + 1), b["train_start"][:10], b["train_end"][:10], b["first_origin"][:10],
                     b["last_origin"][:10], str(b["n_origins"]), f"{sum(b['fit_seconds'].values()):.1f}",
                     str(info.get("epochs", "-")), str(info.get("best_epoch", "-")),
                     _fmt(info.get("best_val_loss", float("nan")))])
    return _html_table(header, rows)


def write_backtest_report(result: BacktestResult, directory: str | Path, title: str = "mambacast walk-forward backtest",
                          command: str | None = None, forecasts_csv: bool = True) -> dict[str, Path]:
    """Write metrics.json/.csv, dm.csv, forecasts.csv.gz, PNG plots and a self-contained report.html.

    The HTML embeds every image as base64 and every table as HTML, so the one file opens from disk anywhere.
    Returns the paths written (key "html" for the report).
    """
    import html
    from datetime import datetime, timezone

    from . import __version__

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = result.save(out, forecasts=forecasts_csv)
    cfg = result.config
    sections: list[str] = []
    scopes = (["ALL"] if len(result.symbols) > 1 else []) + list(result.symbols)
    # Plots first (files), then HTML.
    plots: dict[str, list[tuple[str, Path]]] = {}
    for sym in result.symbols:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in sym)
        plots[sym] = [
            ("forecasts vs realised", plot_backtest_forecasts(result, sym, out / f"{safe}_forecasts.png")),
            ("cumulative loss vs random walk", plot_cumulative_loss(result, sym, out / f"{safe}_cumloss.png")),
            ("calibration", plot_calibration(result, sym, out / f"{safe}_calibration.png")),
        ]
    if len(result.symbols) > 1:
        plots["ALL"] = [("calibration (pooled)", plot_calibration(result, "ALL", out / "ALL_calibration.png"))]
    desk_plots: list[tuple[str, Path]] = []
    if result.tables.get("reliability") is not None and result.tables.get("pit") is not None:
        scope = _desk_scope(result)[0]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in scope)
        desk_plots = [("reliability of P(S_T > K)", plot_reliability(result, scope, out / f"{safe}_reliability.png")),
                      ("PIT histograms", plot_pit_histograms(result, scope, out / f"{safe}_pit.png"))]
        plots.setdefault("desk", []).extend(desk_plots)
    for key, items in plots.items():
        for label, p in items:
            paths[f"{key}:{label}"] = p

    run = [f"<b>generated</b> {datetime.now(timezone.utc).isoformat(timespec='seconds')} by mambacast {__version__}",
           f"<b>run time</b> {result.seconds:.1f} s"]
    if command:
        run.append(f"<b>command</b> <code>{html.escape(command)}</code>")
    run.append("<b>protocol</b> " + html.escape(
        f"{cfg.window} training window" + (f" (train_days {cfg.train_days})" if cfg.train_days else "")
        + f", refit every {cfg.refit_every} trading days, embargo {cfg.embargo_days} days between the last training "
        f"target and the first origin of each block, horizons {', '.join(map(str, cfg.horizons))} days"
        + (", strict one-origin-at-a-time prediction" if cfg.strict else "")))
    for k, v in result.info.items():
        run.append(f"<b>{html.escape(str(k))}</b> {html.escape(str(v))}")
    sym_rows = [[s, r.label(int(r.origins[0])), r.label(int(r.origins[-1])), str(r.origins.size), str(len(r.blocks)),
                 f"{r.label(r.insample[0])} .. {r.label(r.insample[1])}"] for s, r in result.symbols.items()]
    sections.append(f"<h1>{html.escape(title)}</h1><p class='note'>" + "<br>".join(run) + "</p>")
    sections.append(_html_table(["symbol", "first origin", "last origin", "origins", "refits", "first training window"],
                                sym_rows))
    summary = backtest_summary(result)
    items = "".join(f"<li class='warn'>{html.escape(s)}</li>" if s.startswith("WARNING") else
                    f"<li>{html.escape(s)}</li>" for s in summary)
    verdict_scope = "ALL" if len(result.symbols) > 1 else next(iter(result.symbols))
    sections.append("<h2>What the backtest shows</h2>" + _verdict_table(result, verdict_scope)
                    + "<ul class='summary'>" + items + "</ul>"
                    "<p class='note'>Only out-of-sample forecasts are scored: every forecaster was refitted on data "
                    "that ends an embargo before the forecasts it is scored on. Daily stock prices are close to a "
                    "random walk; a loss ratio near 1 with a large p-value means no demonstrated skill. h-day "
                    "returns from consecutive origins overlap, so the binomial direction test is anti-conservative "
                    "for h &gt; 1; the DM test accounts for the overlap (h-1 autocovariance lags, HLN correction).</p>")
    sections.append(desk_sections(result, desk_plots))
    for scope in scopes:
        name = "Pooled over " + ", ".join(result.symbols) if scope == "ALL" else scope
        sections.append(f"<h2>{html.escape(name)}</h2>")
        m = result.metrics
        for h in sorted(set(m.loc[m["symbol"] == scope, "horizon"])):
            header, rows, best = backtest_rows(result, scope, int(h), price_columns=scope != "ALL")
            ref_rows = {i for i, r in enumerate(rows) if r[0] == cfg.reference}
            sections.append(f"<h3>{int(h)}-day horizon</h3>" + _html_table(header, rows, best, ref_rows))
        sections.append("<p class='note'>% columns: log-return metrics x100. MASE: MAE over the in-sample MAE of the "
                        "random walk at the same horizon (first training window; pooled: mean over symbols). "
                        "* and bold: best in the column (coverage: closest to nominal). DM ref-row: statistic of the "
                        "reference's loss minus the row's and its two-sided p; negative = reference better.</p>")
        if scope != verdict_scope:
            sections.append("<h3>Significance</h3>" + _verdict_table(result, scope))
        sections.append("<h3>Diebold-Mariano tests</h3>" + _dm_table(result, scope)
                        + ("<p class='note'>Pooled: each forecaster's loss is averaged over the symbols present on "
                           "each origin date and the test runs on that series; n counts dates.</p>"
                           if scope == "ALL" else ""))
        for label, p in plots.get(scope, []):
            sections.append(f"<h3>{html.escape(label.capitalize())}</h3>" + _img(p, f"{scope} {label}"))
        if scope != "ALL":
            sections.append("<h3>Refits</h3>" + _blocks_table(result, scope))
    sections.append(
        "<h2>Definitions</h2><p class='note'>Targets are h-day log-returns log(p[t+h]/p[t]); prices are p[t]·exp(r). "
        "RMSE, MAE, MASE, direction accuracy (binomial p vs 50%), pinball loss (mean over the 5/10/25/50/75/90/95% "
        "quantiles), CRPS (closed form for Gaussian / Student-t forecasts), coverage and mean width of the central "
        "50/80/90% intervals: docs/evaluation.md. Full numbers: metrics.csv, dm.csv, metrics.json and every forecast "
        "in forecasts.csv.gz beside this file.</p>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            + _CSS + "</style></head><body>" + "\n".join(sections) + "</body></html>")
    paths["html"] = out / "report.html"
    paths["html"].write_text(page, encoding="utf-8")
    return paths
