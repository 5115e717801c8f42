"""Reports for people: the backtest's terminal tables, summary sentences and self-contained HTML report.

Backtest: `format_backtest_table` (the terminal table), `backtest_summary` (plain sentences on significant wins,
losses and coverage), `format_desk_tables` (Brier scores at strikes, coverage by year, PIT, seed spread), and
`write_backtest_report`, which writes the metric files, the plots (`mambacast.plots`, whose functions are
re-exported here) and one self-contained `report.html`.

The text tables and sentences live in `report.tables`, the HTML report in `report.page`; every name is
importable from `mambacast.report`.
"""

from __future__ import annotations

from ..plots import (  # the figures live in plots; re-exported here, where they were first
    pit_of,
    plot_backtest_forecasts,
    plot_calibration,
    plot_cumulative_loss,
    plot_fan_chart,
    plot_pit_histograms,
    plot_reliability,
)
from .page import desk_sections, write_backtest_report
from .tables import (  # the noqa names were importable from report.py too; they are not in __all__
    PRICE_COLUMNS,  # noqa: F401
    TABLE_COLUMNS,  # noqa: F401
    _fmt_p,  # noqa: F401  (tests/test_report_backtest.py checks the p-value format through it)
    backtest_rows,
    backtest_summary,
    desk_brier_rows,
    format_backtest_table,
    format_desk_tables,
)

__all__ = ["plot_fan_chart", "format_backtest_table", "backtest_summary", "backtest_rows", "plot_backtest_forecasts",
           "plot_cumulative_loss", "plot_calibration", "pit_of", "write_backtest_report", "format_desk_tables",
           "desk_sections", "desk_brier_rows", "plot_reliability", "plot_pit_histograms"]
