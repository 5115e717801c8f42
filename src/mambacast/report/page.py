"""The backtest's self-contained HTML report: `write_backtest_report` writes the metric files, the plots
(`mambacast.plots`) and one `report.html` with every table and image embedded; `desk_sections` is its options-desk
section. The rows and cells come from `report.tables`, as the terminal's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..plots import (
    plot_backtest_forecasts,
    plot_calibration,
    plot_cumulative_loss,
    plot_pit_histograms,
    plot_reliability,
)
from .tables import (
    _brier_verdicts,
    _coverage_year_rows,
    _desk_scope,
    _fmt,
    _fmt_p,
    _m_label,
    _p_said,
    _ref_dm,
    _seed_spread_rows,
    backtest_rows,
    backtest_summary,
    desk_brier_rows,
)

if TYPE_CHECKING:
    from ..evaluate.results import BacktestResult

__all__ = ["write_backtest_report", "desk_sections"]


# ===================================================================== backtest: the options desk


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
    for rows_of, title, note in (
            (_coverage_year_rows, "Coverage of the central 80% interval by year",
             "Share of outcomes inside each forecaster's 10–90% interval, by calendar year of the origin (nominal "
             "0.80): a calm year reads high, a crash year (2020) low when the intervals react too slowly."),
            (_seed_spread_rows, "Seed spread",
             "The model trained with each seed against each baseline: the range of its loss ratio (model/baseline; "
             "below 1 = model better) and the largest one-sided DM p over the seeds (below 0.05 in the 'better' "
             "column = better whatever the seed).")):
        header, rows = rows_of(result, scope)
        if rows:
            parts.append(f"<h3>{title}</h3><p class='note'>{note}</p>" + _html_table(header, rows))
    return "\n".join(parts)


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

    from .. import __version__

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
